//! The operator as a real process, the mesh twin and the sandbox Prometheus:
//! STRICT comes only on evidence, and no request breaks on the way.
//! Issue 4, "What proves it" (a), (b), (d), (e).

mod support;

use std::time::Duration;

use jiff::SignedDuration;
use mtls_migrator::api::migration::Phase;
use serde_json::json;
use support::*;

const NAME: &str = "to-strict";

/// (a) Every client is enrolled: PERMISSIVE, a hold of passing
/// measurements, then STRICT, and the twin counts no broken request.
#[tokio::test]
async fn all_enrolled_reaches_strict_after_the_hold_and_breaks_nothing() {
    let s = Setup::start("op-a", &shipped_scenario("all-enrolled.yaml"), "shop").await;
    let api = s.migrations();
    s.apply_migration(
        NAME,
        json!({"mode": "STRICT", "analysis": fast_analysis("2s", "8s")}),
    )
    .await;

    let holding = wait_migration(&api, NAME, Duration::from_secs(30), "Holding", |m| {
        phase(m) == Some(Phase::Holding)
    })
    .await;
    let hold_start = hold_started_at(&holding).expect("Holding has a hold start");
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("PERMISSIVE"));
    assert!(has_cond(
        &holding,
        "PermissiveApplied",
        "True",
        "PolicyPermissive"
    ));
    assert!(has_cond(
        &holding,
        "EnrollmentVerified",
        "True",
        "AllPodsEnrolled"
    ));
    assert!(has_cond(
        &holding,
        "PlaintextBelowThreshold",
        "True",
        "BelowThreshold"
    ));
    assert!(has_cond(&holding, "Ready", "False", "Holding"));

    let done = wait_migration(&api, NAME, Duration::from_secs(30), "Enforced", enforced).await;
    let status = done.status.clone().unwrap_or_default();
    let enforced_at = status.enforced_at.expect("enforcedAt set");
    assert!(
        enforced_at.duration_since(hold_start) >= SignedDuration::from_secs(8),
        "flipped at {enforced_at}, before the 8s hold that started at {hold_start} elapsed"
    );
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("STRICT"));
    assert!(has_cond(&done, "Degraded", "False", "AsExpected"));
    assert_eq!(status.observed_generation, done.metadata.generation);

    // Traffic keeps flowing under STRICT for a few measurements.
    watch_measurements(&api, NAME, 2, Duration::from_secs(20), async |m| {
        assert!(enforced(m), "left Enforced: {}", status_text(Some(m)));
        assert!(
            has_cond(m, "Degraded", "False", "AsExpected"),
            "{}",
            status_text(Some(m))
        );
    })
    .await;
    s.assert_nothing_broken().await;
    assert_eq!(
        wait_event_count(&s.client, &s.ns, NAME, "Enforced", 1).await,
        1
    );
}

