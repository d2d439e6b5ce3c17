//! What Istio would do with one request: the server's effective
//! PeerAuthentication mode, the client's TLS choice, and the outcome.
//!
//! Written from Istio's documented behaviour (istio/api protos,
//! istio.io concepts/security, pilot's authentication composition), not from
//! the operator's code, so that a mistake in one does not cancel out in the
//! other. Everything here is pure: plain data in, decisions out.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

/// Label or selector map.
pub type Labels = BTreeMap<String, String>;

/// A PeerAuthentication mTLS mode as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeerMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl PeerMode {
    /// Parses the proto enum name; a missing or unknown value is UNSET.
    pub fn parse(s: Option<&str>) -> PeerMode {
        match s {
            Some("DISABLE") => PeerMode::Disable,
            Some("PERMISSIVE") => PeerMode::Permissive,
            Some("STRICT") => PeerMode::Strict,
            _ => PeerMode::Unset,
        }
    }

    fn or(self, parent: PeerMode) -> PeerMode {
        if self == PeerMode::Unset {
            parent
        } else {
            self
        }
    }
}

/// The parts of a PeerAuthentication (security.istio.io) that decide mTLS.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerAuthn {
    pub namespace: String,
    pub name: String,
    pub created: Timestamp,
    /// `selector.matchLabels`; `None` when absent.
    pub selector: Option<Labels>,
    pub mode: PeerMode,
    /// `portLevelMtls`, keyed by container port.
    pub port_level: BTreeMap<u32, PeerMode>,
}

impl PeerAuthn {
    /// `matchLabels: {}` selects nothing narrower than the namespace.
    fn has_selector(&self) -> bool {
        self.selector.as_ref().is_some_and(|s| !s.is_empty())
    }

    fn selects(&self, labels: &Labels) -> bool {
        self.selector
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v))
    }

    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Which level of policy decided a server's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyLevel {
    Port,
    Workload,
    Namespace,
    Mesh,
    /// Nothing applies: Istio's default.
    Default,
}

/// The mode a server proxy enforces on one container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerPolicy {
    /// Never `Unset`.
    pub mode: PeerMode,
    pub level: PolicyLevel,
    /// `namespace/name` of the deciding policy.
    pub policy: Option<String>,
}

/// Oldest first; equal creation times ordered by name, then namespace.
fn oldest<'a>(it: impl Iterator<Item = &'a PeerAuthn>) -> Option<&'a PeerAuthn> {
    it.min_by(|a, b| (a.created, &a.name, &a.namespace).cmp(&(b.created, &b.name, &b.namespace)))
}

/// Resolves the mode Istio applies to `container_port` of a pod in
/// `pod_namespace` with `pod_labels`.
///
/// Precedence is workload > namespace > mesh (root namespace, no selector);
/// at each level only the oldest policy counts; UNSET inherits from the next
/// level; a root-namespace policy with a selector is ignored entirely; a port
/// entry that is UNSET takes the workload's resolved mode; with nothing at
/// all the mode is PERMISSIVE.
pub fn server_policy(
    policies: &[PeerAuthn],
    root_namespace: &str,
    pod_namespace: &str,
    pod_labels: &Labels,
    container_port: u32,
) -> ServerPolicy {
    let mesh = oldest(
        policies
            .iter()
            .filter(|p| p.namespace == root_namespace && !p.has_selector()),
    );
    let in_own_ns = pod_namespace != root_namespace;
    let namespace = oldest(
        policies
            .iter()
            .filter(|p| in_own_ns && p.namespace == pod_namespace && !p.has_selector()),
    );
    let workload = oldest(policies.iter().filter(|p| {
        in_own_ns && p.namespace == pod_namespace && p.has_selector() && p.selects(pod_labels)
    }));

    let mut resolved = ServerPolicy {
        mode: PeerMode::Permissive,
        level: PolicyLevel::Default,
        policy: None,
    };
    let levels = [
        (mesh, PolicyLevel::Mesh),
        (namespace, PolicyLevel::Namespace),
        (workload, PolicyLevel::Workload),
    ];
    for (policy, level) in levels {
        if let Some(p) = policy
            && p.mode != PeerMode::Unset
        {
            resolved = ServerPolicy {
                mode: p.mode,
                level,
                policy: Some(p.id()),
            };
        }
    }
    // portLevelMtls only exists on workload policies (it needs a selector).
    if let Some(p) = workload
        && let Some(mode) = p.port_level.get(&container_port)
        && *mode != PeerMode::Unset
    {
        resolved = ServerPolicy {
            mode: mode.or(resolved.mode),
            level: PolicyLevel::Port,
            policy: Some(p.id()),
        };
    }
    resolved
}

/// A DestinationRule `tls.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

