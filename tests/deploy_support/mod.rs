//! Shared by the `deploy_*` tests: the manifests in `config/`, the operator
//! binary run as a child process (with a ServiceAccount token of its own),
//! the mesh twin, and small waits on the API.
//!
//! Every operator a test starts watches only its test namespace
//! (`--watch-namespace`), so tests running side by side never reconcile each
//! other's migrations.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use mtls_migrator::api::migration::MtlsMigration;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const OPERATOR_NAMESPACE: &str = "mtls-migrator-system";
pub const SERVICE_ACCOUNT: &str = "mtls-migrator";
pub const DEFAULT_LEASE: &str = "mtls-migrator-leader";
/// `reportingController` of the operator's events (its field manager too).
pub const REPORTER: &str = "mtls-migrator";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A unique suffix for names in the shared sandbox.
pub fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{prefix}{:06x}", h.finish() as u32 & 0xff_ffff)
}

/// Where the tests leave operator and twin logs for post-mortems.
pub fn log_dir() -> PathBuf {
    let dir = repo().join("target/deploy-tests");
    std::fs::create_dir_all(&dir).expect("create target/deploy-tests");
    dir
}

// ----- manifests ---------------------------------------------------------

/// All documents of a YAML file, as JSON values.
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

pub fn yaml_document(path: &Path) -> Value {
    let mut docs = yaml_documents(path);
    assert_eq!(docs.len(), 1, "{} should hold one document", path.display());
    docs.remove(0)
}

/// The operator's ClusterRole rules, as `config/rbac/role.yaml` has them.
pub fn cluster_rules() -> Vec<PolicyRule> {
    let role: ClusterRole =
        serde_json::from_value(yaml_document(&repo().join("config/rbac/role.yaml")))
            .expect("config/rbac/role.yaml is a ClusterRole");
    role.rules.unwrap_or_default()
}

/// The leader-election Role rules of `config/rbac/leader_election_role.yaml`.
pub fn lease_rules() -> Vec<PolicyRule> {
    let role: Role = serde_json::from_value(yaml_document(
        &repo().join("config/rbac/leader_election_role.yaml"),
    ))
    .expect("config/rbac/leader_election_role.yaml is a Role");
    role.rules.unwrap_or_default()
}

/// `kubectl apply -k config/default` (idempotent), panicking with kubectl's
/// output when it fails.
pub async fn apply_default_config(sb: &testkit::Sandbox) -> String {
    let out = sb
        .kubectl()
        .args(["apply", "-k"])
        .arg(repo().join("config/default"))
        .output()
        .expect("run kubectl apply -k");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kubectl apply -k config/default failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = sb.client().await;
    let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}");
    let (cluster, lease) = (cluster_rules(), lease_rules());
    let firsts: Vec<&PolicyRule> = cluster.first().into_iter().chain(lease.first()).collect();
    wait_for_rbac(&client, &user, OPERATOR_NAMESPACE, &firsts).await;
    stdout
}

/// Waits until the API server's authorizer grants `user` the first verb of
/// each of `rules` (in `ns` for namespaced ones): bindings reach the RBAC
/// authorizer through its informers, so a process started right after they
/// were created could otherwise see a spurious "forbidden".
pub async fn wait_for_rbac(client: &Client, user: &str, ns: &str, rules: &[&PolicyRule]) {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    for rule in rules {
        let resource = rule
            .resources
            .as_ref()
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or_default();
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (resource, None),
        };
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "resourceAttributes": {
                    "namespace": ns,
                    "verb": rule.verbs.first(),
                    "group": rule.api_groups.as_ref().and_then(|g| g.first()),
                    "resource": resource,
                    "subresource": subresource,
                    "name": rule.resource_names.as_ref().and_then(|n| n.first()),
                },
            },
        }))
        .expect("SubjectAccessReview JSON");
        let allowed = testkit::poll_until(
            Duration::from_secs(15),
            Duration::from_millis(100),
            async || {
                let r = reviews.create(&PostParams::default(), &review).await.ok()?;
                r.status.filter(|s| s.allowed).map(|_| ())
            },
        )
        .await;
        assert!(allowed.is_ok(), "{user} never got {rule:?} in {ns}");
    }
}

