//! Scenario tests of the decision core: a simulated controller applies each
//! decision (status written back, policy observed as applied) while the test
//! moves the clock. No sleeps; a ten-minute hold takes microseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::*;
use crate::api::conditions::{ConditionStatus, reasons, types};
use crate::api::migration::{
    Analysis, MtlsMigration, MtlsMigrationSpec, MtlsMode, Phase, PortMode, PortMtls, Sidecars,
    WorkloadSelector,
};
use crate::observe::{Conflict, EnrollmentSummary, PlaintextSource, PolicyObservation, Reading};
use crate::scope::ORIGINAL_SPEC_ANNOTATION;

const ROOT: &str = "istio-system";

/// The world around one migration, and a controller that applies decisions.
struct World {
    mig: MtlsMigration,
    policy: PolicyObservation,
    enrollment: EnrollmentSummary,
    conflicts: Vec<Conflict>,
    now: Timestamp,
    /// Every event published so far.
    events: Vec<EventNote>,
}

fn spec() -> MtlsMigrationSpec {
    MtlsMigrationSpec {
        mode: MtlsMode::STRICT,
        selector: None,
        port_level_mtls: BTreeMap::new(),
        analysis: Analysis::default(), // interval 30s, hold 10m, max 0, min 0.1
        sidecars: Sidecars::default(),
        on_delete: Default::default(),
    }
}

fn pass() -> Reading {
    traffic(20.0, 0.0)
}

fn traffic(total: f64, plaintext: f64) -> Reading {
    Reading::Traffic {
        total_rate: total,
        plaintext_rate: plaintext,
        top_sources: if plaintext > 0.0 {
            vec![PlaintextSource {
                workload: "unknown".into(),
                namespace: "unknown".into(),
                rate: plaintext,
            }]
        } else {
            vec![]
        },
        source_failure_rate: 0.0,
    }
}

fn failures(rate: f64) -> Reading {
    Reading::Traffic {
        total_rate: 20.0,
        plaintext_rate: 0.0,
        top_sources: vec![],
        source_failure_rate: rate,
    }
}

impl World {
    fn new(spec: MtlsMigrationSpec) -> Self {
        Self::in_namespace("shop", spec)
    }

    fn in_namespace(ns: &str, spec: MtlsMigrationSpec) -> Self {
        let mut mig = MtlsMigration::new("cart", spec);
        mig.metadata.namespace = Some(ns.into());
        mig.metadata.generation = Some(1);
        World {
            mig,
            policy: PolicyObservation::Absent,
            enrollment: EnrollmentSummary {
                selected: 4,
                enrolled: 4,
                not_enrolled: vec![],
            },
            conflicts: vec![],
            now: "2025-03-01T12:00:00Z".parse().unwrap(),
            events: vec![],
        }
    }

    fn advance(&mut self, secs: i64) {
        self.now = self
            .now
            .checked_add(SignedDuration::from_secs(secs))
            .unwrap();
    }

    /// Decides without applying anything.
    fn peek(&self, reading: Option<&Reading>) -> Decision {
        let observed = Observed {
            policy: &self.policy,
            enrollment: &self.enrollment,
            conflicts: &self.conflicts,
            reading,
        };
        decide(&self.mig, ROOT, &observed, self.now)
    }

    /// One reconcile: decide, apply the policy, write the status.
    fn step(&mut self, reading: Option<Reading>) -> Decision {
        let d = self.peek(reading.as_ref());
        if let Some(p) = &d.policy {
            let annotations = p.object.metadata.annotations.clone().unwrap_or_default();
            self.policy = PolicyObservation::Found {
                name: p.name().to_string(),
                mode: p.object.spec.mode().map(String::from),
                spec: serde_json::to_value(&p.object.spec).unwrap(),
                managed_by: Some(self.mig.key()),
                original_spec: annotations
                    .get(ORIGINAL_SPEC_ANNOTATION)
                    .map(|s| serde_json::from_str(s).unwrap()),
            };
        }
        if d.status_changed {
            self.mig.status = Some(d.status.clone());
        }
        self.events.extend(d.events.iter().cloned());
        d
    }

    /// A measurement round, as the controller runs it: reading only if due.
    fn measure(&mut self, reading: Reading) -> Decision {
        assert!(
            measurement_due(&self.mig, self.now),
            "measurement not due at {}",
            self.now
        );
        self.step(Some(reading))
    }

    fn edit(&mut self, f: impl FnOnce(&mut MtlsMigrationSpec)) {
        f(&mut self.mig.spec);
        *self.mig.metadata.generation.as_mut().unwrap() += 1;
    }

    fn status(&self) -> &crate::api::migration::MtlsMigrationStatus {
        self.mig.status.as_ref().expect("status written")
    }

    fn phase(&self) -> Phase {
        self.status().phase.unwrap()
    }

    fn cond(&self, t: &str) -> &crate::api::conditions::Condition {
        conditions::find_condition(&self.status().conditions, t).unwrap_or_else(|| panic!("no {t}"))
    }

