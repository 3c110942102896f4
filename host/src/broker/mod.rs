//! The broker core: everything OSB demands that is not HTTP and not the
//! plugin's business. It checks requests against the catalog
//! (`validation`), asks the lifecycle rules (`crate::lifecycle`) what to do,
//! keeps the records (`Records`, the state store) and calls the plugins
//! (`Plugins`, the runtime): every state change is committed before the
//! platform hears of it.
//!
//! Plugin calls happen outside store transactions; the store's operation
//! record (phase `Calling` / `InProgress`) is the lock that keeps a second
//! request for the same resource out meanwhile.

mod bindings;
mod changes;
#[cfg(test)]
mod fakes;
mod instances;
mod requests;
mod seams;
mod single_flight;
#[cfg(test)]
mod single_flight_tests;
#[cfg(test)]
mod tests;
mod validation;

use std::sync::Arc;

pub use requests::{
    BindRequest, DeleteRequest, FetchedBinding, FetchedInstance, PollRequest, ProvisionRequest,
    UnbindRequest, UpdateRequest,
};
pub use seams::{Plugins, Records};
pub use validation::validate_parameters;

use crate::catalog::CatalogSnapshot;
use crate::lifecycle::{Answer, Verdict};
use crate::model::{OperationStatus, Refusal};
use crate::runtime::{CallError, PluginRuntime};
use crate::state::{StateError, StateStore};
use single_flight::Flights;

/// Why the broker could not serve a request. `Clone`, so that concurrent
/// polls of one operation can all be given the one poll's reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// An OSB refusal, from the core or the plugin (4xx, or a plugin's own
    /// `internal` 500).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The plugin failed (trap, timeout, out of memory, malformed answer) or
    /// no plugin serves the service: the platform sees a 500 with this
    /// description. Never `CallError::Refused`, which is `Refused`.
    #[error(transparent)]
    Plugin(CallError),
    /// The plugin answered in a way the contract forbids (for example 202
    /// to a request without `accepts_incomplete`): a 500.
    #[error("{0}")]
    PluginContract(String),
    /// The state store failed: 500.
    #[error(transparent)]
    State(Arc<StateError>),
}

impl From<StateError> for BrokerError {
    fn from(error: StateError) -> Self {
        Self::State(Arc::new(error))
    }
}

impl From<CallError> for BrokerError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Refused(refusal) => Self::Refused(refusal),
            other => Self::Plugin(other),
        }
    }
}

/// How a create (provision or bind) was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Created<T> {
    /// Created by this request (201).
    New(T),
    /// Already existed with identical attributes (200).
    Existing(T),
    /// Running asynchronously (202).
    Accepted(AcceptedReply),
}

/// How an update or a delete was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed<T> {
    /// Done (200).
    Done(T),
    /// Running asynchronously (202).
    Accepted(AcceptedReply),
}

/// A 202 body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AcceptedReply {
    pub operation: String,
    pub dashboard_url: Option<String>,
}

/// The broker core over its two seams: the plugins (the runtime in the
/// service, a scripted fake in unit tests) and the records (the state
/// store, or an in-memory fake).
pub struct Broker<P = PluginRuntime, R = StateStore> {
    plugins: Arc<P>,
    records: R,
    /// The `last_operation` polls asking a plugin, by operation id: one
    /// plugin call per operation at a time (`single_flight`).
    instance_polls: Flights<Result<OperationStatus, BrokerError>>,
    binding_polls: Flights<Result<OperationStatus, BrokerError>>,
}

impl<P: Plugins, R: Records> Broker<P, R> {
    pub fn new(plugins: Arc<P>, records: R) -> Self {
        Self {
            plugins,
            records,
            instance_polls: Flights::default(),
            binding_polls: Flights::default(),
        }
    }

    pub fn catalog(&self) -> Arc<CatalogSnapshot> {
        self.plugins.catalog()
    }

    pub fn plugins(&self) -> &Arc<P> {
        &self.plugins
    }

    pub fn records(&self) -> &R {
        &self.records
    }
}

/// What a transition decided to do next.
enum Next<T, C> {
    /// Answer now without calling the plugin.
    Answer(T),
    /// The operation record was written; call the plugin with this.
    Call(Box<C>),
}

/// A plugin call's result in lifecycle terms: a refusal is the plugin's
/// answer, anything else a fault.
fn answer<O, T>(outcome: Result<O, BrokerError>) -> Answer<T, BrokerError>
where
    O: Into<Answer<T, BrokerError>>,
{
    match outcome {
        Ok(outcome) => outcome.into(),
        Err(BrokerError::Refused(refusal)) => Answer::Refused(refusal),
        Err(fault) => Answer::Fault(fault),
    }
}

/// What a settled operation tells the platform, short of the wording of
/// success: `Ok(Ok(result))` done, `Ok(Err(dashboard_url))` accepted.
type Reply<T> = Result<Result<T, Option<String>>, BrokerError>;

fn reply<T>(verdict: Verdict<T, BrokerError>) -> Reply<T> {
    match verdict {
        Verdict::Done(result) => Ok(Ok(result)),
        Verdict::Accepted { dashboard_url } => Ok(Err(dashboard_url)),
        Verdict::Refused(refusal) => Err(BrokerError::Refused(refusal)),
        Verdict::Failed(fault) => Err(fault),
        Verdict::BrokenContract(description) => {
            Err(BrokerError::PluginContract(description.to_owned()))
        }
    }
}

/// The reply to a create: 201 with the result, or 202 with `operation`.
fn created<T>(
    verdict: Verdict<T, BrokerError>,
    operation: String,
) -> Result<Created<T>, BrokerError> {
    Ok(match reply(verdict)? {
        Ok(result) => Created::New(result),
        Err(dashboard_url) => Created::Accepted(AcceptedReply {
            operation,
            dashboard_url,
        }),
    })
}

/// The reply to an update or delete: 200, or 202 with `operation`.
fn changed<T>(
    verdict: Verdict<T, BrokerError>,
    operation: String,
) -> Result<Changed<T>, BrokerError> {
    Ok(match reply(verdict)? {
        Ok(result) => Changed::Done(result),
        Err(dashboard_url) => Changed::Accepted(AcceptedReply {
            operation,
            dashboard_url,
        }),
    })
}
