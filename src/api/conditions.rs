//! Status conditions: the Kubernetes-convention `Condition` shape, the
//! condition types this operator sets, and every reason it may give.
//!
//! Reasons live here as constants so the decision core, the CLI and the tests
//! agree on spelling; docs and alerting key on them.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition status: True, False or Unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// One aspect of the migration's state, shaped like `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, PermissiveApplied, EnrollmentVerified, PlaintextBelowThreshold,
    /// StrictEnforced or Degraded.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// Why, in one CamelCase word (see the operator's docs for the list).
    pub reason: String,
    /// What is going on, for a person.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (not when reason or message changed).
    #[schemars(schema_with = "crate::api::migration::timestamp_schema")]
    pub last_transition_time: Timestamp,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition types, in the order they appear in status.
pub mod types {
    /// Summary: True only when the desired end state (`spec.mode`) is in force.
    pub const READY: &str = "Ready";
    /// The managed PeerAuthentication is PERMISSIVE (observation or rollback).
    pub const PERMISSIVE_APPLIED: &str = "PermissiveApplied";
    /// Every selected, not-finished pod is in the mesh (or enrollment is not required).
    pub const ENROLLMENT_VERIFIED: &str = "EnrollmentVerified";
    /// The latest measurement found the plaintext share at or below the maximum.
    /// Unknown when there was no usable measurement.
    pub const PLAINTEXT_BELOW_THRESHOLD: &str = "PlaintextBelowThreshold";
    /// The managed PeerAuthentication is STRICT.
    pub const STRICT_ENFORCED: &str = "StrictEnforced";
    /// After STRICT: something now breaks (unenrolled pod, refused connections,
    /// a DestinationRule forcing plaintext). The operator does not flip back by itself.
    pub const DEGRADED: &str = "Degraded";

    pub const ALL: [&str; 6] = [
        READY,
        PERMISSIVE_APPLIED,
        ENROLLMENT_VERIFIED,
        PLAINTEXT_BELOW_THRESHOLD,
        STRICT_ENFORCED,
        DEGRADED,
    ];
}

/// Condition (and event) reasons.
pub mod reasons {
    // Desired state reached (Ready=True).
    /// STRICT is applied.
    pub const ENFORCED: &str = "Enforced";
    /// `spec.mode: PERMISSIVE` after the migration had started: PERMISSIVE is applied.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// `spec.mode: PERMISSIVE` from the start: PERMISSIVE is applied.
    pub const PERMISSIVE_IN_FORCE: &str = "PermissiveInForce";

    // Progress towards STRICT.
    /// Every measurement has passed since the hold started.
    pub const HOLDING: &str = "Holding";
    /// The hold elapsed with every measurement passing (event at the flip).
    pub const HOLD_COMPLETE: &str = "HoldComplete";
    /// The hold restarted because measurements were missing for too long (event).
    pub const HOLD_RESTARTED: &str = "HoldRestarted";
    /// Nothing blocks; the next measurement decides.
    pub const AWAITING_MEASUREMENT: &str = "AwaitingMeasurement";
    /// PERMISSIVE is being applied this round; evidence counts from the next measurement.
    pub const PERMISSIVE_PENDING: &str = "PermissivePending";

    // Measurement verdicts (PlaintextBelowThreshold).
    pub const BELOW_THRESHOLD: &str = "BelowThreshold";
    pub const PLAINTEXT_ABOVE_THRESHOLD: &str = "PlaintextAboveThreshold";
    /// Prometheus query failed (error, timeout, bad answer).
    pub const METRICS_UNAVAILABLE: &str = "MetricsUnavailable";
    /// Prometheus answered with no series for the scope.
    pub const NO_TELEMETRY: &str = "NoTelemetry";
    /// A sample was NaN or infinite.
    pub const NOT_FINITE: &str = "NotFinite";
    /// A rate was negative, or the plaintext rate otherwise made no sense.
    pub const INVALID_MEASUREMENT: &str = "InvalidMeasurement";
    /// Total rate below `analysis.minRequestRate` (including zero: traffic stopped).
    pub const INSUFFICIENT_TRAFFIC: &str = "InsufficientTraffic";
    /// Not measured: `spec.mode` is PERMISSIVE.
    pub const NOT_MEASURED: &str = "NotMeasured";

    // Enrollment.
    pub const ALL_PODS_ENROLLED: &str = "AllPodsEnrolled";
    pub const PODS_NOT_ENROLLED: &str = "PodsNotEnrolled";
    pub const NO_PODS_SELECTED: &str = "NoPodsSelected";
    /// `sidecars.required: false`.
    pub const ENROLLMENT_NOT_REQUIRED: &str = "EnrollmentNotRequired";

    // Blockers.
    pub const DESTINATION_RULE_CONFLICT: &str = "DestinationRuleConflict";
    /// Several namespace-wide (or same-selector) PeerAuthentications: Istio applies the oldest only.
    pub const AMBIGUOUS_POLICY: &str = "AmbiguousPolicy";
    pub const POLICY_OWNED_BY_ANOTHER_MIGRATION: &str = "PolicyOwnedByAnotherMigration";
    /// A selector in Istio's root namespace: Istio ignores such a policy.
    pub const INVALID_SCOPE: &str = "InvalidScope";
    /// A spec value the API server should have rejected (e.g. an unparsable duration).
    pub const INVALID_SPEC: &str = "InvalidSpec";

    // Policy state.
    pub const POLICY_PERMISSIVE: &str = "PolicyPermissive";
    pub const POLICY_STRICT: &str = "PolicyStrict";
    /// Event: the PeerAuthentication had drifted from what the migration wants and was re-applied.
    pub const POLICY_DRIFT_CORRECTED: &str = "PolicyDriftCorrected";

    // Degraded.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Source-reported connection failures to the scope after STRICT.
    pub const CONNECTION_FAILURES: &str = "ConnectionFailures";
    /// Event: a Degraded condition cleared.
    pub const RECOVERED: &str = "Recovered";
}