    fn ready(&self) -> (ConditionStatus, &str) {
        let c = self.cond(types::READY);
        (c.status, c.reason.as_str())
    }

    fn policy_mode(&self) -> Option<&str> {
        match &self.policy {
            PolicyObservation::Found { mode, .. } => mode.as_deref(),
            _ => None,
        }
    }

    /// Starts a migration and lets PERMISSIVE land (one reconcile to apply,
    /// one for the watch event of the applied policy).
    fn started(spec: MtlsMigrationSpec) -> Self {
        let mut w = World::new(spec);
        w.step(None);
        w.step(None);
        assert_eq!(w.policy_mode(), Some("PERMISSIVE"));
        w
    }

    /// Measures a passing reading every interval until the flip.
    fn run_to_strict(&mut self) {
        for _ in 0..100 {
            if measurement_due(&self.mig, self.now) {
                self.step(Some(pass()));
            }
            if self.phase() == Phase::Enforced {
                self.step(None); // the policy watch event
                return;
            }
            self.advance(30);
        }
        panic!("never reached STRICT: {:?}", self.ready());
    }
}

fn reasons_of(events: &[EventNote]) -> Vec<&str> {
    events.iter().map(|e| e.reason.as_str()).collect()
}

// ----- PERMISSIVE first ----------------------------------------------------

#[test]
fn creates_a_permissive_policy_first() {
    let mut w = World::new(spec());
    let d = w.step(None);
    let p = d.policy.as_ref().expect("a policy to apply");
    assert!(p.changed);
    assert_eq!(p.mode(), "PERMISSIVE");
    assert_eq!((p.namespace(), p.name()), ("shop", "cart"));
    assert!(
        p.object.spec.selector.is_none(),
        "namespace scope has no selector"
    );
    assert_eq!(w.phase(), Phase::Observing);
    assert_eq!(
        w.ready(),
        (ConditionStatus::False, reasons::PERMISSIVE_PENDING)
    );
    let policy = w.status().policy.as_ref().unwrap();
    assert!(policy.created);
    assert_eq!(policy.applied_mode.as_deref(), Some("PERMISSIVE"));
    assert_eq!(reasons_of(&d.events), [reasons::PERMISSIVE_PENDING]);

    // The watch event of the applied policy: now in force, waiting for evidence.
    let d = w.step(None);
    assert!(!d.policy.unwrap().changed);
    assert_eq!(
        w.ready(),
        (ConditionStatus::False, reasons::AWAITING_MEASUREMENT)
    );
    assert_eq!(
        w.cond(types::PERMISSIVE_APPLIED).status,
        ConditionStatus::True
    );
}

#[test]
fn workload_scope_policy_carries_the_selector() {
    let mut s = spec();
    s.selector = Some(WorkloadSelector {
        match_labels: BTreeMap::from([("app".into(), "cart".into())]),
    });
    let mut w = World::new(s);
    let d = w.step(None);
    let p = d.policy.unwrap();
    assert_eq!(p.object.spec.match_labels().unwrap()["app"], "cart");
}

#[test]
fn takes_over_an_existing_policy_and_records_its_spec() {
    let mut w = World::new(spec());
    let original = json!({"mtls": {"mode": "DISABLE"}});
    w.policy = PolicyObservation::Found {
        name: "default".into(),
        mode: Some("DISABLE".into()),
        spec: original.clone(),
        managed_by: None,
        original_spec: None,
    };
    let d = w.step(None);
    let p = d.policy.unwrap();
    assert_eq!(p.name(), "default");
    assert_eq!(p.mode(), "PERMISSIVE");
    assert_eq!(p.previous_mode.as_deref(), Some("DISABLE"));
    let recorded = p.object.metadata.annotations.unwrap()[ORIGINAL_SPEC_ANNOTATION].clone();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&recorded).unwrap(),
        original
    );
    let policy = w.status().policy.clone().unwrap();
    assert!(!policy.created);
    assert_eq!(policy.original_spec, Some(original.clone()));

    // Later rounds keep the original (the policy now holds our spec).
    w.step(None);
    let d = w.step(None);
    assert!(!d.policy.as_ref().unwrap().changed);
    assert_eq!(
        w.status().policy.as_ref().unwrap().original_spec,
        Some(original)
    );
}

#[test]
fn a_taken_over_permissive_policy_counts_evidence_at_once() {
    let mut w = World::new(spec());
    w.policy = PolicyObservation::Found {
        name: "default".into(),
        mode: Some("PERMISSIVE".into()),
        spec: json!({"mtls": {"mode": "PERMISSIVE"}}),
        managed_by: None,
        original_spec: None,
    };
    let d = w.step(Some(pass()));
    assert!(d.policy.unwrap().changed, "annotations still to be written");
    assert_eq!(w.phase(), Phase::Holding);
}

