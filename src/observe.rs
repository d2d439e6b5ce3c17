//! The observed world, as the pure decision core sees it.
//!
//! IO layers (the Kubernetes client, the Prometheus client) produce these
//! values; `migration::decide` consumes them. Keeping the vocabulary in one
//! place lets both sides be written and tested apart.

use serde::{Deserialize, Serialize};

/// One workload that sends plaintext to the scope, as seen in
/// destination-reported telemetry. `"unknown"` names mean a client outside
/// the mesh (no sidecar, no ztunnel identity).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlaintextSource {
    pub workload: String,
    pub namespace: String,
    /// Requests (HTTP) or connections (TCP) per second over the rate window.
    pub rate: f64,
}

/// What one Prometheus evaluation produced, before any judgement.
///
/// The Prometheus client never turns a fault into a number: an error, an
/// empty vector or a non-finite value each keep their own variant so that the
/// decision core can name them in a condition and refuse to pass them.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// Both the total and the plaintext rate came back as single finite
    /// samples (the plaintext query may legitimately be empty: no plaintext
    /// series means zero plaintext, but only when the total is present).
    Traffic {
        /// All destination-reported requests/connections per second.
        total_rate: f64,
        /// Destination-reported rate with `connection_security_policy != "mutual_tls"`.
        plaintext_rate: f64,
        /// Largest plaintext sources first, at most a handful.
        top_sources: Vec<PlaintextSource>,
        /// Source-reported requests/connections to the scope that failed at
        /// the connection level (Envoy `response_flags` other than `-`): the
        /// sign, once STRICT is on, that some client still speaks plaintext
        /// and is now being refused.
        source_failure_rate: f64,
    },
    /// HTTP error, timeout, non-success status, or a body that is not a
    /// Prometheus vector.
    QueryFailed { message: String },
    /// The total query returned an empty vector: no telemetry at all.
    NoData,
    /// A sample was NaN or +/-Inf.
    NotFinite { message: String },
}

/// Enrollment of the selected, not-finished pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSummary {
    /// Pods selected by the scope whose phase is not Succeeded/Failed.
    // Kubernetes knows int32/int64 formats only; `uint32` draws a warning.
    #[schemars(with = "i64")]
    pub selected: u32,
    /// Of those, pods with a sidecar, native sidecar or ambient redirection.
    #[schemars(with = "i64")]
    pub enrolled: u32,
    /// Names of the first few pods that are not enrolled (sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_enrolled: Vec<String>,
}

impl EnrollmentSummary {
    pub fn complete(&self) -> bool {
        self.enrolled >= self.selected
    }
}

/// A DestinationRule whose client TLS setting would send plaintext (or
/// non-Istio TLS) to a host in scope, so STRICT would break its clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    /// `namespace/name` of the DestinationRule.
    pub destination_rule: String,
    /// The host it targets.
    pub host: String,
    /// Where the TLS mode was found: `trafficPolicy`, `port 8080`, `subset v1`.
    pub location: String,
    /// `DISABLE` or `SIMPLE`.
    pub tls_mode: String,
}

/// The PeerAuthentication that Istio applies to the migration's scope, as
/// found in the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyObservation {
    /// No policy exists for the scope: the operator will create one.
    Absent,
    /// Exactly one policy governs the scope (for namespace/mesh scope: the
    /// namespace-wide one; for workload scope: the one whose selector equals
    /// the migration's).
    Found {
        name: String,
        /// `spec.mtls.mode` as written (`None` when unset).
        mode: Option<String>,
        /// The whole `spec` as found, kept so `onDelete: Restore` can put it back.
        spec: serde_json::Value,
        /// Who manages it: `None` if nobody (user-written), or the
        /// `namespace/name` of the MtlsMigration recorded on it.
        managed_by: Option<String>,
        /// The spec recorded on the policy when the operator took it over
        /// (annotation `mtls.migrator.dev/original-spec`); `None` if the
        /// operator created the policy or has not taken it over yet.
        original_spec: Option<serde_json::Value>,
    },
    /// Several namespace-wide (or identical-selector) policies exist: Istio
    /// applies only the oldest, and the operator refuses to guess.
    Ambiguous { names: Vec<String> },
}
