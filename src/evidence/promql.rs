//! PromQL for a migration's scope.
//!
//! Every ratio input comes from `reporter="destination"`: only the server
//! side knows whether the peer presented a certificate (source reports always
//! say `connection_security_policy="unknown"`). Plaintext is every value other
//! than `mutual_tls`, which covers sidecar `none` and ambient `unknown`.
//!
//! Each protocol gets its own queries instead of one `a + b` expression:
//! PromQL's `+` between vectors drops the whole result when one side is empty,
//! so a scope with HTTP traffic and no TCP series would read as "no data".
//! The reader adds the protocols up and only reports NoData when every total
//! is empty.

use std::collections::BTreeSet;
use std::time::Duration;

/// How many plaintext sources to ask for per protocol.
pub const TOP_SOURCES: usize = 5;

/// One family of Istio standard metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `istio_requests_total` (HTTP, HTTP/2, gRPC).
    Http,
    /// `istio_tcp_connections_opened_total` (ztunnel reports only these).
    Tcp,
}

impl Protocol {
    /// The counter whose rate measures traffic for this protocol.
    pub fn metric(self) -> &'static str {
        match self {
            Protocol::Http => "istio_requests_total",
            Protocol::Tcp => "istio_tcp_connections_opened_total",
        }
    }

    /// Lower-case name used in messages (`http`, `tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Which metric families count towards the plaintext ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocols {
    Http,
    Tcp,
    #[default]
    Both,
}

impl Protocols {
    pub fn members(self) -> &'static [Protocol] {
        match self {
            Protocols::Http => &[Protocol::Http],
            Protocols::Tcp => &[Protocol::Tcp],
            Protocols::Both => &[Protocol::Http, Protocol::Tcp],
        }
    }
}

/// Destination namespaces a query covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// No namespace matcher at all (mesh-wide migration).
    MeshWide,
    /// These namespaces. An empty set matches nothing, so it reads as NoData.
    Only(BTreeSet<String>),
}

impl Namespaces {
    pub fn one(namespace: impl Into<String>) -> Self {
        Namespaces::Only(BTreeSet::from([namespace.into()]))
    }
}

/// What the evidence is about: the scope's destinations, the protocols that
/// count and the `rate()` window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryScope {
    pub namespaces: Namespaces,
    /// `None`: every workload in the namespaces (namespace or mesh scope).
    /// `Some(names)`: only these `destination_workload` values (workload
    /// scope; see `scope::destination_workloads`). An empty set matches
    /// nothing, so a selector that selects no pod reads as NoData.
    pub workloads: Option<BTreeSet<String>>,
    pub protocols: Protocols,
    pub window: Duration,
}

/// The queries for one protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeQueries {
    pub protocol: Protocol,
    /// One series: all destination-reported traffic to the scope.
    pub total: String,
    /// At most one series: destination-reported traffic that was not mTLS.
    pub plaintext: String,
    /// Up to [`TOP_SOURCES`] series, by `source_workload`,
    /// `source_workload_namespace`.
    pub top_sources: String,
    /// At most one series: source-reported requests to the scope that failed
    /// at the connection level. `None` for TCP: a plaintext TCP client refused
    /// by a STRICT server shows in source reports as an opened and a closed
    /// connection whose `response_flags` depend on timing (the TCP handshake
    /// succeeds, the proxy then resets), so there is no clean signal to count.
    /// Clients without a sidecar produce no source reports at all; this rate
    /// can only see mesh clients that send plaintext (a DISABLE
    /// DestinationRule, for instance).
    pub source_failures: Option<String>,
}

impl ScopeQueries {
    /// Every query with a short label for error messages.
    pub fn labelled(&self) -> Vec<(String, &str)> {
        let p = self.protocol.as_str();
        let mut out = vec![
            (format!("{p} total"), self.total.as_str()),
            (format!("{p} plaintext"), self.plaintext.as_str()),
            (format!("{p} top sources"), self.top_sources.as_str()),
        ];
        if let Some(q) = &self.source_failures {
            out.push((format!("{p} source failures"), q.as_str()));
        }
        out
    }
}

/// One [`ScopeQueries`] per counted protocol, HTTP first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuerySet {
    pub protocols: Vec<ScopeQueries>,
}

impl QueryScope {
    pub fn queries(&self) -> QuerySet {
        QuerySet {
            protocols: self
                .protocols
                .members()
                .iter()
                .map(|&p| self.queries_for(p))
                .collect(),
        }
    }

    fn queries_for(&self, protocol: Protocol) -> ScopeQueries {
        let metric = protocol.metric();
        let window = promql_duration(self.window);
        let dest = self.selector("destination", &[]);
        let plain = self.selector(
            "destination",
            &[("connection_security_policy", "!=", "mutual_tls")],
        );
        let total = format!("sum(rate({metric}{dest}[{window}]))");
        let plaintext = format!("sum(rate({metric}{plain}[{window}]))");
        let top_sources = format!(
            "topk({TOP_SOURCES}, sum by (source_workload, source_workload_namespace) \
             (rate({metric}{plain}[{window}])))"
        );
        let source_failures = match protocol {
            Protocol::Http => {
                let failed = self.selector("source", &[("response_flags", "!=", "-")]);
                Some(format!("sum(rate({metric}{failed}[{window}]))"))
            }
            Protocol::Tcp => None,
        };
        ScopeQueries {
            protocol,
            total,
            plaintext,
            top_sources,
            source_failures,
        }
    }

