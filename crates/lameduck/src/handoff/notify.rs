//! What this process tells systemd (`NOTIFY_SOCKET`) and, during an
//! upgrade, the process it replaces. Every message is best effort: a service
//! manager that cannot be told must not stop the service.

use std::os::unix::net::UnixDatagram;

use sd_notify::NotifyState;

use super::READY_SOCKET_ENV;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "systemd.notify_failed");
    }
}

/// Serving: `READY=1` with our pid (after an upgrade, the new main pid) to
/// systemd, and `READY=1` to the predecessor waiting on us, if any.
pub(crate) fn ready() {
    let pid = std::process::id();
    send(&[
        NotifyState::Ready,
        NotifyState::MainPid(pid),
        NotifyState::Status("serving"),
    ]);
    if let Some(path) = std::env::var_os(READY_SOCKET_ENV) {
        let sent = UnixDatagram::unbound()
            .and_then(|s| s.send_to(format!("READY=1\nMAINPID={pid}\n").as_bytes(), &path));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "upgrade.ready_report_failed");
        }
    }
}

/// An upgrade starts.
pub(crate) fn reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// An upgrade failed: still serving, as before.
pub(crate) fn still_ready() {
    send(&[
        NotifyState::Ready,
        NotifyState::Status("serving (upgrade failed)"),
    ]);
}

/// An upgrade rolled back: this process is the main one again (its
/// successor told systemd otherwise when it was ready).
pub(crate) fn main_again() {
    send(&[
        NotifyState::Ready,
        NotifyState::MainPid(std::process::id()),
        NotifyState::Status("serving (upgrade rolled back)"),
    ]);
}

/// A drain that ends the service (not a handoff).
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A one-line status (`systemctl status` shows it).
pub(crate) fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}
