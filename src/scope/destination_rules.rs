//! DestinationRules whose client TLS setting would break under STRICT.

use kube::api::DynamicObject;
use serde_json::Value;

use super::services::ScopeHost;
use crate::observe::Conflict;

/// Kubernetes' default cluster domain, as Istio assumes it.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Client TLS modes that send something other than Istio mTLS: plaintext
/// (`DISABLE`) or TLS without the client certificate a STRICT server asks
/// for (`SIMPLE`). A DR's `tls` overrides auto mTLS.
const BREAKING_MODES: [&str; 2] = ["DISABLE", "SIMPLE"];

/// Every place in every DestinationRule where a host in scope gets a
/// `DISABLE` or `SIMPLE` client TLS mode, sorted by rule then location.
///
/// Host resolution follows Istio (`ResolveShortnameToFQDN`): a host without
/// a dot is `<host>.<DR namespace>.svc.<domain>`; a host with a dot is taken
/// as written, so `svc.ns` names nothing in the Kubernetes registry and
/// matches no Service; `*` and `*.suffix` match by suffix.
///
/// Visibility (`exportTo`): a rule hidden from everyone (`["~"]`) is skipped.
/// Any other value, `["."]` included, still applies to the clients in the
/// rule's own namespace (or the listed ones), and those clients may call the
/// scope, so the rule counts. Knowing that no such client calls the scope
/// would need traffic data, and a false "no conflict" breaks traffic while a
/// false "conflict" only waits for a human.
///
/// Port-level settings for a port none of the matched Services expose are
/// skipped: they never apply to traffic to the scope. Several rules for one
/// host are all reported, whichever Istio would merge or prefer.
pub fn conflicts(
    drs: &[DynamicObject],
    hosts: &[ScopeHost],
    cluster_domain: &str,
) -> Vec<Conflict> {
    let mut out = Vec::new();
    for dr in drs {
        let namespace = dr.metadata.namespace.as_deref().unwrap_or_default();
        let key = format!(
            "{namespace}/{}",
            dr.metadata.name.as_deref().unwrap_or_default()
        );
        let spec = &dr.data["spec"];
        let Some(host) = spec["host"].as_str() else {
            continue;
        };
        if hidden(&spec["exportTo"]) {
            continue;
        }
        let resolved = resolve_host(host, namespace, cluster_domain);
        let matched: Vec<&ScopeHost> = hosts
            .iter()
            .filter(|h| host_matches(&resolved, &h.fqdn(cluster_domain)))
            .collect();
        if matched.is_empty() {
            continue;
        }
        let exposes = |port: i64| {
            matched
                .iter()
                .any(|h| h.ports.iter().any(|p| i64::from(p.port) == port))
        };
        let mut found = |location: String, mode: &str| {
            out.push(Conflict {
                destination_rule: key.clone(),
                host: host.to_string(),
                location,
                tls_mode: mode.to_string(),
            })
        };
        let mut scan = |policy: &Value, prefix: Option<String>| {
            if let Some(mode) = breaking_mode(&policy["tls"]) {
                found(
                    prefix.clone().unwrap_or_else(|| "trafficPolicy".into()),
                    &mode,
                );
            }
            for setting in policy["portLevelSettings"].as_array().into_iter().flatten() {
                let Some(mode) = breaking_mode(&setting["tls"]) else {
                    continue;
                };
                let port = setting["port"]["number"].as_i64();
                if port.is_some_and(|p| !exposes(p)) {
                    continue;
                }
                let port = port.map_or_else(|| "port ?".to_string(), |p| format!("port {p}"));
                let location = match &prefix {
                    Some(pre) => format!("{pre} {port}"),
                    None => port,
                };
                found(location, &mode);
            }
        };
        scan(&spec["trafficPolicy"], None);
        for subset in spec["subsets"].as_array().into_iter().flatten() {
            let name = subset["name"].as_str().unwrap_or("?");
            scan(&subset["trafficPolicy"], Some(format!("subset {name}")));
        }
    }
    out.sort_by(|a, b| (&a.destination_rule, &a.location).cmp(&(&b.destination_rule, &b.location)));
    out
}

fn breaking_mode(tls: &Value) -> Option<String> {
    let mode = tls["mode"].as_str()?.to_ascii_uppercase();
    BREAKING_MODES.contains(&mode.as_str()).then_some(mode)
}

fn hidden(export_to: &Value) -> bool {
    match export_to.as_array() {
        Some(list) if !list.is_empty() => list.iter().all(|v| v.as_str() == Some("~")),
        _ => false,
    }
}

fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    if host == "*" || host.contains('.') {
        host.to_ascii_lowercase()
    } else {
        format!(
            "{}.{namespace}.svc.{cluster_domain}",
            host.to_ascii_lowercase()
        )
    }
}

fn host_matches(pattern: &str, fqdn: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => fqdn.ends_with(suffix),
        None => pattern == fqdn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::fixtures::dynamic;
    use serde_json::json;

    fn hosts() -> Vec<ScopeHost> {
        vec![ScopeHost {
            namespace: "shop".into(),
            name: "web".into(),
            headless: false,
            ports: vec![crate::scope::fixtures::from(json!({"port": 80}))],
        }]
    }

    fn dr(ns: &str, name: &str, spec: Value) -> DynamicObject {
        dynamic(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"namespace": ns, "name": name}, "spec": spec
        }))
    }

    fn disable_for(host: &str) -> Value {
        json!({"host": host, "trafficPolicy": {"tls": {"mode": "DISABLE"}}})
    }

    fn found(drs: &[DynamicObject]) -> Vec<(String, String, String)> {
        conflicts(drs, &hosts(), DEFAULT_CLUSTER_DOMAIN)
            .into_iter()
            .map(|c| (c.destination_rule, c.location, c.tls_mode))
            .collect()
    }

    #[test]
    fn host_forms() {
        // Short name resolves in the rule's own namespace.
        assert_eq!(found(&[dr("shop", "a", disable_for("web"))]).len(), 1);
        assert!(found(&[dr("other", "a", disable_for("web"))]).is_empty());
        assert_eq!(
            found(&[dr("other", "a", disable_for("web.shop.svc.cluster.local"))]).len(),
            1
        );
        assert_eq!(
            found(&[dr("other", "a", disable_for("*.shop.svc.cluster.local"))]).len(),
            1
        );
        assert_eq!(
            found(&[dr("other", "a", disable_for("*.svc.cluster.local"))]).len(),
            1
        );
        assert_eq!(found(&[dr("other", "a", disable_for("*"))]).len(), 1);
        assert!(found(&[dr("other", "a", disable_for("*.other.svc.cluster.local"))]).is_empty());
        // Istio does not expand `svc.ns`: it names nothing in the registry.
        assert!(found(&[dr("other", "a", disable_for("web.shop"))]).is_empty());
    }

    #[test]
    fn every_location_and_only_breaking_modes() {
        let spec = json!({
            "host": "web.shop.svc.cluster.local",
            "trafficPolicy": {
                "tls": {"mode": "ISTIO_MUTUAL"},
                "portLevelSettings": [
                    {"port": {"number": 80}, "tls": {"mode": "SIMPLE"}},
                    {"port": {"number": 9999}, "tls": {"mode": "DISABLE"}}
                ]
            },
            "subsets": [
                {"name": "v1", "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
                {"name": "v2", "trafficPolicy": {"portLevelSettings": [
                    {"port": {"number": 80}, "tls": {"mode": "DISABLE"}}]}},
                {"name": "v3", "trafficPolicy": {"tls": {"mode": "MUTUAL"}}}
            ]
        });
        let got = found(&[dr("shop", "web-tls", spec)]);
        let expect = |loc: &str, mode: &str| {
            (
                "shop/web-tls".to_string(),
                loc.to_string(),
                mode.to_string(),
            )
        };
        assert_eq!(
            got,
            vec![
                expect("port 80", "SIMPLE"),
                expect("subset v1", "DISABLE"),
                expect("subset v2 port 80", "DISABLE"),
            ]
        );
    }

    #[test]
    fn export_to() {
        let mut spec = disable_for("web.shop.svc.cluster.local");
        spec["exportTo"] = json!(["~"]);
        assert!(found(&[dr("other", "hidden", spec.clone())]).is_empty());
        // Visible to its own namespace's clients, which may call the scope.
        spec["exportTo"] = json!(["."]);
        assert_eq!(found(&[dr("other", "local", spec)]).len(), 1);
    }

    #[test]
    fn no_tls_or_no_host_is_no_conflict() {
        assert!(found(&[dr("shop", "a", json!({"host": "web"}))]).is_empty());
        assert!(
            found(&[dr(
                "shop",
                "a",
                json!({"trafficPolicy": {"tls": {"mode": "DISABLE"}}})
            )])
            .is_empty()
        );
        let c = conflicts(
            &[dr("shop", "a", disable_for("web"))],
            &hosts(),
            "cluster.local",
        );
        assert_eq!(c[0].host, "web");
        assert_eq!(c[0].location, "trafficPolicy");
    }
}
