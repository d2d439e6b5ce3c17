//! In the sandbox: the external plaintext client of
//! `external-plaintext-client.yaml` is broken by a STRICT PeerAuthentication
//! (ground truth counts it, Prometheus stops getting `none` reports for it)
//! and heals when the policy goes back to PERMISSIVE. And the restart after
//! injection (scheduled or over HTTP) switches a client without breaking it.

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use mesh_twin::istio_config::peer_authentication_resource;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const EDGE: &str = "external-to-api";

/// The twin as a child process; SIGTERM on drop so it unregisters itself.
struct TwinProcess {
    child: Child,
    base: String,
}

impl TwinProcess {
    async fn start(sb: &testkit::Sandbox, scenario: &Path, prefix: &str) -> TwinProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-twin"))
            .arg("--scenario")
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
            .env("RUST_LOG", "warn")
            .env("PROMETHEUS_TARGETS_DIR", sb.prometheus_targets_dir())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start mesh-twin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = tokio::time::timeout(Duration::from_secs(90), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return addr.to_string();
                }
            }
            panic!("mesh-twin exited before listening");
        })
        .await
        .expect("mesh-twin did not start within 90 s");
        TwinProcess {
            child,
            base: format!("http://{addr}"),
        }
    }

    async fn edge(&self, id: &str) -> Value {
        let truth: Value = reqwest::get(format!("{}/truth", self.base))
            .await
            .expect("GET /truth")
            .json()
            .await
            .expect("truth JSON");
        truth["edges"]
            .as_array()
            .and_then(|edges| edges.iter().find(|e| e["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no edge {id} in {truth}"))
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name)
}

fn unique_prefix() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("twin-{:06x}-", h.finish() as u32 & 0xff_ffff)
}

async fn set_namespace_mode(client: &kube::Client, ns: &str, mode: &str) {
    let ar = peer_authentication_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let pa = json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {"mtls": {"mode": mode}},
    });
    api.patch(
        "default",
        &PatchParams::apply("sandbox-test").force(),
        &Patch::Apply(&pa),
    )
    .await
    .expect("apply PeerAuthentication");
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[tokio::test]
async fn strict_breaks_the_external_plaintext_client_and_permissive_heals_it() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let prefix = unique_prefix();
    let ns = format!("{prefix}shop");
    let twin = TwinProcess::start(sb, &shipped("external-plaintext-client.yaml"), &prefix).await;
    let timeout = Duration::from_secs(45);
    let every = Duration::from_millis(200);

    // The external client's plaintext reaches Prometheus as `none` at the destination.
    let none_rate = format!(
        "sum(increase(istio_requests_total{{reporter=\"destination\",connection_security_policy=\"none\",\
         source_workload=\"unknown\",destination_workload=\"api\",destination_workload_namespace=\"{ns}\"}}[5s]))"
    );
    sb.wait_for_prometheus(
        &none_rate,
        |s| s.first().is_some_and(|x| x.value > 0.0),
        timeout,
    )
    .await;

    set_namespace_mode(&client, &ns, "STRICT").await;
    let broken = testkit::poll_until(timeout, every, async || {
        let e = twin.edge(EDGE).await;
        (e["outcome"] == "rejected" && n(&e["broken"]) > 0).then(|| n(&e["broken"]))
    })
    .await
    .expect("STRICT should break the external client's requests");
    assert!(broken > 0);
    // Mesh traffic from `web` is mTLS and unaffected.
    let web = twin.edge("web-to-api").await;
    assert_eq!(web["outcome"], "mtls-accepted", "{web}");
    assert_eq!(n(&web["broken"]), 0, "{web}");
    // No destination report comes for rejected plaintext: `none` dries up.
    sb.wait_for_prometheus(&none_rate, |s| s.iter().all(|x| x.value == 0.0), timeout)
        .await;

    set_namespace_mode(&client, &ns, "PERMISSIVE").await;
    let (broken_after, served_after) = testkit::poll_until(timeout, every, async || {
        let e = twin.edge(EDGE).await;
        (e["outcome"] == "plaintext-accepted").then(|| (n(&e["broken"]), n(&e["served"])))
    })
    .await
    .expect("PERMISSIVE should accept the plaintext again");
    // Breakage has stopped: requests keep being served and none break.
    let e = testkit::poll_until(timeout, every, async || {
        let e = twin.edge(EDGE).await;
        (n(&e["served"]) >= served_after + 10).then_some(e)
    })
    .await
    .expect("the external client keeps being served");
    assert_eq!(n(&e["broken"]), broken_after, "{e}");
    sb.wait_for_prometheus(
        &none_rate,
        |s| s.first().is_some_and(|x| x.value > 0.0),
        timeout,
    )
    .await;

    // Registered with Prometheus while running, unregistered on SIGTERM.
    let port = twin.base.rsplit(':').next().unwrap_or_default().to_string();
    let target = sb
        .prometheus_targets_dir()
        .join(format!("mesh-twin-{port}.json"));
    assert!(target.exists(), "{} missing", target.display());
    twin.stop().await;
    assert!(!target.exists(), "{} left behind", target.display());
    testkit::namespace::remove_namespace(&client, &ns)
        .await
        .expect("remove test namespace");
}

#[tokio::test]
async fn enrolling_a_client_switches_it_to_mtls_without_breaking_requests() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let prefix = unique_prefix();
    let ns = format!("{prefix}shop");
    // late-sidecar.yaml with a short delay.
    let text = std::fs::read_to_string(shipped("late-sidecar.yaml"))
        .expect("read late-sidecar.yaml")
        .replace("enrollAfter: 20s", "enrollAfter: 2s");
    let path =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}late-sidecar.yaml"));
    std::fs::write(&path, text).expect("write scenario");
    let twin = TwinProcess::start(sb, &path, &prefix).await;
    let timeout = Duration::from_secs(45);
    let every = Duration::from_millis(200);
    let edge = "batch-to-api";

    let before = twin.edge(edge).await;
    assert_eq!(before["client_tls"]["by"], "no-proxy", "{before}");
    // The scheduled restart with a sidecar: auto mTLS takes over.
    let e = testkit::poll_until(timeout, every, async || {
        let e = twin.edge(edge).await;
        (e["outcome"] == "mtls-accepted").then_some(e)
    })
    .await
    .expect("batch should get its sidecar and send mTLS");
    assert_eq!(
        n(&e["broken"]),
        0,
        "the rollout must not break requests: {e}"
    );

    // Un-enroll over HTTP (namespace as written in the scenario).
    let resp = reqwest::Client::new()
        .post(format!("{}/workloads/shop/batch/enrollment", twin.base))
        .json(&json!({"enrollment": "none"}))
        .send()
        .await
        .expect("POST enrollment");
    assert!(resp.status().is_success(), "{}", resp.status());
    let e = testkit::poll_until(timeout, every, async || {
        let e = twin.edge(edge).await;
        (e["outcome"] == "plaintext-accepted").then_some(e)
    })
    .await
    .expect("batch should be back to plaintext");
    assert_eq!(n(&e["broken"]), 0, "{e}");

    twin.stop().await;
    let _ = std::fs::remove_file(&path);
    testkit::namespace::remove_namespace(&client, &ns)
        .await
        .expect("remove test namespace");
}
