//! The operator and the mesh twin as child processes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{NamespaceGuard, scenario_namespaces, scratch_dir};

/// A child process whose output goes to a log file. Dropping it sends
/// SIGTERM (so it can clean up after itself), then SIGKILL if it lingers.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stderr (and stdout unless piped by the caller)
    /// appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, pipe_stdout: bool) -> Proc {
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
        Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            // No libc binding among the dependencies: kill(1) does it.
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }

    /// SIGTERM, then waits up to `grace` for a clean exit (SIGKILL after).
    pub async fn terminate(&mut self, grace: Duration) {
        self.signal("-TERM");
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

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
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
            self.signal("-TERM");
            for _ in 0..50 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // kill_on_drop sends SIGKILL to a process still running.
    }
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

/// The operator binary (`mtls-migrator run`) watching one namespace.
pub struct Operator {
    proc: Proc,
    args: Vec<String>,
    kubeconfig: PathBuf,
    /// `http://127.0.0.1:PORT` of /metrics, /healthz, /readyz.
    pub http: String,
}

impl Operator {
    /// Starts the operator for `namespace` with the sandbox Prometheus as
    /// default, and waits until its caches are synced (`/readyz`).
    pub async fn start(sb: &testkit::Sandbox, namespace: &str, tag: &str) -> Operator {
        let args: Vec<String> = [
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--prometheus-url",
            sb.prometheus_url(),
            "--prometheus-timeout",
            "2s",
            "--watch-namespace",
            namespace,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = scratch_dir().join(format!("{tag}operator.log"));
        let _ = std::fs::remove_file(&log);
        let kubeconfig = sb.kubeconfig_path().to_path_buf();
        let proc = Self::spawn(&args, &kubeconfig, &log);
        let mut op = Operator {
            proc,
            args,
            kubeconfig,
            http: String::new(),
        };
        op.wait_ready().await;
        op
    }

    fn spawn(args: &[String], kubeconfig: &Path, log: &Path) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mtls-migrator"));
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("NO_COLOR", "1")
            .env(
                "MTLS_LOG",
                "info,mtls_migrator=debug,kube_lease_manager=warn",
            )
            .env_remove("MTLS_PROMETHEUS_URL");
        Proc::spawn("operator", cmd, log, false)
    }

    /// Reads the HTTP address from the log, then polls `/readyz`.
    async fn wait_ready(&mut self) {
        // Only lines written by this process count (the log is appended to
        // across restarts).
        let skip = std::fs::read_to_string(self.proc.log_path())
            .unwrap_or_default()
            .lines()
            .count();
        let log = self.proc.log_path().to_path_buf();
        let addr = testkit::poll_until(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines()
                    .skip(skip)
                    .map(strip_ansi)
                    .filter(|l| l.contains("serving /metrics"))
                    .find_map(|l| {
                        l.split_whitespace()
                            .find_map(|w| w.strip_prefix("addr=").map(String::from))
                    })
            },
        )
        .await;
        let addr = match addr {
            Ok(a) => a,
            Err(e) => panic!(
                "operator did not report its HTTP address: {e}\n{}",
                self.proc.log_tail(30)
            ),
        };
        self.http = format!("http://{addr}");
        let url = format!("{}/readyz", self.http);
        let ready = testkit::poll_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            async || {
                let r = reqwest::get(&url).await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
        if let Err(e) = ready {
            panic!(
                "operator not ready (caches not synced): {e}\n{}",
                self.proc.log_tail(30)
            );
        }
    }

    /// Kills the operator with SIGKILL (no graceful shutdown).
    pub async fn kill(&mut self) {
        self.proc.kill().await;
    }

    /// Stops it with SIGTERM (graceful).
    pub async fn terminate(&mut self) {
        self.proc.terminate(Duration::from_secs(10)).await;
    }

    /// Starts a new process with the same arguments (log appended) and waits
    /// until it is ready.
    pub async fn restart(&mut self) {
        let log = self.proc.log_path().to_path_buf();
        let old = std::mem::replace(
            &mut self.proc,
            Self::spawn(&self.args, &self.kubeconfig, &log),
        );
        drop(old);
        self.wait_ready().await;
    }

    /// A counter or gauge from `/metrics` (sum over label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.http))
            .await
            .expect("GET operator /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }
}

/// Path of the `mesh-twin` binary: a binary of another workspace package is
/// not exposed as `CARGO_BIN_EXE_*`, but it is built into the same target
/// folder as ours (`cargo test --workspace`, or `cargo build -p mesh-twin`).
pub fn twin_binary() -> PathBuf {
    let ours = Path::new(env!("CARGO_BIN_EXE_mtls-migrator"));
    let twin = ours.with_file_name("mesh-twin");
    assert!(
        twin.is_file(),
        "{} is missing: build it first with `cargo build -p mesh-twin` \
         (same CARGO_TARGET_DIR; `make test` builds the whole workspace)",
        twin.display()
    );
    twin
}

/// The mesh twin running a scenario under a namespace prefix.
pub struct Twin {
    proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub addr: String,
    pub prefix: String,
    http: reqwest::Client,
    // Last: namespaces go after the twin has stopped.
    _namespaces: NamespaceGuard,
}

impl Twin {
    /// Starts the twin (propagation delay 0) and waits for `listening on`.
    /// `register`: add it to the sandbox Prometheus' scrape targets.
    pub async fn start(
        sb: &testkit::Sandbox,
        scenario: &Path,
        prefix: &str,
        register: bool,
    ) -> Twin {
        let namespaces = NamespaceGuard::new(
            scenario_namespaces(scenario)
                .into_iter()
                .map(|n| format!("{prefix}{n}")),
        );
        let mut cmd = Command::new(twin_binary());
        cmd.arg("--scenario")
            .arg(scenario)
            .args([
                "--namespace-prefix",
                prefix,
                "--propagation-delay",
                "0",
                "--port",
                "0",
            ])
            .env("KUBECONFIG", sb.kubeconfig_path())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info");
        if register {
            cmd.env("PROMETHEUS_TARGETS_DIR", sb.prometheus_targets_dir());
        } else {
            cmd.env_remove("PROMETHEUS_TARGETS_DIR");
        }
        let log = scratch_dir().join(format!("{prefix}twin.log"));
        let _ = std::fs::remove_file(&log);
        let mut proc = Proc::spawn("mesh-twin", cmd, &log, true);
        let stdout = proc.child_mut().stdout.take().expect("twin stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
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
            _ => panic!(
                "mesh-twin did not start listening within 60 s:\n{}",
                proc.log_tail(30)
            ),
        };
        // Keep draining stdout so the twin never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Twin {
            proc,
            base: format!("http://{addr}"),
            addr,
            prefix: prefix.to_string(),
            http: reqwest::Client::new(),
            _namespaces: namespaces,
        }
    }

    /// A scenario namespace as materialized.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

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

    pub async fn edge(&self, id: &str) -> Value {
        let truth = self.truth().await;
        truth["edges"]
            .as_array()
            .and_then(|edges| edges.iter().find(|e| e["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no edge {id} in {truth}"))
    }

    /// Restarts a workload's pods enrolled as `enrollment` (sidecar,
    /// native-sidecar, ambient, none): the restart after injection.
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