#[test]
fn a_scope_that_is_already_strict_is_adopted_not_weakened() {
    let mut w = World::new(spec());
    w.policy = PolicyObservation::Found {
        name: "default".into(),
        mode: Some("STRICT".into()),
        spec: json!({"mtls": {"mode": "STRICT"}}),
        managed_by: None,
        original_spec: None,
    };
    let d = w.step(None);
    assert_eq!(d.policy.unwrap().mode(), "STRICT");
    assert_eq!(w.phase(), Phase::Enforced);
    assert_eq!(w.ready(), (ConditionStatus::True, reasons::ENFORCED));
    assert!(
        d.events[0].note.contains("already STRICT"),
        "{:?}",
        d.events
    );
}

#[test]
fn evidence_from_before_permissive_is_in_force_does_not_count() {
    let mut w = World::new(spec());
    let d = w.step(Some(pass()));
    assert_eq!(w.phase(), Phase::Observing);
    assert!(w.status().hold_started_at.is_none());
    let m = w.status().last_measurement.clone().unwrap();
    assert!(!m.passed);
    assert_eq!(m.reason, reasons::PERMISSIVE_PENDING);
    assert_eq!(d.status.plaintext_ratio.as_deref(), Some("0%"));
}

// ----- the hold and the flip -------------------------------------------------

#[test]
fn flips_after_the_hold_of_continuous_passes_and_not_before() {
    let mut s = spec();
    s.selector = Some(WorkloadSelector {
        match_labels: BTreeMap::from([("app".into(), "db".into())]),
    });
    s.port_level_mtls = BTreeMap::from([(
        "3306".into(),
        PortMtls {
            mode: PortMode::PERMISSIVE,
        },
    )]);
    let mut w = World::started(s);
    let start = w.now;
    w.measure(pass());
    assert_eq!(w.phase(), Phase::Holding);
    assert_eq!(w.status().hold_started_at, Some(start));
    assert_eq!(w.ready(), (ConditionStatus::False, reasons::HOLDING));
    // 19 more passes, 30 s apart: 9m30s, still holding.
    for _ in 0..19 {
        w.advance(30);
        let d = w.measure(pass());
        assert_eq!(d.policy.unwrap().mode(), "PERMISSIVE");
        assert_eq!(w.phase(), Phase::Holding);
    }
    w.advance(30); // 10m: the hold is complete
    let d = w.measure(pass());
    let p = d.policy.unwrap();
    assert_eq!(p.mode(), "STRICT");
    assert!(p.changed);
    assert_eq!(
        p.object.spec.port_level_mtls["3306"].mode.as_deref(),
        Some("PERMISSIVE")
    );
    assert_eq!(w.phase(), Phase::Enforced);
    assert_eq!(w.status().enforced_at, Some(w.now));
    assert!(w.status().hold_started_at.is_none());
    assert_eq!(w.ready(), (ConditionStatus::True, reasons::ENFORCED));
    assert_eq!(w.cond(types::STRICT_ENFORCED).status, ConditionStatus::True);
    assert_eq!(
        w.cond(types::PERMISSIVE_APPLIED).status,
        ConditionStatus::False
    );
    assert_eq!(w.cond(types::DEGRADED).status, ConditionStatus::False);
    assert_eq!(
        reasons_of(&d.events),
        [reasons::HOLD_COMPLETE, reasons::ENFORCED]
    );
    assert!(
        d.events[1].note.contains(&start.to_string()),
        "{}",
        d.events[1].note
    );
}

#[test]
fn the_flip_needs_a_fresh_passing_measurement() {
    let mut w = World::started(spec());
    w.measure(pass());
    w.advance(30);
    w.measure(pass());
    w.advance(600); // hold elapsed, but nothing measured since
    let d = w.step(None);
    assert_eq!(d.policy.unwrap().mode(), "PERMISSIVE");
    assert_eq!(w.phase(), Phase::Holding);
}

#[test]
fn one_failed_measurement_resets_the_hold() {
    let failures: Vec<(Reading, ConditionStatus, &str)> = vec![
        (
            Reading::QueryFailed {
                message: "timeout".into(),
            },
            ConditionStatus::Unknown,
            reasons::METRICS_UNAVAILABLE,
        ),
        (
            Reading::NoData,
            ConditionStatus::Unknown,
            reasons::NO_TELEMETRY,
        ),
        (
            Reading::NotFinite {
                message: "NaN".into(),
            },
            ConditionStatus::Unknown,
            reasons::NOT_FINITE,
        ),
        (
            traffic(0.0, 0.0),
            ConditionStatus::Unknown,
            reasons::INSUFFICIENT_TRAFFIC,
        ),
        (
            traffic(0.05, 0.0),
            ConditionStatus::Unknown,
            reasons::INSUFFICIENT_TRAFFIC,
        ),
        (
            traffic(20.0, 1.0),
            ConditionStatus::False,
            reasons::PLAINTEXT_ABOVE_THRESHOLD,
        ),
    ];
    for (reading, status, reason) in failures {
        let mut w = World::started(spec());
        for _ in 0..10 {
            w.measure(pass());
            w.advance(30);
        }
        assert_eq!(w.phase(), Phase::Holding);
        let d = w.measure(reading);
        assert_eq!(w.phase(), Phase::Observing, "{reason}");
        assert!(w.status().hold_started_at.is_none(), "{reason}");
        assert_eq!(w.ready(), (ConditionStatus::False, reason));
        let c = w.cond(types::PLAINTEXT_BELOW_THRESHOLD);
        assert_eq!((c.status, c.reason.as_str()), (status, reason));
        assert!(!w.status().last_measurement.as_ref().unwrap().passed);
        assert_eq!(d.events.len(), 1, "{reason}: {:?}", d.events);
        assert_eq!(d.events[0].reason, reason);
        // The hold restarts from scratch: a full hold of passes is needed again.
        w.advance(30);
        let restart = w.now;
        w.measure(pass());
        assert_eq!(w.status().hold_started_at, Some(restart));
    }
}