/// A bearer token for `sa` in `ns` from the TokenRequest API, via kubectl.
pub fn create_token(sb: &testkit::Sandbox, ns: &str, sa: &str) -> String {
    let out = sb
        .kubectl()
        .args(["create", "token", sa, "-n", ns, "--duration", "1h"])
        .output()
        .expect("run kubectl create token");
    assert!(
        out.status.success(),
        "kubectl create token {sa} -n {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("token is UTF-8")
        .trim()
        .to_string()
}

/// A kubeconfig file that authenticates with `token` against the sandbox
/// (its CA and server, taken from the admin kubeconfig).
pub fn token_kubeconfig(sb: &testkit::Sandbox, token: &str, name: &str) -> PathBuf {
    let admin =
        kube::config::Kubeconfig::read_from(sb.kubeconfig_path()).expect("admin kubeconfig");
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("sandbox kubeconfig has a cluster");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": cluster.certificate_authority_data,
        }}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "sandbox", "user": name}}],
        "current-context": name,
    });
    let path = log_dir().join(format!("{name}.kubeconfig"));
    // JSON is YAML.
    std::fs::write(&path, config.to_string()).expect("write token kubeconfig");
    path
}

// ----- an operator identity of its own -------------------------------------

/// A ServiceAccount in a test namespace bound to a ClusterRole with `cluster`
/// rules and a Role (in the same namespace, where its Lease lives) with
/// `lease` rules. The cluster-scoped objects are deleted on drop; the
/// namespaced ones go with the namespace.
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    pub kubeconfig: PathBuf,
    cluster_name: String,
}

impl Identity {
    pub async fn provision(
        sb: &testkit::Sandbox,
        client: &Client,
        namespace: &str,
        cluster: Vec<PolicyRule>,
        lease: Vec<PolicyRule>,
    ) -> Identity {
        let sa_name = SERVICE_ACCOUNT.to_string();
        let cluster_name = format!("mtls-migrator-test-{namespace}");
        let labels = json!({testkit::namespace::TEST_LABEL: "true"});
        let pp = PostParams::default();
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": sa_name}})).unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .create(&pp, &sa)
            .await
            .expect("create ServiceAccount");
        let subject = json!([{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}]);
        let cr: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": cluster_name, "labels": labels},
            "rules": &cluster,
        }))
        .unwrap();
        Api::<ClusterRole>::all(client.clone())
            .create(&pp, &cr)
            .await
            .expect("create ClusterRole");
        let crb: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": cluster_name, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
            "subjects": subject,
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&pp, &crb)
            .await
            .expect("create ClusterRoleBinding");
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "mtls-migrator-leader-election"},
            "rules": &lease,
        }))
        .unwrap();
        Api::<Role>::namespaced(client.clone(), namespace)
            .create(&pp, &role)
            .await
            .expect("create Role");
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "mtls-migrator-leader-election"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mtls-migrator-leader-election"},
            "subjects": subject,
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), namespace)
            .create(&pp, &rb)
            .await
            .expect("create RoleBinding");
        let user = format!("system:serviceaccount:{namespace}:{sa_name}");
        let firsts: Vec<&PolicyRule> = cluster.first().into_iter().chain(lease.first()).collect();
        wait_for_rbac(client, &user, namespace, &firsts).await;
        let token = create_token(sb, namespace, &sa_name);
        let kubeconfig = token_kubeconfig(sb, &token, namespace);
        Identity {
            namespace: namespace.to_string(),
            service_account: sa_name,
            kubeconfig,
            cluster_name,
        }
    }

    /// Removes the ClusterRole and its binding now.
    pub async fn cleanup(self, client: &Client) {
        let dp = DeleteParams::default();
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(&self.cluster_name, &dp)
            .await;
        let _ = Api::<ClusterRole>::all(client.clone())
            .delete(&self.cluster_name, &dp)
            .await;
        let _ = std::fs::remove_file(&self.kubeconfig);
        std::mem::forget(self);
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        // Best effort from a panicking test: kubectl needs no runtime.
        let Ok(env) = std::fs::read_to_string(repo().join("target/sandbox/env")) else {
            return;
        };
        let get = |k: &str| {
            env.lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.trim_matches('\'').to_string())
        };
        if let (Some(kubectl), Some(kubeconfig)) = (get("KUBECTL"), get("KUBECONFIG")) {
            let _ = std::process::Command::new(kubectl)
                .env("KUBECONFIG", kubeconfig)
                .args([
                    "delete",
                    "--ignore-not-found",
                    "clusterrolebinding,clusterrole",
                ])
                .arg(&self.cluster_name)
                .output();
        }
    }
}

// ----- the operator process ------------------------------------------------

/// The operator binary as a child process, logging JSON to a shared buffer
/// (and to `target/deploy-tests/<name>.log`).
pub struct Operator {
    pub name: String,
    child: Child,
    pub addr: String,
    lines: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

pub struct OperatorOptions<'a> {
    pub name: &'a str,
    pub kubeconfig: &'a Path,
    pub watch_namespace: &'a str,
    /// `Some((namespace, lease name))` turns on `--leader-elect`.
    pub lease: Option<(&'a str, &'a str)>,
    pub prometheus_url: Option<&'a str>,
    /// Runs `prefix... <binary> args` (e.g. `chroot <root>`) instead.
    pub prefix: Vec<std::ffi::OsString>,
    /// The operator binary (default: this package's build).
    pub binary: Option<&'a Path>,
}

