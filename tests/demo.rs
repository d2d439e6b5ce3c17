//! `make demo` works: its script, run non-interactively with `DEMO_FAST=1`,
//! takes a namespace to STRICT on evidence, rolls it back by editing the
//! spec, breaks no request, and leaves nothing running or lying around.
//!
//! Uses the live sandbox when there is one (as under `make test`, which the
//! script then leaves up); otherwise the script starts its own and stops it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Generous: the script may have to build mesh-twin first.
const DEADLINE: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `pid` still runs the process the demo recorded (its command line
/// names `marker`), which rules out a reused pid.
fn still_running(pid: &str, marker: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(marker)
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Runs the demo to completion (or SIGTERMs it at the deadline, giving its
/// cleanup a minute).
fn run_demo(prefix: &str, state: &Path, log: &Path) -> ExitStatus {
    let out = File::create(log).expect("create demo log");
    let mut child = Command::new(repo().join("e2e/demo"))
        .current_dir(repo())
        .env("DEMO_FAST", "1")
        .env("DEMO_PREFIX", prefix)
        .env("DEMO_STATE_DIR", state)
        .env("DEMO_TIMEOUT", "240")
        // The operator this test binary was built with; mesh-twin is built
        // by the script as `make demo` does.
        .env("MTLS_MIGRATOR_BIN", env!("CARGO_BIN_EXE_mtls-migrator"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log handle"))
        .stderr(out)
        .spawn()
        .expect("start e2e/demo");
    let started = Instant::now();
    let mut terminated_at: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().expect("wait for e2e/demo") {
            return status;
        }
        match terminated_at {
            None if started.elapsed() > DEADLINE => {
                signal(child.id(), "-TERM");
                terminated_at = Some(Instant::now());
            }
            Some(t) if t.elapsed() > Duration::from_secs(60) => {
                signal(child.id(), "-KILL");
                return child.wait().expect("wait for e2e/demo");
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn demo_reaches_strict_rolls_back_and_cleans_up() {
    let id = std::process::id();
    let prefix = format!("demotest-{id}-");
    let state = repo().join(format!("target/demo-test-{id}"));
    fs::create_dir_all(&state).expect("create the demo state dir");
    let log = state.join("demo.log");

    let status = run_demo(&prefix, &state, &log);
    let output = fs::read_to_string(&log).unwrap_or_default();
    println!("{output}");
    let context = format!("demo log {}:\n{}", log.display(), tail(&output, 60));

    // Processes first: a failed run must still have stopped what it started.
    let pids = fs::read_to_string(state.join("pids")).expect("the demo records its pids");
    assert!(
        pids.lines().count() >= 2,
        "twin and operator pids missing:\n{pids}"
    );
    let survivors: Vec<&str> = pids
        .lines()
        .filter(|l| {
            let (pid, marker) = l.split_once(' ').unwrap_or((l, ""));
            still_running(pid, marker)
        })
        .collect();
    for line in &survivors {
        // Do not leak them into the rest of the suite.
        if let Some((pid, _)) = line.split_once(' ') {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    assert!(
        survivors.is_empty(),
        "processes the demo started still run: {survivors:?}\n{context}"
    );

    assert!(status.success(), "e2e/demo failed ({status})\n{context}");
    let summary: HashMap<String, String> = fs::read_to_string(state.join("summary"))
        .expect("the demo writes a summary")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| summary.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(get("strict_pa_mode"), "STRICT", "{context}");
    assert_eq!(get("rollback_phase"), "RolledBack", "{context}");
    assert_eq!(get("rollback_pa_mode"), "PERMISSIVE", "{context}");
    assert_eq!(get("broken"), "0", "requests broke\n{context}");
    assert_eq!(get("cleanup"), "ok", "{context}");
    assert!(
        output.contains("Enforced: PeerAuthentication") && output.contains("condition met"),
        "the live progress should show Enforced and the rollback wait\n{context}"
    );

    // Nothing left in a sandbox that stays up: no namespace, no scrape target.
    if get("sandbox_started") == "0" {
        let sandbox = std::env::var_os("SANDBOX_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/sandbox"));
        let check = Command::new("bash")
            .args([
                "-c",
                r#"source "$1/env"
                   "$KUBECTL" get namespace "$2shop" >/dev/null 2>&1 && echo "namespace $2shop left"
                   ls "$PROMETHEUS_TARGETS_DIR" | grep -F "$2twin" | sed 's/^/scrape target left: /'
                   true"#,
                "check",
            ])
            .arg(&sandbox)
            .arg(&prefix)
            .output()
            .expect("run the leftover check");
        let left = String::from_utf8_lossy(&check.stdout);
        assert!(left.trim().is_empty(), "{left}\n{context}");
    }
    let _ = fs::remove_dir_all(&state);
}