// gates.md: a run reported Successful while every measurement errored.
#[test]
fn never_flips_while_every_measurement_errors() {
    for reading in [
        Reading::QueryFailed {
            message: "503".into(),
        },
        Reading::NoData,
        Reading::NotFinite {
            message: "+Inf".into(),
        },
        traffic(0.0, 0.0),
    ] {
        let mut w = World::started(spec());
        for _ in 0..200 {
            let d = w.measure(reading.clone());
            assert_eq!(d.policy.unwrap().mode(), "PERMISSIVE");
            w.advance(30);
        }
        assert_eq!(w.phase(), Phase::Observing);
        assert_eq!(
            w.cond(types::STRICT_ENFORCED).status,
            ConditionStatus::False
        );
    }
}

// gates.md: NaN / empty vector stored as a number.
#[test]
fn failed_readings_store_no_numbers() {
    let mut w = World::started(spec());
    w.measure(Reading::NotFinite {
        message: "NaN".into(),
    });
    let m = w.status().last_measurement.clone().unwrap();
    assert_eq!((m.total_rate, m.ratio), (None, None));
    assert!(w.status().plaintext_ratio.is_none());
    let json = serde_json::to_string(w.status()).unwrap();
    assert!(!json.contains("null"), "{json}");
}

#[test]
fn a_gap_in_measurements_restarts_the_hold() {
    let mut w = World::started(spec());
    w.measure(pass());
    w.advance(30);
    w.measure(pass());
    let first_start = w.status().hold_started_at.unwrap();
    // The operator was down for 5 minutes (more than 2 x 30s).
    w.advance(300);
    let d = w.measure(pass());
    assert_eq!(w.phase(), Phase::Holding);
    assert_eq!(w.status().hold_started_at, Some(w.now));
    assert_ne!(Some(first_start), w.status().hold_started_at);
    assert_eq!(reasons_of(&d.events), [reasons::HOLD_RESTARTED]);
    assert!(d.events[0].warning);
    assert!(d.events[0].note.contains("5m0s"), "{}", d.events[0].note);
}

#[test]
fn a_gap_up_to_twice_the_interval_keeps_the_hold() {
    let mut w = World::started(spec());
    w.measure(pass());
    let start = w.status().hold_started_at;
    w.advance(60);
    w.measure(pass());
    assert_eq!(w.status().hold_started_at, start);
}

#[test]
fn a_clock_that_went_backwards_restarts_the_hold() {
    let mut w = World::started(spec());
    w.measure(pass());
    w.advance(30);
    w.measure(pass());
    w.advance(-120);
    let d = w.measure(pass());
    assert_eq!(w.status().hold_started_at, Some(w.now));
    assert_eq!(reasons_of(&d.events), [reasons::HOLD_RESTARTED]);
}

#[test]
fn a_spec_edit_mid_hold_restarts_observation() {
    let mut w = World::started(spec());
    w.measure(pass());
    w.advance(30);
    w.measure(pass());
    w.edit(|s| s.analysis.max_plaintext_ratio = 0.05);
    let d = w.step(None);
    assert!(w.status().hold_started_at.is_none());
    assert_eq!(w.phase(), Phase::Observing);
    let c = w.cond(types::PLAINTEXT_BELOW_THRESHOLD);
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::Unknown, reasons::AWAITING_MEASUREMENT)
    );
    assert_eq!(c.observed_generation, Some(2));
    assert!(d.status_changed);
}

// ----- blockers ------------------------------------------------------------

