//! Reading PeerAuthentication and DestinationRule objects (as the API server
//! serves them) into `istio_model`'s terms. Lenient: a field the twin does
//! not understand is skipped rather than failing the object, as Istio's own
//! translation skips what it cannot use.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

use crate::istio_model::{ClientTlsMode, DestRule, Labels, PeerAuthn, PeerMode};

pub fn peer_authentication_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("security.istio.io", "v1", "PeerAuthentication"),
        "peerauthentications",
    )
}

pub fn destination_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule"),
        "destinationrules",
    )
}

fn created(o: &DynamicObject) -> Timestamp {
    o.metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

fn labels(v: Option<&Value>) -> Option<Labels> {
    let map = v?.as_object()?;
    Some(
        map.iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
            .collect(),
    )
}

fn mode_str(v: Option<&Value>) -> Option<&str> {
    v?.get("mode")?.as_str()
}

pub fn peer_authn(o: &DynamicObject) -> PeerAuthn {
    let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
    let port_level: BTreeMap<u32, PeerMode> = spec
        .get("portLevelMtls")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(port, v)| {
                    Some((port.parse().ok()?, PeerMode::parse(mode_str(Some(v)))))
                })
                .collect()
        })
        .unwrap_or_default();
    PeerAuthn {
        namespace: o.metadata.namespace.clone().unwrap_or_default(),
        name: o.metadata.name.clone().unwrap_or_default(),
        created: created(o),
        selector: labels(spec.pointer("/selector/matchLabels")),
        mode: PeerMode::parse(mode_str(spec.get("mtls"))),
        port_level,
    }
}

pub fn dest_rule(o: &DynamicObject) -> DestRule {
    let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
    let policy = spec.get("trafficPolicy");
    let tls = |v: Option<&Value>| -> Option<ClientTlsMode> {
        let t = v?.get("tls")?;
        Some(ClientTlsMode::parse(t.get("mode").and_then(Value::as_str)))
    };
    let port_tls: BTreeMap<u32, ClientTlsMode> = policy
        .and_then(|p| p.get("portLevelSettings"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|s| {
                    let port = s.pointer("/port/number")?.as_u64()?;
                    Some((u32::try_from(port).ok()?, tls(Some(s))?))
                })
                .collect()
        })
        .unwrap_or_default();
    DestRule {
        namespace: o.metadata.namespace.clone().unwrap_or_default(),
        name: o.metadata.name.clone().unwrap_or_default(),
        created: created(o),
        host: spec
            .get("host")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        export_to: spec
            .get("exportTo")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        workload_selector: labels(spec.pointer("/workloadSelector/matchLabels")),
        tls: tls(policy),
        port_tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reads_peer_authentication() {
        let pa = peer_authn(&obj(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "p", "namespace": "shop", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"selector": {"matchLabels": {"app": "api"}}, "mtls": {"mode": "STRICT"},
                     "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}, "9091": {}}}
        })));
        assert_eq!(pa.mode, PeerMode::Strict);
        assert_eq!(pa.selector.unwrap()["app"], "api");
        assert_eq!(pa.port_level[&9090], PeerMode::Permissive);
        assert_eq!(pa.port_level[&9091], PeerMode::Unset);
        assert_eq!(pa.created.to_string(), "2024-01-01T00:00:00Z");

        let bare = peer_authn(&obj(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "p", "namespace": "shop"}, "spec": {}
        })));
        assert_eq!(bare.mode, PeerMode::Unset);
        assert_eq!(bare.selector, None);
    }

    #[test]
    fn reads_destination_rule() {
        let dr = dest_rule(&obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "d", "namespace": "shop"},
            "spec": {"host": "api", "exportTo": ["."],
                     "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
                        "portLevelSettings": [{"port": {"number": 9090}, "tls": {"mode": "DISABLE"}},
                                              {"port": {"number": 8080}}]}}
        })));
        assert_eq!(dr.tls, Some(ClientTlsMode::IstioMutual));
        assert_eq!(dr.port_tls.get(&9090), Some(&ClientTlsMode::Disable));
        assert_eq!(dr.port_tls.get(&8080), None);
        assert_eq!(dr.export_to, vec!["."]);

        let no_tls = dest_rule(&obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "d", "namespace": "shop"},
            "spec": {"host": "api", "trafficPolicy": {"connectionPool": {}}}
        })));
        assert_eq!(no_tls.tls, None);
    }
}
