//! Scenario files: the world the twin materializes and the traffic it runs.
//!
//! ```yaml
//! namespaces:
//!   - name: shop
//!     injection: sidecar        # sidecar | ambient | none (labels the namespace)
//! workloads:
//!   - name: api
//!     namespace: shop
//!     replicas: 2
//!     enrollment: sidecar       # sidecar | native-sidecar | ambient | none;
//!                               # default follows the namespace's injection
//!     ports: [{port: 8080, protocol: http}]   # http | grpc | tcp
//!   - name: batch
//!     namespace: shop
//!     enrollment: none
//!     enrollAfter: 20s          # then restarted with enrollTo (default sidecar)
//! edges:
//!   - from: {workload: batch}   # namespace defaults to the target's
//!     to: {workload: api, namespace: shop, port: 8080}
//!     rate: 5                   # requests (or TCP connections) per second
//!   - from: {external: scraper} # a client that is not a pod at all
//!     to: {workload: api, namespace: shop}
//!     rate: 1
//! resources: []                 # Istio objects applied as written (namespace prefixed)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::telemetry::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing scenario: {0}")]
    Parse(String),
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
    #[serde(default)]
    pub edges: Vec<EdgeSpec>,
    /// Kubernetes objects (typically PeerAuthentication / DestinationRule)
    /// applied with server-side apply when the scenario loads.
    #[serde(default)]
    pub resources: Vec<serde_json::Value>,
}

/// What a namespace is labelled for.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Injection {
    /// `istio-injection=enabled`.
    Sidecar,
    /// `istio.io/dataplane-mode=ambient`.
    Ambient,
    #[default]
    None,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default)]
    pub injection: Injection,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How a workload's pods are enrolled (the shape injection gives them).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Enrollment {
    Sidecar,
    NativeSidecar,
    Ambient,
    None,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: String,
    pub namespace: String,
    #[serde(default = "one")]
    pub replicas: u32,
    /// Defaults to what the namespace's injection label gives new pods.
    #[serde(default)]
    pub enrollment: Option<Enrollment>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Service name; defaults to the workload name. Workloads without ports
    /// get no Service.
    #[serde(default)]
    pub service: Option<String>,
    /// Service account; defaults to the workload name.
    #[serde(default)]
    pub service_account: Option<String>,
    /// After this long (from when the twin first loads the workload) its pods
    /// are replaced by pods enrolled as `enrollTo`: the restart after injection.
    #[serde(default, with = "opt_duration")]
    pub enroll_after: Option<Duration>,
    #[serde(default)]
    pub enroll_to: Option<Enrollment>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// Container port; the Service exposes the same number.
    pub port: u16,
    #[serde(default = "http")]
    pub protocol: Protocol,
}

