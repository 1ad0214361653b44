//! Processes of a spawned service's group, read from `/proc`: after an
//! upgrade the drill's own child is gone and its successors (reparented
//! to the drill, a child subreaper) serve on in the same group.

use std::{os::unix::process::ExitStatusExt, process::ExitStatus};

use nix::{
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::Pid,
};

/// State and process group of `pid`, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether `pid` has ended (a zombie has ended too).
pub(crate) fn ended(pid: u32) -> bool {
    stat(pid).is_none_or(|(state, _)| matches!(state, 'Z' | 'X'))
}

/// Whether any process of group `pgrp` still runs.
pub(crate) fn any_alive(pgrp: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| stat(pid).is_some_and(|(state, g)| g == pgrp && !matches!(state, 'Z' | 'X')))
}

/// What `waitpid` says of a process.
pub(crate) enum Wait {
    /// An ended child of the drill, now reaped.
    Reaped(ExitStatus),
    /// A child still running (or a zombie whose threads are still exiting).
    Running,
    /// Not a child of the drill (or already reaped).
    Foreign,
}

/// Reaps `pid` if it is an ended child of the drill (a successor adopted as
/// subreaper).
pub(crate) fn reap(pid: u32) -> Wait {
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Wait::Reaped(ExitStatus::from_raw((code & 0xff) << 8)),
        Ok(WaitStatus::Signaled(_, signal, _)) => Wait::Reaped(ExitStatus::from_raw(signal as i32)),
        Ok(_) => Wait::Running,
        Err(_) => Wait::Foreign,
    }
}