#[test]
fn a_conflicting_destination_rule_blocks_and_resets_without_waiting_for_a_measurement() {
    let mut w = World::started(spec());
    w.measure(pass());
    w.advance(10);
    w.conflicts = vec![Conflict {
        destination_rule: "shop/cart-dr".into(),
        host: "cart.shop.svc.cluster.local".into(),
        location: "trafficPolicy".into(),
        tls_mode: "DISABLE".into(),
    }];
    let d = w.step(None);
    assert!(w.status().hold_started_at.is_none());
    assert_eq!(
        w.ready(),
        (ConditionStatus::False, reasons::DESTINATION_RULE_CONFLICT)
    );
    assert!(w.cond(types::READY).message.contains("shop/cart-dr"));
    assert_eq!(w.status().conflicts.len(), 1);
    assert!(d.events[0].warning);
    // Passing traffic does not help while the conflict stands.
    for _ in 0..40 {
        w.advance(30);
        let d = w.measure(pass());
        assert_eq!(d.policy.unwrap().mode(), "PERMISSIVE");
    }
    let m = w.status().last_measurement.clone().unwrap();
    assert!(!m.passed);
    assert_eq!(m.reason, reasons::DESTINATION_RULE_CONFLICT);
    // Removed: the next pass starts a new hold.
    w.conflicts.clear();
    w.advance(30);
    w.measure(pass());
    assert_eq!(w.phase(), Phase::Holding);
}

#[test]
fn unenrolled_pods_block_the_flip_and_are_named() {
    let mut w = World::started(spec());
    w.measure(pass());
    w.enrollment = EnrollmentSummary {
        selected: 5,
        enrolled: 3,
        not_enrolled: vec!["cart-7d9-abc".into(), "cart-7d9-def".into()],
    };
    w.step(None);
    assert_eq!(
        w.ready(),
        (ConditionStatus::False, reasons::PODS_NOT_ENROLLED)
    );
    let c = w.cond(types::ENROLLMENT_VERIFIED);
    assert_eq!(c.status, ConditionStatus::False);
    assert!(c.message.contains("2 of 5"), "{}", c.message);
    assert!(
        c.message.contains("cart-7d9-abc, cart-7d9-def"),
        "{}",
        c.message
    );
    assert_eq!(w.status().enrolled.as_deref(), Some("3/5"));
    assert!(w.status().hold_started_at.is_none());
}

#[test]
fn enrollment_is_not_checked_when_not_required() {
    let mut s = spec();
    s.sidecars.required = false;
    let mut w = World::started(s);
    w.enrollment = EnrollmentSummary {
        selected: 2,
        enrolled: 0,
        not_enrolled: vec!["a".into(), "b".into()],
    };
    w.run_to_strict();
    assert_eq!(
        w.cond(types::ENROLLMENT_VERIFIED).reason,
        reasons::ENROLLMENT_NOT_REQUIRED
    );
    assert_eq!(w.cond(types::DEGRADED).status, ConditionStatus::False);
}

#[test]
fn ambiguous_policies_block_without_writing() {
    let mut w = World::new(spec());
    w.policy = PolicyObservation::Ambiguous {
        names: vec!["default".into(), "strict".into()],
    };
    let d = w.step(Some(pass()));
    assert!(d.policy.is_none());
    assert_eq!(w.phase(), Phase::Blocked);
    assert_eq!(
        w.ready(),
        (ConditionStatus::False, reasons::AMBIGUOUS_POLICY)
    );
    let msg = &w.cond(types::READY).message;
    assert!(
        msg.contains("default, strict") && msg.contains("oldest"),
        "{msg}"
    );
    assert!(d.events[0].warning);
    assert!(!w.status().last_measurement.as_ref().unwrap().passed);
    // Resolved: the remaining policy is taken over.
    w.policy = PolicyObservation::Found {
        name: "default".into(),
        mode: Some("PERMISSIVE".into()),
        spec: json!({"mtls": {"mode": "PERMISSIVE"}}),
        managed_by: None,
        original_spec: None,
    };
    w.advance(30);
    let d = w.step(None);
    assert_eq!(d.policy.unwrap().name(), "default");
    assert_eq!(w.phase(), Phase::Observing);
}

#[test]
fn a_policy_owned_by_another_migration_blocks() {
    let mut w = World::new(spec());
    w.policy = PolicyObservation::Found {
        name: "default".into(),
        mode: Some("PERMISSIVE".into()),
        spec: json!({"mtls": {"mode": "PERMISSIVE"}}),
        managed_by: Some("shop/other".into()),
        original_spec: None,
    };
    let d = w.step(None);
    assert!(d.policy.is_none());
    assert_eq!(
        w.ready(),
        (
            ConditionStatus::False,
            reasons::POLICY_OWNED_BY_ANOTHER_MIGRATION
        )
    );
    assert!(w.cond(types::READY).message.contains("shop/other"));
}

#[test]
fn a_selector_in_the_root_namespace_is_an_invalid_scope() {
    let mut s = spec();
    s.selector = Some(WorkloadSelector {
        match_labels: BTreeMap::from([("app".into(), "gw".into())]),
    });
    let mut w = World::in_namespace(ROOT, s);
    let d = w.step(None);
    assert!(d.policy.is_none());
    assert_eq!(w.ready(), (ConditionStatus::False, reasons::INVALID_SCOPE));
    let msg = &w.cond(types::READY).message;
    assert!(
        msg.starts_with("A PeerAuthentication") && msg.contains("ignored"),
        "{msg}"
    );
}

