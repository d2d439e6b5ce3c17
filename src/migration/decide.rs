//! The decision: observed world + previous status + clock in, the policy to
//! apply, the new status, events and the next wake-up out.
//!
//! Pure and deterministic: the same inputs give the same decision, so a
//! restarted operator continues from its status, and a reconcile that
//! observes nothing new produces an identical status (no write, no
//! self-triggered watch event).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp, Unit};
use kube::runtime::events::{Event, EventType};

use crate::api::conditions::{ConditionStatus, reasons, types};
use crate::api::migration::{
    AnalysisTimes, Measurement, MtlsMigration, MtlsMigrationStatus, MtlsMode, Phase, PolicyStatus,
};
use crate::migration::conditions::{find_condition, set_condition, sort_conditions};
use crate::migration::judge::{Judgement, judge, percent};
use crate::migration::policy::{PolicyApply, already_in_force, desired_policy, mode_in_force};
use crate::observe::{Conflict, EnrollmentSummary, PolicyObservation, Reading};
use crate::scope::{Scope, ScopeKind};

/// The observed world for one reconcile.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The PeerAuthentication Istio applies to the scope.
    pub policy: &'a PolicyObservation,
    pub enrollment: &'a EnrollmentSummary,
    pub conflicts: &'a [Conflict],
    /// `None`: no measurement this round (not due). Rollback, enrollment and
    /// conflict changes are decided without one.
    pub reading: Option<&'a Reading>,
}

/// An Event to publish about the migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    /// CamelCase, one of [`reasons`].
    pub reason: String,
    /// What the operator did: `ApplyPermissive`, `ApplyStrict`, `Measure`, ...
    pub action: String,
    pub note: String,
}

impl EventNote {
    /// As a kube-runtime event (`Recorder::publish`). Notes are capped at the
    /// API's 1 kB.
    pub fn to_event(&self) -> Event {
        let mut note = self.note.clone();
        if note.len() > 1024 {
            let mut cut = 1021;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push_str("...");
        }
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.clone(),
            note: Some(note),
            action: self.action.clone(),
            secondary: None,
        }
    }
}

/// What to do after one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The PeerAuthentication to server-side apply; `None`: write nothing
    /// (blocked). Applying an unchanged policy is harmless (`changed` says
    /// whether it is needed).
    pub policy: Option<PolicyApply>,
    pub status: MtlsMigrationStatus,
    /// False when `status` equals the previous status: skip the write.
    pub status_changed: bool,
    /// Publish these (after the policy write succeeded).
    pub events: Vec<EventNote>,
    /// When to reconcile again even if nothing changes: the next measurement.
    /// `None`: only on change (spec.mode PERMISSIVE needs no measurements).
    pub requeue_after: Option<Duration>,
}

/// Shortest requeue, so a measurement that is due "now" does not spin.
const MIN_REQUEUE: Duration = Duration::from_millis(100);

/// Whether the controller should query Prometheus now: only while the
/// migration aims for STRICT (observing, holding, or watching an enforced
/// scope) and is not blocked, and once per `analysis.interval`.
pub fn measurement_due(migration: &MtlsMigration, now: Timestamp) -> bool {
    if migration.spec.mode != MtlsMode::STRICT {
        return false;
    }
    // Blocked: nothing can progress, and the scope may not even be valid to
    // query. The round that unblocks asks for a measurement right away.
    if migration.status.as_ref().and_then(|s| s.phase) == Some(Phase::Blocked) {
        return false;
    }
    let Ok(times) = migration.spec.analysis.times() else {
        return false;
    };
    match migration
        .status
        .as_ref()
        .and_then(|s| s.last_measurement.as_ref())
    {
        None => true,
        // A clock that went backwards (a new leader with another clock) also
        // makes it due: measuring more often is safe.
        Some(last) => {
            let since = now.duration_since(last.time);
            since.is_negative() || since >= signed(times.interval)
        }
    }
}

/// Decides the next step of `migration`. `root_namespace` is Istio's root
/// namespace (mesh-wide scope); `now` is the clock.
pub fn decide(
    migration: &MtlsMigration,
    root_namespace: &str,
    observed: &Observed,
    now: Timestamp,
) -> Decision {
    // Status times at millisecond precision: stable through JSON, and fine
    // enough for second-scale intervals.
    let now = now.round(Unit::Millisecond).unwrap_or(now);
    let mut d = Decider::new(migration, observed, now);
    d.run(root_namespace);
    d.finish()
}

