//! The `MtlsMigration` custom resource: what the user asks for (spec) and
//! what the operator reports (status).
//!
//! Validation that the API server can do lives here as CEL rules, so an
//! invalid spec is refused at `kubectl apply` with a message, not discovered
//! by the controller later.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::conditions::Condition;
use crate::observe::{Conflict, EnrollmentSummary, PlaintextSource};

/// Go-style durations as the API server's CEL `duration()` parses them
/// (no sign: negative durations are refused by the pattern, zero by the rule).
/// Checking the pattern first keeps `duration()` from raising an evaluation
/// error instead of our message.
const DURATION_PATTERN: &str = "^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$";

fn positive_duration_rule() -> Rule {
    Rule::new(format!(
        "self.matches('{DURATION_PATTERN}') && duration(self) > duration('0s')"
    ))
}

/// `longer >= shorter`, judged only when both parse (each field's own rule
/// reports a malformed value).
fn duration_order_rule(longer: &str, shorter: &str) -> Rule {
    Rule::new(format!(
        "!(self.{longer}.matches('{DURATION_PATTERN}') && self.{shorter}.matches('{DURATION_PATTERN}')) \
         || duration(self.{longer}) >= duration(self.{shorter})"
    ))
}

/// The desired end state of a scope, and how the evidence for STRICT is judged.
// Each printcolumn repeats `type_ = ...`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mtls.migrator.dev",
    version = "v1alpha1",
    kind = "MtlsMigration",
    namespaced,
    shortname = "mtlsm",
    status = "MtlsMigrationStatus",
    derive = "PartialEq",
    doc = "Moves the Istio PeerAuthentication of a workload, namespace or mesh from PERMISSIVE to STRICT mutual TLS once telemetry shows no plaintext traffic for a hold period.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Plaintext",
        type_ = "string",
        json_path = ".status.plaintextRatio",
        description = "Plaintext share of requests at the latest measurement"
    ),
    printcolumn(
        name = "Enrolled",
        type_ = "string",
        json_path = ".status.enrolled",
        description = "Enrolled pods / selected pods"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1,
        description = "Why Ready is what it is"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new(
        "!has(self.portLevelMtls) || size(self.portLevelMtls) == 0 || (has(self.selector) && has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0)"
    ).message("portLevelMtls requires selector.matchLabels: Istio ignores port-level settings on namespace- and mesh-wide policies"),
    validation = Rule::new(
        "has(self.selector) == has(oldSelf.selector) && (!has(self.selector) || self.selector == oldSelf.selector)"
    ).message("selector is immutable: create a new MtlsMigration to change the scope"),
)]
#[serde(rename_all = "camelCase")]
pub struct MtlsMigrationSpec {
    /// Desired end state. STRICT: observe under PERMISSIVE, then flip on
    /// evidence. PERMISSIVE: apply PERMISSIVE now (this is the rollback).
    pub mode: MtlsMode,

    /// Workload scope: the pods whose labels match. Without it the scope is
    /// the namespace, or the whole mesh in Istio's root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,

    /// Exceptions kept at the end state, keyed by container port (not
    /// Service port). Applied together with STRICT. Requires a selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(
        "self.all(p, p.matches('^[1-9][0-9]{0,4}$') && int(p) <= 65535)"
    ).message("portLevelMtls keys must be container port numbers from 1 to 65535"))]
    pub port_level_mtls: BTreeMap<String, PortMtls>,

    /// How evidence is gathered and judged.
    #[serde(default)]
    pub analysis: Analysis,

    /// Enrollment requirements for the selected pods.
    #[serde(default)]
    pub sidecars: Sidecars,

    /// What happens to the PeerAuthentication when this resource is deleted.
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// The two end states a migration can aim for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum MtlsMode {
    STRICT,
    PERMISSIVE,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::STRICT => "STRICT",
            MtlsMode::PERMISSIVE => "PERMISSIVE",
        }
    }
}

/// Istio's workload selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One port-level exception.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PortMtls {
    pub mode: PortMode,
}

/// Port-level modes, as Istio spells them. UNSET takes the workload's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum PortMode {
    STRICT,
    PERMISSIVE,
    DISABLE,
    UNSET,
}

impl PortMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PortMode::STRICT => "STRICT",
            PortMode::PERMISSIVE => "PERMISSIVE",
            PortMode::DISABLE => "DISABLE",
            PortMode::UNSET => "UNSET",
        }
    }
}

