//! `/jobs`: submit a job (202 only once it is durable), read one, list them.

use std::{sync::Arc, time::Duration};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, RawQuery, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use lameduck_jobs::{JobId, JobState, Journal, JournalError, NewJob, PoolHandle};
use serde::Deserialize;
use serde_json::json;

use super::{
    request_id::RequestIds,
    routes::{error, query_u64},
    sleep_job::{MAX_STEP_MS, MAX_STEPS},
};

/// Largest `POST /jobs` body.
const MAX_BODY: usize = 64 * 1024;
/// How long a request waits for the journal before answering 503.
const JOURNAL_WAIT: Duration = Duration::from_secs(5);
const LIST_DEFAULT: u64 = 100;
const LIST_MAX: u64 = 1_000;

#[derive(Clone, Debug)]
pub(crate) struct Jobs {
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) pool: PoolHandle,
}

pub(crate) fn routes(jobs: Jobs) -> Router {
    Router::new()
        .route("/jobs", get(list).post(submit))
        .route("/jobs/counts", get(counts))
        .route("/jobs/{id}", get(show))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(jobs)
}

/// The jobs this service runs, as `POST /jobs` takes them.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum Submit {
    Sleep { steps: u32, step_ms: u64 },
}

impl Submit {
    fn into_job(self) -> Result<NewJob, String> {
        match self {
            Submit::Sleep { steps, step_ms } => {
                if !(1..=MAX_STEPS).contains(&steps) {
                    return Err(format!("steps must be in 1..={MAX_STEPS}"));
                }
                if step_ms > MAX_STEP_MS {
                    return Err(format!("step_ms must be in 0..={MAX_STEP_MS}"));
                }
                Ok(NewJob::new(
                    "sleep",
                    json!({ "steps": steps, "step_ms": step_ms }),
                ))
            }
        }
    }
}

/// Answers for a journal that failed: 503 with `Retry-After` when it may
/// come back, 500 when the data is bad.
fn journal_error(e: &JournalError, ids: &RequestIds) -> Response {
    let request_id = ids.request_id();
    let trace_id = ids.trace_id();
    match e {
        JournalError::Invalid(msg) => error(StatusCode::BAD_REQUEST, msg.clone()),
        JournalError::Unavailable { .. } => {
            tracing::warn!(request_id, trace_id, error = %e, "job.journal_unavailable");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; the job was not accepted, retry later"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        other => {
            tracing::error!(request_id, trace_id, error = %other, "job.journal_error");
            error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
        }
    }
}

async fn bounded<T>(fut: impl Future<Output = Result<T, JournalError>>) -> Result<T, JournalError> {
    tokio::time::timeout(JOURNAL_WAIT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(JournalError::Unavailable {
                context: "journal".into(),
                source: format!("no answer within {JOURNAL_WAIT:?}").into(),
            })
        })
}

/// `POST /jobs` with `{"kind":"sleep","steps":N,"step_ms":M}`: 202
/// `{"id":...}` once the job is durable; the same id again for a repeated
/// `Idempotency-Key`.
async fn submit(
    State(jobs): State<Jobs>,
    Extension(ids): Extension<RequestIds>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let submit: Submit = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid job: {e}")),
    };
    let mut job = match submit.into_job() {
        Ok(job) => job,
        Err(msg) => return error(StatusCode::BAD_REQUEST, format!("invalid job: {msg}")),
    };
    if let Some(key) = headers.get("idempotency-key") {
        match idempotency_key(key.as_bytes()) {
            Some(key) => job = job.idempotency_key(key),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid Idempotency-Key: expected 1 to 255 visible ASCII characters",
                );
            }
        }
    }
    match bounded(jobs.journal.enqueue(job)).await {
        Ok(queued) => {
            if queued.created {
                jobs.pool.wake();
            }
            tracing::info!(
                request_id = ids.request_id(),
                trace_id = ids.trace_id(),
                job = %queued.id,
                created = queued.created,
                "job.accepted"
            );
            let location = format!("/jobs/{}", queued.id);
            let mut response = (
                StatusCode::ACCEPTED,
                Json(json!({ "id": queued.id, "created": queued.created })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
        Err(JournalError::KeyConflict { first }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "the Idempotency-Key was used for another job",
                "job": first,
            })),
        )
            .into_response(),
        Err(e) => journal_error(&e, &ids),
    }
}