/// Working state of one decision.
struct Decider<'a> {
    mig: &'a MtlsMigration,
    obs: &'a Observed<'a>,
    now: Timestamp,
    generation: i64,
    owner: String,
    prev: MtlsMigrationStatus,
    gen_changed: bool,
    st: MtlsMigrationStatus,
    judgement: Option<Judgement>,
    policy: Option<PolicyApply>,
    events: Vec<EventNote>,
    times: Option<AnalysisTimes>,
}

/// A reason and its message.
type Why = (&'static str, String);

impl<'a> Decider<'a> {
    fn new(mig: &'a MtlsMigration, obs: &'a Observed<'a>, now: Timestamp) -> Self {
        let prev = mig.status.clone().unwrap_or_default();
        let generation = mig.metadata.generation.unwrap_or(0);
        let e = obs.enrollment;
        let st = MtlsMigrationStatus {
            observed_generation: Some(generation),
            enrollment: Some(e.clone()),
            enrolled: Some(format!("{}/{}", e.enrolled, e.selected)),
            conflicts: obs.conflicts.to_vec(),
            ..prev.clone()
        };
        Decider {
            mig,
            obs,
            now,
            generation,
            owner: mig.key(),
            gen_changed: prev.observed_generation != Some(generation),
            prev,
            st,
            judgement: obs.reading.map(|r| judge(r, &mig.spec.analysis)),
            policy: None,
            events: Vec::new(),
            times: None,
        }
    }

    fn run(&mut self, root_namespace: &str) {
        let times = match self.mig.spec.analysis.times() {
            Ok(t) => t,
            Err(e) => {
                return self.blocked(
                    reasons::INVALID_SPEC,
                    format!("{e}. Fix the spec (the CRD in use may predate its validation rules)."),
                );
            }
        };
        self.times = Some(times);
        let namespace = self.mig.metadata.namespace.clone().unwrap_or_default();
        let labels = self
            .mig
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone());
        let scope = Scope::new(namespace.clone(), labels, root_namespace);
        if let Err(e) = scope.check() {
            return self.blocked(reasons::INVALID_SCOPE, sentence(&e.to_string()));
        }
        match self.obs.policy {
            PolicyObservation::Ambiguous { names } => {
                let what = if scope.kind() == ScopeKind::Workload {
                    "PeerAuthentications with this selector"
                } else {
                    "namespace-wide PeerAuthentications"
                };
                return self.blocked(
                    reasons::AMBIGUOUS_POLICY,
                    format!(
                        "Several {what} exist ({}); Istio applies only the oldest. Delete all but \
                         one and the migration takes the remaining one over.",
                        names.join(", ")
                    ),
                );
            }
            PolicyObservation::Found {
                name,
                managed_by: Some(other),
                ..
            } if *other != self.owner => {
                return self.blocked(
                    reasons::POLICY_OWNED_BY_ANOTHER_MIGRATION,
                    format!(
                        "PeerAuthentication {namespace}/{name} is managed by MtlsMigration {other}. \
                         Only one migration may drive a scope: delete one of them."
                    ),
                );
            }
            _ => {}
        }

        let (name, original) = self.policy_identity();
        self.st.policy = Some(PolicyStatus {
            name: name.clone(),
            created: original.is_none(),
            original_spec: original.clone(),
            applied_mode: self.st.policy.as_ref().and_then(|p| p.applied_mode.clone()),
        });
        let target = |mode: &str| {
            desired_policy(
                &namespace,
                &name,
                &scope,
                mode,
                &self.mig.spec.port_level_mtls,
                &self.owner,
                original.as_ref(),
            )
        };
        let permissive = target("PERMISSIVE");
        let strict = target("STRICT");

        if self.mig.spec.mode == MtlsMode::PERMISSIVE {
            self.apply(permissive);
            return self.rolled_back();
        }
        let found_mode = match self.obs.policy {
            PolicyObservation::Found { mode, .. } => mode.as_deref(),
            _ => None,
        };
        // A scope that already is STRICT is adopted as such: dropping it to
        // PERMISSIVE just to observe would weaken what is in force.
        let adopting =
            matches!(self.prev.phase, None | Some(Phase::Blocked)) && found_mode == Some("STRICT");
        if self.prev.phase == Some(Phase::Enforced) || adopting {
            self.apply(strict);
            return self.enforced(None, adopting);
        }
        let permissive_in_force = match self.obs.policy {
            PolicyObservation::Found { spec, .. } => serde_json::from_value(spec.clone())
                .is_ok_and(|found| mode_in_force(&found, &permissive.spec)),
            _ => false,
        };
        self.apply(permissive);
        self.observing(times, permissive_in_force, strict);
    }

    /// The managed policy's name, and its original spec if it was taken over
    /// (`None`: the operator created it).
    fn policy_identity(&self) -> (String, Option<serde_json::Value>) {
        let recorded = self.prev.policy.as_ref();
        match self.obs.policy {
            PolicyObservation::Found {
                name,
                spec,
                managed_by,
                original_spec,
                ..
            } => {
                let recorded = recorded.filter(|p| p.name == *name);
                // The annotation on the policy is the durable record; status
                // covers an annotation someone stripped.
                let original = original_spec
                    .clone()
                    .or_else(|| recorded.and_then(|p| p.original_spec.clone()));
                let first_takeover = managed_by.is_none()
                    && original.is_none()
                    && !recorded.is_some_and(|p| p.created);
                (
                    name.clone(),
                    if first_takeover {
                        Some(spec.clone())
                    } else {
                        original
                    },
                )
            }
            // Recreate a policy that disappeared under the same name.
            _ => match recorded {
                Some(p) => (p.name.clone(), p.original_spec.clone()),
                None => (self.mig.metadata.name.clone().unwrap_or_default(), None),
            },
        }
    }

    fn apply(&mut self, object: crate::api::istio::PeerAuthentication) {
        let changed = !already_in_force(
            self.obs.policy,
            &object,
            &self.owner,
            self.st
                .policy
                .as_ref()
                .and_then(|p| p.original_spec.as_ref()),
        );
        let previous_mode = match self.obs.policy {
            PolicyObservation::Found { mode, .. } => mode.clone(),
            _ => None,
        };
        if let Some(p) = self.st.policy.as_mut() {
            p.applied_mode = object.spec.mode().map(String::from);
        }
        self.policy = Some(PolicyApply {
            object,
            changed,
            previous_mode,
        });
    }

    fn policy_name(&self) -> String {
        let ns = self.mig.metadata.namespace.as_deref().unwrap_or_default();
        let name = self
            .st
            .policy
            .as_ref()
            .map(|p| p.name.as_str())
            .unwrap_or_default();
        format!("{ns}/{name}")
    }

    // ----- branches -----------------------------------------------------

    /// Nothing can be written until a person resolves `reason`.
    fn blocked(&mut self, reason: &'static str, message: String) {
        self.st.phase = Some(Phase::Blocked);
        self.st.hold_started_at = None;
        let measured = self.record_measurement(&[(reason, message.clone())]);
        self.set(
            types::READY,
            ConditionStatus::False,
            reason,
            message.clone(),
        );
        self.set(
            types::PERMISSIVE_APPLIED,
            ConditionStatus::False,
            reason,
            message.clone(),
        );
        self.set(
            types::STRICT_ENFORCED,
            ConditionStatus::False,
            reason,
            message,
        );
        self.set_enrollment();
        self.set_plaintext(measured);
        self.set(
            types::DEGRADED,
            ConditionStatus::False,
            reasons::AS_EXPECTED,
            "Nothing is applied while the migration is blocked.".into(),
        );
    }

    /// `spec.mode: PERMISSIVE`: applied at once, no measurement needed.
    fn rolled_back(&mut self) {
        let was_migrating = matches!(
            self.prev.phase,
            Some(Phase::Observing | Phase::Holding | Phase::Enforced | Phase::RolledBack)
        );
        let (phase, reason) = if was_migrating {
            (Phase::RolledBack, reasons::ROLLED_BACK)
        } else {
            (Phase::Permissive, reasons::PERMISSIVE_IN_FORCE)
        };
        self.st.phase = Some(phase);
        self.st.hold_started_at = None;
        self.st.enforced_at = None;
        let measured = self.record_measurement(&[]);
        let policy = self.policy_name();
        let message = if was_migrating {
            format!(
                "spec.mode is PERMISSIVE: PeerAuthentication {policy} is PERMISSIVE again. \
                 Set spec.mode to STRICT to start observing anew."
            )
        } else {
            format!("spec.mode is PERMISSIVE and PeerAuthentication {policy} is PERMISSIVE.")
        };
        self.set(types::READY, ConditionStatus::True, reason, message.clone());
        self.set(
            types::PERMISSIVE_APPLIED,
            ConditionStatus::True,
            reasons::POLICY_PERMISSIVE,
            format!(
                "PeerAuthentication {policy} is PERMISSIVE: plaintext and mTLS are both accepted."
            ),
        );
        self.set(
            types::STRICT_ENFORCED,
            ConditionStatus::False,
            reason,
            message,
        );
        self.set_enrollment();
        if measured {
            self.set_plaintext(true);
        } else {
            self.set(
                types::PLAINTEXT_BELOW_THRESHOLD,
                ConditionStatus::Unknown,
                reasons::NOT_MEASURED,
                "Not measured while spec.mode is PERMISSIVE.".into(),
            );
        }
        self.set(
            types::DEGRADED,
            ConditionStatus::False,
            reasons::AS_EXPECTED,
            "STRICT is not in force.".into(),
        );
    }

    /// STRICT is (or becomes) in force. `flip`: the hold that just completed;
    /// `adopting`: the policy was already STRICT when the migration began.
    fn enforced(&mut self, flip: Option<Timestamp>, adopting: bool) {
        let policy = self.policy_name();
        self.st.phase = Some(Phase::Enforced);
        self.st.hold_started_at = None;
        if flip.is_some() || adopting || self.st.enforced_at.is_none() {
            self.st.enforced_at = Some(self.now);
        }
        let blockers = self.blockers();
        let measured = self.record_measurement(&blockers);

        // Connection failures are only known from a Traffic reading; between
        // readings (or when one fails) the last known answer stands.
        let failures = match self.judgement.as_ref().and_then(|j| j.source_failure_rate) {
            // The flip's own reading was taken under PERMISSIVE: failures in
            // it are not STRICT's doing.
            Some(_) if flip.is_some() => false,
            Some(rate) => rate > 0.0,
            None => match self
                .prev
                .last_measurement
                .as_ref()
                .and_then(|m| m.source_failure_rate)
            {
                Some(rate) if self.judgement.is_some() => rate > 0.0,
                _ => find_condition(&self.prev.conditions, types::DEGRADED).is_some_and(|c| {
                    c.status == ConditionStatus::True && c.reason == reasons::CONNECTION_FAILURES
                }),
            },
        };
        let mut issues: Vec<Why> = Vec::new();
        if failures {
            let rate = self
                .st
                .last_measurement
                .as_ref()
                .and_then(|m| m.source_failure_rate)
                .filter(|r| *r > 0.0)
                .map(|r| format!(" ({r:.3}/s)"))
                .unwrap_or_default();
            issues.push((
                reasons::CONNECTION_FAILURES,
                format!(
                    "Clients see connection failures to the scope{rate} since STRICT: some client \
                     still sends plaintext and is refused. Find it in the source-reported telemetry, \
                     enroll it, or set spec.mode to PERMISSIVE to roll back."
                ),
            ));
        }
        issues.extend(blockers);
        let (ready_msg, degraded) = match issues.first() {
            Some((reason, _)) => (
                format!(
                    "PeerAuthentication {policy} is STRICT; degraded ({reason}): see the Degraded condition."
                ),
                Some(issues.clone()),
            ),
            None => (format!("PeerAuthentication {policy} is STRICT."), None),
        };
        let prev_ready = self.prev_ready();
        self.set(
            types::READY,
            ConditionStatus::True,
            reasons::ENFORCED,
            ready_msg.clone(),
        );
        self.set(
            types::PERMISSIVE_APPLIED,
            ConditionStatus::False,
            reasons::POLICY_STRICT,
            format!("Superseded: PeerAuthentication {policy} is STRICT."),
        );
        self.set(
            types::STRICT_ENFORCED,
            ConditionStatus::True,
            reasons::ENFORCED,
            format!("PeerAuthentication {policy} is STRICT: only mTLS is accepted."),
        );
        self.set_enrollment();
        self.set_plaintext(measured);
        match degraded {
            Some(issues) => {
                let message = issues
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                self.set(types::DEGRADED, ConditionStatus::True, issues[0].0, message);
            }
            None => self.set(
                types::DEGRADED,
                ConditionStatus::False,
                reasons::AS_EXPECTED,
                "No unenrolled pods, no conflicting DestinationRules, no connection failures."
                    .into(),
            ),
        }

        // The transition event says how STRICT came about.
        if prev_ready != Some((ConditionStatus::True, reasons::ENFORCED.to_string())) {
            let note = match flip {
                Some(started) => format!(
                    "Every measurement passed from {started} to {} (hold {}): applied STRICT to \
                     PeerAuthentication {policy}.",
                    self.now, self.mig.spec.analysis.hold
                ),
                None if adopting => format!(
                    "PeerAuthentication {policy} was already STRICT: adopted without a PERMISSIVE phase."
                ),
                None => ready_msg,
            };
            self.events.push(EventNote {
                warning: false,
                reason: reasons::ENFORCED.into(),
                action: "ApplyStrict".into(),
                note,
            });
        }
    }

    /// PERMISSIVE is applied; measurements decide when to flip.
    fn observing(
        &mut self,
        times: AnalysisTimes,
        permissive_in_force: bool,
        strict: crate::api::istio::PeerAuthentication,
    ) {
        let policy = self.policy_name();
        let mut blockers = self.blockers();
        if !permissive_in_force {
            blockers.push((
                reasons::PERMISSIVE_PENDING,
                format!(
                    "Applying PERMISSIVE to PeerAuthentication {policy}; evidence counts from the \
                     next measurement."
                ),
            ));
        }
        let mut hold = if self.gen_changed {
            None
        } else {
            self.prev.hold_started_at
        };
        if !blockers.is_empty() {
            hold = None;
        }
        if let Some(j) = &self.judgement {
            if j.passed() && blockers.is_empty() {
                // Operator down, Prometheus not asked, leader lost: progress
                // across a gap is not trusted.
                let gap = self
                    .prev
                    .last_measurement
                    .as_ref()
                    .map(|m| self.now.duration_since(m.time))
                    .filter(|g| g.is_negative() || *g > signed(times.interval) * 2);
                match (hold, gap) {
                    (Some(started), Some(gap)) => {
                        self.events.push(EventNote {
                            warning: true,
                            reason: reasons::HOLD_RESTARTED.into(),
                            action: "Measure".into(),
                            note: format!(
                                "{} passed between this measurement and the previous one (more than \
                                 twice the {} interval); the hold that started at {started} starts over.",
                                human(gap),
                                self.mig.spec.analysis.interval
                            ),
                        });
                        hold = Some(self.now);
                    }
                    (None, _) => hold = Some(self.now),
                    (Some(_), None) => {}
                }
                let started = hold.expect("set above");
                if self.now.duration_since(started) >= signed(times.hold) {
                    self.events.push(EventNote {
                        warning: false,
                        reason: reasons::HOLD_COMPLETE.into(),
                        action: "Measure".into(),
                        note: format!(
                            "Every measurement passed for {} since {started}.",
                            self.mig.spec.analysis.hold
                        ),
                    });
                    self.policy = None;
                    self.apply(strict);
                    return self.enforced(Some(started), false);
                }
            } else {
                hold = None;
            }
        }
        self.st.hold_started_at = hold;
        let measured = self.record_measurement(&blockers);
        let plaintext = self.set_plaintext(measured);

        let (phase, ready): (Phase, Why) = if let Some(b) = blockers.first() {
            (Phase::Observing, b.clone())
        } else if plaintext.0 != ConditionStatus::True {
            (Phase::Observing, (plaintext.1, plaintext.2))
        } else if let Some(started) = hold {
            let flip_at = started.checked_add(signed(times.hold)).unwrap_or(started);
            (
                Phase::Holding,
                (
                    reasons::HOLDING,
                    format!(
                        "Every measurement has passed since {started}; STRICT at about {flip_at} if \
                         they keep passing (hold {}).",
                        self.mig.spec.analysis.hold
                    ),
                ),
            )
        } else {
            (
                Phase::Observing,
                (
                    reasons::AWAITING_MEASUREMENT,
                    format!(
                        "Nothing blocks the flip; the next passing measurement starts the {} hold.",
                        self.mig.spec.analysis.hold
                    ),
                ),
            )
        };
        self.st.phase = Some(phase);
        let not_yet = format!("Not yet: {}", ready.1);
        self.set(types::READY, ConditionStatus::False, ready.0, ready.1);
        if permissive_in_force {
            self.set(
                types::PERMISSIVE_APPLIED,
                ConditionStatus::True,
                reasons::POLICY_PERMISSIVE,
                format!("PeerAuthentication {policy} is PERMISSIVE: plaintext and mTLS are both accepted."),
            );
        } else {
            self.set(
                types::PERMISSIVE_APPLIED,
                ConditionStatus::False,
                reasons::PERMISSIVE_PENDING,
                format!("Applying PERMISSIVE to PeerAuthentication {policy}."),
            );
        }
        self.set(
            types::STRICT_ENFORCED,
            ConditionStatus::False,
            ready.0,
            not_yet,
        );
        self.set_enrollment();
        self.set(
            types::DEGRADED,
            ConditionStatus::False,
            reasons::AS_EXPECTED,
            "STRICT is not in force.".into(),
        );
    }

    // ----- pieces -------------------------------------------------------

    /// What blocks a flip apart from the measurement itself: DestinationRule
    /// conflicts and unenrolled pods. Checked every round, measured or not.
    fn blockers(&self) -> Vec<Why> {
        let mut out = Vec::new();
        if !self.obs.conflicts.is_empty() {
            let listed: Vec<String> = self
                .obs
                .conflicts
                .iter()
                .take(3)
                .map(|c| {
                    format!(
                        "{} ({}, {}: {})",
                        c.destination_rule, c.host, c.location, c.tls_mode
                    )
                })
                .collect();
            let more = self.obs.conflicts.len().saturating_sub(3);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            out.push((
                reasons::DESTINATION_RULE_CONFLICT,
                format!(
                    "DestinationRule {}{more} sets client TLS to DISABLE or SIMPLE for a host in \
                     scope: its clients send traffic that STRICT refuses. Use ISTIO_MUTUAL or drop \
                     the tls setting.",
                    listed.join(", ")
                ),
            ));
        }
        let e = self.obs.enrollment;
        if self.mig.spec.sidecars.required && !e.complete() {
            out.push((reasons::PODS_NOT_ENROLLED, not_enrolled_message(e)));
        }
        out
    }

    /// Records this round's reading (if any) as `lastMeasurement`; returns
    /// whether there was one.
    fn record_measurement(&mut self, blockers: &[Why]) -> bool {
        let Some(j) = &self.judgement else {
            return false;
        };
        let (passed, reason, message) = match blockers.first() {
            Some((reason, message)) if j.passed() => (false, *reason, message.clone()),
            _ => (j.passed(), j.reason, j.message.clone()),
        };
        self.st.last_measurement = Some(Measurement {
            time: self.now,
            passed,
            reason: reason.to_string(),
            message,
            total_rate: j.total_rate,
            plaintext_rate: j.plaintext_rate,
            ratio: j.ratio,
            source_failure_rate: j.source_failure_rate,
        });
        self.st.plaintext_ratio = j.ratio.map(percent);
        if let Some(sources) = &j.top_sources {
            self.st.top_plaintext_sources = sources.clone();
        }
        true
    }

    /// Sets PlaintextBelowThreshold from this round's reading, or carries the
    /// previous verdict (a spec edit voids it). Returns what it set.
    fn set_plaintext(&mut self, measured: bool) -> (ConditionStatus, &'static str, String) {
        let (status, reason, message) = match (&self.judgement, measured) {
            (Some(j), true) => (j.status, j.reason, j.message.clone()),
            _ => match find_condition(&self.prev.conditions, types::PLAINTEXT_BELOW_THRESHOLD) {
                Some(c) if !self.gen_changed && c.reason != reasons::NOT_MEASURED => {
                    (c.status, static_reason(&c.reason), c.message.clone())
                }
                _ => (
                    ConditionStatus::Unknown,
                    reasons::AWAITING_MEASUREMENT,
                    if self.gen_changed && self.prev.observed_generation.is_some() {
                        "The spec changed: waiting for a measurement under the new settings."
                            .to_string()
                    } else {
                        "Waiting for the first measurement.".to_string()
                    },
                ),
            },
        };
        self.set(
            types::PLAINTEXT_BELOW_THRESHOLD,
            status,
            reason,
            message.clone(),
        );
        (status, reason, message)
    }

    fn set_enrollment(&mut self) {
        let e = self.obs.enrollment;
        let (status, reason, message) = if !self.mig.spec.sidecars.required {
            (
                ConditionStatus::True,
                reasons::ENROLLMENT_NOT_REQUIRED,
                format!(
                    "sidecars.required is false ({}/{} pods enrolled).",
                    e.enrolled, e.selected
                ),
            )
        } else if e.selected == 0 {
            (
                ConditionStatus::True,
                reasons::NO_PODS_SELECTED,
                "No running pods are selected.".to_string(),
            )
        } else if e.complete() {
            (
                ConditionStatus::True,
                reasons::ALL_PODS_ENROLLED,
                format!("All {} selected pods are in the mesh.", e.selected),
            )
        } else {
            (
                ConditionStatus::False,
                reasons::PODS_NOT_ENROLLED,
                not_enrolled_message(e),
            )
        };
        self.set(types::ENROLLMENT_VERIFIED, status, reason, message);
    }

    fn set(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: String) {
        set_condition(
            &mut self.st.conditions,
            type_,
            status,
            reason,
            message,
            self.generation,
            self.now,
        );
    }

    fn prev_ready(&self) -> Option<(ConditionStatus, String)> {
        find_condition(&self.prev.conditions, types::READY).map(|c| (c.status, c.reason.clone()))
    }

    fn prev_degraded(&self) -> Option<(ConditionStatus, String)> {
        find_condition(&self.prev.conditions, types::DEGRADED).map(|c| (c.status, c.reason.clone()))
    }

    /// Transition events, the status comparison and the wake-up.
    fn finish(mut self) -> Decision {
        sort_conditions(&mut self.st.conditions, &types::ALL);
        let ready = find_condition(&self.st.conditions, types::READY).cloned();
        if let Some(ready) = &ready {
            let now_pair = (ready.status, ready.reason.clone());
            let enforced_noted = self.events.iter().any(|e| e.reason == reasons::ENFORCED);
            if self.prev_ready() != Some(now_pair) {
                if !enforced_noted {
                    self.events.push(EventNote {
                        warning: is_warning(&ready.reason),
                        reason: ready.reason.clone(),
                        action: action_for(&ready.reason).into(),
                        note: ready.message.clone(),
                    });
                }
            } else if let Some(p) = self
                .policy
                .as_ref()
                .filter(|p| p.changed && !self.gen_changed)
            {
                // Same spec, same state, yet the policy needed a write: someone edited it.
                if matches!(self.obs.policy, PolicyObservation::Found { managed_by: Some(m), .. } if *m == self.owner)
                {
                    self.events.push(EventNote {
                        warning: true,
                        reason: reasons::POLICY_DRIFT_CORRECTED.into(),
                        action: format!("Apply{}", title(p.mode())),
                        note: format!(
                            "PeerAuthentication {}/{} had been changed (mode {}); re-applied {}. Edit \
                             the MtlsMigration instead.",
                            p.namespace(),
                            p.name(),
                            p.previous_mode.as_deref().unwrap_or("unset"),
                            p.mode()
                        ),
                    });
                }
            }
        }
        if let Some(deg) = find_condition(&self.st.conditions, types::DEGRADED).cloned() {
            let before = self.prev_degraded();
            let changed = before.as_ref() != Some(&(deg.status, deg.reason.clone()));
            if changed && deg.status == ConditionStatus::True {
                self.events.push(EventNote {
                    warning: true,
                    reason: deg.reason.clone(),
                    action: "Observe".into(),
                    note: deg.message.clone(),
                });
            } else if changed && before.is_some_and(|(s, _)| s == ConditionStatus::True) {
                self.events.push(EventNote {
                    warning: false,
                    reason: reasons::RECOVERED.into(),
                    action: "Observe".into(),
                    note: "No longer degraded.".into(),
                });
            }
        }
        let requeue_after = self.requeue_after();
        let status_changed = self.mig.status.as_ref() != Some(&self.st);
        Decision {
            policy: self.policy,
            status: self.st,
            status_changed,
            events: self.events,
            requeue_after,
        }
    }

    fn requeue_after(&self) -> Option<Duration> {
        if self.mig.spec.mode != MtlsMode::STRICT {
            return None;
        }
        let interval = self.times?.interval;
        if self.st.phase == Some(Phase::Blocked) {
            // A periodic re-check; the watches bring the changes that unblock.
            return Some(interval);
        }
        let next = match self.st.last_measurement.as_ref() {
            None => return Some(MIN_REQUEUE),
            Some(m) => m.time.checked_add(signed(interval)).ok()?,
        };
        let wait = next.duration_since(self.now);
        let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
        Some(wait.clamp(MIN_REQUEUE, interval))
    }
}

