//! The programs under test as child processes: the mesh twin and the
//! operator, each logging to a file, stopped with SIGTERM (then SIGKILL)
//! when dropped so they can clean up after themselves (the twin removes its
//! Prometheus scrape target, the operator releases its Lease).

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Sandbox;
use crate::poll::{PollTimeout, poll_until};

/// How long a program may take to report its address.
const TWIN_START: Duration = Duration::from_secs(90);
const OPERATOR_START: Duration = Duration::from_secs(30);
/// What a dropped process gets between SIGTERM and SIGKILL.
const DROP_GRACE: Duration = Duration::from_millis(2500);

/// A binary of another workspace package: not exposed as `CARGO_BIN_EXE_*`
/// to this test, but built into the same target folder (`cargo test
/// --workspace`, or `cargo build -p <package>`). `<NAME>_BIN` (upper case,
/// `-` as `_`, e.g. `MESH_TWIN_BIN`) overrides.
pub fn sibling_binary(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p {name}` \
         (same CARGO_TARGET_DIR; `cargo test --workspace` and `make test` build it), \
         or point {var} at it",
        bin.display()
    );
    bin
}

/// A child process whose output goes to a log file. Dropping it sends
/// SIGTERM, then SIGKILL if it lingers; a panicking test also gets the
/// log's last lines.
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildProcess {
    /// Spawns `cmd` with stderr (and stdout unless `pipe_stdout`) appended
    /// to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, pipe_stdout: bool) -> ChildProcess {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone().expect("dup log fd"))
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        ChildProcess {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id; `None` once it has been waited for.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `sig` (`TERM`, `KILL`, ...); false when it is gone or kill failed.
    pub fn signal(&self, sig: &str) -> bool {
        let Some(pid) = self.child.id() else {
            return false;
        };
        // No libc binding among the dependencies: kill(1) does it.
        std::process::Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM, then waits up to `grace` for a clean exit (SIGKILL after).
    pub async fn terminate(&mut self, grace: Duration) {
        self.signal("TERM");
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            eprintln!("{} ignored SIGTERM for {grace:?}: killing it", self.name);
            let _ = self.child.kill().await;
        }
    }

    /// SIGKILL: no chance to clean up (a crash, an OOM kill, a lost node).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit and returns its exit code (`None`:
    /// killed by a signal); panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {timeout:?}", self.name))
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name));
        status.code()
    }

    /// The log's lines.
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_lines(), n)
    }
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}), last lines:\n{}\n----",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("TERM");
            let step = Duration::from_millis(50);
            for _ in 0..(DROP_GRACE.as_millis() / step.as_millis()) {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(step);
            }
        }
        // kill_on_drop sends SIGKILL to a process still running.
    }
}

/// Polls `url` until it answers 2xx; for programs with a readiness endpoint.
pub async fn wait_for_http_success(url: &str, timeout: Duration) -> Result<(), PollTimeout> {
    poll_until(timeout, Duration::from_millis(100), async || {
        let r = reqwest::get(url).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await
}

/// The sum of the samples named `name` (any labels) in a Prometheus text
/// exposition; `None` when there is none.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Strips ANSI colour sequences (logs are plain when NO_COLOR is honoured;
/// this keeps parsing working when it is not).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ----- the mesh twin -------------------------------------------------------

/// How to run the mesh twin. [`TwinConfig::new`] fills in what every test
/// uses: propagation delay 0, any free port, registered with the sandbox
/// Prometheus, `RUST_LOG=warn`.
pub struct TwinConfig {
    /// `CARGO_BIN_EXE_mesh-twin` in its own tests, else
    /// [`sibling_binary`]`("mesh-twin")`.
    pub binary: PathBuf,
    pub scenario: PathBuf,
    pub namespace_prefix: String,
    pub propagation_delay: String,
    pub kubeconfig: PathBuf,
    /// `Some`: the twin adds itself to Prometheus' scrape targets there.
    pub prometheus_targets_dir: Option<PathBuf>,
    /// Its stderr; replaced at start.
    pub log: PathBuf,
    pub args: Vec<OsString>,
    /// Set after the defaults (so `RUST_LOG` here wins).
    pub env: Vec<(OsString, OsString)>,
}

impl TwinConfig {
    pub fn new(
        binary: PathBuf,
        sb: &Sandbox,
        scenario: &Path,
        namespace_prefix: &str,
        log: PathBuf,
    ) -> TwinConfig {
        TwinConfig {
            binary,
            scenario: scenario.to_path_buf(),
            namespace_prefix: namespace_prefix.to_string(),
            propagation_delay: "0".into(),
            kubeconfig: sb.kubeconfig_path().to_path_buf(),
            prometheus_targets_dir: Some(sb.prometheus_targets_dir().to_path_buf()),
            log,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// The mesh twin running a scenario, with its HTTP API (ground truth,
/// enrollment, edges).
pub struct TwinProcess {
    proc: ChildProcess,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    http: reqwest::Client,
}

impl TwinProcess {
    /// Starts the twin and waits (90 s) for its `listening on ADDR` line.
    pub async fn start(config: TwinConfig) -> TwinProcess {
        let mut cmd = Command::new(&config.binary);
        cmd.arg("--scenario")
            .arg(&config.scenario)
            .arg("--namespace-prefix")
            .arg(&config.namespace_prefix)
            .arg("--propagation-delay")
            .arg(&config.propagation_delay)
            .args(["--port", "0"])
            .args(&config.args)
            .env("KUBECONFIG", &config.kubeconfig)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn");
        match &config.prometheus_targets_dir {
            Some(dir) => cmd.env("PROMETHEUS_TARGETS_DIR", dir),
            None => cmd.env_remove("PROMETHEUS_TARGETS_DIR"),
        };
        cmd.envs(config.env.iter().map(|(k, v)| (k, v)));
        let _ = std::fs::remove_file(&config.log);
        let mut proc = ChildProcess::spawn("mesh-twin", cmd, &config.log, true);
        let stdout = proc.child_mut().stdout.take().expect("twin stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(TWIN_START, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return Some(addr.trim().to_string());
                }
            }
            None
        })
        .await;
        let addr = match addr {
            Ok(Some(a)) => a,
            Ok(None) => panic!("mesh-twin exited before listening:\n{}", proc.log_tail(30)),
            Err(_) => panic!(
                "mesh-twin did not start listening within {TWIN_START:?}:\n{}",
                proc.log_tail(30)
            ),
        };
        // Keep draining stdout so the twin never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        TwinProcess {
            proc,
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::new(),
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }

    /// Stops it with SIGTERM (it unregisters itself) and waits up to 10 s.
    pub async fn stop(mut self) {
        self.proc.terminate(Duration::from_secs(10)).await;
    }

    /// `GET /truth`: the twin's ground truth.
    pub async fn truth(&self) -> Value {
        self.http
            .get(format!("{}/truth", self.base))
            .send()
            .await
            .expect("GET /truth")
            .json()
            .await
            .expect("truth JSON")
    }

    /// One edge of the ground truth; panics when there is no such edge.
    pub async fn edge(&self, id: &str) -> Value {
        let truth = self.truth().await;
        truth["edges"]
            .as_array()
            .and_then(|edges| edges.iter().find(|e| e["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no edge {id} in {truth}"))
    }

    /// Restarts a workload's pods enrolled as `enrollment` (sidecar,
    /// native-sidecar, ambient, none): the restart after injection. `ns` as
    /// written in the scenario.
    pub async fn enroll(&self, ns: &str, workload: &str, enrollment: &str) {
        let resp = self
            .http
            .post(format!(
                "{}/workloads/{ns}/{workload}/enrollment",
                self.base
            ))
            .json(&json!({"enrollment": enrollment}))
            .send()
            .await
            .expect("POST enrollment");
        assert!(
            resp.status().is_success(),
            "enroll {ns}/{workload}: {}",
            resp.status()
        );
    }

    /// Adds an edge (scenario syntax); returns its id.
    pub async fn add_edge(&self, edge: Value) -> String {
        let resp = self
            .http
            .post(format!("{}/edges", self.base))
            .json(&edge)
            .send()
            .await
            .expect("POST /edges");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "add edge {edge}: {status} {body}");
        body["id"].as_str().unwrap_or_default().to_string()
    }

    /// Stops an edge's traffic.
    pub async fn remove_edge(&self, id: &str) {
        let resp = self
            .http
            .delete(format!("{}/edges/{id}", self.base))
            .send()
            .await
            .expect("DELETE edge");
        assert!(
            resp.status().is_success(),
            "remove edge {id}: {}",
            resp.status()
        );
    }
}

// ----- the operator --------------------------------------------------------

/// How to run the operator binary.
pub struct OperatorConfig {
    /// Names the process in messages.
    pub name: String,
    /// `CARGO_BIN_EXE_mtls-migrator` (only the root crate's tests know it).
    pub binary: PathBuf,
    /// Runs `wrapper... <binary> args` (e.g. `chroot <root>`) when not empty.
    pub wrapper: Vec<OsString>,
    /// Must make it serve HTTP (`run --http-addr 127.0.0.1:0 ...`).
    pub args: Vec<OsString>,
    pub kubeconfig: PathBuf,
    /// Set after the defaults (`MTLS_LOG` etc.).
    pub env: Vec<(OsString, OsString)>,
    /// Its stdout and stderr; replaced at start, appended to on restart.
    pub log: PathBuf,
}

/// The operator as a child process, with its HTTP endpoints.
pub struct OperatorProcess {
    config: OperatorConfig,
    proc: ChildProcess,
    /// Log lines of earlier processes (before a restart).
    skip: usize,
    pub name: String,
    /// `127.0.0.1:PORT` of /metrics, /healthz, /readyz.
    pub addr: String,
    http: reqwest::Client,
}

impl OperatorProcess {
    /// Starts the operator and waits (30 s) until it logs its HTTP address.
    pub async fn start(config: OperatorConfig) -> OperatorProcess {
        let _ = std::fs::remove_file(&config.log);
        let proc = Self::spawn(&config);
        let mut op = OperatorProcess {
            name: config.name.clone(),
            config,
            proc,
            skip: 0,
            addr: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("HTTP client"),
        };
        op.find_addr().await;
        op
    }

    fn spawn(config: &OperatorConfig) -> ChildProcess {
        let mut cmd = match config.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&config.binary);
                c
            }
            None => Command::new(&config.binary),
        };
        cmd.args(&config.args)
            .env("KUBECONFIG", &config.kubeconfig)
            .env("NO_COLOR", "1")
            .env("MTLS_LOG", "info,kube_lease_manager=warn")
            // What a test sets must not come from the developer's shell.
            .env_remove("MTLS_PROMETHEUS_URL")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .envs(config.env.iter().map(|(k, v)| (k, v)));
        ChildProcess::spawn(&config.name, cmd, &config.log, false)
    }

    /// Reads the HTTP address from the log (text or JSON format).
    async fn find_addr(&mut self) {
        let (skip, log) = (self.skip, self.proc.log_path().to_path_buf());
        let proc = &mut self.proc;
        let found = poll_until(OPERATOR_START, Duration::from_millis(50), async || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let addr = text.lines().skip(skip).map(strip_ansi).find_map(|l| {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    return v["addr"].as_str().map(String::from);
                }
                if !l.contains("serving /metrics") {
                    return None;
                }
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr=").map(String::from))
            });
            match addr {
                Some(a) => Some(Ok(a)),
                None => match proc.child_mut().try_wait() {
                    Ok(Some(status)) => Some(Err(status)),
                    _ => None,
                },
            }
        })
        .await;
        self.addr = match found {
            Ok(Ok(a)) => a,
            Ok(Err(status)) => panic!(
                "operator {} exited ({status}) before serving HTTP:\n{}",
                self.name,
                self.log_tail(30)
            ),
            Err(e) => panic!(
                "operator {} did not report its HTTP address: {e}\n{}",
                self.name,
                self.log_tail(30)
            ),
        };
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid().expect("operator is running")
    }

    /// Log lines of this process (not of those before a restart).
    pub fn logs(&self) -> Vec<String> {
        self.proc.log_lines().into_iter().skip(self.skip).collect()
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.logs(), n)
    }

    /// Log lines that report a request the API server refused for lack of
    /// permission.
    pub fn forbidden_lines(&self) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            .collect()
    }

    /// `GET /readyz`: status code and body; `None` when it does not answer.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        let resp = self
            .http
            .get(format!("{}/readyz", self.url()))
            .send()
            .await
            .ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.text().await.unwrap_or_default()))
    }

    /// Waits until `/readyz` answers 200 with a body containing `role`
    /// ("leader", "standby", ...; "" for any).
    pub async fn wait_ready(&self, role: &str, timeout: Duration) -> Result<(), String> {
        let mut last = None;
        let got = poll_until(timeout, Duration::from_millis(100), async || {
            last = self.readyz().await;
            matches!(&last, Some((200, body)) if body.contains(role)).then_some(())
        })
        .await;
        got.map_err(|t| {
            format!(
                "{}: /readyz never said 200 {role:?} ({t}); last {last:?}; log:\n{}",
                self.name,
                self.log_tail(20)
            )
        })
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// A counter or gauge from `/metrics` (summed over label sets); panics
    /// when it has no sample.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        metric_value(&text, name).unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
    }

    /// Sends `signal` (`TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        assert!(self.proc.signal(signal), "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit and returns its exit code (`None`:
    /// killed by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.proc.wait_exit(timeout).await
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn terminate(&mut self, grace: Duration) {
        self.proc.terminate(grace).await;
    }

    /// SIGKILL (no graceful shutdown).
    pub async fn kill(&mut self) {
        self.proc.kill().await;
    }

    /// Stops this process and starts a new one with the same configuration
    /// (log appended); waits for its HTTP address.
    pub async fn restart(&mut self) {
        self.proc.terminate(DROP_GRACE).await;
        self.skip = self.proc.log_lines().len();
        self.proc = Self::spawn(&self.config);
        self.find_addr().await;
    }
}
