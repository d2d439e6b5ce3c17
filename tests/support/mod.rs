//! Shared by the `operator_*` integration tests: the operator and the mesh
//! twin as real processes against the sandbox (real API server, real
//! Prometheus), MtlsMigrations written through the API, and waiting on what
//! the user would see (status, PeerAuthentication, events, twin ground truth).
//!
//! Each test gets its own namespace prefix and its own operator, which only
//! watches that test's namespace, so tests run in parallel against the one
//! shared sandbox. Processes are stopped and namespaces removed on drop.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod cli;
pub mod processes;
pub mod prometheus;

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use mtls_migrator::api::conditions::Condition;
use mtls_migrator::api::istio::PeerAuthentication;
use mtls_migrator::api::migration::{MtlsMigration, Phase};
use serde_json::{Value, json};

pub use processes::{Operator, Twin};

/// Field manager of everything the tests write.
pub const TEST_MANAGER: &str = "operator-e2e";

/// How often tests look at the cluster while waiting.
pub const POLL: Duration = Duration::from_millis(200);

/// `<tag>-<6 hex>-`: a namespace prefix no other test (or run) uses.
pub fn unique_prefix(tag: &str) -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{tag}-{:06x}-", h.finish() as u32 & 0xff_ffff)
}

/// Scratch folder for logs, scenario files and Prometheus data.
pub fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("operator-e2e");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A shipped scenario file (`e2e/scenarios/<name>`).
pub fn shipped_scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("e2e/scenarios")
        .join(name)
}

/// A shipped scenario changed by `edit` (on its JSON form), written to the
/// scratch folder as `<prefix><name>` (JSON is YAML to the twin).
pub fn edited_scenario(name: &str, prefix: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let text = std::fs::read_to_string(shipped_scenario(name)).expect("read shipped scenario");
    let mut value: Value = serde_saphyr::from_str(&text).expect("scenario YAML");
    edit(&mut value);
    let path = scratch_dir().join(format!("{prefix}{name}"));
    std::fs::write(&path, value.to_string()).expect("write scenario");
    path
}

/// Namespaces a scenario file creates (before the prefix).
pub fn scenario_namespaces(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).expect("read scenario");
    let value: Value = serde_saphyr::from_str(&text).expect("scenario YAML");
    let names = |list: &str, key: &str| -> Vec<String> {
        value[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v[key].as_str().map(String::from))
            .collect()
    };
    names("namespaces", "name")
        .into_iter()
        .chain(names("workloads", "namespace"))
        .collect()
}

/// Analysis settings short enough for tests: 1 s scrapes, so a 5 s window
/// holds 4-5 samples.
pub fn fast_analysis(interval: &str, hold: &str) -> Value {
    json!({"interval": interval, "window": "5s", "hold": hold, "minRequestRate": 0.5})
}

pub fn migrations(client: &Client, ns: &str) -> Api<MtlsMigration> {
    Api::namespaced(client.clone(), ns)
}

/// Creates or updates an MtlsMigration by server-side apply.
pub async fn apply_migration(client: &Client, ns: &str, name: &str, spec: Value) {
    let body = json!({
        "apiVersion": "mtls.migrator.dev/v1alpha1",
        "kind": "MtlsMigration",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    });
    migrations(client, ns)
        .patch(
            name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap_or_else(|e| panic!("apply MtlsMigration {ns}/{name}: {e}"));
}

pub fn condition<'a>(m: &'a MtlsMigration, type_: &str) -> Option<&'a Condition> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// `(status, reason)` of a condition, as strings, for assertions.
pub fn cond(m: &MtlsMigration, type_: &str) -> Option<(String, String)> {
    condition(m, type_).map(|c| (c.status.as_str().to_string(), c.reason.clone()))
}

pub fn has_cond(m: &MtlsMigration, type_: &str, status: &str, reason: &str) -> bool {
    cond(m, type_) == Some((status.to_string(), reason.to_string()))
}

