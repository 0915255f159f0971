//! The HTTP API (API Gateway HTTP API, payload v2):
//!
//! - `POST /integrations/kommo/full-refresh` with an optional `{"year": 2025}`
//!   starts a run: 202 `{runId, status, leads, contacts, vehicles}`, 409 with
//!   the active run's id, 403 with a `reason` when `enableKommoLive` is off.
//! - `GET /integrations/kommo/full-refresh/{runId}`: the run with live progress.
//! - `GET /integrations/kommo/full-refresh`: recent runs.
//! - `POST /integrations/kommo/full-refresh/{runId}/approve` approves a run
//!   held as `needs_review`: 202, and the worker swaps its staging into
//!   production as it was staged (the guard waived), since a large account's
//!   swap does not fit in API Gateway's 29 s; the run shows `approval` until
//!   then. `…/discard` closes it (200). Both need a role of their own
//!   (`FULL_REFRESH_ADMIN_ROLES`, default `refresh_admin`) and are audited;
//!   409 when the run is not held.
//!
//! Every route needs a staff JWT (401 without, 403 for another role).

use std::sync::Arc;

use chrono::Datelike;
use http::{HeaderValue, Method};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::{
    platform::apigw::{self, ApiError, BodyError, Request, Response},
    platform::db::{DbError, DbPool},
    platform::flags::{FeatureFlags, Flag},
    platform::secrets::{SecretSource, StaffJwtSecret},
    refresh::{
        runs,
        swap::{self, Decision},
        JobMessage, JobQueue, RefreshError, RefreshSettings, StartOutcome,
    },
};
use uuid::Uuid;

/// Start bodies are tiny; anything bigger is a mistake or abuse.
const MAX_BODY: usize = 4 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Runs,
    Run(String),
    /// `{runId}/approve` or `{runId}/discard`.
    Decide(String, Verdict),
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Discard,
}

/// See [`apigw::match_route`] on the stage prefix.
pub fn route(path: &str) -> Route {
    apigw::match_route(path, |segs| match segs {
        ["integrations", "kommo", "full-refresh"] => Some(Route::Runs),
        ["integrations", "kommo", "full-refresh", id] => Some(Route::Run((*id).to_string())),
        ["integrations", "kommo", "full-refresh", id, "approve"] => {
            Some(Route::Decide((*id).to_string(), Verdict::Approve))
        }
        ["integrations", "kommo", "full-refresh", id, "discard"] => {
            Some(Route::Decide((*id).to_string(), Verdict::Discard))
        }
        _ => None,
    })
    .unwrap_or(Route::Unknown)
}

pub struct HttpApp {
    pub pool: DbPool,
    pub flags: Arc<FeatureFlags>,
    pub jwt: SecretSource<StaffJwtSecret>,
    pub allowed_roles: Vec<String>,
    pub queue: Arc<dyn JobQueue>,
    pub settings: RefreshSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    year: Option<i64>,
}

impl HttpApp {
    pub async fn handle(&self, req: Request) -> Response {
        let result = self.dispatch(&req).await;
        if let Err(e) = &result {
            if e.status >= 500 {
                tracing::error!(status = e.status, code = e.code, message = %e.message, "full-refresh request failed");
            } else {
                tracing::info!(status = e.status, code = e.code, message = %e.message, "full-refresh request refused");
            }
        }
        apigw::respond(result)
    }

    async fn dispatch(&self, req: &Request) -> Result<Response, ApiError> {
        let method = apigw::method(req);
        let route = route(apigw::path(req));
        match (&route, method) {
            (Route::Unknown, _) => return Err(ApiError::no_route()),
            (Route::Runs, m) if m != Method::POST && m != Method::GET => {
                return Err(method_not_allowed("GET, POST"));
            }
            (Route::Run(_), m) if m != Method::GET => return Err(method_not_allowed("GET")),
            (Route::Decide(..), m) if m != Method::POST => return Err(method_not_allowed("POST")),
            _ => {}
        }
        if let Route::Decide(id, verdict) = &route {
            let admin = apigw::staff(req, &self.jwt, &self.settings.admin_roles).await?;
            return self.decide(id, *verdict, &admin.sub).await;
        }
        let staff = apigw::staff(req, &self.jwt, &self.allowed_roles).await?;
        match route {
            Route::Runs if method == Method::POST => self.start(req, &staff.sub).await,
            Route::Runs => self.list(req).await,
            Route::Run(id) => self.status(&id).await,
            Route::Decide(..) | Route::Unknown => Err(ApiError::no_route()),
        }
    }

