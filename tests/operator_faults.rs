//! Faults under the operator: Prometheus going away mid-hold, the operator
//! killed mid-hold. Neither may fake or lose progress towards STRICT.
//! Issue 4, "What proves it" (c) and (i).

mod support;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use mtls_migrator::api::migration::{MtlsMigration, Phase};
use serde_json::json;
use support::prometheus::OwnPrometheus;
use support::*;

const NAME: &str = "to-strict";

fn last_reason(m: &MtlsMigration) -> Option<String> {
    Some(m.status.as_ref()?.last_measurement.as_ref()?.reason.clone())
}

/// (c) Prometheus stops mid-hold: no flip, the conditions say the metrics
/// are unavailable, and once Prometheus is back a fresh hold leads to STRICT.
/// The migration points at a Prometheus of its own (the shared one serves
/// other tests).
#[tokio::test]
async fn prometheus_stopped_mid_hold_blocks_the_flip_until_it_returns() {
    let s = Setup::start_with(
        "op-c",
        &shipped_scenario("all-enrolled.yaml"),
        "shop",
        false,
    )
    .await;
    let mut prom = OwnPrometheus::start(&s.twin.prefix, &s.twin.addr).await;
    let api = s.migrations();
    let mut analysis = fast_analysis("2s", "8s");
    analysis["prometheusUrl"] = json!(prom.url());
    s.apply_migration(NAME, json!({"mode": "STRICT", "analysis": analysis}))
        .await;

    wait_migration(&api, NAME, Duration::from_secs(30), "Holding", |m| {
        phase(m) == Some(Phase::Holding)
    })
    .await;
    prom.stop().await;
    let stopped_at = Timestamp::now();

    let (client, ns) = (s.client.clone(), s.ns.clone());
    let m = wait_migration(
        &api,
        NAME,
        Duration::from_secs(15),
        "MetricsUnavailable",
        |m| last_reason(m).as_deref() == Some("MetricsUnavailable"),
    )
    .await;
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("PERMISSIVE"));
    let text = status_text(Some(&m));
    assert!(
        has_cond(
            &m,
            "PlaintextBelowThreshold",
            "Unknown",
            "MetricsUnavailable"
        ),
        "{text}"
    );
    assert!(
        has_cond(&m, "Ready", "False", "MetricsUnavailable"),
        "{text}"
    );
    assert_eq!(hold_started_at(&m), None, "{text}");
    let message = &condition(&m, "PlaintextBelowThreshold")
        .expect("condition")
        .message;
    assert!(!message.is_empty(), "{text}");

    // Down for longer than the hold: every measurement fails, nothing flips.
    watch_measurements(&api, NAME, 5, Duration::from_secs(25), async |m| {
        let text = status_text(Some(m));
        assert_eq!(
            pa_mode(&client, &ns, NAME).await.as_deref(),
            Some("PERMISSIVE"),
            "{text}"
        );
        assert_ne!(phase(m), Some(Phase::Enforced), "{text}");
        if last_measurement_time(m).is_some_and(|t| t > stopped_at) {
            assert_eq!(
                last_reason(m).as_deref(),
                Some("MetricsUnavailable"),
                "{text}"
            );
            assert_eq!(hold_started_at(m), None, "{text}");
        }
    })
    .await;

    prom.restart().await;
    let restarted_at = Timestamp::now();
    let holding = wait_migration(&api, NAME, Duration::from_secs(30), "a new hold", |m| {
        phase(m) == Some(Phase::Holding)
    })
    .await;
    let hold_start = hold_started_at(&holding).expect("hold start");
    assert!(
        hold_start >= restarted_at,
        "the hold ({hold_start}) must start after Prometheus returned ({restarted_at})"
    );
    let done = wait_migration(&api, NAME, Duration::from_secs(30), "Enforced", enforced).await;
    let enforced_at = done
        .status
        .unwrap_or_default()
        .enforced_at
        .expect("enforcedAt");
    assert!(enforced_at.duration_since(hold_start) >= SignedDuration::from_secs(8));
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("STRICT"));
    s.assert_nothing_broken().await;
    assert_eq!(
        wait_event_count(&s.client, &s.ns, NAME, "Enforced", 1).await,
        1
    );
}

/// Waits for Holding plus one more passing measurement inside the hold, then
/// for the next measurement; returns that status.
async fn mid_hold(api: &kube::Api<MtlsMigration>) -> MtlsMigration {
    let holding = wait_migration(api, NAME, Duration::from_secs(30), "Holding", |m| {
        phase(m) == Some(Phase::Holding)
    })
    .await;
    let start = hold_started_at(&holding).expect("hold start");
    wait_migration(
        api,
        NAME,
        Duration::from_secs(15),
        "a measurement inside the hold",
        |m| {
            phase(m) == Some(Phase::Holding)
                && hold_started_at(m) == Some(start)
                && last_measurement_time(m).is_some_and(|t| t > start)
        },
    )
    .await
}

