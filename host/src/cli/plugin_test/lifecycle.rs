//! The lifecycle checks of one plan. The broker answers repeats itself
//! (an identical provision 200, a different one 409, a second delete 410),
//! so a plugin's own answer to a repeat is only exercised here. What the
//! contract (`wit/v0.1.0`) asks of it:
//! - provision: a retry must carry on and succeed (the shipped plugins say
//!   so: "a retry after a failed provision finds the database the first
//!   attempt created"), so an identical repeat answers `done` (or
//!   `accepted`); a repeat with different inputs is the resource existing
//!   "with different attributes", whose case is `conflict`. The broker
//!   never sends the plugin one, so `done` there is a warning, not a failure;
//! - unbind and deprovision "must succeed when [the resources] are already
//!   gone" or were only partly created: a repeat answers `done` or `gone`;
//! - a provision stopped half way (here: cut short by a deadline, as the
//!   broker cuts a slow call) is followed by a deprovision, which must
//!   succeed (orphan mitigation).

use std::time::Duration;

use wasm_broker::model::{Refusal, ServiceOffering, ServicePlan};

use super::calls::{Calls, Settled};
use super::report::{Outcome, Report, timed};
use super::samples::PlanInputs;

/// Where a provision is cut short, as fractions of how long a full one
/// took: early, half way, late.
const CUTS: [(u32, u32); 3] = [(1, 4), (1, 2), (3, 4)];

/// One plan's sequence.
pub struct PlanRun<'a> {
    pub offering: &'a ServiceOffering,
    pub plan: &'a ServicePlan,
    pub inputs: &'a PlanInputs,
    /// Another plan of the offering and its inputs, for a provision repeat
    /// with different inputs when the schema offers no other parameters.
    pub other_plan: Option<(&'a ServicePlan, &'a PlanInputs)>,
}