fn http() -> Protocol {
    Protocol::Http
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeSpec {
    /// Edge id; defaults to `<from>-to-<to>-<port>`.
    #[serde(default)]
    pub name: Option<String>,
    pub from: FromSpec,
    pub to: ToSpec,
    /// Requests (TCP: connections) per second.
    pub rate: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromSpec {
    #[serde(default)]
    pub workload: Option<String>,
    /// Defaults to the target's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A client outside the cluster (no pod, no proxy).
    #[serde(default)]
    pub external: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToSpec {
    pub workload: String,
    pub namespace: String,
    /// Container port; may be left out when the workload has one port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// An edge with every default filled in and namespaces prefixed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Edge {
    pub id: String,
    pub client: Client,
    pub server_workload: String,
    pub server_namespace: String,
    pub service: String,
    pub port: u16,
    pub protocol: Protocol,
    pub rate: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    Workload { name: String, namespace: String },
    External { name: String },
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        serde_saphyr::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))
    }

    pub fn load(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text)
    }

    /// Renames every namespace to `<prefix><name>` so parallel runs do not
    /// collide. Resources' `metadata.namespace` moves too; DestinationRule
    /// hosts should be short names so they follow.
    pub fn with_namespace_prefix(mut self, prefix: &str) -> Scenario {
        if prefix.is_empty() {
            return self;
        }
        let p = |ns: &mut String| *ns = format!("{prefix}{ns}");
        self.namespaces.iter_mut().for_each(|n| p(&mut n.name));
        self.workloads.iter_mut().for_each(|w| p(&mut w.namespace));
        for e in &mut self.edges {
            p(&mut e.to.namespace);
            if let Some(ns) = &mut e.from.namespace {
                p(ns);
            }
        }
        for r in &mut self.resources {
            if let Some(ns) = r
                .pointer_mut("/metadata/namespace")
                .and_then(|v| v.as_str().map(String::from))
            {
                r["metadata"]["namespace"] = serde_json::Value::String(format!("{prefix}{ns}"));
            }
        }
        self
    }

    /// Every namespace the scenario touches, declared or implied.
    pub fn all_namespaces(&self) -> Vec<NamespaceSpec> {
        let mut out: BTreeMap<String, NamespaceSpec> = self
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), n.clone()))
            .collect();
        for w in &self.workloads {
            out.entry(w.namespace.clone()).or_insert(NamespaceSpec {
                name: w.namespace.clone(),
                injection: Injection::None,
                labels: BTreeMap::new(),
            });
        }
        out.into_values().collect()
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&WorkloadSpec> {
        self.workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    /// The enrollment a workload's pods get when first created.
    pub fn initial_enrollment(&self, w: &WorkloadSpec) -> Enrollment {
        w.enrollment.unwrap_or_else(|| {
            match self
                .namespaces
                .iter()
                .find(|n| n.name == w.namespace)
                .map(|n| n.injection)
            {
                Some(Injection::Sidecar) => Enrollment::Sidecar,
                Some(Injection::Ambient) => Enrollment::Ambient,
                _ => Enrollment::None,
            }
        })
    }

    /// Resolves one edge against the scenario's workloads.
    pub fn resolve_edge(&self, e: &EdgeSpec) -> Result<Edge, ScenarioError> {
        let invalid = |m: String| ScenarioError::Invalid(m);
        let server = self
            .workload(&e.to.namespace, &e.to.workload)
            .ok_or_else(|| {
                invalid(format!(
                    "edge target {}/{} is not a workload",
                    e.to.namespace, e.to.workload
                ))
            })?;
        let port = match (e.to.port, server.ports.as_slice()) {
            (Some(p), ports) => ports
                .iter()
                .find(|ps| ps.port == p)
                .ok_or_else(|| invalid(format!("{} has no port {p}", server.name)))?,
            (None, [only]) => only,
            (None, _) => {
                return Err(invalid(format!(
                    "edge to {} must name a port (it has {})",
                    server.name,
                    server.ports.len()
                )));
            }
        };
        let client = match (&e.from.workload, &e.from.external) {
            (Some(name), None) => {
                let namespace = e.from.namespace.clone().unwrap_or(e.to.namespace.clone());
                if self.workload(&namespace, name).is_none() {
                    return Err(invalid(format!(
                        "edge source {namespace}/{name} is not a workload"
                    )));
                }
                Client::Workload {
                    name: name.clone(),
                    namespace,
                }
            }
            (None, Some(name)) => Client::External { name: name.clone() },
            _ => {
                return Err(invalid(
                    "edge `from` needs exactly one of workload, external".into(),
                ));
            }
        };
        if !(e.rate.is_finite() && e.rate >= 0.0) {
            return Err(invalid(format!("edge rate {} must be >= 0", e.rate)));
        }
        let from_name = match &client {
            Client::Workload { name, .. } | Client::External { name } => name.clone(),
        };
        Ok(Edge {
            id: e
                .name
                .clone()
                .unwrap_or_else(|| format!("{from_name}-to-{}-{}", server.name, port.port)),
            client,
            server_workload: server.name.clone(),
            server_namespace: server.namespace.clone(),
            service: server.service.clone().unwrap_or(server.name.clone()),
            port: port.port,
            protocol: port.protocol,
            rate: e.rate,
        })
    }

    /// Checks the whole scenario and resolves its edges.
    pub fn validate(&self) -> Result<Vec<Edge>, ScenarioError> {
        let mut seen = BTreeSet::new();
        for w in &self.workloads {
            if !seen.insert((w.namespace.clone(), w.name.clone())) {
                return Err(ScenarioError::Invalid(format!(
                    "workload {}/{} twice",
                    w.namespace, w.name
                )));
            }
            if w.enroll_to.is_some() && w.enroll_after.is_none() {
                return Err(ScenarioError::Invalid(format!(
                    "{}: enrollTo needs enrollAfter",
                    w.name
                )));
            }
        }
        let mut ids = BTreeSet::new();
        let mut edges = Vec::new();
        for e in &self.edges {
            let edge = self.resolve_edge(e)?;
            if !ids.insert(edge.id.clone()) {
                return Err(ScenarioError::Invalid(format!(
                    "edge id {} twice: give one a `name`",
                    edge.id
                )));
            }
            edges.push(edge);
        }
        for r in &self.resources {
            let ok = r.get("apiVersion").and_then(|v| v.as_str()).is_some()
                && r.get("kind").and_then(|v| v.as_str()).is_some()
                && r.pointer("/metadata/name")
                    .and_then(|v| v.as_str())
                    .is_some();
            if !ok {
                return Err(ScenarioError::Invalid(
                    "every resource needs apiVersion, kind and metadata.name".into(),
                ));
            }
        }
        Ok(edges)
    }
}