impl ClientTlsMode {
    /// Parses `tls.mode`; the proto's zero value is DISABLE, so a `tls`
    /// block without a mode (or with an unknown one) means DISABLE.
    pub fn parse(s: Option<&str>) -> ClientTlsMode {
        match s {
            Some("SIMPLE") => ClientTlsMode::Simple,
            Some("MUTUAL") => ClientTlsMode::Mutual,
            Some("ISTIO_MUTUAL") => ClientTlsMode::IstioMutual,
            _ => ClientTlsMode::Disable,
        }
    }
}

/// The parts of a DestinationRule (networking.istio.io) that decide client TLS.
/// Subsets are not modelled: the twin's edges never name one.
#[derive(Clone, Debug, PartialEq)]
pub struct DestRule {
    pub namespace: String,
    pub name: String,
    pub created: Timestamp,
    pub host: String,
    /// `exportTo`; empty means `*`.
    pub export_to: Vec<String>,
    /// `workloadSelector.matchLabels`.
    pub workload_selector: Option<Labels>,
    /// `trafficPolicy.tls.mode` when `tls` is set.
    pub tls: Option<ClientTlsMode>,
    /// `trafficPolicy.portLevelSettings[].tls.mode` by service port, for
    /// entries that set `tls`.
    pub port_tls: BTreeMap<u32, ClientTlsMode>,
}

impl DestRule {
    /// The host as Istio reads it: a short name is relative to the rule's namespace.
    fn fqdn_host(&self) -> String {
        if self.host.starts_with('*') || self.host.contains('.') {
            self.host.clone()
        } else {
            format!("{}.{}.svc.cluster.local", self.host, self.namespace)
        }
    }

    /// How specifically the host names `service_fqdn`: exact beats any
    /// wildcard, a longer wildcard suffix beats a shorter one.
    fn host_match(&self, service_fqdn: &str) -> Option<usize> {
        let host = self.fqdn_host();
        if host == service_fqdn {
            Some(usize::MAX)
        } else if host == "*" {
            Some(0)
        } else if let Some(suffix) = host.strip_prefix('*') {
            service_fqdn.ends_with(suffix).then_some(suffix.len())
        } else {
            None
        }
    }

    fn visible_to(&self, namespace: &str) -> bool {
        self.namespace == namespace
            || self.export_to.is_empty()
            || self
                .export_to
                .iter()
                .any(|e| e == "*" || (e == "." && self.namespace == namespace) || e == namespace)
    }

    fn tls_for_port(&self, port: u32) -> Option<ClientTlsMode> {
        self.port_tls.get(&port).copied().or(self.tls)
    }
}

/// The DestinationRule TLS a client applies, and which rule set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleTls {
    pub mode: ClientTlsMode,
    pub rule: String,
}

/// Picks the DestinationRule a sidecar client in `client_namespace` uses for
/// `service_fqdn` and returns its TLS setting for `service_port`, if it sets one.
///
/// Lookup order as in Istio's sidecar scope: the client's namespace (rules
/// with a matching workloadSelector first), then the service's namespace,
/// then the root namespace, then any other namespace exporting to the client.
/// Within a namespace the most specific host wins, then the oldest rule
/// (Istio merges same-host rules and keeps the oldest's traffic policy).
pub fn rule_tls(
    rules: &[DestRule],
    root_namespace: &str,
    client_namespace: &str,
    client_labels: &Labels,
    service_fqdn: &str,
    service_namespace: &str,
    service_port: u32,
) -> Option<RuleTls> {
    let best = |candidates: Vec<&DestRule>| -> Option<DestRule> {
        candidates
            .into_iter()
            .filter_map(|r| r.host_match(service_fqdn).map(|m| (m, r)))
            .min_by(|(ma, a), (mb, b)| {
                mb.cmp(ma)
                    .then((a.created, &a.name).cmp(&(b.created, &b.name)))
            })
            .map(|(_, r)| r.clone())
    };
    let selects = |r: &DestRule| match &r.workload_selector {
        None => true,
        Some(sel) => sel.iter().all(|(k, v)| client_labels.get(k) == Some(v)),
    };
    let in_ns = |ns: &str, with_selector: bool| -> Vec<&DestRule> {
        rules
            .iter()
            .filter(|r| r.namespace == ns && r.visible_to(client_namespace))
            .filter(|r| r.workload_selector.is_some() == with_selector)
            .filter(|r| {
                // A workloadSelector only reaches proxies of the rule's own namespace.
                !with_selector || (ns == client_namespace && selects(r))
            })
            .collect()
    };

    let mut order: Vec<Vec<&DestRule>> = vec![
        in_ns(client_namespace, true),
        in_ns(client_namespace, false),
        in_ns(service_namespace, false),
        in_ns(root_namespace, false),
    ];
    let mut others: Vec<&DestRule> = rules
        .iter()
        .filter(|r| {
            ![client_namespace, service_namespace, root_namespace].contains(&r.namespace.as_str())
                && r.workload_selector.is_none()
                && r.visible_to(client_namespace)
        })
        .collect();
    others.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    order.push(others);

    let rule = order.into_iter().find_map(best)?;
    rule.tls_for_port(service_port).map(|mode| RuleTls {
        mode,
        rule: format!("{}/{}", rule.namespace, rule.name),
    })
}