#[test]
fn mesh_scope_in_the_root_namespace_has_no_selector() {
    let mut w = World::in_namespace(ROOT, spec());
    let d = w.step(None);
    let p = d.policy.unwrap();
    assert_eq!(p.namespace(), ROOT);
    assert!(p.object.spec.selector.is_none());
}

#[test]
fn an_unparsable_duration_blocks_with_invalid_spec() {
    let mut s = spec();
    s.analysis.hold = "-5m".into();
    let mut w = World::new(s);
    let d = w.step(None);
    assert!(d.policy.is_none());
    assert_eq!(w.ready(), (ConditionStatus::False, reasons::INVALID_SPEC));
    assert!(!measurement_due(&w.mig, w.now));
    assert!(d.requeue_after.is_none());
}

// ----- after STRICT ----------------------------------------------------------

#[test]
fn an_unenrolled_pod_after_strict_degrades_but_never_flips_back() {
    let mut w = World::started(spec());
    w.run_to_strict();
    w.enrollment = EnrollmentSummary {
        selected: 5,
        enrolled: 4,
        not_enrolled: vec!["cart-new-xyz".into()],
    };
    let d = w.step(None);
    assert_eq!(d.policy.unwrap().mode(), "STRICT");
    assert_eq!(w.phase(), Phase::Enforced);
    let c = w.cond(types::DEGRADED);
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::True, reasons::PODS_NOT_ENROLLED)
    );
    assert!(c.message.contains("cart-new-xyz"));
    assert_eq!(w.ready(), (ConditionStatus::True, reasons::ENFORCED));
    assert_eq!(d.events.len(), 1);
    assert!(d.events[0].warning);
    assert_eq!(d.events[0].reason, reasons::PODS_NOT_ENROLLED);
    // Measurements keep going; nothing flips back.
    for _ in 0..10 {
        w.advance(30);
        let d = w.measure(traffic(20.0, 5.0));
        assert_eq!(d.policy.unwrap().mode(), "STRICT");
    }
    w.enrollment.enrolled = 5;
    w.enrollment.not_enrolled.clear();
    let d = w.step(None);
    assert_eq!(w.cond(types::DEGRADED).status, ConditionStatus::False);
    assert_eq!(reasons_of(&d.events), [reasons::RECOVERED]);
}

#[test]
fn connection_failures_after_strict_degrade_until_a_measurement_shows_none() {
    let mut w = World::started(spec());
    w.run_to_strict();
    w.advance(30);
    let d = w.measure(failures(0.4));
    let c = w.cond(types::DEGRADED);
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::True, reasons::CONNECTION_FAILURES)
    );
    assert!(c.message.contains("0.400/s"), "{}", c.message);
    assert_eq!(reasons_of(&d.events), [reasons::CONNECTION_FAILURES]);
    // A failed query or a round without a reading does not clear it.
    w.advance(30);
    w.measure(Reading::QueryFailed {
        message: "down".into(),
    });
    assert_eq!(w.cond(types::DEGRADED).status, ConditionStatus::True);
    let d = w.step(None);
    assert_eq!(w.cond(types::DEGRADED).status, ConditionStatus::True);
    assert!(!d.status_changed);
    w.advance(30);
    w.measure(failures(0.0));
    assert_eq!(w.cond(types::DEGRADED).status, ConditionStatus::False);
    assert_eq!(w.policy_mode(), Some("STRICT"));
}

#[test]
fn a_policy_edited_behind_our_back_is_reapplied_with_an_event() {
    let mut w = World::started(spec());
    w.run_to_strict();
    if let PolicyObservation::Found { mode, spec, .. } = &mut w.policy {
        *mode = Some("PERMISSIVE".into());
        *spec = json!({"mtls": {"mode": "PERMISSIVE"}});
    }
    let d = w.step(None);
    let p = d.policy.unwrap();
    assert!(p.changed);
    assert_eq!(p.mode(), "STRICT");
    assert_eq!(reasons_of(&d.events), [reasons::POLICY_DRIFT_CORRECTED]);
}

#[test]
fn a_deleted_policy_is_recreated_under_the_same_name() {
    let mut w = World::new(spec());
    w.policy = PolicyObservation::Found {
        name: "default".into(),
        mode: Some("PERMISSIVE".into()),
        spec: json!({"mtls": {"mode": "PERMISSIVE"}}),
        managed_by: None,
        original_spec: None,
    };
    w.step(None);
    w.run_to_strict();
    w.policy = PolicyObservation::Absent;
    let d = w.step(None);
    let p = d.policy.unwrap();
    assert_eq!((p.name(), p.mode()), ("default", "STRICT"));
    assert!(p.changed);
}

// ----- rollback ------------------------------------------------------------

