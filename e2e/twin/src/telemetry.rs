//! Which Istio standard-metric series one request produces, and with which
//! label values, given the decision `istio_model` made for it.
//!
//! Sidecars (Envoy with Istio's stats filter) report `istio_requests_total`
//! for HTTP/gRPC and `istio_tcp_connections_*` for TCP, on the client side
//! (`reporter="source"`, `connection_security_policy="unknown"` always) and
//! the server side (`reporter="destination"`, `mutual_tls` or `none`).
//! ztunnel reports TCP connection metrics only, with `mutual_tls` or
//! `unknown`, and counts a connection as opened before it checks policy.

use prometheus_client::encoding::EncodeLabelSet;
use serde::Serialize;

use crate::istio_model::{Dataplane, Outcome, Rejection, Verdict, Wire};

/// The application protocol of an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Grpc,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

/// A mesh identity: workload, namespace and service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub service_account: String,
}

impl Peer {
    fn principal(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// Labels of `istio_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// Labels of `istio_tcp_connections_opened_total` / `_closed_total` (no
/// response code on TCP metrics).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// One series one request increments.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Series {
    Requests(RequestLabels),
    TcpOpened(TcpLabels),
    TcpClosed(TcpLabels),
}

/// Everything that names one request for telemetry.
#[derive(Clone, Debug)]
pub struct Exchange<'a> {
    pub protocol: Protocol,
    /// The client pod's identity; `None` for a client that is not a pod.
    pub client: Option<&'a Peer>,
    pub client_dataplane: Dataplane,
    /// `None` when no server pod was there to pick.
    pub server: Option<&'a Peer>,
    pub server_dataplane: Dataplane,
    pub service_name: &'a str,
    pub service_namespace: &'a str,
    pub verdict: &'a Verdict,
}

const UNKNOWN: &str = "unknown";

/// The series one request increments, each by one.
///
/// Choices where Istio's behaviour depends on details the twin does not model:
/// - plaintext HTTP from a sidecar client still carries Istio's peer-metadata
///   headers, so the destination names the source workload (TCP cannot);
/// - non-Istio TLS accepted by a PERMISSIVE sidecar goes through its TCP
///   passthrough chain, so the destination reports TCP metrics, `none`;
/// - ztunnel finds a plaintext source by its pod IP: in-cluster pods are
///   named, external clients are `unknown`;
/// - every HTTP request to an ambient destination is one TCP connection.
pub fn series(x: &Exchange<'_>) -> Vec<Series> {
    let mut out = Vec::new();
    let outcome = x.verdict.outcome;
    let wire = x.verdict.wire;
    let mtls_ok = outcome == Outcome::MtlsAccepted;
    let base = Base {
        destination_workload: x.server.map_or(UNKNOWN.into(), |s| s.workload.clone()),
        destination_workload_namespace: x.server.map_or(UNKNOWN.into(), |s| s.namespace.clone()),
        destination_principal: match x.server {
            Some(s) if mtls_ok => s.principal(),
            _ => UNKNOWN.into(),
        },
        destination_service: format!(
            "{}.{}.svc.cluster.local",
            x.service_name, x.service_namespace
        ),
        destination_service_name: x.service_name.into(),
        destination_service_namespace: x.service_namespace.into(),
    };

    // Source side.
    match (x.client_dataplane, x.client) {
        (Dataplane::Sidecar, Some(client)) => {
            let src = Source::known(client, wire == Wire::IstioMtls);
            let flags = envoy_flags(outcome, x.protocol);
            if x.protocol == Protocol::Tcp {
                tcp_pair(&mut out, &base, &src, "source", "tcp", "unknown", &flags);
            } else {
                out.push(Series::Requests(request(
                    &base,
                    &src,
                    "source",
                    x.protocol,
                    outcome.served(),
                    &flags,
                    "unknown",
                )));
            }
        }
        (Dataplane::Ambient, Some(client)) => {
            let mtls = wire == Wire::IstioMtls;
            let src = Source::known(client, mtls);
            let closed_flags = if outcome.served() { "-" } else { "CONNECT" };
            let csp = if mtls { "mutual_tls" } else { "unknown" };
            tcp_pair(&mut out, &base, &src, "source", "tcp", csp, closed_flags);
        }
        _ => {}
    }

    // Destination side.
    match x.server_dataplane {
        Dataplane::Sidecar if outcome.served() => {
            let (src, csp) = match wire {
                Wire::IstioMtls => (Source::of(x.client, true), "mutual_tls"),
                Wire::Plaintext
                    if x.protocol != Protocol::Tcp && x.client_dataplane == Dataplane::Sidecar =>
                {
                    (Source::of(x.client, false), "none")
                }
                Wire::Plaintext | Wire::OtherTls => (Source::unknown(), "none"),
            };
            if x.protocol == Protocol::Tcp || wire == Wire::OtherTls {
                tcp_pair(&mut out, &base, &src, "destination", "tcp", csp, "-");
            } else {
                out.push(Series::Requests(request(
                    &base,
                    &src,
                    "destination",
                    x.protocol,
                    true,
                    "-",
                    csp,
                )));
            }
        }
        Dataplane::Ambient if outcome != Outcome::Rejected(Rejection::NoEndpoints) => {
            let mtls = wire == Wire::IstioMtls;
            let src = Source::of(x.client, mtls);
            let csp = if mtls { "mutual_tls" } else { "unknown" };
            // ztunnel counts the connection as opened, then applies policy.
            let closed_flags = if outcome.served() { "-" } else { "DENY" };
            tcp_pair(
                &mut out,
                &base,
                &src,
                "destination",
                "tcp",
                csp,
                closed_flags,
            );
        }
        _ => {}
    }
    out
}

