//! Minimal typed views of the Istio resources the operator reads and writes.
//!
//! Only the fields this operator uses are modelled; unknown fields are
//! ignored on read, and every field is optional so that any object the Istio
//! CRD admits deserializes (a PeerAuthentication may have no spec at all).
//! Modes stay strings: a mode added by a later Istio must not make the whole
//! object unreadable.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::core::{NamespaceResourceScope, ObjectMeta, Resource};
use serde::{Deserialize, Serialize};

// The annotations recording ownership and the original spec are
// `scope::MIGRATION_ANNOTATION` and `scope::ORIGINAL_SPEC_ANNOTATION`.

/// Label on managed PeerAuthentications. Our own key, not
/// `app.kubernetes.io/managed-by`: a taken-over policy may carry that label
/// for its real owner (Helm, Argo CD), and we must neither overwrite it nor
/// remove it on release.
pub const MANAGED_BY_LABEL: &str = "mtls.migrator.dev/managed-by";
/// Field manager (and [`MANAGED_BY_LABEL`] value) for every write.
pub const FIELD_MANAGER: &str = "mtls-migrator";

/// `security.istio.io/v1` PeerAuthentication.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// Always serialized so the value can be sent as a server-side apply body.
    #[serde(default = "pa_api_version")]
    pub api_version: String,
    #[serde(default = "pa_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

fn pa_api_version() -> String {
    "security.istio.io/v1".into()
}
fn pa_kind() -> String {
    "PeerAuthentication".into()
}

impl Default for PeerAuthentication {
    fn default() -> Self {
        PeerAuthentication {
            api_version: pa_api_version(),
            kind: pa_kind(),
            metadata: ObjectMeta::default(),
            spec: PeerAuthenticationSpec::default(),
        }
    }
}

impl PeerAuthentication {
    pub fn new(namespace: &str, name: &str, spec: PeerAuthenticationSpec) -> Self {
        PeerAuthentication {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            spec,
            ..PeerAuthentication::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<IstioSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Keyed by container port number (JSON object keys are strings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, PeerMtls>,
}

impl PeerAuthenticationSpec {
    /// `spec.mtls.mode` as written, if any.
    pub fn mode(&self) -> Option<&str> {
        self.mtls.as_ref().and_then(|m| m.mode.as_deref())
    }

    /// The selector's labels; `None` when the selector is absent or empty
    /// (Istio treats `matchLabels: {}` as no selector).
    pub fn match_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMtls {
    /// `UNSET`, `DISABLE`, `PERMISSIVE` or `STRICT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl PeerMtls {
    pub fn mode(mode: &str) -> Self {
        PeerMtls {
            mode: Some(mode.to_string()),
        }
    }
}

impl Resource for PeerAuthentication {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "PeerAuthentication".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "security.istio.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "peerauthentications".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `networking.istio.io/v1` DestinationRule (client-side TLS settings only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRule {
    #[serde(default = "dr_api_version")]
    pub api_version: String,
    #[serde(default = "dr_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DestinationRuleSpec,
}

fn dr_api_version() -> String {
    "networking.istio.io/v1".into()
}
fn dr_kind() -> String {
    "DestinationRule".into()
}

impl Default for DestinationRule {
    fn default() -> Self {
        DestinationRule {
            api_version: dr_api_version(),
            kind: dr_kind(),
            metadata: ObjectMeta::default(),
            spec: DestinationRuleSpec::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// Short name, FQDN or wildcard, resolved relative to the rule's namespace.
    #[serde(default)]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Namespaces the rule is visible to (`*` all, `.` its own); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Client workloads the rule applies to; absent: all in scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<IstioSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTls {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl Resource for DestinationRule {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "DestinationRule".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "networking.istio.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "destinationrules".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_peer_authentication_with_unknown_fields() {
        let pa: PeerAuthentication = serde_json::from_value(serde_json::json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "shop", "resourceVersion": "7",
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {
                "selector": {"matchLabels": {"app": "cart"}},
                "mtls": {"mode": "STRICT"},
                "portLevelMtls": {"8080": {"mode": "DISABLE"}, "9090": {}},
                "futureField": {"x": 1}
            },
            "status": {"validationMessages": []}
        }))
        .unwrap();
        assert_eq!(pa.spec.mode(), Some("STRICT"));
        assert_eq!(
            pa.spec.port_level_mtls["8080"].mode.as_deref(),
            Some("DISABLE")
        );
        assert_eq!(pa.spec.port_level_mtls["9090"].mode, None);
        assert_eq!(pa.spec.match_labels().unwrap()["app"], "cart");
    }

    #[test]
    fn a_policy_without_spec_or_with_empty_selector_is_namespace_wide() {
        let pa: PeerAuthentication = serde_json::from_value(serde_json::json!({
            "apiVersion": "security.istio.io/v1beta1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "shop"}
        }))
        .unwrap();
        assert_eq!(pa.spec.mode(), None);
        assert!(pa.spec.match_labels().is_none());

        let empty: PeerAuthenticationSpec = serde_json::from_value(
            serde_json::json!({"selector": {"matchLabels": {}}, "mtls": {}}),
        )
        .unwrap();
        assert!(empty.match_labels().is_none());
    }

    #[test]
    fn an_unknown_mode_does_not_break_reading() {
        let spec: PeerAuthenticationSpec =
            serde_json::from_value(serde_json::json!({"mtls": {"mode": "QUANTUM"}})).unwrap();
        assert_eq!(spec.mode(), Some("QUANTUM"));
    }

    #[test]
    fn reads_destination_rule_tls_at_every_level() {
        let dr: DestinationRule = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {
                "host": "cart.shop.svc.cluster.local",
                "exportTo": ["."],
                "trafficPolicy": {
                    "connectionPool": {"tcp": {"maxConnections": 10}},
                    "tls": {"mode": "ISTIO_MUTUAL"},
                    "portLevelSettings": [{"port": {"number": 8080}, "tls": {"mode": "DISABLE"}}]
                },
                "subsets": [{"name": "v1", "labels": {"version": "v1"},
                             "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "x"}}}]
            }
        }))
        .unwrap();
        let tp = dr.spec.traffic_policy.as_ref().unwrap();
        assert_eq!(
            tp.tls.as_ref().unwrap().mode.as_deref(),
            Some("ISTIO_MUTUAL")
        );
        assert_eq!(
            tp.port_level_settings[0].port.as_ref().unwrap().number,
            Some(8080)
        );
        assert_eq!(
            dr.spec.subsets[0]
                .traffic_policy
                .as_ref()
                .unwrap()
                .tls
                .as_ref()
                .unwrap()
                .mode
                .as_deref(),
            Some("SIMPLE")
        );
        assert_eq!(dr.spec.export_to, vec!["."]);
    }

    #[test]
    fn apply_body_carries_type_information() {
        let spec = PeerAuthenticationSpec {
            mtls: Some(PeerMtls::mode("PERMISSIVE")),
            ..Default::default()
        };
        let pa = PeerAuthentication::new("shop", "m", spec);
        let v = serde_json::to_value(&pa).unwrap();
        assert_eq!(v["apiVersion"], "security.istio.io/v1");
        assert_eq!(v["kind"], "PeerAuthentication");
        assert_eq!(
            v["spec"],
            serde_json::json!({"mtls": {"mode": "PERMISSIVE"}})
        );
    }
}