#[test]
fn rollback_from_strict_is_immediate_and_ready_for_the_new_generation() {
    let mut w = World::started(spec());
    w.run_to_strict();
    w.advance(5);
    w.edit(|s| s.mode = MtlsMode::PERMISSIVE);
    // No reading, no waiting for the interval.
    assert!(!measurement_due(&w.mig, w.now));
    let d = w.step(None);
    let p = d.policy.unwrap();
    assert_eq!(p.mode(), "PERMISSIVE");
    assert!(p.changed);
    assert_eq!(p.previous_mode.as_deref(), Some("STRICT"));
    assert_eq!(w.phase(), Phase::RolledBack);
    assert_eq!(w.ready(), (ConditionStatus::True, reasons::ROLLED_BACK));
    assert!(conditions::condition_holds(
        &w.status().conditions,
        types::READY,
        2
    ));
    assert_eq!(
        w.cond(types::STRICT_ENFORCED).status,
        ConditionStatus::False
    );
    assert_eq!(
        w.cond(types::PERMISSIVE_APPLIED).status,
        ConditionStatus::True
    );
    assert!(w.status().enforced_at.is_none());
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.events[0].reason, reasons::ROLLED_BACK);
    assert!(!d.events[0].warning);
    assert_eq!(d.requeue_after, None);
}

#[test]
fn rollback_while_holding_stops_the_hold() {
    let mut w = World::started(spec());
    w.measure(pass());
    w.edit(|s| s.mode = MtlsMode::PERMISSIVE);
    w.step(None);
    assert_eq!(w.phase(), Phase::RolledBack);
    assert!(w.status().hold_started_at.is_none());
    assert_eq!(w.policy_mode(), Some("PERMISSIVE"));
}

#[test]
fn permissive_from_the_start_is_in_force_not_rolled_back() {
    let mut s = spec();
    s.mode = MtlsMode::PERMISSIVE;
    let mut w = World::new(s);
    let d = w.step(None);
    assert_eq!(d.policy.unwrap().mode(), "PERMISSIVE");
    assert_eq!(w.phase(), Phase::Permissive);
    assert_eq!(
        w.ready(),
        (ConditionStatus::True, reasons::PERMISSIVE_IN_FORCE)
    );
    assert_eq!(
        w.cond(types::PLAINTEXT_BELOW_THRESHOLD).reason,
        reasons::NOT_MEASURED
    );
    assert!(!measurement_due(&w.mig, w.now));
}

#[test]
fn editing_back_to_strict_starts_observation_anew() {
    let mut w = World::started(spec());
    w.run_to_strict();
    w.edit(|s| s.mode = MtlsMode::PERMISSIVE);
    w.step(None);
    w.step(None);
    w.advance(60);
    w.edit(|s| s.mode = MtlsMode::STRICT);
    let d = w.step(None);
    assert_eq!(d.policy.as_ref().unwrap().mode(), "PERMISSIVE");
    assert!(!d.policy.unwrap().changed);
    assert_eq!(w.phase(), Phase::Observing);
    assert_eq!(
        w.ready(),
        (ConditionStatus::False, reasons::AWAITING_MEASUREMENT)
    );
    assert!(w.status().hold_started_at.is_none());
    // A full hold is needed again.
    assert!(measurement_due(&w.mig, w.now));
    let begun = w.now;
    w.run_to_strict();
    assert!(w.now.duration_since(begun) >= SignedDuration::from_mins(10));
}

// ----- status hygiene --------------------------------------------------------

#[test]
fn nothing_new_means_no_status_write_and_no_events() {
    let mut w = World::started(spec());
    w.measure(pass());
    for secs in [1, 5, 10] {
        w.advance(secs);
        let d = w.step(None);
        assert!(!d.status_changed, "at +{secs}s: {:#?}", d.status);
        assert!(d.events.is_empty());
        assert!(!d.policy.unwrap().changed);
    }
}

#[test]
fn transition_times_move_only_when_status_changes() {
    let mut w = World::started(spec());
    let t0 = w.cond(types::READY).last_transition_time;
    w.advance(30);
    w.measure(traffic(20.0, 2.0)); // Ready False, other reason
    assert_eq!(w.cond(types::READY).last_transition_time, t0);
    assert_eq!(w.ready().1, reasons::PLAINTEXT_ABOVE_THRESHOLD);
    let p0 = w
        .cond(types::PLAINTEXT_BELOW_THRESHOLD)
        .last_transition_time;
    w.advance(30);
    w.measure(traffic(20.0, 3.0)); // still False, new message
    assert_eq!(
        w.cond(types::PLAINTEXT_BELOW_THRESHOLD)
            .last_transition_time,
        p0
    );
    w.advance(30);
    w.measure(pass());
    assert_eq!(
        w.cond(types::PLAINTEXT_BELOW_THRESHOLD)
            .last_transition_time,
        w.now
    );
}

#[test]
fn observed_generation_is_stamped_everywhere() {
    let mut w = World::started(spec());
    w.edit(|s| s.analysis.min_request_rate = 1.0);
    w.edit(|s| s.analysis.min_request_rate = 2.0);
    w.step(None);
    assert_eq!(w.status().observed_generation, Some(3));
    assert_eq!(w.status().conditions.len(), types::ALL.len());
    for c in &w.status().conditions {
        assert_eq!(c.observed_generation, Some(3), "{}", c.type_);
    }
    let order: Vec<_> = w
        .status()
        .conditions
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(order, types::ALL);
}

