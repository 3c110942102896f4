//! The OSB request sequences of each load phase, sent alike to the broker
//! and to the baseline.

use std::sync::Arc;

use anyhow::ensure;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::load::{Connection, Recorder, Step, Window};

/// The offering and plan a request names.
#[derive(Debug, Clone)]
pub struct Plan {
    pub service_id: String,
    pub plan_id: String,
}

impl Plan {
    fn delete_query(&self) -> String {
        // Generated GUIDs: nothing to percent-encode.
        format!("service_id={}&plan_id={}", self.service_id, self.plan_id)
    }
}

pub fn instance_path(instance_id: &str) -> String {
    format!("/v2/service_instances/{instance_id}")
}

fn binding_path(instance_id: &str, binding_id: &str) -> String {
    format!("/v2/service_instances/{instance_id}/service_bindings/{binding_id}")
}

pub fn provision_body(plan: &Plan) -> Bytes {
    Bytes::from(
        json!({
            "service_id": plan.service_id,
            "plan_id": plan.plan_id,
            "organization_guid": "org-guid-bench",
            "space_guid": "space-guid-bench",
            "context": {"platform": "cloudfoundry", "organization_guid": "org-guid-bench"},
        })
        .to_string(),
    )
}

fn bind_body(plan: &Plan) -> Bytes {
    Bytes::from(
        json!({
            "service_id": plan.service_id,
            "plan_id": plan.plan_id,
            "bind_resource": {"app_guid": "app-guid-bench"},
        })
        .to_string(),
    )
}

/// Fresh ids: `<prefix>-<n>`, the prefix unique to a phase and connection.
pub struct Ids {
    prefix: String,
    next: u64,
}

impl Ids {
    pub fn new(prefix: String) -> Self {
        Self { prefix, next: 0 }
    }

    pub fn fresh(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next)
    }
}

/// `GET /v2/catalog`.
pub struct Catalog;

impl Step for Catalog {
    async fn step(
        &mut self,
        connection: &mut Connection,
        recorder: &mut Recorder,
        window: &Window,
    ) -> anyhow::Result<()> {
        recorder
            .call(
                window,
                connection,
                Method::GET,
                "/v2/catalog",
                None,
                StatusCode::OK,
            )
            .await?;
        Ok(())
    }
}

/// Provision of a fresh id, then its deprovision.
pub struct ProvisionDeprovision {
    pub plan: Plan,
    pub ids: Ids,
}

impl Step for ProvisionDeprovision {
    async fn step(
        &mut self,
        connection: &mut Connection,
        recorder: &mut Recorder,
        window: &Window,
    ) -> anyhow::Result<()> {
        let path = instance_path(&self.ids.fresh());
        let body = provision_body(&self.plan);
        recorder
            .call_marked(
                window,
                connection,
                Method::PUT,
                &path,
                Some(body),
                StatusCode::CREATED,
            )
            .await?;
        let delete = format!("{path}?{}", self.plan.delete_query());
        recorder
            .call(
                window,
                connection,
                Method::DELETE,
                &delete,
                None,
                StatusCode::OK,
            )
            .await?;
        Ok(())
    }
}

/// Bind of a fresh id on the connection's own instance, then its unbind.
pub struct BindUnbind {
    pub plan: Plan,
    pub ids: Ids,
    /// Provisioned by the first step, during the warm-up.
    pub instance_id: Option<String>,
}

impl Step for BindUnbind {
    async fn step(
        &mut self,
        connection: &mut Connection,
        recorder: &mut Recorder,
        window: &Window,
    ) -> anyhow::Result<()> {
        let instance_id = match &self.instance_id {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.fresh();
                let (status, answer) = connection
                    .send(
                        Method::PUT,
                        &instance_path(&id),
                        Some(provision_body(&self.plan)),
                    )
                    .await?;
                ensure!(
                    status == StatusCode::CREATED,
                    "provisioning the instance to bind to: {status} {}",
                    String::from_utf8_lossy(&answer)
                );
                self.instance_id = Some(id.clone());
                id
            }
        };
        let path = binding_path(&instance_id, &self.ids.fresh());
        recorder
            .call(
                window,
                connection,
                Method::PUT,
                &path,
                Some(bind_body(&self.plan)),
                StatusCode::CREATED,
            )
            .await?;
        let delete = format!("{path}?{}", self.plan.delete_query());
        recorder
            .call(
                window,
                connection,
                Method::DELETE,
                &delete,
                None,
                StatusCode::OK,
            )
            .await?;
        Ok(())
    }
}

/// A platform's day: read the catalog, provision, poll, bind, fetch the
/// binding, unbind, deprovision. Four writes, three reads.
pub struct Mix {
    pub plan: Plan,
    pub ids: Ids,
}

impl Step for Mix {
    async fn step(
        &mut self,
        connection: &mut Connection,
        recorder: &mut Recorder,
        window: &Window,
    ) -> anyhow::Result<()> {
        let ok = StatusCode::OK;
        recorder
            .call(window, connection, Method::GET, "/v2/catalog", None, ok)
            .await?;
        let instance = instance_path(&self.ids.fresh());
        let provision = Some(provision_body(&self.plan));
        recorder
            .call(
                window,
                connection,
                Method::PUT,
                &instance,
                provision,
                StatusCode::CREATED,
            )
            .await?;
        recorder
            .call(
                window,
                connection,
                Method::GET,
                &format!("{instance}/last_operation"),
                None,
                ok,
            )
            .await?;
        let binding = format!("{instance}/service_bindings/{}", self.ids.fresh());
        let bind = Some(bind_body(&self.plan));
        recorder
            .call(
                window,
                connection,
                Method::PUT,
                &binding,
                bind,
                StatusCode::CREATED,
            )
            .await?;
        recorder
            .call(window, connection, Method::GET, &binding, None, ok)
            .await?;
        let query = self.plan.delete_query();
        recorder
            .call(
                window,
                connection,
                Method::DELETE,
                &format!("{binding}?{query}"),
                None,
                ok,
            )
            .await?;
        recorder
            .call(
                window,
                connection,
                Method::DELETE,
                &format!("{instance}?{query}"),
                None,
                ok,
            )
            .await?;
        Ok(())
    }
}

/// `GET` of the given paths in turn, each answering 200.
pub struct Read {
    pub paths: Arc<Vec<String>>,
    pub next: usize,
}

impl Step for Read {
    async fn step(
        &mut self,
        connection: &mut Connection,
        recorder: &mut Recorder,
        window: &Window,
    ) -> anyhow::Result<()> {
        let path = &self.paths[self.next % self.paths.len()];
        self.next += 1;
        recorder
            .call(window, connection, Method::GET, path, None, StatusCode::OK)
            .await?;
        Ok(())
    }
}