/// (i) The operator is SIGKILLed mid-hold and restarted at once (within
/// twice the interval): the hold's start, kept in status, carries over; the
/// flip comes when that hold elapses, once, with exactly one Enforced event.
#[tokio::test]
async fn operator_killed_mid_hold_continues_the_hold_after_restart() {
    let mut s = Setup::start("op-i", &shipped_scenario("all-enrolled.yaml"), "shop").await;
    let api = s.migrations();
    let (interval, hold) = (3, 12);
    s.apply_migration(
        NAME,
        json!({"mode": "STRICT", "analysis": fast_analysis(&format!("{interval}s"), &format!("{hold}s"))}),
    )
    .await;

    let before = mid_hold(&api).await;
    let hold_start = hold_started_at(&before).expect("hold start");
    let last = last_measurement_time(&before).expect("measured");
    // Kill right after a measurement, so the restart fits in the gap guard.
    let fresh = wait_migration(
        &api,
        NAME,
        Duration::from_secs(10),
        "the next measurement",
        |m| last_measurement_time(m).is_some_and(|t| t > last),
    )
    .await;
    let killed_after = last_measurement_time(&fresh).expect("measured");
    assert_eq!(
        hold_started_at(&fresh),
        Some(hold_start),
        "{}",
        status_text(Some(&fresh))
    );
    s.operator.kill().await;
    s.operator.restart().await;

    let after = wait_migration(
        &api,
        NAME,
        Duration::from_secs(15),
        "a measurement by the new process",
        |m| last_measurement_time(m).is_some_and(|t| t > killed_after),
    )
    .await;
    let gap = last_measurement_time(&after)
        .expect("measured")
        .duration_since(killed_after);
    eprintln!("measurement gap across the restart: {gap:#}");
    assert!(
        gap <= SignedDuration::from_secs(2 * interval),
        "restart too slow for this test ({gap:#}); the hold restarts by design then"
    );
    if !enforced(&after) {
        assert_eq!(
            hold_started_at(&after),
            Some(hold_start),
            "the hold start must survive the restart: {}",
            status_text(Some(&after))
        );
    }

    let done = wait_migration(&api, NAME, Duration::from_secs(30), "Enforced", enforced).await;
    let enforced_at = done
        .status
        .clone()
        .unwrap_or_default()
        .enforced_at
        .expect("enforcedAt");
    let held = enforced_at.duration_since(hold_start);
    assert!(
        held >= SignedDuration::from_secs(hold)
            && held < SignedDuration::from_secs(hold + 3 * interval),
        "flip {held:#} after the hold start (hold {hold}s): progress was lost or faked"
    );
    assert_eq!(s.pa_mode(NAME).await.as_deref(), Some("STRICT"));
    assert_eq!(
        event_count(&s.client, &s.ns, NAME, "HoldRestarted").await,
        0
    );
    // Two more measurements under STRICT: still exactly one Enforced event.
    watch_measurements(&api, NAME, 2, Duration::from_secs(20), async |m| {
        assert!(enforced(m), "{}", status_text(Some(m)));
    })
    .await;
    assert_eq!(
        wait_event_count(&s.client, &s.ns, NAME, "Enforced", 1).await,
        1
    );
    s.assert_nothing_broken().await;
}

/// (i, the other side of the gap guard) Down for longer than twice the
/// interval: the new process does not trust the old hold and starts it over
/// (HoldRestarted), so the flip comes a full hold after the restart.
#[tokio::test]
async fn operator_down_longer_than_two_intervals_restarts_the_hold() {
    let mut s = Setup::start("op-i2", &shipped_scenario("all-enrolled.yaml"), "shop").await;
    let api = s.migrations();
    let (interval, hold) = (2, 8);
    s.apply_migration(
        NAME,
        json!({"mode": "STRICT", "analysis": fast_analysis(&format!("{interval}s"), &format!("{hold}s"))}),
    )
    .await;

    let before = mid_hold(&api).await;
    let old_start = hold_started_at(&before).expect("hold start");
    s.operator.kill().await;
    let last = wait_migration(
        &api,
        NAME,
        Duration::from_secs(5),
        "the last status",
        |_| true,
    )
    .await;
    let last_time = last_measurement_time(&last).expect("measured");
    // Stay down until more than twice the interval has passed since the
    // last measurement.
    let down_until = last_time + SignedDuration::from_secs(2 * interval + 1);
    testkit::poll_until(Duration::from_secs(10), POLL, async || {
        (Timestamp::now() > down_until).then_some(())
    })
    .await
    .expect("clock moves");
    assert_eq!(
        phase(&last),
        Some(Phase::Holding),
        "{}",
        status_text(Some(&last))
    );
    s.operator.restart().await;

    let after = wait_migration(
        &api,
        NAME,
        Duration::from_secs(15),
        "a measurement by the new process",
        |m| last_measurement_time(m).is_some_and(|t| t > last_time),
    )
    .await;
    let new_start = hold_started_at(&after).expect("holding again");
    assert_eq!(
        Some(new_start),
        last_measurement_time(&after),
        "{}",
        status_text(Some(&after))
    );
    assert!(new_start > old_start);
    assert_eq!(
        wait_event_count(&s.client, &s.ns, NAME, "HoldRestarted", 1).await,
        1
    );

    let done = wait_migration(&api, NAME, Duration::from_secs(30), "Enforced", enforced).await;
    let enforced_at = done
        .status
        .unwrap_or_default()
        .enforced_at
        .expect("enforcedAt");
    assert!(enforced_at.duration_since(new_start) >= SignedDuration::from_secs(hold));
    assert_eq!(
        wait_event_count(&s.client, &s.ns, NAME, "Enforced", 1).await,
        1
    );
    s.assert_nothing_broken().await;
}