pub fn phase(m: &MtlsMigration) -> Option<Phase> {
    m.status.as_ref()?.phase
}

pub fn enforced(m: &MtlsMigration) -> bool {
    phase(m) == Some(Phase::Enforced)
        && has_cond(m, "Ready", "True", "Enforced")
        && has_cond(m, "StrictEnforced", "True", "Enforced")
}

pub fn last_measurement_time(m: &MtlsMigration) -> Option<Timestamp> {
    Some(m.status.as_ref()?.last_measurement.as_ref()?.time)
}

pub fn hold_started_at(m: &MtlsMigration) -> Option<Timestamp> {
    m.status.as_ref()?.hold_started_at
}

/// The status as YAML-ish JSON, for failure messages.
pub fn status_text(m: Option<&MtlsMigration>) -> String {
    match m {
        Some(m) => serde_json::to_string_pretty(&m.status).unwrap_or_default(),
        None => "(no MtlsMigration)".into(),
    }
}

/// Polls the migration until `pred` holds; panics after `timeout` with
/// `what` and the last status seen.
pub async fn wait_migration(
    api: &Api<MtlsMigration>,
    name: &str,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&MtlsMigration) -> bool,
) -> MtlsMigration {
    let mut last: Option<MtlsMigration> = None;
    let got = testkit::poll_until(timeout, POLL, async || {
        let m = api.get_opt(name).await.ok().flatten()?;
        let ok = pred(&m);
        last = Some(m.clone());
        ok.then_some(m)
    })
    .await;
    match got {
        Ok(m) => m,
        Err(e) => panic!(
            "waiting for {what} on MtlsMigration {name}: {e}\nlast status:\n{}",
            status_text(last.as_ref())
        ),
    }
}

/// Waits until the operator has taken `count` more measurements (status
/// `lastMeasurement.time` moved `count` times), calling `check` on every
/// status seen on the way: it asserts what must hold throughout. Returns the
/// last status. Waiting by measurements, not by the clock, keeps this
/// honest on a slow machine.
pub async fn watch_measurements(
    api: &Api<MtlsMigration>,
    name: &str,
    count: usize,
    timeout: Duration,
    mut check: impl AsyncFnMut(&MtlsMigration),
) -> MtlsMigration {
    let mut seen: Option<Timestamp> = None;
    let mut moves = 0;
    let mut last: Option<MtlsMigration> = None;
    let got = testkit::poll_until(timeout, POLL, async || {
        let m = api.get_opt(name).await.ok().flatten()?;
        check(&m).await;
        let t = last_measurement_time(&m);
        if t.is_some() && t != seen {
            if seen.is_some() {
                moves += 1;
            }
            seen = t;
        }
        last = Some(m.clone());
        (moves >= count).then_some(m)
    })
    .await;
    match got {
        Ok(m) => m,
        Err(e) => panic!(
            "waiting for {count} measurements on MtlsMigration {name}: {e} (saw {moves})\nlast status:\n{}",
            status_text(last.as_ref())
        ),
    }
}

pub fn pa_resource() -> ApiResource {
    ApiResource::erase::<PeerAuthentication>(&())
}

pub fn peer_authentications(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &pa_resource())
}

