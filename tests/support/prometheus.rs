//! A Prometheus of the test's own (Debian's `prometheus`, as the sandbox
//! uses), so a test can stop and restart it without disturbing the shared one.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

use super::scratch_dir;
use testkit::process::{ChildProcess, wait_for_http_success};

pub struct OwnPrometheus {
    proc: Option<ChildProcess>,
    port: u16,
    dir: PathBuf,
    name: String,
}

impl OwnPrometheus {
    /// Starts Prometheus on a free port, scraping `target` (`host:port`)
    /// every second, with its data in a fresh folder.
    pub async fn start(tag: &str, target: &str) -> OwnPrometheus {
        let dir = scratch_dir().join(format!("{tag}prometheus"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create prometheus dir");
        // Same 1 s cadence as the sandbox's (e2e/prometheus/prometheus.yml.tmpl).
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: mesh-twin\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus config");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port")
            .port();
        let mut p = OwnPrometheus {
            proc: None,
            port,
            dir,
            name: tag.to_string(),
        };
        p.launch().await;
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let mut cmd = Command::new("prometheus");
        cmd.arg("--config.file")
            .arg(self.dir.join("prometheus.yml"))
            .arg("--storage.tsdb.path")
            .arg(self.dir.join("data"))
            .args(["--storage.tsdb.retention.time", "1h"])
            .arg("--web.listen-address")
            .arg(format!("127.0.0.1:{}", self.port));
        let log = self.dir.join("prometheus.log");
        self.proc = Some(ChildProcess::spawn(
            &format!("{}prometheus", self.name),
            cmd,
            &log,
            false,
        ));
        let url = format!("{}/-/ready", self.url());
        if let Err(e) = wait_for_http_success(&url, Duration::from_secs(30)).await {
            let tail = self.proc.as_ref().map(|p| p.log_tail(20));
            panic!(
                "own Prometheus not ready on port {}: {e}\n{}",
                self.port,
                tail.unwrap_or_default()
            );
        }
    }

    /// Stops it (SIGTERM, a clean shutdown that keeps the data).
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(15)).await;
        }
    }

    /// Starts it again on the same port and data folder.
    pub async fn restart(&mut self) {
        assert!(self.proc.is_none(), "restart a stopped Prometheus only");
        self.launch().await;
    }
}

impl Drop for OwnPrometheus {
    fn drop(&mut self) {
        drop(self.proc.take());
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