/// How a pod takes part in the mesh, as its shape shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataplane {
    /// An `istio-proxy` sidecar (classic or native).
    Sidecar,
    /// Traffic redirected to ztunnel.
    Ambient,
    /// No proxy: what a pod outside the mesh or an external client is.
    None,
}

/// The server side of one connection, as a client's proxy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerSide {
    pub dataplane: Dataplane,
    /// The pod carries `security.istio.io/tlsMode=istio`.
    pub tls_mode_istio: bool,
    /// The server's resolved PeerAuthentication mode on the target port.
    pub mode: PeerMode,
}

/// What goes on the wire from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wire {
    /// Istio mTLS (mesh certificate, Istio ALPN; HBONE for ztunnel).
    IstioMtls,
    Plaintext,
    /// TLS that is not Istio's (DestinationRule SIMPLE or MUTUAL).
    OtherTls,
}

/// Why the client sends what it sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum ClientTls {
    /// No proxy on the client: the application's plaintext goes out as is.
    NoProxy,
    /// Auto mTLS decided.
    Auto { wire: Wire },
    /// A DestinationRule's `tls` overrode auto mTLS.
    Rule { mode: ClientTlsMode, rule: String },
    /// ztunnel: HBONE to mesh destinations, plaintext otherwise; DestinationRule
    /// TLS is a waypoint concern and ignored here.
    Ztunnel { wire: Wire },
}

/// Decides what the client sends.
///
/// A sidecar client obeys a DestinationRule `tls` when there is one; otherwise
/// auto mTLS sends Istio mTLS exactly when the server pod carries
/// `tlsMode=istio` and the server's policy on that port is not DISABLE (istiod
/// marks such endpoints plaintext). An ambient client uses HBONE when the
/// server is ambient or carries `tlsMode=istio`.
pub fn client_tls(client: Dataplane, server: ServerSide, rule: Option<RuleTls>) -> ClientTls {
    match client {
        Dataplane::None => ClientTls::NoProxy,
        Dataplane::Ambient => {
            let mesh = server.dataplane == Dataplane::Ambient || server.tls_mode_istio;
            ClientTls::Ztunnel {
                wire: if mesh {
                    Wire::IstioMtls
                } else {
                    Wire::Plaintext
                },
            }
        }
        Dataplane::Sidecar => match rule {
            Some(RuleTls { mode, rule }) => ClientTls::Rule { mode, rule },
            None => {
                let mtls = server.tls_mode_istio && server.mode != PeerMode::Disable;
                ClientTls::Auto {
                    wire: if mtls {
                        Wire::IstioMtls
                    } else {
                        Wire::Plaintext
                    },
                }
            }
        },
    }
}

