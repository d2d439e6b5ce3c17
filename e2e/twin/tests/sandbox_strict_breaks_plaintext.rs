//! In the sandbox: the external plaintext client of
//! `external-plaintext-client.yaml` is broken by a STRICT PeerAuthentication
//! (ground truth counts it, Prometheus stops getting `none` reports for it)
//! and heals when the policy goes back to PERMISSIVE. And the restart after
//! injection (scheduled or over HTTP) switches a client without breaking it.

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use mesh_twin::istio_config::peer_authentication_resource;
use serde_json::{Value, json};
use testkit::process::{TwinConfig, TwinProcess};

const EDGE: &str = "external-to-api";

/// The twin under test (this package's build), logging to the test's
/// scratch folder.
async fn start_twin(sb: &testkit::Sandbox, scenario: &Path, prefix: &str) -> TwinProcess {
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}twin.log"));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_mesh-twin"));
    TwinProcess::start(TwinConfig::new(binary, sb, scenario, prefix, log)).await
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
    let twin = start_twin(sb, &shipped("external-plaintext-client.yaml"), &prefix).await;
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
    let twin = start_twin(sb, &path, &prefix).await;
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
    twin.enroll("shop", "batch", "none").await;
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