#[test]
fn a_restarted_operator_continues_from_status() {
    let mut w = World::started(spec());
    for _ in 0..5 {
        w.measure(pass());
        w.advance(30);
    }
    // The operator restarts: status comes back through the API server as JSON.
    let json = serde_json::to_string(&w.mig).unwrap();
    let reloaded: MtlsMigration = serde_json::from_str(&json).unwrap();
    assert_eq!(reloaded, w.mig);
    let before = w.peek(None);
    w.mig = reloaded;
    let after = w.peek(None);
    assert_eq!(before, after);
    assert!(!after.status_changed);
    // And the hold continues: it flips 10 minutes after the first pass.
    let started = w.status().hold_started_at.unwrap();
    w.run_to_strict();
    assert_eq!(
        w.status().enforced_at.unwrap().duration_since(started),
        SignedDuration::from_mins(10)
    );
}

#[test]
fn printer_columns_are_filled() {
    let mut w = World::started(spec());
    w.enrollment = EnrollmentSummary {
        selected: 4,
        enrolled: 3,
        not_enrolled: vec!["x".into()],
    };
    w.measure(traffic(40.0, 5.0));
    assert_eq!(w.status().enrolled.as_deref(), Some("3/4"));
    assert_eq!(w.status().plaintext_ratio.as_deref(), Some("12.5%"));
    assert_eq!(w.status().top_plaintext_sources[0].workload, "unknown");
    assert_eq!(w.phase().as_str(), "Observing");
}

// ----- timing --------------------------------------------------------------

#[test]
fn measurements_are_due_once_per_interval() {
    let mut w = World::started(spec());
    assert!(measurement_due(&w.mig, w.now), "first measurement");
    let d = w.measure(pass());
    assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
    w.advance(10);
    assert!(!measurement_due(&w.mig, w.now));
    let d = w.step(None);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(20)));
    w.advance(20);
    assert!(measurement_due(&w.mig, w.now));
}

#[test]
fn measurements_continue_after_strict_and_stop_when_permissive() {
    let mut w = World::started(spec());
    w.run_to_strict();
    w.advance(30);
    assert!(measurement_due(&w.mig, w.now));
    w.edit(|s| s.mode = MtlsMode::PERMISSIVE);
    assert!(!measurement_due(&w.mig, w.now));
}

#[test]
fn event_notes_fit_the_events_api() {
    let e = EventNote {
        warning: true,
        reason: "X".into(),
        action: "Measure".into(),
        note: "é".repeat(700),
    };
    let ev = e.to_event();
    assert!(ev.note.unwrap().len() <= 1024);
}

#[test]
fn editing_port_exceptions_after_strict_applies_them_without_a_drift_warning() {
    let mut s = spec();
    s.selector = Some(WorkloadSelector {
        match_labels: BTreeMap::from([("app".into(), "db".into())]),
    });
    let mut w = World::started(s);
    w.run_to_strict();
    w.edit(|s| {
        s.port_level_mtls = BTreeMap::from([(
            "9000".into(),
            PortMtls {
                mode: PortMode::DISABLE,
            },
        )]);
    });
    let d = w.step(None);
    let p = d.policy.unwrap();
    assert!(p.changed);
    assert_eq!(
        p.object.spec.port_level_mtls["9000"].mode.as_deref(),
        Some("DISABLE")
    );
    assert_eq!(w.phase(), Phase::Enforced);
    assert!(d.events.is_empty(), "{:?}", d.events);
}

#[test]
fn blocked_migrations_are_not_measured_and_recheck_each_interval() {
    let mut w = World::new(spec());
    w.policy = PolicyObservation::Ambiguous {
        names: vec!["a".into(), "b".into()],
    };
    let d = w.step(None);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
    assert!(!measurement_due(&w.mig, w.now));
    // Unblocked: the next round measures at once.
    w.policy = PolicyObservation::Absent;
    let d = w.step(None);
    assert_eq!(d.requeue_after, Some(Duration::from_millis(100)));
    assert!(measurement_due(&w.mig, w.now));
}

#[test]
fn failures_seen_before_the_flip_do_not_degrade_strict() {
    let mut w = World::started(spec());
    for _ in 0..20 {
        w.measure(failures(0.3)); // unrelated connection failures under PERMISSIVE
        w.advance(30);
    }
    w.measure(failures(0.3));
    assert_eq!(w.phase(), Phase::Enforced);
    assert_eq!(w.cond(types::DEGRADED).status, ConditionStatus::False);
    // Under STRICT they count.
    w.advance(30);
    w.measure(failures(0.3));
    assert_eq!(w.cond(types::DEGRADED).reason, reasons::CONNECTION_FAILURES);
}