/// (b) A client outside the mesh sends plaintext: the operator never flips
/// and names the `unknown` source. Once the client runs in the mesh (its
/// cron job moved into a namespace with a sidecar) and the external calls
/// stop, it flips. Nothing breaks at any point.
#[tokio::test]
async fn external_plaintext_client_blocks_the_flip_until_it_is_enrolled() {
    let scenario = edited_scenario(
        "external-plaintext-client.yaml",
        &unique_prefix("op-b"),
        |v| {
            // Where the external client will run once it joins the mesh.
            v["namespaces"]
                .as_array_mut()
                .expect("namespaces")
                .push(json!({"name": "outside", "injection": "none"}));
            v["workloads"]
                .as_array_mut()
                .expect("workloads")
                .push(json!({"name": "legacy-cron", "namespace": "outside"}));
        },
    );
    let s = Setup::start("op-b", &scenario, "shop").await;
    let api = s.migrations();
    s.apply_migration(
        NAME,
        json!({"mode": "STRICT", "analysis": fast_analysis("2s", "6s")}),
    )
    .await;

    wait_migration(
        &api,
        NAME,
        Duration::from_secs(30),
        "a plaintext verdict",
        |m| {
            m.status
                .as_ref()
                .and_then(|s| s.last_measurement.as_ref())
                .is_some_and(|l| l.reason == "PlaintextAboveThreshold")
        },
    )
    .await;
    // Six more measurements, twice the 6 s hold: PERMISSIVE throughout.
    let (client, ns) = (s.client.clone(), s.ns.clone());
    let m = watch_measurements(&api, NAME, 6, Duration::from_secs(30), async |m| {
        let text = status_text(Some(m));
        assert_eq!(
            pa_mode(&client, &ns, NAME).await.as_deref(),
            Some("PERMISSIVE"),
            "{text}"
        );
        assert_eq!(phase(m), Some(Phase::Observing), "{text}");
        assert_eq!(hold_started_at(m), None, "{text}");
        let last = m.status.as_ref().and_then(|s| s.last_measurement.as_ref());
        assert!(last.is_some_and(|l| !l.passed), "{text}");
    })
    .await;
    let status = m.status.clone().unwrap_or_default();
    assert!(
        has_cond(
            &m,
            "PlaintextBelowThreshold",
            "False",
            "PlaintextAboveThreshold"
        ),
        "{}",
        status_text(Some(&m))
    );
    assert!(has_cond(&m, "Ready", "False", "PlaintextAboveThreshold"));
    assert!(
        status
            .top_plaintext_sources
            .iter()
            .any(|s| s.workload == "unknown" && s.namespace == "unknown" && s.rate > 0.0),
        "the external client is not named: {:?}",
        status.top_plaintext_sources
    );
    // 5 of 15 requests per second are plaintext.
    let ratio = status
        .last_measurement
        .as_ref()
        .and_then(|l| l.ratio)
        .expect("ratio");
    assert!((0.2..0.5).contains(&ratio), "plaintext ratio {ratio}");
    s.assert_nothing_broken().await;

    // The client joins the mesh: its pods get sidecars, it calls from
    // there, and the calls from outside the cluster stop.
    s.twin.enroll("outside", "legacy-cron", "sidecar").await;
    let id = s
        .twin
        .add_edge(json!({
            "name": "legacy-cron-in-mesh",
            "from": {"workload": "legacy-cron", "namespace": "outside"},
            "to": {"workload": "api", "namespace": "shop"},
            "rate": 5,
        }))
        .await;
    let twin = &s.twin;
    testkit::poll_until(Duration::from_secs(20), POLL, async || {
        (twin.edge(&id).await["outcome"] == "mtls-accepted").then_some(())
    })
    .await
    .expect("the enrolled client should send mTLS");
    s.twin.remove_edge("external-to-api").await;

    wait_migration(&api, NAME, Duration::from_secs(40), "Enforced", enforced).await;
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("STRICT"));
    watch_measurements(&api, NAME, 2, Duration::from_secs(20), async |m| {
        assert!(enforced(m), "{}", status_text(Some(m)));
    })
    .await;
    assert_eq!(s.twin.edge(&id).await["outcome"], "mtls-accepted");
    s.assert_nothing_broken().await;
}

