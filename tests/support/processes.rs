//! The operator and the mesh twin as child processes (testkit's), set up
//! the way the `operator_*` tests run them.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use testkit::NamespaceGuard;
use testkit::process::{OperatorConfig, OperatorProcess, TwinConfig, TwinProcess, sibling_binary};

use super::{scenario_namespaces, scratch_dir};

/// The operator binary (`mtls-migrator run`) watching one namespace.
pub struct Operator(OperatorProcess);

impl Deref for Operator {
    type Target = OperatorProcess;
    fn deref(&self) -> &OperatorProcess {
        &self.0
    }
}

impl DerefMut for Operator {
    fn deref_mut(&mut self) -> &mut OperatorProcess {
        &mut self.0
    }
}

impl Operator {
    /// Starts the operator for `namespace` with the sandbox Prometheus as
    /// default, and waits until its caches are synced (`/readyz`).
    pub async fn start(sb: &testkit::Sandbox, namespace: &str, tag: &str) -> Operator {
        let args = [
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--prometheus-url",
            sb.prometheus_url(),
            "--prometheus-timeout",
            "2s",
            "--watch-namespace",
            namespace,
        ];
        let op = OperatorProcess::start(OperatorConfig {
            name: "operator".into(),
            binary: env!("CARGO_BIN_EXE_mtls-migrator").into(),
            wrapper: Vec::new(),
            args: args.iter().map(Into::into).collect(),
            kubeconfig: sb.kubeconfig_path().to_path_buf(),
            env: vec![(
                "MTLS_LOG".into(),
                "info,mtls_migrator=debug,kube_lease_manager=warn".into(),
            )],
            log: scratch_dir().join(format!("{tag}operator.log")),
        })
        .await;
        let op = Operator(op);
        op.wait_synced().await;
        op
    }

    async fn wait_synced(&self) {
        if let Err(e) = self.0.wait_ready("", Duration::from_secs(30)).await {
            panic!("operator not ready (caches not synced): {e}");
        }
    }

    /// Stops it with SIGTERM (graceful).
    pub async fn terminate(&mut self) {
        self.0.terminate(Duration::from_secs(10)).await;
    }

    /// Starts a new process with the same arguments (log appended) and waits
    /// until it is ready.
    pub async fn restart(&mut self) {
        self.0.restart().await;
        self.wait_synced().await;
    }
}

/// The mesh twin running a scenario under a namespace prefix; the
/// scenario's namespaces are removed after it stops.
pub struct Twin {
    process: TwinProcess,
    pub prefix: String,
    // Last: namespaces go after the twin has stopped.
    _namespaces: NamespaceGuard,
}

impl Deref for Twin {
    type Target = TwinProcess;
    fn deref(&self) -> &TwinProcess {
        &self.process
    }
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
        let log = scratch_dir().join(format!("{prefix}twin.log"));
        let mut config = TwinConfig::new(sibling_binary("mesh-twin"), sb, scenario, prefix, log);
        config.env.push(("RUST_LOG".into(), "info".into()));
        if !register {
            config.prometheus_targets_dir = None;
        }
        Twin {
            process: TwinProcess::start(config).await,
            prefix: prefix.to_string(),
            _namespaces: namespaces,
        }
    }

    /// A scenario namespace as materialized.
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}
