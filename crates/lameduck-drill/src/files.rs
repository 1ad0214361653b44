//! The drill's own open-file limit. Its clients hold one socket each, and
//! a client that cannot open one must not be counted as a refusal by the
//! service: so the limit is raised, or the drill refuses to start.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::DrillError;

/// Descriptors beyond the sockets: stdio, the runtime, the notify socket,
/// a trigger's pipes, the report files.
const MARGIN: u64 = 64;

/// Raises the soft limit to the hard one if `sockets` need it; returns the
/// soft limit as it was, for the spawned service.
pub(crate) fn raise(sockets: u64) -> Result<u64, DrillError> {
    let need = sockets + MARGIN;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        // Unknown: let the clients try.
        return Ok(u64::MAX);
    };
    if soft >= need {
        return Ok(soft);
    }
    if hard < need {
        return Err(DrillError::TooManySockets { need, limit: hard });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|_| DrillError::TooManySockets { need, limit: soft })?;
    Ok(soft)
}