    async fn start(&self, req: &Request, sub: &str) -> Result<Response, ApiError> {
        let live = self
            .flags
            .is_enabled(Flag::KommoLive)
            .await
            .map_err(db_unavailable)?;
        if !live {
            return Err(ApiError::new(
                403,
                "kommo_disabled",
                "the full refresh is switched off",
            )
            .with_details(json!({
                "reason": "feature flag enableKommoLive is off; turn it on to import from Kommo"
            })));
        }
        let year = self.year_of(req)?;
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| db_unavailable(e.into()))?;
        let outcome = runs::start_run(
            &mut client,
            self.queue.as_ref(),
            sub,
            year,
            self.settings.stale_after,
        )
        .await
        .map_err(|e| match e {
            RefreshError::Queue(_) => ApiError::new(
                503,
                "queue_unavailable",
                "the job could not be queued; the run was closed as failed, try again",
            ),
            other => refresh_error(other),
        })?;
        match outcome {
            StartOutcome::Started(run) => {
                let mut resp = apigw::json_response(202, &run.to_json());
                if let Ok(v) =
                    HeaderValue::from_str(&format!("/integrations/kommo/full-refresh/{}", run.id))
                {
                    resp.headers.insert(http::header::LOCATION, v);
                }
                Ok(resp)
            }
            StartOutcome::AlreadyActive(run) => Err(ApiError::new(
                409,
                "already_running",
                format!("a full refresh is already {}", run.status.as_str()),
            )
            .with_details(json!({"runId": run.id, "status": run.status.as_str()}))),
        }
    }

    /// The year from the body, or the configured default, or the current UTC year.
    fn year_of(&self, req: &Request) -> Result<i32, ApiError> {
        let bytes = apigw::body_bytes(req, MAX_BODY).map_err(|e| match e {
            BodyError::TooLarge { .. } => ApiError::new(413, "too_large", "the body is too large"),
            BodyError::BadBase64 => {
                ApiError::new(400, "invalid_body", "the body is not valid base64")
            }
        })?;
        let current = chrono::Utc::now().year();
        let year = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            let body: StartBody = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::new(
                    400,
                    "invalid_body",
                    format!("expected {{\"year\": <number>}} or no body: {e}"),
                )
            })?;
            body.year
        };
        let year = match year {
            Some(y) => y,
            None => i64::from(self.settings.default_year.unwrap_or(current)),
        };
        if !(2000..=i64::from(current) + 1).contains(&year) {
            return Err(ApiError::new(
                422,
                "invalid_year",
                format!("year must be between 2000 and {}", current + 1),
            ));
        }
        Ok(year as i32)
    }

    /// An admin's approve or discard of a held run; the answer is the run.
    async fn decide(&self, id: &str, verdict: Verdict, sub: &str) -> Result<Response, ApiError> {
        let id = run_id(id)?;
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| db_unavailable(e.into()))?;
        let decision = match verdict {
            Verdict::Approve => swap::request_approval(&client, id, sub).await,
            Verdict::Discard => swap::discard(&mut client, id, sub).await,
        };
        drop(client);
        match decision {
            Ok(Decision::NotHeld) => Err(ApiError::new(
                409,
                "not_held",
                "the run is not held for review",
            )),
            Ok(Decision::ApprovalQueued) => {
                // Approving again queues the job again: a lost message is
                // mended by the button, and a duplicate finds the run done.
                let job = JobMessage {
                    run_id: id,
                    invocation: 0,
                };
                self.queue.send(&job).await.map_err(|e| {
                    tracing::error!(run_id = %id, error = %e, "could not queue the approved swap");
                    ApiError::new(
                        503,
                        "queue_unavailable",
                        "the approval is recorded but its swap could not be queued; approve again",
                    )
                })?;
                let mut resp = self.status(&id.to_string()).await?;
                resp.status_code = 202;
                Ok(resp)
            }
            Ok(_) => self.status(&id.to_string()).await,
            Err(RefreshError::UnknownRun(_)) => Err(ApiError::new(404, "not_found", "no such run")),
            Err(e) => Err(refresh_error(e)),
        }
    }

    async fn status(&self, id: &str) -> Result<Response, ApiError> {
        let id = run_id(id)?;
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| db_unavailable(e.into()))?;
        match runs::get_run(&**client, id).await.map_err(refresh_error)? {
            Some(run) => Ok(apigw::json_response(200, &run.to_json())),
            None => Err(ApiError::new(404, "not_found", "no such run")),
        }
    }

    async fn list(&self, req: &Request) -> Result<Response, ApiError> {
        let limit = match req.query_string_parameters.first("limit") {
            None => 20,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    ApiError::new(400, "invalid_limit", "limit must be a number from 1 to 100")
                })?,
        };
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| db_unavailable(e.into()))?;
        let list = runs::list_runs(&**client, limit)
            .await
            .map_err(refresh_error)?;
        let runs: Vec<Value> = list.iter().map(|r| r.to_json()).collect();
        Ok(apigw::json_response(200, &json!({ "runs": runs })))
    }
}

fn run_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::new(400, "invalid_run_id", "the run id is not a UUID"))
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::method_not_allowed(allow, format!("method not allowed; use {allow}"))
}

fn db_unavailable(e: DbError) -> ApiError {
    tracing::error!(error = %e, "database unavailable");
    ApiError::new(503, "unavailable", "the database is unavailable")
}

fn refresh_error(e: RefreshError) -> ApiError {
    tracing::error!(error = %e, "full-refresh request failed");
    ApiError::new(500, "internal", "the request could not be completed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_tolerate_a_stage_prefix() {
        assert_eq!(route("/integrations/kommo/full-refresh"), Route::Runs);
        assert_eq!(route("/prod/integrations/kommo/full-refresh/"), Route::Runs);
        assert_eq!(
            route("/integrations/kommo/full-refresh/abc"),
            Route::Run("abc".into())
        );
        assert_eq!(
            route("/a/b/integrations/kommo/full-refresh"),
            Route::Unknown
        );
        assert_eq!(route("/integrations/kommo"), Route::Unknown);
        assert_eq!(
            route("/prod/integrations/kommo/full-refresh/abc/approve"),
            Route::Decide("abc".into(), Verdict::Approve)
        );
        assert_eq!(
            route("/integrations/kommo/full-refresh/abc/discard"),
            Route::Decide("abc".into(), Verdict::Discard)
        );
    }
}