/// Parses durations like `500ms`, `20s`, `2m`, `1m30s`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} lacks a unit (ms, s, m, h)"))?;
        let (num, tail) = rest.split_at(digits);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("bad number in duration {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            other => return Err(format!("unknown unit {other:?} in duration {s:?}")),
        };
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
namespaces:
  - name: shop
    injection: sidecar
workloads:
  - name: api
    namespace: shop
    replicas: 2
    ports: [{port: 8080}]
  - name: batch
    namespace: shop
    enrollment: none
    enrollAfter: 1m30s
edges:
  - from: {workload: batch}
    to: {workload: api, namespace: shop}
    rate: 2.5
  - from: {external: scraper}
    to: {workload: api, namespace: shop, port: 8080}
    rate: 1
resources:
  - apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: api, namespace: shop}
    spec: {host: api, trafficPolicy: {tls: {mode: DISABLE}}}
"#;

    #[test]
    fn parses_and_resolves() {
        let s = Scenario::parse(SAMPLE).unwrap();
        let edges = s.validate().unwrap();
        assert_eq!(edges.len(), 2);
        assert_eq!(edges[0].id, "batch-to-api-8080");
        assert_eq!(
            edges[0].client,
            Client::Workload {
                name: "batch".into(),
                namespace: "shop".into()
            }
        );
        assert_eq!(edges[0].protocol, Protocol::Http);
        assert_eq!(
            edges[1].client,
            Client::External {
                name: "scraper".into()
            }
        );
        let api = s.workload("shop", "api").unwrap();
        assert_eq!(s.initial_enrollment(api), Enrollment::Sidecar);
        let batch = s.workload("shop", "batch").unwrap();
        assert_eq!(s.initial_enrollment(batch), Enrollment::None);
        assert_eq!(batch.enroll_after, Some(Duration::from_secs(90)));
    }

    #[test]
    fn prefix_moves_every_namespace() {
        let s = Scenario::parse(SAMPLE)
            .unwrap()
            .with_namespace_prefix("t1-");
        let edges = s.validate().unwrap();
        assert_eq!(edges[0].server_namespace, "t1-shop");
        assert_eq!(s.namespaces[0].name, "t1-shop");
        assert_eq!(s.resources[0]["metadata"]["namespace"], "t1-shop");
    }

    #[test]
    fn rejects_bad_edges() {
        let mut s = Scenario::parse(SAMPLE).unwrap();
        s.edges[0].to.workload = "nope".into();
        assert!(s.validate().is_err());
        let mut s = Scenario::parse(SAMPLE).unwrap();
        s.edges[1].name = Some("batch-to-api-8080".into());
        assert!(s.validate().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("3d").is_err());
    }
}

#[cfg(test)]
mod shipped_scenarios {
    use super::*;

    #[test]
    fn every_shipped_scenario_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                s.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!s.edges.is_empty(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 7, "found {n} scenarios");
    }
}