impl ClientTls {
    pub fn wire(&self) -> Wire {
        match self {
            ClientTls::NoProxy => Wire::Plaintext,
            ClientTls::Auto { wire } | ClientTls::Ztunnel { wire } => *wire,
            ClientTls::Rule { mode, .. } => match mode {
                ClientTlsMode::Disable => Wire::Plaintext,
                ClientTlsMode::Simple | ClientTlsMode::Mutual => Wire::OtherTls,
                ClientTlsMode::IstioMutual => Wire::IstioMtls,
            },
        }
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rejection {
    /// Plaintext reached a STRICT server.
    PlaintextToStrict,
    /// TLS with a non-mesh (or no) client certificate reached a STRICT server.
    TlsToStrict,
    /// Istio mTLS reached something that does not terminate it (no proxy, or
    /// a sidecar with DISABLE passing bytes to a plaintext application).
    MtlsToPlaintextServer,
    /// No ready server pod.
    NoEndpoints,
}

/// The result of one request (or TCP connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "kebab-case")]
pub enum Outcome {
    MtlsAccepted,
    /// Served without Istio mTLS (plaintext, or non-Istio TLS passed through).
    PlaintextAccepted,
    Rejected(Rejection),
}

impl Outcome {
    pub fn served(self) -> bool {
        !matches!(self, Outcome::Rejected(_))
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::MtlsAccepted => "mtls-accepted",
            Outcome::PlaintextAccepted => "plaintext-accepted",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

/// What the server side does with what arrived.
///
/// Sidecar: STRICT accepts only Istio mTLS; PERMISSIVE accepts Istio mTLS,
/// plaintext, and non-Istio TLS (its TLS-without-Istio-ALPN filter chain
/// passes such bytes to the application, which the twin assumes terminates
/// that TLS itself, as a SIMPLE rule implies); DISABLE does not terminate
/// TLS, so Istio mTLS breaks. Ambient: ztunnel cannot DISABLE, so anything
/// but STRICT accepts everything; STRICT accepts HBONE only. No proxy: the
/// application speaks plaintext; Istio mTLS to it fails.
pub fn server_outcome(server: ServerSide, wire: Wire) -> Outcome {
    use Outcome::{MtlsAccepted, PlaintextAccepted, Rejected};
    use PeerMode::{Disable, Strict};
    match server.dataplane {
        Dataplane::None => match wire {
            Wire::IstioMtls => Rejected(Rejection::MtlsToPlaintextServer),
            Wire::Plaintext | Wire::OtherTls => PlaintextAccepted,
        },
        Dataplane::Sidecar => match (server.mode, wire) {
            (Disable, Wire::IstioMtls) => Rejected(Rejection::MtlsToPlaintextServer),
            (_, Wire::IstioMtls) => MtlsAccepted,
            (Strict, Wire::Plaintext) => Rejected(Rejection::PlaintextToStrict),
            (Strict, Wire::OtherTls) => Rejected(Rejection::TlsToStrict),
            (_, Wire::Plaintext | Wire::OtherTls) => PlaintextAccepted,
        },
        Dataplane::Ambient => match (server.mode, wire) {
            (_, Wire::IstioMtls) => MtlsAccepted,
            (Strict, Wire::Plaintext) => Rejected(Rejection::PlaintextToStrict),
            (Strict, Wire::OtherTls) => Rejected(Rejection::TlsToStrict),
            (_, Wire::Plaintext | Wire::OtherTls) => PlaintextAccepted,
        },
    }
}

/// The whole decision for one client pod -> server pod request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub server_policy: ServerPolicy,
    pub client_tls: ClientTls,
    pub wire: Wire,
    pub outcome: Outcome,
}

/// Inputs that name one request: who sends, to which pod, on which port.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub client_dataplane: Dataplane,
    /// Client pod namespace and labels; `None` for a client that is not a pod.
    pub client: Option<(&'a str, &'a Labels)>,
    pub server_namespace: &'a str,
    pub server_labels: &'a Labels,
    pub server_dataplane: Dataplane,
    pub server_tls_mode_istio: bool,
    pub container_port: u32,
    pub service_fqdn: &'a str,
    pub service_port: u32,
}

/// Istio configuration the data plane acts on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshConfig {
    pub root_namespace: String,
    pub peer_authns: Vec<PeerAuthn>,
    pub dest_rules: Vec<DestRule>,
}

/// Decides one request end to end.
pub fn decide(mesh: &MeshConfig, req: &Request<'_>) -> Verdict {
    let server_policy = server_policy(
        &mesh.peer_authns,
        &mesh.root_namespace,
        req.server_namespace,
        req.server_labels,
        req.container_port,
    );
    let server = ServerSide {
        dataplane: req.server_dataplane,
        tls_mode_istio: req.server_tls_mode_istio,
        mode: server_policy.mode,
    };
    let rule = match (req.client_dataplane, req.client) {
        (Dataplane::Sidecar, Some((ns, labels))) => rule_tls(
            &mesh.dest_rules,
            &mesh.root_namespace,
            ns,
            labels,
            req.service_fqdn,
            req.server_namespace,
            req.service_port,
        ),
        _ => None,
    };
    let client_tls = client_tls(req.client_dataplane, server, rule);
    let wire = client_tls.wire();
    Verdict {
        outcome: server_outcome(server, wire),
        server_policy,
        client_tls,
        wire,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "istio-system";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pa(ns: &str, name: &str, age: i64, mode: PeerMode) -> PeerAuthn {
        PeerAuthn {
            namespace: ns.into(),
            name: name.into(),
            created: Timestamp::from_second(1_000_000 + age).unwrap(),
            selector: None,
            mode,
            port_level: BTreeMap::new(),
        }
    }

    fn with_selector(mut p: PeerAuthn, sel: &[(&str, &str)]) -> PeerAuthn {
        p.selector = Some(labels(sel));
        p
    }

    fn mode_of(policies: &[PeerAuthn], ns: &str, pod: &Labels, port: u32) -> PeerMode {
        server_policy(policies, ROOT, ns, pod, port).mode
    }

    #[test]
    fn nothing_applies_means_permissive() {
        let got = server_policy(&[], ROOT, "shop", &labels(&[("app", "api")]), 8080);
        assert_eq!(got.mode, PeerMode::Permissive);
        assert_eq!(got.level, PolicyLevel::Default);
    }

    #[test]
    fn workload_beats_namespace_beats_mesh() {
        let pod = labels(&[("app", "api")]);
        let mesh = pa(ROOT, "default", 0, PeerMode::Strict);
        assert_eq!(
            mode_of(std::slice::from_ref(&mesh), "shop", &pod, 80),
            PeerMode::Strict
        );

        let ns = pa("shop", "ns", 0, PeerMode::Permissive);
        assert_eq!(
            mode_of(&[mesh.clone(), ns.clone()], "shop", &pod, 80),
            PeerMode::Permissive
        );

        let wl = with_selector(pa("shop", "wl", 0, PeerMode::Strict), &[("app", "api")]);
        let got = server_policy(&[mesh, ns, wl], ROOT, "shop", &pod, 80);
        assert_eq!(got.mode, PeerMode::Strict);
        assert_eq!(got.level, PolicyLevel::Workload);
        assert_eq!(got.policy.as_deref(), Some("shop/wl"));
    }

    #[test]
    fn namespace_policy_does_not_reach_other_namespaces() {
        let pod = labels(&[("app", "api")]);
        let other = pa("billing", "ns", 0, PeerMode::Strict);
        assert_eq!(mode_of(&[other], "shop", &pod, 80), PeerMode::Permissive);
    }

    #[test]
    fn workload_selector_must_match_all_labels() {
        let pod = labels(&[("app", "api")]);
        let wl = with_selector(
            pa("shop", "wl", 0, PeerMode::Strict),
            &[("app", "api"), ("version", "v2")],
        );
        assert_eq!(mode_of(&[wl], "shop", &pod, 80), PeerMode::Permissive);
    }

    #[test]
    fn oldest_namespace_policy_wins() {
        let pod = Labels::new();
        let old = pa("shop", "b-old", 0, PeerMode::Permissive);
        let new = pa("shop", "a-new", 10, PeerMode::Strict);
        // A second namespace-wide policy beside an existing one changes nothing.
        assert_eq!(mode_of(&[new, old], "shop", &pod, 80), PeerMode::Permissive);
    }

    #[test]
    fn oldest_mesh_policy_wins() {
        let pod = Labels::new();
        let old = pa(ROOT, "z", 0, PeerMode::Strict);
        let new = pa(ROOT, "a", 5, PeerMode::Permissive);
        assert_eq!(mode_of(&[new, old], "shop", &pod, 80), PeerMode::Strict);
    }

    #[test]
    fn oldest_workload_policy_wins_whatever_its_selector() {
        let pod = labels(&[("app", "api"), ("tier", "back")]);
        let narrow_new = with_selector(
            pa("shop", "narrow", 10, PeerMode::Strict),
            &[("app", "api"), ("tier", "back")],
        );
        let broad_old = with_selector(
            pa("shop", "broad", 0, PeerMode::Permissive),
            &[("app", "api")],
        );
        assert_eq!(
            mode_of(&[narrow_new, broad_old], "shop", &pod, 80),
            PeerMode::Permissive
        );
    }

    #[test]
    fn equal_age_ties_broken_by_name_then_namespace() {
        let pod = Labels::new();
        let b = pa("shop", "b", 0, PeerMode::Strict);
        let a = pa("shop", "a", 0, PeerMode::Disable);
        assert_eq!(mode_of(&[b, a], "shop", &pod, 80), PeerMode::Disable);
        let same_a = pa("zz", "same", 0, PeerMode::Strict);
        let same_b = pa("aa", "same", 0, PeerMode::Disable);
        let chosen = oldest([&same_a, &same_b].into_iter()).unwrap();
        assert_eq!(chosen.namespace, "aa");
    }

    #[test]
    fn root_namespace_policy_with_selector_is_ignored() {
        let pod = labels(&[("app", "api")]);
        let rooted = with_selector(pa(ROOT, "sel", 0, PeerMode::Strict), &[("app", "api")]);
        let got = server_policy(&[rooted], ROOT, "shop", &pod, 80);
        assert_eq!(got.mode, PeerMode::Permissive);
        assert_eq!(got.level, PolicyLevel::Default);
    }

    #[test]
    fn empty_match_labels_is_namespace_wide() {
        let pod = labels(&[("app", "api")]);
        let mut empty = pa("shop", "empty", 0, PeerMode::Strict);
        empty.selector = Some(Labels::new());
        let got = server_policy(&[empty.clone()], ROOT, "shop", &pod, 80);
        assert_eq!(
            (got.mode, got.level),
            (PeerMode::Strict, PolicyLevel::Namespace)
        );
        // ... and competes with the other namespace-wide policies by age.
        let older = pa("shop", "older", -5, PeerMode::Permissive);
        assert_eq!(
            mode_of(&[empty, older], "shop", &pod, 80),
            PeerMode::Permissive
        );
        // An empty selector in the root namespace is mesh-wide.
        let mut mesh = pa(ROOT, "mesh", 0, PeerMode::Strict);
        mesh.selector = Some(Labels::new());
        assert_eq!(mode_of(&[mesh], "shop", &pod, 80), PeerMode::Strict);
    }

    #[test]
    fn unset_inherits_from_the_next_level() {
        let pod = labels(&[("app", "api")]);
        let ns = pa("shop", "ns", 0, PeerMode::Strict);
        let wl = with_selector(pa("shop", "wl", 0, PeerMode::Unset), &[("app", "api")]);
        assert_eq!(
            mode_of(&[ns.clone(), wl.clone()], "shop", &pod, 80),
            PeerMode::Strict
        );

        let mesh = pa(ROOT, "mesh", 0, PeerMode::Strict);
        let ns_unset = pa("shop", "ns", 0, PeerMode::Unset);
        assert_eq!(
            mode_of(&[mesh, ns_unset, wl], "shop", &pod, 80),
            PeerMode::Strict
        );

        // An UNSET mesh policy is PERMISSIVE.
        let mesh_unset = pa(ROOT, "mesh", 0, PeerMode::Unset);
        assert_eq!(
            mode_of(&[mesh_unset], "shop", &pod, 80),
            PeerMode::Permissive
        );
    }

    #[test]
    fn port_level_overrides_by_container_port() {
        let pod = labels(&[("app", "api")]);
        let mut wl = with_selector(pa("shop", "wl", 0, PeerMode::Strict), &[("app", "api")]);
        wl.port_level.insert(9090, PeerMode::Permissive);
        let got = server_policy(&[wl.clone()], ROOT, "shop", &pod, 9090);
        assert_eq!(
            (got.mode, got.level),
            (PeerMode::Permissive, PolicyLevel::Port)
        );
        assert_eq!(mode_of(&[wl], "shop", &pod, 8080), PeerMode::Strict);
    }

    #[test]
    fn unset_port_takes_the_workload_resolved_mode() {
        let pod = labels(&[("app", "api")]);
        let ns = pa("shop", "ns", 0, PeerMode::Strict);
        let mut wl = with_selector(pa("shop", "wl", 0, PeerMode::Unset), &[("app", "api")]);
        wl.port_level.insert(9090, PeerMode::Unset);
        assert_eq!(mode_of(&[ns, wl], "shop", &pod, 9090), PeerMode::Strict);
    }

    #[test]
    fn port_level_on_namespace_policy_is_ignored() {
        let pod = labels(&[("app", "api")]);
        let mut ns = pa("shop", "ns", 0, PeerMode::Strict);
        ns.port_level.insert(9090, PeerMode::Disable);
        assert_eq!(mode_of(&[ns], "shop", &pod, 9090), PeerMode::Strict);
    }

    fn sidecar_server(mode: PeerMode) -> ServerSide {
        ServerSide {
            dataplane: Dataplane::Sidecar,
            tls_mode_istio: true,
            mode,
        }
    }

    #[test]
    fn permissive_accepts_both() {
        let s = sidecar_server(PeerMode::Permissive);
        assert_eq!(server_outcome(s, Wire::IstioMtls), Outcome::MtlsAccepted);
        assert_eq!(
            server_outcome(s, Wire::Plaintext),
            Outcome::PlaintextAccepted
        );
    }

    #[test]
    fn strict_rejects_plaintext() {
        let s = sidecar_server(PeerMode::Strict);
        assert_eq!(server_outcome(s, Wire::IstioMtls), Outcome::MtlsAccepted);
        assert_eq!(
            server_outcome(s, Wire::Plaintext),
            Outcome::Rejected(Rejection::PlaintextToStrict)
        );
    }

    #[test]
    fn non_istio_tls_rejected_by_strict_passed_through_by_permissive() {
        assert_eq!(
            server_outcome(sidecar_server(PeerMode::Strict), Wire::OtherTls),
            Outcome::Rejected(Rejection::TlsToStrict)
        );
        assert_eq!(
            server_outcome(sidecar_server(PeerMode::Permissive), Wire::OtherTls),
            Outcome::PlaintextAccepted
        );
    }

    #[test]
    fn disable_server_breaks_forced_istio_mtls() {
        let s = sidecar_server(PeerMode::Disable);
        assert_eq!(
            server_outcome(s, Wire::IstioMtls),
            Outcome::Rejected(Rejection::MtlsToPlaintextServer)
        );
        assert_eq!(
            server_outcome(s, Wire::Plaintext),
            Outcome::PlaintextAccepted
        );
    }

    #[test]
    fn server_without_proxy_takes_plaintext_only() {
        let s = ServerSide {
            dataplane: Dataplane::None,
            tls_mode_istio: false,
            mode: PeerMode::Strict,
        };
        assert_eq!(
            server_outcome(s, Wire::Plaintext),
            Outcome::PlaintextAccepted
        );
        assert_eq!(
            server_outcome(s, Wire::IstioMtls),
            Outcome::Rejected(Rejection::MtlsToPlaintextServer)
        );
    }

    #[test]
    fn ambient_strict_rejects_plaintext_and_ignores_disable() {
        let amb = |mode| ServerSide {
            dataplane: Dataplane::Ambient,
            tls_mode_istio: false,
            mode,
        };
        assert_eq!(
            server_outcome(amb(PeerMode::Strict), Wire::Plaintext),
            Outcome::Rejected(Rejection::PlaintextToStrict)
        );
        assert_eq!(
            server_outcome(amb(PeerMode::Strict), Wire::IstioMtls),
            Outcome::MtlsAccepted
        );
        assert_eq!(
            server_outcome(amb(PeerMode::Disable), Wire::IstioMtls),
            Outcome::MtlsAccepted
        );
        assert_eq!(
            server_outcome(amb(PeerMode::Permissive), Wire::Plaintext),
            Outcome::PlaintextAccepted
        );
    }

    #[test]
    fn client_without_sidecar_sends_plaintext() {
        let tls = client_tls(Dataplane::None, sidecar_server(PeerMode::Strict), None);
        assert_eq!(tls, ClientTls::NoProxy);
        assert_eq!(tls.wire(), Wire::Plaintext);
    }

    #[test]
    fn auto_mtls_follows_the_tls_mode_label() {
        let labelled = sidecar_server(PeerMode::Permissive);
        assert_eq!(
            client_tls(Dataplane::Sidecar, labelled, None).wire(),
            Wire::IstioMtls
        );
        let unlabelled = ServerSide {
            dataplane: Dataplane::None,
            tls_mode_istio: false,
            mode: PeerMode::Permissive,
        };
        assert_eq!(
            client_tls(Dataplane::Sidecar, unlabelled, None).wire(),
            Wire::Plaintext
        );
        // istiod marks endpoints whose policy is DISABLE as plaintext.
        let disabled = sidecar_server(PeerMode::Disable);
        assert_eq!(
            client_tls(Dataplane::Sidecar, disabled, None).wire(),
            Wire::Plaintext
        );
    }

    #[test]
    fn ambient_client_uses_hbone_to_mesh_servers() {
        let amb = ServerSide {
            dataplane: Dataplane::Ambient,
            tls_mode_istio: false,
            mode: PeerMode::Permissive,
        };
        assert_eq!(
            client_tls(Dataplane::Ambient, amb, None).wire(),
            Wire::IstioMtls
        );
        assert_eq!(
            client_tls(Dataplane::Ambient, sidecar_server(PeerMode::Strict), None).wire(),
            Wire::IstioMtls
        );
        let plain = ServerSide {
            dataplane: Dataplane::None,
            tls_mode_istio: false,
            mode: PeerMode::Permissive,
        };
        assert_eq!(
            client_tls(Dataplane::Ambient, plain, None).wire(),
            Wire::Plaintext
        );
    }

    fn dr(ns: &str, name: &str, host: &str, tls: Option<ClientTlsMode>) -> DestRule {
        DestRule {
            namespace: ns.into(),
            name: name.into(),
            created: Timestamp::from_second(1_000_000).unwrap(),
            host: host.into(),
            export_to: vec![],
            workload_selector: None,
            tls,
            port_tls: BTreeMap::new(),
        }
    }

    const API: &str = "api.shop.svc.cluster.local";

    fn tls_of(rules: &[DestRule], client_ns: &str, port: u32) -> Option<ClientTlsMode> {
        rule_tls(rules, ROOT, client_ns, &Labels::new(), API, "shop", port).map(|r| r.mode)
    }

    #[test]
    fn dr_disable_overrides_auto_mtls() {
        let rules = [dr("shop", "api", "api", Some(ClientTlsMode::Disable))];
        let mesh = MeshConfig {
            root_namespace: ROOT.into(),
            peer_authns: vec![pa("shop", "strict", 0, PeerMode::Strict)],
            dest_rules: rules.to_vec(),
        };
        let client_labels = labels(&[("app", "web")]);
        let server_labels = labels(&[("app", "api")]);
        let v = decide(
            &mesh,
            &Request {
                client_dataplane: Dataplane::Sidecar,
                client: Some(("shop", &client_labels)),
                server_namespace: "shop",
                server_labels: &server_labels,
                server_dataplane: Dataplane::Sidecar,
                server_tls_mode_istio: true,
                container_port: 8080,
                service_fqdn: API,
                service_port: 8080,
            },
        );
        assert_eq!(v.wire, Wire::Plaintext);
        assert_eq!(v.outcome, Outcome::Rejected(Rejection::PlaintextToStrict));
        assert!(matches!(
            v.client_tls,
            ClientTls::Rule {
                mode: ClientTlsMode::Disable,
                ..
            }
        ));
    }

    #[test]
    fn dr_without_tls_keeps_auto_mtls() {
        assert_eq!(tls_of(&[dr("shop", "api", "api", None)], "shop", 80), None);
    }

    #[test]
    fn dr_port_level_tls_overrides_top_level() {
        let mut rule = dr("shop", "api", API, Some(ClientTlsMode::IstioMutual));
        rule.port_tls.insert(9090, ClientTlsMode::Disable);
        let rules = [rule];
        assert_eq!(tls_of(&rules, "shop", 9090), Some(ClientTlsMode::Disable));
        assert_eq!(
            tls_of(&rules, "shop", 8080),
            Some(ClientTlsMode::IstioMutual)
        );
    }

    #[test]
    fn dr_short_host_is_relative_to_its_namespace() {
        // "api" written in namespace "web" means api.web..., not our service.
        let rules = [dr("web", "api", "api", Some(ClientTlsMode::Disable))];
        assert_eq!(tls_of(&rules, "web", 80), None);
        // Istio does not expand "api.shop": only dot-less names are completed.
        let rules = [dr("shop", "api", "api.shop", Some(ClientTlsMode::Disable))];
        assert_eq!(tls_of(&rules, "shop", 80), None);
    }

    #[test]
    fn dr_lookup_prefers_client_namespace_then_service_namespace() {
        let in_client = dr("web", "mine", API, Some(ClientTlsMode::Disable));
        let in_service = dr("shop", "theirs", API, Some(ClientTlsMode::IstioMutual));
        let in_root = dr(ROOT, "global", "*", Some(ClientTlsMode::Simple));
        let all = [in_root.clone(), in_service.clone(), in_client];
        assert_eq!(tls_of(&all, "web", 80), Some(ClientTlsMode::Disable));
        assert_eq!(
            tls_of(&[in_root.clone(), in_service], "web", 80),
            Some(ClientTlsMode::IstioMutual)
        );
        assert_eq!(tls_of(&[in_root], "web", 80), Some(ClientTlsMode::Simple));
    }

    #[test]
    fn dr_exact_host_beats_wildcard_and_oldest_wins() {
        let wildcard = dr(
            "shop",
            "wild",
            "*.shop.svc.cluster.local",
            Some(ClientTlsMode::Simple),
        );
        let exact = dr("shop", "exact", API, Some(ClientTlsMode::Disable));
        assert_eq!(
            tls_of(&[wildcard, exact], "shop", 80),
            Some(ClientTlsMode::Disable)
        );

        let mut newer = dr("shop", "a-newer", API, Some(ClientTlsMode::Simple));
        newer.created = Timestamp::from_second(2_000_000).unwrap();
        let older = dr("shop", "z-older", API, Some(ClientTlsMode::Disable));
        assert_eq!(
            tls_of(&[newer, older], "shop", 80),
            Some(ClientTlsMode::Disable)
        );
    }

    #[test]
    fn dr_export_to_dot_hides_it_from_other_namespaces() {
        let mut rule = dr("shop", "api", "api", Some(ClientTlsMode::Disable));
        rule.export_to = vec![".".into()];
        let rules = [rule];
        assert_eq!(tls_of(&rules, "shop", 80), Some(ClientTlsMode::Disable));
        assert_eq!(tls_of(&rules, "web", 80), None);
    }

    #[test]
    fn dr_workload_selector_applies_to_selected_clients_only() {
        let mut rule = dr("shop", "sel", API, Some(ClientTlsMode::Disable));
        rule.workload_selector = Some(labels(&[("app", "legacy")]));
        let rules = [rule];
        let legacy = labels(&[("app", "legacy")]);
        let other = labels(&[("app", "web")]);
        let pick = |l: &Labels| rule_tls(&rules, ROOT, "shop", l, API, "shop", 80).map(|r| r.mode);
        assert_eq!(pick(&legacy), Some(ClientTlsMode::Disable));
        assert_eq!(pick(&other), None);
    }

    #[test]
    fn dr_tls_without_mode_is_disable() {
        assert_eq!(ClientTlsMode::parse(None), ClientTlsMode::Disable);
        assert_eq!(
            ClientTlsMode::parse(Some("ISTIO_MUTUAL")),
            ClientTlsMode::IstioMutual
        );
    }

    #[test]
    fn dr_ignored_for_clients_without_sidecar() {
        let mesh = MeshConfig {
            root_namespace: ROOT.into(),
            peer_authns: vec![],
            dest_rules: vec![dr("shop", "api", "api", Some(ClientTlsMode::IstioMutual))],
        };
        let client_labels = Labels::new();
        let server_labels = Labels::new();
        let v = decide(
            &mesh,
            &Request {
                client_dataplane: Dataplane::None,
                client: Some(("shop", &client_labels)),
                server_namespace: "shop",
                server_labels: &server_labels,
                server_dataplane: Dataplane::Sidecar,
                server_tls_mode_istio: true,
                container_port: 80,
                service_fqdn: API,
                service_port: 80,
            },
        );
        assert_eq!(v.client_tls, ClientTls::NoProxy);
        assert_eq!(v.outcome, Outcome::PlaintextAccepted);
    }

    #[test]
    fn dr_simple_to_strict_sidecar_is_rejected() {
        let mesh = MeshConfig {
            root_namespace: ROOT.into(),
            peer_authns: vec![pa(ROOT, "mesh", 0, PeerMode::Strict)],
            dest_rules: vec![dr("shop", "api", "api", Some(ClientTlsMode::Simple))],
        };
        let l = Labels::new();
        let v = decide(
            &mesh,
            &Request {
                client_dataplane: Dataplane::Sidecar,
                client: Some(("shop", &l)),
                server_namespace: "shop",
                server_labels: &l,
                server_dataplane: Dataplane::Sidecar,
                server_tls_mode_istio: true,
                container_port: 80,
                service_fqdn: API,
                service_port: 80,
            },
        );
        assert_eq!(v.wire, Wire::OtherTls);
        assert_eq!(v.outcome, Outcome::Rejected(Rejection::TlsToStrict));
    }
}