/// Envoy's response flags on the client side.
fn envoy_flags(outcome: Outcome, protocol: Protocol) -> String {
    let tcp = protocol == Protocol::Tcp;
    match outcome {
        Outcome::MtlsAccepted | Outcome::PlaintextAccepted => "-",
        // The STRICT listener has no filter chain for plaintext and closes
        // the connection: reset before headers.
        Outcome::Rejected(Rejection::PlaintextToStrict) => "UC",
        // TLS handshake failure counts as a connect failure, which Istio's
        // default retry policy retries.
        Outcome::Rejected(Rejection::TlsToStrict | Rejection::MtlsToPlaintextServer) => {
            if tcp {
                "UF"
            } else {
                "UF,URX"
            }
        }
        Outcome::Rejected(Rejection::NoEndpoints) => "UH",
    }
    .to_string()
}

struct Base {
    destination_workload: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
}

struct Source {
    workload: String,
    namespace: String,
    principal: String,
}

impl Source {
    fn known(p: &Peer, mtls: bool) -> Source {
        Source {
            workload: p.workload.clone(),
            namespace: p.namespace.clone(),
            principal: if mtls { p.principal() } else { UNKNOWN.into() },
        }
    }

    fn of(p: Option<&Peer>, mtls: bool) -> Source {
        p.map_or_else(Source::unknown, |p| Source::known(p, mtls))
    }

    fn unknown() -> Source {
        Source {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
        }
    }
}

fn request(
    b: &Base,
    s: &Source,
    reporter: &str,
    protocol: Protocol,
    served: bool,
    flags: &str,
    csp: &str,
) -> RequestLabels {
    // Envoy answers a failed gRPC call with HTTP 200 and grpc-status 14.
    let (code, grpc) = match (protocol, served) {
        (Protocol::Grpc, true) => ("200", "0"),
        (Protocol::Grpc, false) => ("200", "14"),
        (_, true) => ("200", ""),
        (_, false) => ("503", ""),
    };
    RequestLabels {
        reporter: reporter.into(),
        source_workload: s.workload.clone(),
        source_workload_namespace: s.namespace.clone(),
        source_principal: s.principal.clone(),
        destination_workload: b.destination_workload.clone(),
        destination_workload_namespace: b.destination_workload_namespace.clone(),
        destination_principal: b.destination_principal.clone(),
        destination_service: b.destination_service.clone(),
        destination_service_name: b.destination_service_name.clone(),
        destination_service_namespace: b.destination_service_namespace.clone(),
        request_protocol: protocol.as_str().into(),
        response_code: code.into(),
        grpc_response_status: grpc.into(),
        response_flags: flags.into(),
        connection_security_policy: csp.into(),
    }
}