/// Evidence settings. Durations are Go-style strings (`30s`, `2m`, `1h30m`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = duration_order_rule("hold", "interval")
        .message("analysis.hold must be at least analysis.interval: the hold needs more than one measurement"),
    validation = duration_order_rule("window", "interval")
        .message("analysis.window must be at least analysis.interval, or traffic between measurements is never looked at"),
)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Prometheus base URL. Default: the operator's `--prometheus-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub prometheus_url: Option<String>,

    /// Time between measurements.
    #[serde(default = "default_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = positive_duration_rule()
        .message("analysis.interval must be a positive duration such as 30s, 2m or 1h30m"))]
    pub interval: String,

    /// The `rate()` window of each query; keep it at least 4x the Prometheus
    /// scrape interval.
    #[serde(default = "default_window")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = positive_duration_rule()
        .message("analysis.window must be a positive duration such as 30s, 2m or 1h30m"))]
    pub window: String,

    /// Largest plaintext share of requests (0..1) that still passes.
    /// 0 means any plaintext blocks the flip.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0")
        .message("analysis.maxPlaintextRatio must be between 0 and 1"))]
    pub max_plaintext_ratio: f64,

    /// Requests (or connections) per second below which a measurement is
    /// inconclusive and does not pass: too little traffic proves nothing.
    #[serde(default = "default_min_request_rate")]
    #[x_kube(validation = Rule::new("self >= 0.0")
        .message("analysis.minRequestRate must not be negative"))]
    pub min_request_rate: f64,

    /// How long every measurement must pass before STRICT is applied.
    #[serde(default = "default_hold")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = positive_duration_rule()
        .message("analysis.hold must be a positive duration such as 10m or 1h"))]
    pub hold: String,

    /// Which Istio metric families count: HTTP (`istio_requests_total`),
    /// TCP (`istio_tcp_connections_opened_total`) or Both.
    #[serde(default)]
    pub protocols: Protocols,
}

fn default_interval() -> String {
    "30s".into()
}
fn default_window() -> String {
    "2m".into()
}
fn default_hold() -> String {
    "10m".into()
}
fn default_min_request_rate() -> f64 {
    0.1
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            prometheus_url: None,
            interval: default_interval(),
            window: default_window(),
            max_plaintext_ratio: 0.0,
            min_request_rate: default_min_request_rate(),
            hold: default_hold(),
            protocols: Protocols::default(),
        }
    }
}

/// The analysis durations, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnalysisTimes {
    pub interval: Duration,
    pub window: Duration,
    pub hold: Duration,
}

/// A duration string the API server should have refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("analysis.{field} {value:?} is not a positive duration")]
pub struct InvalidDuration {
    pub field: &'static str,
    pub value: String,
}

impl Analysis {
    /// Parses interval, window and hold (Go syntax, as the CEL rules checked).
    pub fn times(&self) -> Result<AnalysisTimes, InvalidDuration> {
        Ok(AnalysisTimes {
            interval: parse_positive("interval", &self.interval)?,
            window: parse_positive("window", &self.window)?,
            hold: parse_positive("hold", &self.hold)?,
        })
    }
}

fn parse_positive(field: &'static str, value: &str) -> Result<Duration, InvalidDuration> {
    let invalid = || InvalidDuration {
        field,
        value: value.to_string(),
    };
    let parsed: kube::core::Duration = value.parse().map_err(|_| invalid())?;
    if parsed.is_negative() {
        return Err(invalid());
    }
    let d: Duration = parsed.into();
    if d.is_zero() { Err(invalid()) } else { Ok(d) }
}

/// Metric families that count towards the plaintext ratio.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum Protocols {
    HTTP,
    TCP,
    #[default]
    Both,
}

/// Enrollment requirements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sidecars {
    /// Every selected pod that is not finished must be in the mesh (sidecar,
    /// native sidecar or ambient) before STRICT.
    #[serde(default = "default_true")]
    pub required: bool,
}

fn default_true() -> bool {
    true
}

impl Default for Sidecars {
    fn default() -> Self {
        Sidecars { required: true }
    }
}

/// Fate of the PeerAuthentication when the migration is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OnDelete {
    /// Leave the PeerAuthentication as it is.
    #[default]
    Keep,
    /// Put back the spec found before the migration, or delete the policy if
    /// the migration created it.
    Restore,
}

