//! The report of `plugins test`: one line per check, printed as it ends (a
//! run against slow backends shows its progress), then a summary.

use std::time::{Duration, Instant};

use wasm_broker::printable::printable;

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    /// Allowed by the contract, but worth the author's attention (e.g. a
    /// different repeat of a provision answered as the same instance).
    /// Fails the run only with `--strict`.
    Warn(String),
    /// Could not be checked, with why (no sample input, not bindable ...).
    Skip(String),
    Fail(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Self::Pass(_) => "PASS",
            Self::Warn(_) => "WARN",
            Self::Skip(_) => "SKIP",
            Self::Fail(_) => "FAIL",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Self::Pass(detail) | Self::Warn(detail) | Self::Skip(detail) | Self::Fail(detail) => {
                detail
            }
        }
    }

    /// `ok: detail`, `FAILED: detail`, ... for a line of `plugins check`.
    pub fn as_text(&self) -> String {
        let word = match self {
            Self::Pass(_) => "ok",
            Self::Warn(_) => "warning",
            Self::Skip(_) => "skipped",
            Self::Fail(_) => "FAILED",
        };
        format!("{word}: {}", self.detail())
    }
}

/// A check's name, outcome and duration.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    pub took: Duration,
}

#[derive(Debug, Default)]
pub struct Report {
    checks: Vec<Check>,
}

impl Report {
    /// Records a check and prints its line.
    pub fn record(&mut self, name: impl Into<String>, took: Duration, outcome: Outcome) {
        let check = Check {
            name: name.into(),
            outcome,
            took,
        };
        println!("{}", line(&check));
        self.checks.push(check);
    }

    /// Records a check that took no time of its own (a skip, a comparison).
    pub fn note(&mut self, name: impl Into<String>, outcome: Outcome) {
        self.record(name, Duration::ZERO, outcome);
    }

    /// The names of the checks that fail the run: FAIL, and WARN if strict.
    pub fn failures(&self, strict: bool) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|check| match check.outcome {
                Outcome::Fail(_) => true,
                Outcome::Warn(_) => strict,
                _ => false,
            })
            .map(|check| check.name.as_str())
            .collect()
    }

    /// `12 passed, 1 failed, 2 warnings, 3 skipped in 1.24 s`.
    pub fn summary(&self, started: Instant) -> String {
        let count = |label: &str| {
            self.checks
                .iter()
                .filter(|check| check.outcome.label() == label)
                .count()
        };
        format!(
            "{} passed, {} failed, {} warnings, {} skipped in {:.2} s",
            count("PASS"),
            count("FAIL"),
            count("WARN"),
            count("SKIP"),
            started.elapsed().as_secs_f64()
        )
    }
}

/// `PASS  mysql/default: provision                     23 ms  done`. Names
/// and details carry text from the plugin (catalog names, error messages):
/// control characters are escaped.
fn line(check: &Check) -> String {
    let detail = check.outcome.detail();
    let name = printable(&check.name);
    let took = format!("{} ms", check.took.as_millis());
    let text = format!(
        "{label}  {name:<52} {took:>8}  {detail}",
        label = check.outcome.label(),
        detail = printable(detail),
    );
    text.trim_end().to_owned()
}

/// Runs `work` and measures it.
pub async fn timed<T>(work: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let value = work.await;
    (value, started.elapsed())
}
