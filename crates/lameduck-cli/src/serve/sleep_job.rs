//! The built-in `sleep` job: `steps` steps of `step_ms` each, a checkpoint
//! after every step, resumed from the checkpoint after a drain or a crash.
//! Every step it runs is logged (`job.step_started`, `job.step`) with the
//! process id and wall-clock times, and the result lists them, so tests can
//! check that no step ran in two processes at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lameduck_jobs::{JobContext, JobError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Limits of a sleep job's payload (the checkpoint lists every step).
pub(super) const MAX_STEPS: u32 = 1_000;
pub(super) const MAX_STEP_MS: u64 = 60_000;

#[derive(Debug, Deserialize)]
struct Spec {
    steps: u32,
    step_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    next_step: u32,
    log: Vec<Step>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Step {
    step: u32,
    pid: u32,
    start_ms: u64,
    end_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) async fn run(ctx: JobContext) -> Result<Value, JobError> {
    let spec: Spec = serde_json::from_value(ctx.payload().clone())
        .map_err(|e| JobError::failed(format!("bad sleep payload: {e}")))?;
    let mut progress: Progress = match ctx.last_checkpoint() {
        Some(c) => serde_json::from_value(c.clone())
            .map_err(|e| JobError::failed(format!("bad sleep checkpoint: {e}")))?,
        None => Progress::default(),
    };
    let pid = std::process::id();
    let id = ctx.id();
    while progress.next_step < spec.steps {
        let step = progress.next_step;
        let start_ms = now_ms();
        tracing::info!(job.id = %id, step, pid, start_ms, "job.step_started");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(spec.step_ms)) => {}
            () = ctx.cancelled() => {
                let end_ms = now_ms();
                tracing::info!(job.id = %id, step, pid, start_ms, end_ms, "job.step_interrupted");
                return Err(JobError::Cancelled);
            }
        }
        let end_ms = now_ms();
        tracing::info!(job.id = %id, step, pid, start_ms, end_ms, "job.step");
        progress.log.push(Step {
            step,
            pid,
            start_ms,
            end_ms,
        });
        progress.next_step += 1;
        let checkpoint = serde_json::to_value(&progress).map_err(JobError::failed)?;
        ctx.checkpoint(&checkpoint).await?;
    }
    Ok(json!({ "steps": spec.steps, "log": progress.log }))
}