/// Coarse progress, for `kubectl get` only; conditions carry the meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Nothing was written: the scope or policy situation needs a human.
    Blocked,
    /// PERMISSIVE applied; waiting for measurements to pass.
    Observing,
    /// Measurements pass; waiting for the hold to elapse.
    Holding,
    /// STRICT applied.
    Enforced,
    /// `spec.mode: PERMISSIVE` after the migration had started.
    RolledBack,
    /// `spec.mode: PERMISSIVE` from the start.
    Permissive,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Blocked => "Blocked",
            Phase::Observing => "Observing",
            Phase::Holding => "Holding",
            Phase::Enforced => "Enforced",
            Phase::RolledBack => "RolledBack",
            Phase::Permissive => "Permissive",
        }
    }
}

/// What the operator observed and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsMigrationStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The PeerAuthentication this migration manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStatus>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentSummary>,

    /// DestinationRules that would send plaintext or non-Istio TLS to the scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_measurement: Option<Measurement>,

    /// Largest plaintext sources at the latest successful measurement;
    /// `unknown` names mean clients outside the mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_plaintext_sources: Vec<PlaintextSource>,

    /// First passing measurement of the current hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "timestamp_schema")]
    pub hold_started_at: Option<Timestamp>,

    /// When STRICT was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "timestamp_schema")]
    pub enforced_at: Option<Timestamp>,

    /// Plaintext share at the latest measurement, for `kubectl get` (`0%`, `12.5%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_ratio: Option<String>,

    /// Enrolled / selected pods, for `kubectl get` (`3/4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled: Option<String>,
}

/// The managed PeerAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub name: String,
    /// True if the operator created it (Restore deletes it); false if it took
    /// over an existing one (Restore puts `originalSpec` back).
    pub created: bool,
    /// The spec found before the takeover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object_schema")]
    pub original_spec: Option<serde_json::Value>,
    /// The `spec.mtls.mode` the operator last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_mode: Option<String>,
}

/// One evaluation of the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    #[schemars(schema_with = "timestamp_schema")]
    pub time: Timestamp,
    /// Whether it counted towards the hold.
    pub passed: bool,
    /// Why (a condition reason such as `BelowThreshold` or `NoTelemetry`).
    pub reason: String,
    pub message: String,
    /// Destination-reported requests (or connections) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_rate: Option<f64>,
    /// plaintextRate / totalRate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Source-reported connection failures per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_failure_rate: Option<f64>,
}

/// RFC 3339 timestamp (jiff has no JSON schema of its own).
pub fn timestamp_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "format": "date-time" })
}

/// An arbitrary object kept as-is (a PeerAuthentication spec).
pub fn preserved_object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

impl MtlsMigration {
    /// `namespace/name`, the identity recorded on the managed policy.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        let a = Analysis {
            interval: "1m30s".into(),
            window: "2.5m".into(),
            hold: "1h".into(),
            ..Analysis::default()
        };
        let t = a.times().unwrap();
        assert_eq!(t.interval, Duration::from_secs(90));
        assert_eq!(t.window, Duration::from_secs(150));
        assert_eq!(t.hold, Duration::from_secs(3600));
    }

    #[test]
    fn zero_negative_and_garbage_durations_are_invalid() {
        for bad in ["0s", "-5s", "soon", "", "10"] {
            let a = Analysis {
                hold: bad.into(),
                ..Analysis::default()
            };
            let err = a.times().unwrap_err();
            assert_eq!(err.field, "hold", "{bad}");
        }
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec: MtlsMigrationSpec =
            serde_json::from_value(serde_json::json!({"mode": "STRICT"})).unwrap();
        assert_eq!(spec.analysis, Analysis::default());
        assert!(spec.sidecars.required);
        assert_eq!(spec.on_delete, OnDelete::Keep);
        assert_eq!(spec.analysis.protocols, Protocols::Both);
        assert_eq!(spec.analysis.min_request_rate, 0.1);
    }

    #[test]
    fn status_round_trips_through_json() {
        let t: Timestamp = "2025-01-02T03:04:05.678Z".parse().unwrap();
        let status = MtlsMigrationStatus {
            observed_generation: Some(3),
            phase: Some(Phase::Holding),
            hold_started_at: Some(t),
            last_measurement: Some(Measurement {
                time: t,
                passed: true,
                reason: "BelowThreshold".into(),
                message: "m".into(),
                total_rate: Some(1.5),
                plaintext_rate: Some(0.0),
                ratio: Some(0.0),
                source_failure_rate: None,
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["holdStartedAt"], "2025-01-02T03:04:05.678Z");
        let back: MtlsMigrationStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }
}
