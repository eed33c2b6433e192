//! One `helixflow node` child process: started from a cluster file with `--id`, its stdout and
//! stderr appended to a log file, and the ways a chaos test hurts it — kill -9, SIGTERM,
//! SIGSTOP/SIGCONT — plus restarting it on the same data directory.
//!
//! What the node does in the cluster is not known here; see [`crate::cluster`].

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::env;
use crate::wait::POLL_EVERY;

/// Whether the process runs; a stopped (SIGSTOP) process still exists but answers nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running,
    Paused,
    /// Killed, terminated, or never started.
    Stopped,
}

pub struct NodeProcess {
    pub id: u64,
    pub http_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    binary: PathBuf,
    /// The cluster file it starts from (a test may give it another, e.g. foreign certificates).
    config: PathBuf,
    /// Arguments after `--id` (`--data-dir`, `--certs-dir` overrides of a shipped file).
    extra_args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
    liveness: Liveness,
    starts: u32,
}

impl NodeProcess {
    pub fn new(
        id: u64,
        http_addr: SocketAddr,
        peer_addr: SocketAddr,
        binary: &Path,
        config: &Path,
        log: PathBuf,
    ) -> NodeProcess {
        NodeProcess {
            id,
            http_addr,
            peer_addr,
            binary: binary.to_owned(),
            config: config.to_owned(),
            extra_args: Vec::new(),
            log,
            child: None,
            liveness: Liveness::Stopped,
            starts: 0,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    /// Starts the node on the cluster file it was made with (or last given).
    ///
    /// # Panics
    /// When it is already running or cannot be spawned.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "node-{} is already running; kill or terminate it first",
            self.id
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        // Restarts append to the same file; the marker shows where each run begins.
        let _ = writeln!(
            log,
            "===== chaos harness: start #{} of node-{} with {} {:?} =====",
            self.starts,
            self.id,
            self.config.display(),
            self.extra_args
        );
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicating the log handle: {e}"));
        let filter =
            std::env::var(env::NODE_LOG).unwrap_or_else(|_| env::DEFAULT_NODE_LOG.to_owned());
        let child = Command::new(&self.binary)
            .arg("node")
            .arg("--config")
            .arg(&self.config)
            .arg("--id")
            .arg(self.id.to_string())
            .args(&self.extra_args)
            .env(env::NODE_LOG, filter)
            // Plain log files: no ANSI colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.liveness = Liveness::Running;
    }

    /// Passes `args` after `--id` at every start from now on (e.g. `--data-dir D`).
    pub fn set_extra_args<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra_args = args.into_iter().map(Into::into).collect();
    }

    /// Starts the node from another cluster file from now on.
    pub fn set_config(&mut self, config: &Path) {
        self.config = config.to_owned();
    }

    /// kill -9: no draining, no flushing; the data directory is as the crash left it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Failing means it already exited; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
        self.liveness = Liveness::Stopped;
    }

    /// SIGTERM, then waits up to `deadline` for the exit (the node drains first).
    ///
    /// # Panics
    /// When the node is not running or does not exit in time (it is then killed).
    pub fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("signal checked it runs");
        self.liveness = Liveness::Stopped;
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().expect("waiting on a child process") {
                return status;
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node-{} did not exit within {deadline:?} of SIGTERM",
                    self.id
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, it answers nothing.
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.liveness = Liveness::Paused;
    }

    /// SIGCONT after [`NodeProcess::pause`].
    pub fn resume(&mut self) {
        self.signal("CONT");
        self.liveness = Liveness::Running;
    }

    /// Kill -9 and start again on the same data directory and addresses.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// The exit status if the process has exited by itself (a crash, a refused start).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.liveness = Liveness::Stopped;
        Some(status)
    }

    /// The last `lines` lines of the node's log (all its runs).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("(no log at {}: {e})", self.log.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn signal(&self, name: &str) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("SIG{name} to node-{}, which is not running", self.id));
        // `kill` the command: the workspace has no libc binding, and this is test code.
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("running kill -{name}: {e}"));
        assert!(status.success(), "kill -{name} node-{} failed", self.id);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
