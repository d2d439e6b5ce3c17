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
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use mtls_migrator::api::migration::MtlsMigration;
use serde_json::{Value, json};
use testkit::process::{OperatorConfig, OperatorProcess, TwinConfig, TwinProcess, sibling_binary};

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

/// The operator binary as a child process.
pub type Operator = OperatorProcess;

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

/// Starts the operator, logging JSON to `target/deploy-tests/<name>.log`,
/// and waits until it serves HTTP (not until it is ready).
pub async fn start_operator(opts: OperatorOptions<'_>) -> Operator {
    let mut args: Vec<String> = [
        "--log-format",
        "json",
        "run",
        "--http-addr",
        "127.0.0.1:0",
        "--watch-namespace",
        opts.watch_namespace,
        "--identity",
        opts.name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some((ns, lease)) = opts.lease {
        args.extend(
            [
                "--leader-elect",
                "--lease-namespace",
                ns,
                "--lease-name",
                lease,
            ]
            .map(String::from),
        );
        args.push(format!("--lease-duration={}s", LEASE_DURATION.as_secs()));
        args.push(format!(
            "--lease-renew-before={}s",
            LEASE_RENEW_BEFORE.as_secs()
        ));
    }
    if let Some(url) = opts.prometheus_url {
        args.extend(["--prometheus-url".to_string(), url.to_string()]);
    }
    let binary = opts
        .binary
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mtls-migrator")));
    OperatorProcess::start(OperatorConfig {
        name: opts.name.to_string(),
        binary,
        wrapper: opts.prefix,
        args: args.into_iter().map(Into::into).collect(),
        kubeconfig: opts.kubeconfig.to_path_buf(),
        env: Vec::new(),
        log: log_dir().join(format!("{}.log", opts.name)),
    })
    .await
}

// ----- the mesh twin -------------------------------------------------------

/// Starts the mesh twin on a shipped scenario (`e2e/scenarios/<scenario>`),
/// registered with the sandbox Prometheus; its log goes to
/// `target/deploy-tests/twin-<prefix>log`.
pub async fn start_twin(sb: &testkit::Sandbox, scenario: &str, prefix: &str) -> TwinProcess {
    let scenario = repo().join("e2e/scenarios").join(scenario);
    let log = log_dir().join(format!("twin-{prefix}log"));
    TwinProcess::start(TwinConfig::new(
        sibling_binary("mesh-twin"),
        sb,
        &scenario,
        prefix,
        log,
    ))
    .await
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

/// [`operator_events`] once an event with `reason` is among them (up to
/// 10 s): events are published just after the status write a test waits for.
pub async fn operator_events_after(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> Vec<Event> {
    let seen = testkit::poll_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let events = operator_events(client, ns, name).await;
            (occurrences(&events, reason) > 0).then_some(events)
        },
    )
    .await;
    match seen {
        Ok(events) => events,
        Err(_) => operator_events(client, ns, name).await,
    }
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
