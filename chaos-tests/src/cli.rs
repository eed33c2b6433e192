//! The `helixflow` command line as a user types it: one-shot commands (`status`, `keys …`,
//! `models list`, `join`) with their output, and `helixflow up --nodes N`, the one-command local
//! cluster, as a process whose banner is read and which is stopped with SIGTERM.
//!
//! `up` runs in a process group of its own, so that whatever it started — its `helixflow node`
//! children — can be killed with it when a test fails midway; nothing outlives the test.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binary::helixflow_binary;
use crate::env;
use crate::ports::{Protocol, free_port};
use crate::wait::{POLL_EVERY, wait_for};

/// Environment variables the commands read besides their arguments: cleared so that the
/// caller's environment cannot change what a test runs (a test sets them where it means to).
const CLEARED_ENV: &[&str] = &[
    "HELIXFLOW_URL",
    "HELIXFLOW_API_KEY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];
/// Longest a one-shot command may take (they make one or two HTTP calls).
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// Log lines printed per node of `up` when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// What a finished command printed.
#[derive(Clone, Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Its stdout.
    ///
    /// # Panics
    /// When it did not exit 0, with everything it printed.
    pub fn success(&self) -> &str {
        assert!(self.status.success(), "{self}");
        &self.stdout
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `helixflow ARGS` with `envs` set (and nothing of [`CLEARED_ENV`] inherited) and waits
/// for it.
///
/// # Panics
/// When it cannot be started or runs past a minute (it is killed).
pub async fn helixflow<I, S>(args: I, envs: &[(&str, &str)]) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let binary = helixflow_binary();
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut command = tokio::process::Command::new(&binary);
    command
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .env("NO_COLOR", "1");
    for name in CLEARED_ENV {
        command.env_remove(name);
    }
    command.envs(envs.iter().copied());
    let output = tokio::time::timeout(COMMAND_DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("helixflow {args:?} ran past {COMMAND_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", binary.display()));
    CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `helixflow up --nodes N --data-dir D --http-addr 127.0.0.1:PORT` in a temporary directory.
///
/// Dropping it kills its whole process group (`up` and every node it started). When the test
/// is panicking it first prints what `up` printed and the tail of each node's log, and keeps
/// the directory.
pub struct UpProcess {
    test: String,
    nodes: u64,
    port: u16,
    /// `None` once kept for a post-mortem.
    dir: Option<TempDir>,
    data_dir: PathBuf,
    child: Option<Child>,
    /// Everything the current run of `up` wrote to stderr so far (read by a thread).
    stderr: Arc<Mutex<String>>,
    /// What earlier runs wrote.
    earlier_stderr: String,
    runs: u32,
}

impl UpProcess {
    /// Starts `up` with a free HTTP port (`up` serves node `i` on 127.0.0.`i` at that port).
    ///
    /// # Panics
    /// When the directory cannot be made or the binary cannot be started.
    pub fn start(test: &str, nodes: u64) -> UpProcess {
        let dir = tempfile::Builder::new()
            .prefix(&format!("helixflow-chaos-{test}-"))
            .tempdir()
            .expect("creating a temporary directory");
        let data_dir = dir.path().join("up");
        let mut up = UpProcess {
            test: test.to_owned(),
            nodes,
            port: free_port(Protocol::Tcp).port(),
            dir: Some(dir),
            data_dir,
            child: None,
            stderr: Arc::new(Mutex::new(String::new())),
            earlier_stderr: String::new(),
            runs: 0,
        };
        up.spawn();
        up
    }

    /// Runs `up` again with the same data directory and address, as a user does after
    /// stopping it (`up` then reuses the key, config, certificates and node data it wrote).
    ///
    /// # Panics
    /// When it still runs, or cannot be started.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "up still runs; terminate it first");
        let previous =
            std::mem::take(&mut *self.stderr.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = writeln!(
            self.earlier_stderr,
            "----- run #{} -----\n{previous}",
            self.runs
        );
        self.spawn();
    }

    fn spawn(&mut self) {
        let binary = helixflow_binary();
        let http_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let filter =
            std::env::var(env::NODE_LOG).unwrap_or_else(|_| env::DEFAULT_NODE_LOG.to_owned());
        let mut command = Command::new(&binary);
        command
            .arg("up")
            .arg("--nodes")
            .arg(self.nodes.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-addr")
            .arg(http_addr.to_string())
            .env(env::NODE_LOG, filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        // A group of its own, led by `up`: its children join it, and one signal reaches all.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} up: {e}", binary.display()));
        // A fresh buffer per run: a banner from an earlier run must not count.
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap_or_else(PoisonError::into_inner);
                text.push_str(&line);
                text.push('\n');
            }
        });
        self.runs += 1;
        eprintln!(
            "[chaos] {}: run #{} of helixflow up --nodes {} --data-dir {} --http-addr \
             {http_addr} (pid {})",
            self.test,
            self.runs,
            self.nodes,
            self.data_dir.display(),
            child.id()
        );
        self.stderr = stderr;
        self.child = Some(child);
    }

    /// The `--data-dir` given to `up` (the demo key, config, certificates, node logs).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The URL of node `i` (1-based): 127.0.0.`i` at the port.
    pub fn url(&self, i: u64) -> String {
        assert!(
            (1..=self.nodes).contains(&i),
            "up started nodes 1..={}, not {i}",
            self.nodes
        );
        format!("http://127.0.0.{i}:{}", self.port)
    }

    /// The port every node serves HTTP on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `up`'s process id (the leader of its process group).
    ///
    /// # Panics
    /// When it has been stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("up runs").id()
    }

    /// What the current run of `up` wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for the banner `up` prints once every node is ready, and returns the API key it
    /// names (`API key: hf-…`).
    ///
    /// # Panics
    /// When `up` exits first or `deadline` passes.
    pub async fn wait_banner(&mut self, deadline: Duration) -> String {
        let (key, took) = wait_for(deadline, "up's banner with the API key", || {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let stderr = self.stderr();
            async move {
                if let Some(status) = exited {
                    panic!("up exited with {status} before its banner:\n{stderr}");
                }
                stderr
                    .lines()
                    .find_map(|line| line.trim().strip_prefix("API key:"))
                    .map(|key| key.trim().to_owned())
                    .ok_or_else(|| "no `API key:` line yet".to_owned())
            }
        })
        .await;
        eprintln!(
            "[chaos] {}: up printed its banner after {took:?}",
            self.test
        );
        key
    }

    /// SIGTERM to `up` (only to `up`: stopping its nodes is its job), then waits up to
    /// `deadline` for it to exit.
    ///
    /// # Panics
    /// When it is not running or does not exit in time (its group is then killed).
    pub fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("up runs");
        signal(&child.id().to_string(), "TERM");
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().expect("waiting on up") {
                return status;
            }
            if Instant::now() >= end {
                self.kill_group(child.id());
                let _ = child.wait();
                panic!("up did not exit within {deadline:?} of SIGTERM");
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// The processes (other than the caller) whose command line mentions the data directory:
    /// `up` and its nodes while they run. Pid and command line.
    pub fn processes(&self) -> Vec<(u32, String)> {
        processes_mentioning(&self.data_dir.display().to_string())
    }

    /// SIGKILL to the process group led by `pid` (`up`'s): `up` and every node it started.
    fn kill_group(&self, pid: u32) {
        signal(&format!("-{pid}"), "KILL");
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if let Some(mut child) = self.child.take() {
            self.kill_group(child.id());
            let _ = child.wait();
        }
        // `up` was stopped already: a node it left behind is still in its group, whose id is
        // the one `up` had. Nothing of that group may outlive the test.
        for (pid, _) in self.processes() {
            signal(&pid.to_string(), "KILL");
        }
        if !failed && std::env::var_os(env::KEEP_DIR).is_none() {
            return;
        }
        if failed {
            let mut report = format!(
                "\n[chaos] {} failed; up's stderr:\n{}----- run #{} -----\n{}\n",
                self.test,
                self.earlier_stderr,
                self.runs,
                self.stderr()
            );
            for i in 1..=self.nodes {
                let log = self.data_dir.join(format!("node-{i}.log"));
                let text = std::fs::read(&log)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_else(|e| format!("(no log: {e})"));
                let lines: Vec<&str> = text.lines().collect();
                let _ = write!(
                    report,
                    "----- node-{i} log ({}), last {LOG_TAIL_LINES} lines -----\n{}\n",
                    log.display(),
                    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
                );
            }
            eprintln!("{report}");
        }
        if let Some(dir) = self.dir.take() {
            eprintln!("[chaos] {}: kept {}", self.test, dir.keep().display());
        }
    }
}

/// `kill -NAME TARGET` (a pid, or `-PGID` for a process group); failures (it is gone) are
/// ignored.
fn signal(target: &str, name: &str) {
    // `kill` the command: the workspace has no libc binding, and this is test code.
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg("--")
        .arg(target)
        .stderr(Stdio::null())
        .status();
}

/// Pids and command lines of the processes whose command line contains `needle`, as
/// `pgrep -f` finds them (this process left out).
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            // Gone meanwhile, or not ours to read: not a match.
            let raw = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            (pid != me && cmdline.contains(needle)).then(|| (pid, cmdline.trim().to_owned()))
        })
        .collect();
    found.sort_unstable();
    found
}
