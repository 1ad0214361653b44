//! The drill as the service manager: a spawned service gets a
//! `NOTIFY_SOCKET` of the drill's, as systemd gives one to a `Type=notify`
//! unit, so the drill learns when it is ready and which process is the
//! main one after an upgrade (`MAINPID=`). This is systemd's public
//! protocol, not anything of lameduck's: a service that does not speak it
//! is drilled all the same, by its process group.

use std::path::PathBuf;

use tokio::{net::UnixDatagram, sync::watch, task::JoinHandle};

/// What the service has said so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Said {
    /// `READY=1` messages received.
    pub(crate) ready: u64,
    /// `RELOADING=1` messages received.
    pub(crate) reloading: u64,
    /// The last `MAINPID=` received.
    pub(crate) main_pid: Option<u32>,
}

impl Said {
    /// Takes one datagram (`KEY=VALUE` lines).
    fn take(&mut self, msg: &str) {
        let mut ready = false;
        for line in msg.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => ready = true,
                Some(("RELOADING", "1")) => self.reloading += 1,
                Some(("MAINPID", pid)) => {
                    if let Ok(pid) = pid.trim().parse() {
                        self.main_pid = Some(pid);
                    }
                }
                _ => {}
            }
        }
        // Counted after the whole message, so that a waiter woken by the
        // count sees the pid that came with it.
        if ready {
            self.ready += 1;
        }
    }
}

/// A bound `NOTIFY_SOCKET`, read until dropped.
#[derive(Debug)]
pub(crate) struct Listener {
    // Holds the socket's directory; removed on drop.
    _dir: tempfile::TempDir,
    path: PathBuf,
    said: watch::Receiver<Said>,
    task: JoinHandle<()>,
}

impl Listener {
    pub(crate) fn bind() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lameduck-drill")
            .tempdir()?;
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path)?;
        let (tx, said) = watch::channel(Said::default());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                tx.send_modify(|s| s.take(&msg));
            }
        });
        Ok(Self {
            _dir: dir,
            path,
            said,
            task,
        })
    }

    /// The path to give as `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// A receiver woken by each message.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Said> {
        self.said.clone()
    }

    /// What was said so far.
    pub(crate) fn said(&self) -> Said {
        self.said.borrow().clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_counts_after_the_pid_of_its_message() {
        let mut s = Said::default();
        s.take("READY=1\nMAINPID=41\nSTATUS=serving\n");
        assert_eq!((s.ready, s.main_pid), (1, Some(41)));
        s.take("RELOADING=1\nMONOTONIC_USEC=5\n");
        assert_eq!((s.ready, s.main_pid, s.reloading), (1, Some(41), 1));
        s.take("MAINPID=x\nREADY=1");
        assert_eq!((s.ready, s.main_pid), (2, Some(41)));
        s.take("STATUS=a=b\nMAINPID=42\nREADY=1\n");
        assert_eq!((s.ready, s.main_pid), (3, Some(42)));
    }

    #[tokio::test]
    async fn reads_what_a_service_sends() {
        let l = Listener::bind().unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\nMAINPID=7\n", l.path()).unwrap();
        let mut said = l.said.clone();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            said.wait_for(|s| s.ready == 1),
        )
        .await
        .expect("the message arrives")
        .unwrap();
        assert_eq!(l.said().main_pid, Some(7));
    }
}
