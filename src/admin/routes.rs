//! The admin port's endpoints, each a short handler over the lifecycle:
//! bodies are read with a time and size limit, checked against their type
//! ([`crate::api`]), then handed to the lifecycle typed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::guard::{self, refuse};
use super::AdminState;
use crate::api::{self, MigrationStatus};
use crate::lifecycle::{ActionError, Lifecycle, ACTOR};

/// The status page, compiled in.
const PAGE: &str = include_str!("page.html");
/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// Time allowed to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Every endpoint, behind the guard.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/migrations", post(add))
        .route("/migrations/{id}", get(status_of))
        .route("/migrations/{id}/{action}", post(act))
        .route("/applied-files", get(applied).post(record_applied))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            guard::check,
        ))
        .with_state(state)
}

/// `POST /migrations/{id}/autopilot`.
async fn set_autopilot(
    state: &Arc<AdminState>,
    actor: &'static str,
    id: &str,
    body: Value,
) -> Response {
    let settings = match serde_json::from_value::<api::Autopilot>(body) {
        Ok(settings) => settings,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("autopilot: {e} (send {{\"mode\": \"off\" | \"to-switch\" | \"full\", \"contract_after_secs\": N}})"),
            )
        }
    };
    match lifecycle(state) {
        Some(l) => answer(
            ACTOR.scope(actor, l.set_autopilot(id, settings)).await,
            StatusCode::OK,
        ),
        None => not_started(),
    }
}

/// `GET /applied-files`: what `pgshift apply` has carried out.
async fn applied(State(state): State<Arc<AdminState>>) -> Response {
    match lifecycle(&state) {
        Some(l) => match l.applied_files().await {
            Ok(files) => json(StatusCode::OK, files),
            Err(e) => answer_error(e),
        },
        None => not_started(),
    }
}

/// `POST /applied-files`: records a file `pgshift apply` carried out.
async fn record_applied(State(state): State<Arc<AdminState>>, request: Request) -> Response {
    let body = match read_json(request).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    let file = match serde_json::from_value::<api::AppliedFile>(body) {
        Ok(file) => file,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("applied file: {e}")),
    };
    match lifecycle(&state) {
        Some(l) => match l.record_applied(&file).await {
            Ok(file) => json(StatusCode::CREATED, file),
            Err(e) => answer_error(e),
        },
        None => not_started(),
    }
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    match lifecycle(&state) {
        Some(l) => json(StatusCode::OK, l.status()),
        None => not_started(),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match lifecycle(&state) {
        Some(l) => (
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            l.metrics(),
        )
            .into_response(),
        None => not_started(),
    }
}

async fn status_of(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    match lifecycle(&state) {
        Some(l) => answer(l.status_of(&id), StatusCode::OK),
        None => not_started(),
    }
}

async fn add(State(state): State<Arc<AdminState>>, request: Request) -> Response {
    let actor = actor(&request);
    let body = match read_json(request).await {
        Ok(Value::Null) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "a migration needs a JSON body with \"id\", \"table\", \"from\" and \"to\"".into(),
            )
        }
        Ok(body) => body,
        Err(r) => return r,
    };
    let migration = match serde_json::from_value::<api::NewMigration>(body) {
        Ok(migration) => migration,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("migration: {e}")),
    };
    match lifecycle(&state) {
        Some(l) => answer(
            ACTOR.scope(actor, l.add(&migration)).await,
            StatusCode::CREATED,
        ),
        None => not_started(),
    }
}

async fn act(
    State(state): State<Arc<AdminState>>,
    Path((id, action)): Path<(String, String)>,
    request: Request,
) -> Response {
    let actor = actor(&request);
    let body = match read_json(request).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    if action == "autopilot" {
        return set_autopilot(&state, actor, &id, body).await;
    }
    let action = match api::Action::parse(&action, &body) {
        Ok(action) => action,
        Err(e @ api::ActionError::Unknown(_)) => {
            return refuse(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let accepted = if action.runs_on() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let Some(l) = lifecycle(&state).cloned() else {
        return not_started();
    };
    // The action runs to its end in a task of its own, even when the
    // client that asked for it goes away (a closed terminal, an HTTP
    // timeout): dropped half-way, an index build would be cancelled and
    // a step's DDL left to the next attempt.
    let run = tokio::spawn(ACTOR.scope(actor, async move { l.act(&id, action).await }));
    match run.await {
        Ok(result) => answer(result, accepted),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the action did not finish: {e}; see pgshift's log, and /status for where the migration stands"),
        ),
    }
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    let status = if path == "/status" || path.starts_with("/migrations") {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::NOT_FOUND
    };
    refuse(
        status,
        format!("no such endpoint: {} {path}", request.method()),
    )
}

/// Who sent `request` (set by the guard).
fn actor(request: &Request) -> &'static str {
    request
        .extensions()
        .get::<guard::Actor>()
        .map_or("admin", |a| a.0)
}

/// The lifecycle, once it has started.
fn lifecycle(state: &AdminState) -> Option<&Arc<Lifecycle>> {
    state.lifecycle.get()
}

/// 503 while the lifecycle has not started.
fn not_started() -> Response {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "the migration lifecycle has not started yet: pgshift is waiting for its control connection to the upstream (see its log); retry in a few seconds".into(),
    )
}

/// The body as JSON (`Null` when empty), read within the limits.
async fn read_json(request: Request) -> Result<Value, Response> {
    let read = tokio::time::timeout(BODY_TIMEOUT, to_bytes(request.into_body(), MAX_BODY));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes, or was cut short"),
            ))
        }
        Err(_) => {
            return Err(refuse(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time".into(),
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

fn json(status: StatusCode, body: impl serde::Serialize) -> Response {
    // The admin API's types are strings, numbers and lists: they serialize.
    let text = serde_json::to_string(&body).unwrap_or_else(|_| "null".into());
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(text),
    )
        .into_response()
}

fn answer(result: Result<MigrationStatus, ActionError>, ok: StatusCode) -> Response {
    match result {
        Ok(v) => json(ok, v),
        Err(e) => answer_error(e),
    }
}

fn answer_error(e: ActionError) -> Response {
    let status = match e {
        ActionError::NotFound(_) => StatusCode::NOT_FOUND,
        ActionError::Conflict(_) => StatusCode::CONFLICT,
        ActionError::BadRequest(_) => StatusCode::BAD_REQUEST,
        // Postgres refused a statement of the step for what it is (rows
        // breaking a constraint, an `up` failing on a row): not pgshift's
        // failure, and retrying cannot help.
        ActionError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ActionError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refuse(status, e.to_string())
}