impl PlanRun<'_> {
    fn name(&self, step: &str) -> String {
        format!("{}/{}: {step}", self.offering.name, self.plan.name)
    }

    fn bindable(&self) -> bool {
        self.plan.bindable.unwrap_or(self.offering.bindable)
    }

    pub async fn run(&self, calls: &mut Calls<'_>, report: &mut Report) {
        let (offering, plan) = (self.offering, self.plan);
        let instance = calls.instance(offering, plan, self.inputs.provision.clone());
        let (provisioned, took) = timed(calls.provision(&instance, plan)).await;
        let sync = matches!(&provisioned, Settled::Done(_, how) if how == "done");
        let done = provisioned.is_done();
        report.record(
            self.name("provision"),
            took,
            expect_done(&provisioned, "a provision of a new instance"),
        );

        if offering.instances_retrievable {
            let (fetched, took) = timed(calls.get_instance(&instance)).await;
            let outcome = if !done {
                Outcome::Skip("the provision failed".to_owned())
            } else {
                expect_done(&fetched, "get-instance of an instance just made")
            };
            report.record(self.name("get-instance"), took, outcome);
        }

        if done {
            let (again, took) = timed(calls.provision(&instance, plan)).await;
            report.record(
                self.name("provision again, same inputs"),
                took,
                match again {
                    Settled::Done(_, how) => Outcome::Pass(format!("{how}, as for the existing instance")),
                    other => Outcome::Fail(format!(
                        "{}: an identical repeat (a retry) must answer as for the existing instance, done",
                        other.describe()
                    )),
                },
            );
            self.provision_different(calls, report, &instance).await;
        } else {
            let why = Outcome::Skip("the provision failed".to_owned());
            report.note(self.name("provision again, same inputs"), why.clone());
            report.note(self.name("provision again, different inputs"), why);
        }

        if self.bindable() {
            self.bindings(calls, report, &instance, done).await;
        } else {
            report.note(
                self.name("bind"),
                Outcome::Skip("the plan is not bindable".to_owned()),
            );
        }

        let (deleted, took) = timed(calls.deprovision(&instance, plan)).await;
        report.record(
            self.name("deprovision"),
            took,
            match &deleted {
                Settled::Done(_, how) => Outcome::Pass(how.clone()),
                gone @ Settled::Refused(Refusal::Gone(_)) if !done => {
                    Outcome::Pass(format!("{} (the provision had failed)", gone.describe()))
                }
                other => Outcome::Fail(format!(
                    "{}: deprovision of an existing instance must succeed",
                    other.describe()
                )),
            },
        );
        let (again, took) = timed(calls.deprovision(&instance, plan)).await;
        report.record(
            self.name("deprovision again"),
            took,
            done_or_gone(&again, "a deprovision of an instance already deleted"),
        );

        match sync {
            true if done => self.cut_provisions(calls, report).await,
            _ => report.note(
                self.name("provision cut short, then deprovision"),
                Outcome::Skip(if done {
                    "the plugin provisions asynchronously: nothing generic stops it half way \
                     (a failed asynchronous provision is its own failed operation)"
                        .to_owned()
                } else {
                    "the provision failed".to_owned()
                }),
            ),
        }
    }

    /// A repeat with other parameters (another value of an `enum`), else
    /// with another plan of the offering.
    async fn provision_different(
        &self,
        calls: &mut Calls<'_>,
        report: &mut Report,
        existing: &wasm_broker::model::Instance,
    ) {
        let name = self.name("provision again, different inputs");
        let (different, plan, what) = if let Some(parameters) = &self.inputs.other_provision {
            let mut different = existing.clone();
            different.parameters = Some(parameters.clone());
            (different, self.plan, format!("parameters {parameters}"))
        } else if let Some((other, inputs)) = self.other_plan {
            let mut different = calls.instance(self.offering, other, inputs.provision.clone());
            different.id = existing.id.clone();
            (different, other, format!("plan {}", other.name))
        } else {
            report.note(
                name,
                Outcome::Skip(
                    "no other plan, and no enum in the instance schema to vary".to_owned(),
                ),
            );
            return;
        };
        let (answer, took) = timed(calls.provision(&different, plan)).await;
        let outcome = match answer {
            Settled::Refused(Refusal::Conflict(message)) => {
                Outcome::Pass(format!("conflict ({what}): {message}"))
            }
            Settled::Done(_, how) => Outcome::Warn(format!(
                "{how} ({what}): answered as for the same instance; the contract's case for an \
                 instance that exists with different attributes is conflict (the broker answers \
                 409 to such a repeat itself, so only a lost record would reach the plugin)"
            )),
            other => Outcome::Fail(format!("{} ({what}): expected conflict", other.describe())),
        };
        report.record(name, took, outcome);
    }

    async fn bindings(
        &self,
        calls: &mut Calls<'_>,
        report: &mut Report,
        instance: &wasm_broker::model::Instance,
        provisioned: bool,
    ) {
        let plan = self.plan;
        let first = calls.binding(instance, self.inputs.bind.clone());
        let second = calls.binding(instance, self.inputs.bind.clone());
        let mut results = Vec::new();
        for (step, binding) in [
            ("bind", &first),
            ("bind again, another binding id", &second),
        ] {
            let (bound, took) = timed(calls.bind(instance, binding, plan)).await;
            let outcome = if provisioned {
                expect_done(&bound, "a bind on an existing instance")
            } else {
                Outcome::Skip(format!("the provision failed; bind: {}", bound.describe()))
            };
            report.record(self.name(step), took, outcome);
            if let Settled::Done(result, _) = bound {
                results.push(result.credentials);
            }
        }
        match results.as_slice() {
            [Some(one), Some(two)] if one == two => report.note(
                self.name("distinct credentials"),
                Outcome::Fail("both bindings got the same credentials".to_owned()),
            ),
            [Some(_), Some(_)] => report.note(
                self.name("distinct credentials"),
                Outcome::Pass("the two bindings' credentials differ".to_owned()),
            ),
            [None, None] => report.note(
                self.name("distinct credentials"),
                Outcome::Skip("the bindings carry no credentials".to_owned()),
            ),
            _ => report.note(
                self.name("distinct credentials"),
                Outcome::Skip("a bind failed".to_owned()),
            ),
        }
        let (unbound, took) = timed(calls.unbind(instance, &first, plan)).await;
        report.record(
            self.name("unbind"),
            took,
            expect_done(&unbound, "an unbind of an existing binding"),
        );
        let (again, took) = timed(calls.unbind(instance, &first, plan)).await;
        report.record(
            self.name("unbind again"),
            took,
            done_or_gone(&again, "an unbind of a binding already deleted"),
        );
        let (other, took) = timed(calls.unbind(instance, &second, plan)).await;
        report.record(
            self.name("unbind the other binding"),
            took,
            expect_done(&other, "an unbind of an existing binding"),
        );
    }

    /// Provisions cut short by a deadline at fractions of how long a whole
    /// one takes, each followed by two deprovisions. The time is measured
    /// on a second instance: the first provision also opened the
    /// connections, which the cut ones find open.
    async fn cut_provisions(&self, calls: &mut Calls<'_>, report: &mut Report) {
        let timing = calls.instance(self.offering, self.plan, self.inputs.provision.clone());
        let ((made, full, deleted), took) = timed(async {
            let (made, full) = timed(calls.provision(&timing, self.plan)).await;
            let deleted = calls.deprovision(&timing, self.plan).await;
            (made, full, deleted)
        })
        .await;
        let name = self.name("second instance, to time the cuts");
        if !(made.is_done() && deleted.is_done()) {
            report.record(
                name,
                took,
                Outcome::Fail(format!(
                    "provision: {}; deprovision: {}",
                    made.describe(),
                    deleted.describe()
                )),
            );
            return;
        }
        report.record(
            name,
            took,
            Outcome::Pass(format!("its provision took {} ms", full.as_millis())),
        );
        let mut interrupted = 0;
        for (numerator, denominator) in CUTS {
            let cut = (full * numerator / denominator).max(Duration::from_millis(1));
            let instance = calls.instance(self.offering, self.plan, self.inputs.provision.clone());
            let name = self.name(&format!(
                "provision cut at {numerator}/{denominator}, then deprovision"
            ));
            let ((started, deleted, again), took) = timed(async {
                let started = calls.provision_cut(&instance, cut).await;
                let deleted = calls.deprovision(&instance, self.plan).await;
                let again = calls.deprovision(&instance, self.plan).await;
                (started, deleted, again)
            })
            .await;
            let at = format!("cut at {} ms of {} ms", cut.as_millis(), full.as_millis());
            let provision = match &started {
                Settled::Done(..) => format!("{at}: the provision finished in time"),
                other => {
                    interrupted += 1;
                    format!("{at}: {}", other.describe())
                }
            };
            let cleaned = |settled: &Settled<()>| settled.is_done() || settled.is_gone();
            let outcome = if cleaned(&deleted) && cleaned(&again) {
                Outcome::Pass(format!(
                    "{provision}; deprovision: {}; again: {}",
                    deleted.describe(),
                    again.describe()
                ))
            } else {
                Outcome::Fail(format!(
                    "{provision}; deprovision must then succeed (done or gone), but answered: {}; again: {}",
                    deleted.describe(),
                    again.describe()
                ))
            };
            report.record(name, took, outcome);
        }
        report.note(
            self.name("a cut stopped a provision half way"),
            if interrupted > 0 {
                Outcome::Pass(format!("{interrupted} of {} cuts did", CUTS.len()))
            } else {
                Outcome::Skip(format!(
                    "every cut provision finished in time ({} ms or less): too fast to stop half \
                     way with a deadline in milliseconds",
                    full.as_millis()
                ))
            },
        );
    }
}

fn expect_done<T>(settled: &Settled<T>, what: &str) -> Outcome {
    match settled {
        Settled::Done(_, how) => Outcome::Pass(how.clone()),
        other => Outcome::Fail(format!("{}: {what} must succeed", other.describe())),
    }
}

fn done_or_gone(settled: &Settled<()>, what: &str) -> Outcome {
    if settled.is_done() || settled.is_gone() {
        Outcome::Pass(settled.describe())
    } else {
        Outcome::Fail(format!(
            "{}: {what} must answer done or gone",
            settled.describe()
        ))
    }
}