/// An `Idempotency-Key` header as the journal takes it: 1 to 255 visible
/// ASCII characters, surrounding blanks ignored.
fn idempotency_key(raw: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(raw).ok()?.trim_matches([' ', '\t']);
    let fits = (1..=lameduck_jobs::MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len());
    (fits && key.bytes().all(|b| b.is_ascii_graphic())).then_some(key)
}

/// `GET /jobs/{id}`.
async fn show(
    State(jobs): State<Jobs>,
    Extension(ids): Extension<RequestIds>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<JobId>() else {
        return error(StatusCode::BAD_REQUEST, format!("invalid job id {id:?}"));
    };
    match bounded(jobs.journal.get(id)).await {
        Ok(Some(job)) => Json(job).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => journal_error(&e, &ids),
    }
}

/// `GET /jobs?state=S&after=ID&limit=N`: jobs by id, a page at a time;
/// `next_after` is the `after` of the next page (absent on the last).
async fn list(
    State(jobs): State<Jobs>,
    Extension(ids): Extension<RequestIds>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.as_deref();
    let state = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("state="));
    let state = match state.map(str::parse::<JobState>).transpose() {
        Ok(state) => state,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (after, limit) = match (
        query_u64(query, "after", 0, 0, u64::MAX),
        query_u64(query, "limit", LIST_DEFAULT, 1, LIST_MAX),
    ) {
        (Ok(after), Ok(limit)) => (after, limit),
        (Err(msg), _) | (_, Err(msg)) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let after = (after > 0).then_some(JobId(after));
    match bounded(jobs.journal.list(state, after, limit as usize)).await {
        Ok(page) => {
            let next = (page.len() as u64 == limit)
                .then(|| page.last().map(|j| j.id))
                .flatten();
            Json(json!({ "jobs": page, "next_after": next })).into_response()
        }
        Err(e) => journal_error(&e, &ids),
    }
}

/// `GET /jobs/counts`: how many jobs are in each state.
async fn counts(State(jobs): State<Jobs>, Extension(ids): Extension<RequestIds>) -> Response {
    match bounded(jobs.journal.counts()).await {
        Ok(counts) => Json(counts).into_response(),
        Err(e) => journal_error(&e, &ids),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What `POST /jobs` does with a body, short of the journal: a job or a
    /// message for a 400.
    fn parse(body: &[u8]) -> Result<NewJob, String> {
        serde_json::from_slice::<Submit>(body)
            .map_err(|e| e.to_string())
            .and_then(Submit::into_job)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        // Any bytes: a job or an error, never a panic.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&body);
        }

        // Any header bytes: a key is visible ASCII within the journal's
        // limit, never empty; and a sane key comes back as it was sent.
        #[test]
        fn idempotency_keys_are_checked(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(key) = idempotency_key(&raw) {
                prop_assert!(!key.is_empty() && key.len() <= lameduck_jobs::MAX_IDEMPOTENCY_KEY_LEN);
                prop_assert!(key.bytes().all(|b| b.is_ascii_graphic()));
            }
        }

        #[test]
        fn sane_idempotency_keys_are_kept(key in "[!-~]{1,255}", pad in "[ \t]{0,3}") {
            let raw = format!("{pad}{key}{pad}");
            prop_assert_eq!(idempotency_key(raw.as_bytes()), Some(key.as_str()));
        }

        // Any numbers in a well-formed body: accepted exactly when in range.
        #[test]
        fn numbers_are_range_checked(steps in any::<i64>(), step_ms in any::<i64>()) {
            let body = format!(r#"{{"kind":"sleep","steps":{steps},"step_ms":{step_ms}}}"#);
            let ok = (1..=i64::from(MAX_STEPS)).contains(&steps)
                && (0..=MAX_STEP_MS as i64).contains(&step_ms);
            prop_assert_eq!(parse(body.as_bytes()).is_ok(), ok, "{}", body);
        }

        // Unknown kinds are refused, whatever they are.
        #[test]
        fn unknown_kinds_are_refused(kind in "[a-z]{1,12}") {
            prop_assume!(kind != "sleep");
            let body = format!(r#"{{"kind":"{kind}","steps":1,"step_ms":1}}"#);
            prop_assert!(parse(body.as_bytes()).is_err());
        }
    }
}