fn not_enrolled_message(e: &EnrollmentSummary) -> String {
    let missing = e.selected.saturating_sub(e.enrolled);
    let names = if e.not_enrolled.is_empty() {
        String::new()
    } else {
        let more = (missing as usize).saturating_sub(e.not_enrolled.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!(": {}{more}", e.not_enrolled.join(", "))
    };
    format!(
        "{missing} of {} selected pods are not in the mesh{names}. Their plaintext calls would be \
         refused under STRICT: restart them with sidecar injection enabled, or enroll them in ambient.",
        e.selected
    )
}

/// Capitalized, with a full stop.
fn sentence(s: &str) -> String {
    let mut c = s.chars();
    let mut out: String = c
        .next()
        .map(|f| f.to_uppercase().collect())
        .unwrap_or_default();
    out.push_str(c.as_str());
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// `1m30s`-style text for messages.
fn human(d: SignedDuration) -> String {
    let secs = d.as_secs().unsigned_abs();
    let sign = if d.is_negative() { "-" } else { "" };
    match secs {
        s if s >= 3600 => format!("{sign}{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{sign}{}m{}s", s / 60, s % 60),
        s => format!("{sign}{s}s"),
    }
}

fn title(mode: &str) -> String {
    let lower = mode.to_ascii_lowercase();
    let mut c = lower.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// Reasons that mean something needs attention.
fn is_warning(reason: &str) -> bool {
    [
        reasons::METRICS_UNAVAILABLE,
        reasons::NO_TELEMETRY,
        reasons::NOT_FINITE,
        reasons::INVALID_MEASUREMENT,
        reasons::PLAINTEXT_ABOVE_THRESHOLD,
        reasons::PODS_NOT_ENROLLED,
        reasons::DESTINATION_RULE_CONFLICT,
        reasons::AMBIGUOUS_POLICY,
        reasons::POLICY_OWNED_BY_ANOTHER_MIGRATION,
        reasons::INVALID_SCOPE,
        reasons::INVALID_SPEC,
    ]
    .contains(&reason)
}

fn action_for(reason: &str) -> &'static str {
    match reason {
        reasons::ENFORCED => "ApplyStrict",
        reasons::ROLLED_BACK | reasons::PERMISSIVE_IN_FORCE | reasons::PERMISSIVE_PENDING => {
            "ApplyPermissive"
        }
        reasons::AMBIGUOUS_POLICY
        | reasons::POLICY_OWNED_BY_ANOTHER_MIGRATION
        | reasons::INVALID_SCOPE
        | reasons::INVALID_SPEC => "Block",
        _ => "Measure",
    }
}

/// The `&'static str` for a reason read back from status (unknown text maps
/// to AwaitingMeasurement: a verdict we cannot name is no verdict).
fn static_reason(reason: &str) -> &'static str {
    [
        reasons::BELOW_THRESHOLD,
        reasons::PLAINTEXT_ABOVE_THRESHOLD,
        reasons::METRICS_UNAVAILABLE,
        reasons::NO_TELEMETRY,
        reasons::NOT_FINITE,
        reasons::INVALID_MEASUREMENT,
        reasons::INSUFFICIENT_TRAFFIC,
        reasons::AWAITING_MEASUREMENT,
    ]
    .into_iter()
    .find(|r| *r == reason)
    .unwrap_or(reasons::AWAITING_MEASUREMENT)
}