    /// `{reporter="...", <scope matchers>, <extra>}`.
    fn selector(&self, reporter: &str, extra: &[(&str, &str, &str)]) -> String {
        let mut m = vec![format!("reporter=\"{}\"", escape_string(reporter))];
        if let Namespaces::Only(ns) = &self.namespaces {
            m.push(set_matcher("destination_workload_namespace", ns));
        }
        if let Some(w) = &self.workloads {
            m.push(set_matcher("destination_workload", w));
        }
        for (label, op, value) in extra {
            m.push(format!("{label}{op}\"{}\"", escape_string(value)));
        }
        format!("{{{}}}", m.join(", "))
    }
}

/// `label="v"` for one value, `label=~"a|b"` for several, `label=~""` (which
/// matches no Istio series: these labels are never empty) for none.
fn set_matcher(label: &str, values: &BTreeSet<String>) -> String {
    if values.len() == 1 {
        let v = values.iter().next().expect("one value");
        return format!("{label}=\"{}\"", escape_string(v));
    }
    let alternatives: Vec<String> = values.iter().map(|v| escape_regex(v)).collect();
    format!("{label}=~\"{}\"", escape_string(&alternatives.join("|")))
}

/// Escapes a value for a double-quoted PromQL string literal.
pub fn escape_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes RE2 metacharacters so `value` matches itself literally inside a
/// `=~` matcher. The result still needs [`escape_string`] to be quoted.
pub fn escape_regex(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A PromQL duration: whole seconds as `Ns`, anything finer as `Nms`.
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn scope(protocols: Protocols) -> QueryScope {
        QueryScope {
            namespaces: Namespaces::one("shop"),
            workloads: None,
            protocols,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn namespace_scope_http_queries() {
        let qs = scope(Protocols::Http).queries();
        assert_eq!(qs.protocols.len(), 1);
        let q = &qs.protocols[0];
        assert_eq!(
            q.total,
            r#"sum(rate(istio_requests_total{reporter="destination", destination_workload_namespace="shop"}[60s]))"#
        );
        assert_eq!(
            q.plaintext,
            r#"sum(rate(istio_requests_total{reporter="destination", destination_workload_namespace="shop", connection_security_policy!="mutual_tls"}[60s]))"#
        );
        assert_eq!(
            q.top_sources,
            r#"topk(5, sum by (source_workload, source_workload_namespace) (rate(istio_requests_total{reporter="destination", destination_workload_namespace="shop", connection_security_policy!="mutual_tls"}[60s])))"#
        );
        assert_eq!(
            q.source_failures.as_deref(),
            Some(
                r#"sum(rate(istio_requests_total{reporter="source", destination_workload_namespace="shop", response_flags!="-"}[60s]))"#
            )
        );
    }

    #[test]
    fn both_protocols_get_separate_queries_and_tcp_has_no_failure_query() {
        let qs = scope(Protocols::Both).queries();
        let protos: Vec<Protocol> = qs.protocols.iter().map(|q| q.protocol).collect();
        assert_eq!(protos, vec![Protocol::Http, Protocol::Tcp]);
        let tcp = &qs.protocols[1];
        assert!(
            tcp.total
                .starts_with("sum(rate(istio_tcp_connections_opened_total{")
        );
        assert!(tcp.source_failures.is_none());
        assert_eq!(tcp.labelled().len(), 3);
        assert_eq!(qs.protocols[0].labelled().len(), 4);
    }

    #[test]
    fn workload_scope_uses_regex_alternation() {
        let mut s = scope(Protocols::Tcp);
        s.workloads = Some(names(&["reviews", "ratings"]));
        let q = &s.queries().protocols[0];
        assert!(
            q.total
                .contains(r#"destination_workload=~"ratings|reviews""#),
            "{}",
            q.total
        );
        s.workloads = Some(names(&["reviews"]));
        let q = &s.queries().protocols[0];
        assert!(q.total.contains(r#"destination_workload="reviews""#));
    }

    #[test]
    fn mesh_wide_has_no_namespace_matcher() {
        let mut s = scope(Protocols::Http);
        s.namespaces = Namespaces::MeshWide;
        let q = &s.queries().protocols[0];
        assert!(!q.total.contains("destination_workload_namespace"));
        assert!(q.total.contains(r#"{reporter="destination"}"#));
    }

    #[test]
    fn several_namespaces_and_empty_sets() {
        let mut s = scope(Protocols::Http);
        s.namespaces = Namespaces::Only(names(&["a", "b"]));
        s.workloads = Some(BTreeSet::new());
        let q = &s.queries().protocols[0];
        assert!(q.total.contains(r#"destination_workload_namespace=~"a|b""#));
        assert!(q.total.contains(r#"destination_workload=~"""#));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_string(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_regex("a.b+c"), r"a\.b\+c");
        let mut s = scope(Protocols::Http);
        s.workloads = Some(names(&["x.y", "q\"z"]));
        let q = &s.queries().protocols[0];
        // regex escape first (`\.`), then string escape doubles the backslash.
        assert!(
            q.total.contains(r#"destination_workload=~"q\"z|x\\.y""#),
            "{}",
            q.total
        );
    }

    #[test]
    fn durations() {
        assert_eq!(promql_duration(Duration::from_secs(120)), "120s");
        assert_eq!(promql_duration(Duration::from_millis(1500)), "1500ms");
    }
}