impl<'a> OperatorOptions<'a> {
    pub fn new(name: &'a str, kubeconfig: &'a Path, watch_namespace: &'a str) -> Self {
        OperatorOptions {
            name,
            kubeconfig,
            watch_namespace,
            lease: None,
            prometheus_url: None,
            prefix: Vec::new(),
            binary: None,
        }
    }
}

/// Lease timing every test uses: short, so failover is measurable quickly.
pub const LEASE_DURATION: Duration = Duration::from_secs(6);
pub const LEASE_RENEW_BEFORE: Duration = Duration::from_secs(2);

impl Operator {
    pub async fn start(opts: OperatorOptions<'_>) -> Operator {
        let binary = opts
            .binary
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mtls-migrator")));
        let mut cmd = match opts.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.args(["--log-format", "json", "run", "--http-addr", "127.0.0.1:0"])
            .args(["--watch-namespace", opts.watch_namespace])
            .args(["--identity", opts.name])
            .env("KUBECONFIG", opts.kubeconfig)
            .env("MTLS_LOG", "info,kube_lease_manager=warn")
            // What a test sets must not come from the developer's shell.
            .env_remove("MTLS_PROMETHEUS_URL")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((ns, lease)) = opts.lease {
            cmd.args([
                "--leader-elect",
                "--lease-namespace",
                ns,
                "--lease-name",
                lease,
            ])
            .arg(format!("--lease-duration={}s", LEASE_DURATION.as_secs()))
            .arg(format!(
                "--lease-renew-before={}s",
                LEASE_RENEW_BEFORE.as_secs()
            ));
        }
        if let Some(url) = opts.prometheus_url {
            cmd.args(["--prometheus-url", url]);
        }
        let mut child = cmd.spawn().expect("start the operator");
        let stderr = child.stderr.take().expect("stderr");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let sink = lines.clone();
        let log_path = log_dir().join(format!("{}.log", opts.name));
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut file = tokio::fs::File::create(&log_path).await.ok();
            let mut reader = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(format!("{line}\n").as_bytes()).await;
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(addr) = v["addr"].as_str()
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr.to_string());
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), addr_rx)
            .await
            .unwrap_or_else(|_| panic!("operator {} did not serve HTTP within 30 s", opts.name))
            .unwrap_or_else(|_| {
                panic!(
                    "operator {} exited before serving HTTP:\n{}",
                    opts.name,
                    lines.lock().map(|l| l.join("\n")).unwrap_or_default()
                )
            });
        Operator {
            name: opts.name.to_string(),
            child,
            addr,
            lines,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("HTTP client"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("operator is running")
    }

    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().expect("log lock").clone()
    }

    /// Log lines that report a request the API server refused for lack of
    /// permission.
    pub fn forbidden_lines(&self) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            .collect()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs();
        logs[logs.len().saturating_sub(n)..].join("\n")
    }

    /// `GET /readyz`: status code and body; `None` when it does not answer.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        let resp = self
            .http
            .get(format!("http://{}/readyz", self.addr))
            .send()
            .await
            .ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.text().await.unwrap_or_default()))
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of an unlabelled sample in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
    }

    /// Waits until `/readyz` answers 200 with a body containing `role`
    /// ("leader", "standby", ...).
    pub async fn wait_ready(&self, role: &str, timeout: Duration) -> Result<(), String> {
        let mut last = None;
        let got = testkit::poll_until(timeout, Duration::from_millis(100), async || {
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

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit and returns its exit code (`None`: killed by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {timeout:?}", self.name))
            .expect("wait for the operator");
        status.code()
    }
}

// ----- the mesh twin -------------------------------------------------------

/// The mesh twin (`e2e/twin`) as a child process; SIGTERM on `stop`.
pub struct Twin {
    child: Child,
    pub base: String,
}

/// The twin binary, built by `cargo test --workspace` next to this test's
/// own binary (`MESH_TWIN_BIN` overrides).
pub fn twin_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MESH_TWIN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    let bin = dir.join("mesh-twin");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p mesh-twin` (`cargo test --workspace` does)",
        bin.display()
    );
    bin
}

impl Twin {
    pub async fn start(sb: &testkit::Sandbox, scenario: &str, prefix: &str) -> Twin {
        let scenario = repo().join("e2e/scenarios").join(scenario);
        let log =
            std::fs::File::create(log_dir().join(format!("twin-{prefix}log"))).expect("twin log");
        let mut child = Command::new(twin_binary())
            .arg("--scenario")
            .arg(&scenario)
            .args([
                "--namespace-prefix",
                prefix,
                "--propagation-delay",
                "0",
                "--port",
                "0",
            ])
            .env("KUBECONFIG", sb.kubeconfig_path())
            .env("RUST_LOG", "warn")
            .env("PROMETHEUS_TARGETS_DIR", sb.prometheus_targets_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start mesh-twin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = tokio::time::timeout(Duration::from_secs(90), async {
            while let Some(line) = lines.next_line().await.expect("read twin stdout") {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return addr.to_string();
                }
            }
            panic!("mesh-twin exited before listening");
        })
        .await
        .expect("mesh-twin did not start within 90 s");
        Twin {
            child,
            base: format!("http://{addr}"),
        }
    }

    pub async fn truth(&self) -> Value {
        reqwest::get(format!("{}/truth", self.base))
            .await
            .expect("GET /truth")
            .json()
            .await
            .expect("truth JSON")
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Removes a namespace the twin created when the test ends, also when it
/// panics (the twin's namespaces are not `TestNamespace`s).
pub struct NamespaceGuard(pub String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        // A kube::Client belongs to the runtime that built it: use a fresh one.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                let client = testkit::sandbox().await.client().await;
                if let Err(e) = testkit::namespace::remove_namespace(&client, &name).await {
                    eprintln!("leaving namespace {name}: {e}");
                }
            })
        })
        .join();
    }
}

// ----- migrations, policies, events ----------------------------------------

pub async fn create_migration(client: &Client, ns: &str, body: Value) -> MtlsMigration {
    let mut body = body;
    body["apiVersion"] = json!("mtls.migrator.dev/v1alpha1");
    body["kind"] = json!("MtlsMigration");
    let m: MtlsMigration = serde_json::from_value(body).expect("MtlsMigration JSON");
    Api::<MtlsMigration>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &m)
        .await
        .unwrap_or_else(|e| panic!("create MtlsMigration in {ns}: {e}"))
}

pub fn phase(m: &MtlsMigration) -> Option<String> {
    let v = serde_json::to_value(m.status.as_ref()?).ok()?;
    v["phase"].as_str().map(String::from)
}

/// Waits until migration `name` is in `want` phase; panics with its status.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    want: &str,
    timeout: Duration,
) -> MtlsMigration {
    let api = Api::<MtlsMigration>::namespaced(client.clone(), ns);
    let mut last = None;
    let got = testkit::poll_until(timeout, Duration::from_millis(200), async || {
        last = api.get_opt(name).await.ok().flatten();
        last.as_ref()
            .filter(|m| phase(m).as_deref() == Some(want))
            .cloned()
    })
    .await;
    got.unwrap_or_else(|t| {
        panic!(
            "{ns}/{name} not {want} ({t}); status: {}",
            last.and_then(|m| serde_json::to_string_pretty(&m.status).ok())
                .unwrap_or_default()
        )
    })
}

/// Events the operator published about `name` in `ns`.
pub async fn operator_events(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(REPORTER))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// How many times an event with `reason` happened (series counts included).
pub fn occurrences(events: &[Event], reason: &str) -> i32 {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// `reportingInstance` values of `events`, with their counts.
pub fn instances(events: &[Event]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry(e.reporting_instance.clone().unwrap_or_default())
            .or_default() += 1;
    }
    out
}

/// The PeerAuthentication `name` in `ns` as JSON, if it exists.
pub async fn peer_authentication(client: &Client, ns: &str, name: &str) -> Option<Value> {
    let ar = kube::api::ApiResource::erase::<mtls_migrator::api::istio::PeerAuthentication>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.get_opt(name)
        .await
        .expect("get PeerAuthentication")
        .map(|o| serde_json::to_value(o).expect("PA JSON"))
}

/// Server-side applies a PeerAuthentication as a user would (`kubectl apply`).
pub async fn apply_peer_authentication(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
    manager: &str,
) {
    let ar = kube::api::ApiResource::erase::<mtls_migrator::api::istio::PeerAuthentication>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let body = json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    });
    api.patch(
        name,
        &kube::api::PatchParams::apply(manager).force(),
        &kube::api::Patch::Apply(&body),
    )
    .await
    .unwrap_or_else(|e| panic!("apply PeerAuthentication {ns}/{name}: {e}"));
}

pub fn pa_mode(pa: &Value) -> Option<&str> {
    pa["spec"]["mtls"]["mode"].as_str()
}