/// (d) A DestinationRule with `tls.mode: DISABLE` for a host in scope
/// blocks the flip and is named in status; deleting it lets it proceed.
#[tokio::test]
async fn destination_rule_disable_blocks_the_flip_until_deleted() {
    let s = Setup::start("op-d", &shipped_scenario("dr-disable.yaml"), "shop").await;
    let api = s.migrations();
    s.apply_migration(
        NAME,
        json!({"mode": "STRICT", "analysis": fast_analysis("2s", "6s")}),
    )
    .await;
    let rule = format!("{}/api-no-tls", s.ns);

    let m = wait_migration(&api, NAME, Duration::from_secs(30), "the conflict", |m| {
        has_cond(m, "Ready", "False", "DestinationRuleConflict")
            && last_measurement_time(m).is_some()
    })
    .await;
    let status = m.status.clone().unwrap_or_default();
    assert!(
        status
            .conflicts
            .iter()
            .any(|c| c.destination_rule == rule && c.tls_mode == "DISABLE"),
        "conflict not named: {:?}",
        status.conflicts
    );
    let ready = condition(&m, "Ready").expect("Ready");
    assert!(ready.message.contains(&rule), "{}", ready.message);
    let (client, ns) = (s.client.clone(), s.ns.clone());
    watch_measurements(&api, NAME, 4, Duration::from_secs(20), async |m| {
        let text = status_text(Some(m));
        assert_eq!(
            pa_mode(&client, &ns, NAME).await.as_deref(),
            Some("PERMISSIVE"),
            "{text}"
        );
        assert!(
            has_cond(m, "Ready", "False", "DestinationRuleConflict"),
            "{text}"
        );
        assert_eq!(hold_started_at(m), None, "{text}");
    })
    .await;
    s.assert_nothing_broken().await;

    let (ok, _, err) = kubectl(
        s.sb,
        &["delete", "destinationrule", "api-no-tls", "-n", &s.ns],
        None,
    )
    .await;
    assert!(ok, "kubectl delete destinationrule: {err}");
    let done = wait_migration(&api, NAME, Duration::from_secs(40), "Enforced", enforced).await;
    assert!(done.status.unwrap_or_default().conflicts.is_empty());
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("STRICT"));
    watch_measurements(&api, NAME, 2, Duration::from_secs(20), async |m| {
        assert!(enforced(m), "{}", status_text(Some(m)));
    })
    .await;
    assert_eq!(s.twin.edge("web-to-api").await["outcome"], "mtls-accepted");
    s.assert_nothing_broken().await;
}

/// (e) A pod without a sidecar in scope blocks the flip (PodsNotEnrolled,
/// the pod named); once it is restarted with a sidecar, the flip proceeds.
#[tokio::test]
async fn pod_without_sidecar_blocks_the_flip_until_enrolled() {
    let scenario = edited_scenario("all-enrolled.yaml", &unique_prefix("op-e"), |v| {
        // Created before the namespace was labelled for injection; no traffic.
        v["workloads"]
            .as_array_mut()
            .expect("workloads")
            .push(json!({"name": "cron", "namespace": "shop", "enrollment": "none"}));
    });
    let s = Setup::start("op-e", &scenario, "shop").await;
    let api = s.migrations();
    s.apply_migration(
        NAME,
        json!({"mode": "STRICT", "analysis": fast_analysis("2s", "6s")}),
    )
    .await;

    let m = wait_migration(
        &api,
        NAME,
        Duration::from_secs(30),
        "PodsNotEnrolled",
        |m| has_cond(m, "Ready", "False", "PodsNotEnrolled") && last_measurement_time(m).is_some(),
    )
    .await;
    let pods = s.pod_names(&s.ns, "cron").await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let enrollment = m
        .status
        .as_ref()
        .and_then(|s| s.enrollment.clone())
        .expect("enrollment in status");
    assert_eq!(enrollment.not_enrolled, pods);
    assert_eq!(enrollment.selected, enrollment.enrolled + 1);
    let verified = condition(&m, "EnrollmentVerified").expect("EnrollmentVerified");
    assert_eq!(verified.reason, "PodsNotEnrolled");
    assert!(verified.message.contains(&pods[0]), "{}", verified.message);

    let (client, ns) = (s.client.clone(), s.ns.clone());
    watch_measurements(&api, NAME, 4, Duration::from_secs(20), async |m| {
        let text = status_text(Some(m));
        assert_eq!(
            pa_mode(&client, &ns, NAME).await.as_deref(),
            Some("PERMISSIVE"),
            "{text}"
        );
        assert!(
            has_cond(m, "EnrollmentVerified", "False", "PodsNotEnrolled"),
            "{text}"
        );
        assert_eq!(hold_started_at(m), None, "{text}");
    })
    .await;

    s.twin.enroll("shop", "cron", "sidecar").await;
    let done = wait_migration(&api, NAME, Duration::from_secs(40), "Enforced", enforced).await;
    let enrollment = done
        .status
        .unwrap_or_default()
        .enrollment
        .expect("enrollment");
    assert_eq!(enrollment.enrolled, enrollment.selected);
    assert!(enrollment.not_enrolled.is_empty());
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("STRICT"));
    s.assert_nothing_broken().await;
}