fn tcp_pair(
    out: &mut Vec<Series>,
    b: &Base,
    s: &Source,
    reporter: &str,
    protocol: &str,
    csp: &str,
    closed_flags: &str,
) {
    let labels = |flags: &str| TcpLabels {
        reporter: reporter.into(),
        source_workload: s.workload.clone(),
        source_workload_namespace: s.namespace.clone(),
        source_principal: s.principal.clone(),
        destination_workload: b.destination_workload.clone(),
        destination_workload_namespace: b.destination_workload_namespace.clone(),
        destination_principal: b.destination_principal.clone(),
        destination_service: b.destination_service.clone(),
        destination_service_name: b.destination_service_name.clone(),
        destination_service_namespace: b.destination_service_namespace.clone(),
        request_protocol: protocol.into(),
        response_flags: flags.into(),
        connection_security_policy: csp.into(),
    };
    // Flags are known only when the connection ends.
    out.push(Series::TcpOpened(labels("-")));
    out.push(Series::TcpClosed(labels(closed_flags)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio_model::{ClientTls, PeerMode, PolicyLevel, ServerPolicy};

    fn peer(w: &str) -> Peer {
        Peer {
            workload: w.into(),
            namespace: "shop".into(),
            service_account: w.into(),
        }
    }

    fn verdict(wire: Wire, outcome: Outcome) -> Verdict {
        Verdict {
            server_policy: ServerPolicy {
                mode: PeerMode::Permissive,
                level: PolicyLevel::Default,
                policy: None,
            },
            client_tls: ClientTls::NoProxy,
            wire,
            outcome,
        }
    }

    fn run(
        protocol: Protocol,
        client: Option<&Peer>,
        cdp: Dataplane,
        sdp: Dataplane,
        v: &Verdict,
    ) -> Vec<Series> {
        let server = peer("api");
        series(&Exchange {
            protocol,
            client,
            client_dataplane: cdp,
            server: Some(&server),
            server_dataplane: sdp,
            service_name: "api",
            service_namespace: "shop",
            verdict: v,
        })
    }

    fn requests(s: &[Series]) -> Vec<&RequestLabels> {
        s.iter()
            .filter_map(|s| match s {
                Series::Requests(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn mtls_between_sidecars_reports_both_sides() {
        let web = peer("web");
        let v = verdict(Wire::IstioMtls, Outcome::MtlsAccepted);
        let s = run(
            Protocol::Http,
            Some(&web),
            Dataplane::Sidecar,
            Dataplane::Sidecar,
            &v,
        );
        let r = requests(&s);
        assert_eq!(r.len(), 2);
        let src = r.iter().find(|l| l.reporter == "source").unwrap();
        let dst = r.iter().find(|l| l.reporter == "destination").unwrap();
        assert_eq!(src.connection_security_policy, "unknown");
        assert_eq!(dst.connection_security_policy, "mutual_tls");
        assert_eq!(dst.source_workload, "web");
        assert_eq!(
            dst.source_principal,
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(dst.destination_workload, "api");
        assert_eq!(dst.destination_service, "api.shop.svc.cluster.local");
        assert_eq!(dst.response_code, "200");
    }

    #[test]
    fn external_plaintext_is_none_with_unknown_source() {
        let v = verdict(Wire::Plaintext, Outcome::PlaintextAccepted);
        let s = run(
            Protocol::Http,
            None,
            Dataplane::None,
            Dataplane::Sidecar,
            &v,
        );
        let r = requests(&s);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reporter, "destination");
        assert_eq!(r[0].connection_security_policy, "none");
        assert_eq!(r[0].source_workload, "unknown");
        assert_eq!(r[0].source_workload_namespace, "unknown");
    }

    #[test]
    fn rejected_plaintext_has_no_destination_report() {
        let v = verdict(
            Wire::Plaintext,
            Outcome::Rejected(Rejection::PlaintextToStrict),
        );
        assert!(
            run(
                Protocol::Http,
                None,
                Dataplane::None,
                Dataplane::Sidecar,
                &v
            )
            .is_empty()
        );
        // A sidecar client (DestinationRule DISABLE) reports the failure itself.
        let web = peer("web");
        let s = run(
            Protocol::Http,
            Some(&web),
            Dataplane::Sidecar,
            Dataplane::Sidecar,
            &v,
        );
        let r = requests(&s);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (
                r[0].reporter.as_str(),
                r[0].response_code.as_str(),
                r[0].response_flags.as_str()
            ),
            ("source", "503", "UC")
        );
    }

    #[test]
    fn tcp_edges_report_connections() {
        let web = peer("web");
        let v = verdict(Wire::IstioMtls, Outcome::MtlsAccepted);
        let s = run(
            Protocol::Tcp,
            Some(&web),
            Dataplane::Sidecar,
            Dataplane::Sidecar,
            &v,
        );
        assert!(requests(&s).is_empty());
        let opened: Vec<_> = s
            .iter()
            .filter_map(|s| match s {
                Series::TcpOpened(l) => Some(l),
                _ => None,
            })
            .collect();
        assert_eq!(opened.len(), 2);
        let dst = opened.iter().find(|l| l.reporter == "destination").unwrap();
        assert_eq!(dst.connection_security_policy, "mutual_tls");
        assert_eq!(dst.request_protocol, "tcp");
    }

    #[test]
    fn ambient_destination_reports_tcp_unknown_even_when_denied() {
        let v = verdict(
            Wire::Plaintext,
            Outcome::Rejected(Rejection::PlaintextToStrict),
        );
        let s = run(
            Protocol::Http,
            None,
            Dataplane::None,
            Dataplane::Ambient,
            &v,
        );
        assert!(requests(&s).is_empty());
        let (opened, closed): (Vec<_>, Vec<_>) =
            s.iter().partition(|s| matches!(s, Series::TcpOpened(_)));
        let Series::TcpOpened(o) = opened[0] else {
            panic!()
        };
        assert_eq!(o.connection_security_policy, "unknown");
        assert_eq!(o.reporter, "destination");
        let Series::TcpClosed(c) = closed[0] else {
            panic!()
        };
        assert_eq!(c.response_flags, "DENY");
    }

    #[test]
    fn ambient_destination_mtls_is_mutual_tls() {
        let web = peer("web");
        let v = verdict(Wire::IstioMtls, Outcome::MtlsAccepted);
        let s = run(
            Protocol::Tcp,
            Some(&web),
            Dataplane::Ambient,
            Dataplane::Ambient,
            &v,
        );
        assert!(s.iter().all(|s| match s {
            Series::TcpOpened(l) | Series::TcpClosed(l) =>
                l.connection_security_policy == "mutual_tls",
            Series::Requests(_) => false,
        }));
    }

    #[test]
    fn grpc_failure_is_http_200_with_grpc_status_14() {
        let web = peer("web");
        let v = verdict(
            Wire::Plaintext,
            Outcome::Rejected(Rejection::PlaintextToStrict),
        );
        let s = run(
            Protocol::Grpc,
            Some(&web),
            Dataplane::Sidecar,
            Dataplane::Sidecar,
            &v,
        );
        let r = requests(&s);
        assert_eq!(
            (
                r[0].response_code.as_str(),
                r[0].grpc_response_status.as_str()
            ),
            ("200", "14")
        );
    }
}