/// `spec.mtls.mode` of a PeerAuthentication; `None` when it does not exist.
pub async fn pa_mode(client: &Client, ns: &str, name: &str) -> Option<String> {
    let pa = peer_authentications(client, ns)
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get PeerAuthentication {ns}/{name}: {e}"))?;
    Some(
        pa.data["spec"]["mtls"]["mode"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

/// Events about the migration `name` with `reason`, and how often each
/// happened (an aggregated event counts its series).
pub async fn event_count(client: &Client, ns: &str, name: &str, reason: &str) -> usize {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("MtlsMigration")
        })
        .map(|e| {
            e.series
                .as_ref()
                .map(|s| s.count.max(1) as usize)
                .unwrap_or(1)
        })
        .sum()
}

/// Like [`event_count`], but first waits (up to 10 s) until at least
/// `at_least` are recorded: the operator publishes events just after the
/// status write a test usually waits for, so an immediate count can be early.
pub async fn wait_event_count(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
    at_least: usize,
) -> usize {
    let reached = testkit::poll_until(Duration::from_secs(10), POLL, async || {
        let n = event_count(client, ns, name, reason).await;
        (n >= at_least).then_some(n)
    })
    .await;
    match reached {
        Ok(n) => n,
        Err(_) => event_count(client, ns, name, reason).await,
    }
}

/// Runs `$KUBECTL` with `args` (stdin `input` if given); returns
/// (success, stdout, stderr).
pub async fn kubectl(
    sb: &testkit::Sandbox,
    args: &[&str],
    input: Option<&str>,
) -> (bool, String, String) {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::from(sb.kubectl());
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kubectl");
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("kubectl stdin");
        stdin
            .write_all(text.as_bytes())
            .await
            .expect("write kubectl stdin");
    }
    let out = child.wait_with_output().await.expect("kubectl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One test's world: the twin running a scenario under a unique prefix and
/// an operator watching the scenario's main namespace. Dropped in field
/// order: operator, twin, then the namespaces.
pub struct Setup {
    pub sb: &'static testkit::Sandbox,
    pub client: Client,
    pub operator: Operator,
    pub twin: Twin,
    /// The namespace the migration lives in (`<prefix><main namespace>`).
    pub ns: String,
}

impl Setup {
    /// Starts the twin on `scenario` (registered with the sandbox Prometheus)
    /// and an operator watching `<prefix><main_ns>`.
    pub async fn start(tag: &str, scenario: &Path, main_ns: &str) -> Setup {
        Self::start_with(tag, scenario, main_ns, true).await
    }

    /// Like [`start`](Self::start); `register: false` keeps the twin out of
    /// the sandbox Prometheus (the test scrapes it with its own).
    pub async fn start_with(tag: &str, scenario: &Path, main_ns: &str, register: bool) -> Setup {
        let sb = testkit::sandbox().await;
        let client = sb.client().await;
        let prefix = unique_prefix(tag);
        let twin = Twin::start(sb, scenario, &prefix, register).await;
        let ns = twin.ns(main_ns);
        let operator = Operator::start(sb, &ns, &prefix).await;
        Setup {
            sb,
            client,
            operator,
            twin,
            ns,
        }
    }

    pub fn migrations(&self) -> Api<MtlsMigration> {
        migrations(&self.client, &self.ns)
    }

    pub async fn apply_migration(&self, name: &str, spec: Value) {
        apply_migration(&self.client, &self.ns, name, spec).await
    }

    pub async fn pa_mode(&self, name: &str) -> Option<String> {
        pa_mode(&self.client, &self.ns, name).await
    }

    /// Asserts the twin counted no broken request on any edge since it started.
    pub async fn assert_nothing_broken(&self) {
        let truth = self.twin.truth().await;
        let broken: Vec<String> = truth["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["broken"].as_u64().unwrap_or(0) > 0)
            .map(|e| {
                format!(
                    "{} broken={} outcome={}",
                    e["id"], e["broken"], e["outcome"]
                )
            })
            .collect();
        assert!(broken.is_empty(), "broken requests: {broken:?}");
        let attempted: u64 = truth["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["attempted"].as_u64().unwrap_or(0))
            .sum();
        assert!(attempted > 0, "the twin ran no traffic: {truth}");
    }

    /// Pods of a twin workload in `ns`.
    pub async fn pod_names(&self, ns: &str, workload: &str) -> Vec<String> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), ns);
        pods.list(&ListParams::default().labels(&format!("app={workload}")))
            .await
            .expect("list pods")
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect()
    }
}
