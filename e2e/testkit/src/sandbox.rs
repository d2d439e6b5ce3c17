//! The local control plane (etcd, kube-apiserver, Prometheus) that
//! `e2e/sandbox up` starts, as test binaries see it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};

use crate::prometheus::ScrapeTarget;

/// A running sandbox, read from `target/sandbox/env`.
#[derive(Debug, Clone)]
pub struct Sandbox {
    repo_root: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
    prometheus_url: String,
    kubectl: PathBuf,
    targets_dir: PathBuf,
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Starts the sandbox (or reuses the live one `target/sandbox/env` points
/// at) once per test binary, by running `e2e/sandbox up`.
///
/// The sandbox outlives the test binary: `make test` (or `e2e/sandbox down`)
/// stops it. Panics with the script's output when it cannot start.
pub async fn sandbox() -> &'static Sandbox {
    install_crypto_provider();
    if let Some(s) = SANDBOX.get() {
        return s;
    }
    // `up` takes seconds when live and minutes on a cold machine; keep the
    // async runtime free meanwhile. Concurrent callers race benignly: `up`
    // serializes itself with a lock file and is idempotent.
    let s = tokio::task::spawn_blocking(start_or_reuse)
        .await
        .expect("sandbox start thread");
    SANDBOX.get_or_init(|| s)
}

fn start_or_reuse() -> Sandbox {
    let root = repo_root();
    let out = Command::new(root.join("e2e/sandbox"))
        .arg("up")
        .current_dir(&root)
        .output()
        .expect("run e2e/sandbox up");
    if !out.status.success() {
        panic!(
            "e2e/sandbox up failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = std::env::var_os("SANDBOX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/sandbox"));
    Sandbox::from_env_file(&root, &dir.join("env"))
}

/// Installs ring as the process-wide rustls provider unless one is set.
///
/// With both ring (kube) and aws-lc-rs (reqwest) compiled in, rustls refuses
/// to guess and kube's client panics; the sandbox helpers pick ring.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread's install is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// A client for cleanup on a fresh runtime: the sandbox's when this binary
/// started one, else whatever `KUBECONFIG` / the default config points at.
pub(crate) async fn cleanup_client() -> Option<Client> {
    match SANDBOX.get() {
        Some(s) => Some(s.client().await),
        None => {
            install_crypto_provider();
            Client::try_default().await.ok()
        }
    }
}

/// The repository root: the first ancestor of this crate that holds `e2e/sandbox`.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("e2e/sandbox").is_file())
        .unwrap_or_else(|| panic!("no e2e/sandbox above {}", here.display()))
        .to_path_buf()
}

/// Parses the `export NAME=value` lines `e2e/sandbox up` writes.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['\'', '"']).to_string()))
        .collect()
}

impl Sandbox {
    fn from_env_file(root: &Path, path: &Path) -> Sandbox {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let env = parse_env(&text);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{} lacks {k}", path.display()))
        };
        Sandbox {
            repo_root: root.to_path_buf(),
            dir: get("SANDBOX_DIR").into(),
            kubeconfig: get("KUBECONFIG").into(),
            prometheus_url: get("PROMETHEUS_URL"),
            kubectl: get("KUBECTL").into(),
            targets_dir: get("PROMETHEUS_TARGETS_DIR").into(),
        }
    }

    /// A new admin client from the sandbox kubeconfig.
    ///
    /// Built per call on purpose: a `kube::Client` is tied to the tokio
    /// runtime that created it, and every `#[tokio::test]` has its own.
    pub async fn client(&self) -> Client {
        install_crypto_provider();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.kubeconfig.display()));
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("sandbox kubeconfig is valid");
        Client::try_from(config).expect("build kube client")
    }

    /// A client that authenticates with a bearer `token` (e.g. a service
    /// account's, from `kubectl create token`) instead of the admin cert,
    /// for testing what RBAC allows.
    pub async fn client_with_token(&self, token: &str) -> Client {
        install_crypto_provider();
        let admin = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.kubeconfig.display()));
        let cluster = admin
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .expect("sandbox kubeconfig has a cluster");
        let text = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sandbox", "cluster": {
                "server": cluster.server,
                "certificate-authority-data": cluster.certificate_authority_data,
            }}],
            "users": [{"name": "token", "user": {"token": token}}],
            "contexts": [{"name": "token", "context": {"cluster": "sandbox", "user": "token"}}],
            "current-context": "token",
        })
        .to_string();
        // JSON is YAML: no need for a YAML writer.
        let kubeconfig = Kubeconfig::from_yaml(&text).expect("token kubeconfig parses");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("token kubeconfig is valid");
        Client::try_from(config).expect("build kube client")
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Base URL of the sandbox Prometheus, e.g. `http://127.0.0.1:40123`.
    pub fn prometheus_url(&self) -> &str {
        &self.prometheus_url
    }

    /// A `kubectl` (built at the API server's version) with `KUBECONFIG` set.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// The sandbox state folder (`target/sandbox`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The repository root.
    pub fn repo_root(&self) -> &Path {
        &self.repo_root
    }

    /// Folder Prometheus watches for file_sd target files.
    pub fn prometheus_targets_dir(&self) -> &Path {
        &self.targets_dir
    }

    /// Tells Prometheus to scrape `addr` as job `name` (file_sd, picked up
    /// within about a second). The target is removed when the guard drops.
    pub fn register_scrape_target(&self, name: &str, addr: SocketAddr) -> ScrapeTarget {
        ScrapeTarget::register(&self.targets_dir, name, addr, &[])
            .unwrap_or_else(|e| panic!("register scrape target {name}: {e}"))
    }

    /// Like [`register_scrape_target`](Self::register_scrape_target) with extra
    /// target labels (e.g. `namespace`, `pod`).
    pub fn register_scrape_target_with_labels(
        &self,
        name: &str,
        addr: SocketAddr,
        labels: &[(&str, &str)],
    ) -> ScrapeTarget {
        ScrapeTarget::register(&self.targets_dir, name, addr, labels)
            .unwrap_or_else(|e| panic!("register scrape target {name}: {e}"))
    }

    /// Polls the instant query `query` until `predicate` holds for its result
    /// vector, and returns that vector. Panics after `timeout` with the last
    /// result or error.
    pub async fn wait_for_prometheus(
        &self,
        query: &str,
        predicate: impl Fn(&[crate::prometheus::Sample]) -> bool,
        timeout: std::time::Duration,
    ) -> Vec<crate::prometheus::Sample> {
        crate::prometheus::wait_for(&self.prometheus_url, query, predicate, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_file() {
        let env = parse_env(
            "# sandbox\nexport KUBECONFIG='/a b/kc'\nexport PROMETHEUS_URL=http://127.0.0.1:1\n",
        );
        assert_eq!(env["KUBECONFIG"], "/a b/kc");
        assert_eq!(env["PROMETHEUS_URL"], "http://127.0.0.1:1");
    }

    #[test]
    fn finds_repo_root() {
        assert!(repo_root().join("e2e/testkit/Cargo.toml").is_file());
    }
}
