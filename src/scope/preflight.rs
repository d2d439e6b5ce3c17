//! What would block or break STRICT for a scope, found by reading objects
//! only. Each finding names the object, why it matters and what to do.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, Probe, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use serde::{Deserialize, Serialize};

use super::destination_rules::{DEFAULT_CLUSTER_DOMAIN, conflicts};
use super::enrollment::{is_finished, namespace_in_mesh, pod_enrollment, summarize};
use super::peer_auth::{OverrideReason, PolicyOverride, overriding_policies, resolve_policy};
use super::selection::{Scope, ScopeKind};
use super::services::{ScopeHost, scope_hosts};
use super::workload::workload_name;
use crate::observe::{Conflict, EnrollmentSummary, PolicyObservation, Reading};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// Flipping now would refuse traffic that flows today, or the migration
    /// cannot do what it says.
    Blocking,
    /// Worth checking: breaks only under conditions this tool cannot see.
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Stable identifier, one of [`kind`].
    pub kind: String,
    pub severity: Severity,
    /// The object concerned, e.g. `workload shop/web`, `DestinationRule shop/web-tls`.
    pub object: String,
    /// What was found and why it matters under STRICT.
    pub message: String,
    /// What to do about it.
    pub remedy: String,
}

/// Stable finding kinds (for `-o json` consumers and tests).
pub mod kind {
    pub const INVALID_SCOPE: &str = "InvalidScope";
    pub const PODS_NOT_ENROLLED: &str = "PodsNotEnrolled";
    pub const NAMESPACE_NOT_IN_MESH: &str = "NamespaceNotInMesh";
    pub const PLAINTEXT_SOURCE: &str = "PlaintextSource";
    pub const EVIDENCE_UNAVAILABLE: &str = "EvidenceUnavailable";
    pub const DESTINATION_RULE_CONFLICT: &str = "DestinationRuleForcesPlaintext";
    pub const DUPLICATE_PEER_AUTHENTICATION: &str = "DuplicatePeerAuthentication";
    pub const POLICY_SHADOWED: &str = "PeerAuthenticationShadowed";
    pub const POLICY_OVERRIDDEN: &str = "PeerAuthenticationOverridden";
    pub const HTTP_PROBE_WITHOUT_REWRITE: &str = "HttpProbeWithoutRewrite";
    pub const PROMETHEUS_SCRAPES_APP_PORT: &str = "PrometheusScrapesAppPort";
    pub const WEBHOOK_SERVED_IN_SCOPE: &str = "WebhookServedInScope";
    pub const HEADLESS_SERVICE: &str = "HeadlessService";
    pub const JOB_OPTED_OUT_OF_INJECTION: &str = "JobOptedOutOfInjection";
    pub const SERVER_FIRST_PORT: &str = "ServerFirstPort";
    pub const PORT_LEVEL_MTLS_ON_SERVICE_PORT: &str = "PortLevelMtlsOnServicePort";
    pub const PORT_LEVEL_MTLS_UNKNOWN_PORT: &str = "PortLevelMtlsUnknownPort";
}

fn finding(
    kind: &str,
    severity: Severity,
    object: impl Into<String>,
    message: impl Into<String>,
    remedy: impl Into<String>,
) -> Finding {
    Finding {
        kind: kind.to_string(),
        severity,
        object: object.into(),
        message: message.into(),
        remedy: remedy.into(),
    }
}

/// True when any finding blocks (the CLI's non-zero exit).
pub fn blocks(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Blocking)
}

/// Everything a preflight reads. Slices may be empty when the caller could
/// not (or chose not to) list a kind; the matching checks then find nothing.
#[derive(Clone, Debug)]
pub struct PreflightInput<'a> {
    pub scope: &'a Scope,
    /// At least the scope's namespace, to check its injection labels.
    pub namespaces: &'a [Namespace],
    pub pods: &'a [Pod],
    pub services: &'a [Service],
    /// Checked as possible plaintext clients wherever they live: pass the
    /// ones whose calls matter (usually the scope's namespace).
    pub jobs: &'a [Job],
    pub cron_jobs: &'a [CronJob],
    pub mutating_webhooks: &'a [MutatingWebhookConfiguration],
    pub validating_webhooks: &'a [ValidatingWebhookConfiguration],
    pub destination_rules: &'a [DynamicObject],
    pub peer_authentications: &'a [DynamicObject],
    /// Port-level exception keys planned by the migration.
    pub port_level_mtls: &'a [i32],
    pub cluster_domain: &'a str,
    /// A measurement, when Prometheus was given.
    pub reading: Option<&'a Reading>,
}

impl<'a> PreflightInput<'a> {
    pub fn new(scope: &'a Scope) -> Self {
        Self {
            scope,
            namespaces: &[],
            pods: &[],
            services: &[],
            jobs: &[],
            cron_jobs: &[],
            mutating_webhooks: &[],
            validating_webhooks: &[],
            destination_rules: &[],
            peer_authentications: &[],
            port_level_mtls: &[],
            cluster_domain: DEFAULT_CLUSTER_DOMAIN,
            reading: None,
        }
    }
}

/// Runs every check. Sorted: blocking first, then by kind and object.
pub fn preflight(input: &PreflightInput<'_>) -> Vec<Finding> {
    let scope = input.scope;
    let hosts = scope_hosts(input.services, input.pods, scope);
    let policy = resolve_policy(input.peer_authentications, scope);
    let overrides = overriding_policies(input.peer_authentications, scope, input.pods);

    // Exceptions already on the policy the migration would take over count
    // as planned ones: they are kept unless the user changes them.
    let mut port_keys: BTreeSet<i32> = input.port_level_mtls.iter().copied().collect();
    if let PolicyObservation::Found { spec, .. } = &policy {
        for key in spec["portLevelMtls"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if let Ok(port) = key.parse() {
                port_keys.insert(port);
            }
        }
    }
    let port_keys: Vec<i32> = port_keys.into_iter().collect();

    let mut out = Vec::new();
    out.extend(scope_findings(scope));
    out.extend(enrollment_findings(&summarize(input.pods, scope), scope));
    out.extend(namespace_findings(input.namespaces, scope));
    if let Some(reading) = input.reading {
        out.extend(evidence_findings(reading));
    }
    out.extend(conflict_findings(&conflicts(
        input.destination_rules,
        &hosts,
        input.cluster_domain,
    )));
    out.extend(policy_findings(scope, &policy, &overrides));
    out.extend(probe_findings(input.pods, scope));
    out.extend(scrape_findings(input.pods, scope));
    out.extend(webhook_findings(
        input.mutating_webhooks,
        input.validating_webhooks,
        &hosts,
    ));
    out.extend(headless_findings(&hosts));
    out.extend(job_findings(input.jobs, input.cron_jobs));
    out.extend(server_first_findings(input.pods, &hosts, scope));
    out.extend(port_level_findings(&port_keys, input.pods, &hosts, scope));
    out.sort_by(|a, b| (a.severity, &a.kind, &a.object).cmp(&(b.severity, &b.kind, &b.object)));
    out
}

/// How a scope is named in findings.
pub fn describe_scope(scope: &Scope) -> String {
    match scope.kind() {
        ScopeKind::MeshWide => "mesh".to_string(),
        ScopeKind::Namespace => format!("namespace {}", scope.namespace),
        ScopeKind::Workload => {
            let sel: Vec<String> = scope
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("namespace {} selector {}", scope.namespace, sel.join(","))
        }
    }
}

pub fn scope_findings(scope: &Scope) -> Vec<Finding> {
    match scope.check() {
        Ok(()) => vec![],
        Err(e) => vec![finding(
            kind::INVALID_SCOPE,
            Severity::Blocking,
            describe_scope(scope),
            e.to_string(),
            "Remove the selector for a mesh-wide migration, or scope it from the workload's \
             own namespace.",
        )],
    }
}

pub fn enrollment_findings(summary: &EnrollmentSummary, scope: &Scope) -> Vec<Finding> {
    if summary.complete() {
        return vec![];
    }
    let missing = summary.selected - summary.enrolled;
    vec![finding(
        kind::PODS_NOT_ENROLLED,
        Severity::Blocking,
        describe_scope(scope),
        format!(
            "{missing} of {} selected pods have no sidecar and no ambient redirection (first: \
             {}). STRICT does nothing for them, and nothing guarantees their clients use mTLS.",
            summary.selected,
            summary.not_enrolled.join(", ")
        ),
        "Label the namespace for injection (istio-injection=enabled or istio.io/rev=<rev>) or \
         for ambient (istio.io/dataplane-mode=ambient), then restart the workloads: injection \
         only happens when a pod is created.",
    )]
}

/// For a namespace or workload scope: the namespace lacks mesh labels, so
/// pods created later (restarts, scale-ups) come up without a proxy.
pub fn namespace_findings(namespaces: &[Namespace], scope: &Scope) -> Vec<Finding> {
    if scope.kind() == ScopeKind::MeshWide {
        return vec![];
    }
    namespaces
        .iter()
        .filter(|ns| ns.metadata.name.as_deref() == Some(scope.namespace.as_str()))
        .filter(|ns| !namespace_in_mesh(ns))
        .map(|ns| {
            finding(
                kind::NAMESPACE_NOT_IN_MESH,
                Severity::Warning,
                format!(
                    "Namespace {}",
                    ns.metadata.name.as_deref().unwrap_or_default()
                ),
                "The namespace has no istio-injection=enabled, istio.io/rev or \
                 istio.io/dataplane-mode=ambient label: unless every pod opts in by itself, \
                 new pods start without a proxy and STRICT does not cover them.",
                "Label the namespace for sidecar injection or ambient.",
            )
        })
        .collect()
}

pub fn evidence_findings(reading: &Reading) -> Vec<Finding> {
    let unavailable = |why: String| {
        vec![finding(
            kind::EVIDENCE_UNAVAILABLE,
            Severity::Warning,
            "Prometheus",
            format!("No usable measurement: {why}. Plaintext clients cannot be ruled out."),
            "Check that Prometheus scrapes the Istio proxies (istio_requests_total / \
             istio_tcp_connections_opened_total with reporter=\"destination\") and that the \
             scope receives traffic during the window.",
        )]
    };
    match reading {
        Reading::QueryFailed { message } => unavailable(format!("query failed ({message})")),
        Reading::NotFinite { message } => unavailable(format!("not a finite number ({message})")),
        Reading::NoData => unavailable("no telemetry for the scope".into()),
        Reading::Traffic {
            plaintext_rate,
            top_sources,
            ..
        } => {
            let mut out: Vec<Finding> = top_sources
                .iter()
                .map(|s| {
                    let outside = if s.workload == "unknown" {
                        " (\"unknown\" means a client outside the mesh: no sidecar, no ztunnel)"
                    } else {
                        ""
                    };
                    finding(
                        kind::PLAINTEXT_SOURCE,
                        Severity::Blocking,
                        format!("source {}/{}", s.namespace, s.workload),
                        format!(
                            "Sends {:.3}/s plaintext to the scope{outside}; STRICT would \
                             refuse it.",
                            s.rate
                        ),
                        "Enroll this client (sidecar or ambient), or remove what makes it \
                         send plaintext (a DestinationRule with tls.mode DISABLE).",
                    )
                })
                .collect();
            if out.is_empty() && *plaintext_rate > 0.0 {
                out.push(finding(
                    kind::PLAINTEXT_SOURCE,
                    Severity::Blocking,
                    "source (not identified)",
                    format!(
                        "{plaintext_rate:.3}/s plaintext reaches the scope; STRICT would refuse it."
                    ),
                    "Find the client from the destination proxies' access logs and enroll it.",
                ));
            }
            out
        }
    }
}

pub fn conflict_findings(conflicts: &[Conflict]) -> Vec<Finding> {
    conflicts
        .iter()
        .map(|c| {
            finding(
                kind::DESTINATION_RULE_CONFLICT,
                Severity::Blocking,
                format!("DestinationRule {}", c.destination_rule),
                format!(
                    "tls.mode {} at {} for host {}: clients using this rule send {} instead \
                     of Istio mTLS, which a STRICT server refuses.",
                    c.tls_mode,
                    c.location,
                    c.host,
                    if c.tls_mode == "DISABLE" {
                        "plaintext"
                    } else {
                        "TLS without an Istio client certificate"
                    }
                ),
                "Remove the tls block (auto mTLS then picks Istio mTLS) or set tls.mode \
                 ISTIO_MUTUAL.",
            )
        })
        .collect()
}

pub fn policy_findings(
    scope: &Scope,
    policy: &PolicyObservation,
    overrides: &[PolicyOverride],
) -> Vec<Finding> {
    let mut out = Vec::new();
    if let PolicyObservation::Ambiguous { names } = policy {
        out.push(finding(
            kind::DUPLICATE_PEER_AUTHENTICATION,
            Severity::Blocking,
            format!(
                "PeerAuthentications {}/{{{}}}",
                scope.namespace,
                names.join(",")
            ),
            format!(
                "{} PeerAuthentications govern {}; Istio applies only the oldest ({}) and \
                 ignores the rest, so which one to migrate is a guess.",
                names.len(),
                describe_scope(scope),
                names.first().map(String::as_str).unwrap_or_default()
            ),
            "Delete the duplicates so that one policy remains.",
        ));
    }
    for o in overrides {
        let mode = o.mode.as_deref().unwrap_or("UNSET");
        let pods = format!("{} pods (first: {})", o.pod_count, o.pods.join(", "));
        let (kind_, severity, message, remedy) = match o.reason {
            OverrideReason::OlderWorkloadPolicy => (
                kind::POLICY_SHADOWED,
                Severity::Blocking,
                format!(
                    "Older workload policy (mode {mode}) also selects {pods}; Istio applies \
                     the oldest matching workload policy, so the migration's policy would \
                     be ignored for them."
                ),
                "Merge the two policies or make their selectors disjoint.",
            ),
            OverrideReason::WorkloadPolicy => (
                kind::POLICY_OVERRIDDEN,
                Severity::Warning,
                format!(
                    "Workload policy (mode {mode}) decides {pods} instead of the \
                     migration's wider policy; they will not follow the migration."
                ),
                "Set its mode to UNSET to inherit, or migrate that workload on its own.",
            ),
            OverrideReason::NamespacePolicy => (
                kind::POLICY_OVERRIDDEN,
                Severity::Warning,
                format!(
                    "Namespace-wide policy (mode {mode}) decides {pods} instead of the \
                     mesh-wide one; that namespace will not follow the migration."
                ),
                "Set its mode to UNSET to inherit, or migrate that namespace on its own.",
            ),
        };
        out.push(finding(
            kind_,
            severity,
            format!("PeerAuthentication {}", o.policy),
            message,
            remedy,
        ));
    }
    out
}

fn annotation<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn label<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn live_in_scope<'a>(pods: &'a [Pod], scope: &'a Scope) -> impl Iterator<Item = &'a Pod> {
    pods.iter()
        .filter(move |p| scope.selects_pod(p) && !is_finished(p))
}

fn workload_object(pod: &Pod) -> String {
    format!(
        "workload {}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        workload_name(pod)
    )
}

fn app_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.name != "istio-proxy")
}

fn port_text(port: &IntOrString) -> String {
    match port {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// Pods of one workload share a spec: report each workload once.
fn dedup(mut findings: Vec<Finding>) -> Vec<Finding> {
    let mut seen = BTreeSet::new();
    findings.retain(|f| seen.insert((f.kind.clone(), f.object.clone(), f.message.clone())));
    findings
}

/// The sidecar's own health and metrics ports (probe rewrite targets 15020).
const PROXY_PORTS: [i32; 2] = [15020, 15021];

/// HTTP and gRPC probes on sidecar pods whose probe rewrite is turned off
/// (`sidecar.istio.io/rewriteAppHTTPProbers: "false"`): the kubelet is not in
/// the mesh and probes in plaintext, which STRICT refuses. Ambient pods are
/// not affected (ztunnel lets the node's probes through).
pub fn probe_findings(pods: &[Pod], scope: &Scope) -> Vec<Finding> {
    let mut out = Vec::new();
    for pod in live_in_scope(pods, scope) {
        if !pod_enrollment(pod).has_sidecar()
            || annotation(&pod.metadata, "sidecar.istio.io/rewriteAppHTTPProbers") != Some("false")
        {
            continue;
        }
        for c in app_containers(pod) {
            let probes: [(&str, Option<&Probe>); 3] = [
                ("liveness", c.liveness_probe.as_ref()),
                ("readiness", c.readiness_probe.as_ref()),
                ("startup", c.startup_probe.as_ref()),
            ];
            for (which, probe) in probes {
                let Some(probe) = probe else { continue };
                let port = match (&probe.http_get, &probe.grpc) {
                    (Some(h), _) => ("HTTP", port_text(&h.port)),
                    (None, Some(g)) => ("gRPC", g.port.to_string()),
                    _ => continue,
                };
                if port
                    .1
                    .parse::<i32>()
                    .is_ok_and(|p| PROXY_PORTS.contains(&p))
                {
                    continue;
                }
                out.push(finding(
                    kind::HTTP_PROBE_WITHOUT_REWRITE,
                    Severity::Blocking,
                    workload_object(pod),
                    format!(
                        "Container {} has a {} {which} probe on port {} and \
                         sidecar.istio.io/rewriteAppHTTPProbers is \"false\": the kubelet \
                         probes in plaintext from outside the mesh, STRICT refuses it, and \
                         the pod {}.",
                        c.name,
                        port.0,
                        port.1,
                        if which == "readiness" {
                            "drops out of its Services"
                        } else {
                            "is restarted"
                        }
                    ),
                    "Remove the annotation (probe rewrite is on by default: the sidecar \
                     answers the probe on port 15020) and restart the pods, or use an exec \
                     or tcpSocket probe.",
                ));
            }
        }
    }
    dedup(out)
}

/// `prometheus.io/scrape: "true"` on an enrolled pod, pointing at an
/// application port. With Istio's metrics merging (the default) injection
/// rewrites these annotations to the sidecar's port 15020, which Prometheus
/// may scrape in plaintext; any other port is the application's, behind
/// STRICT.
pub fn scrape_findings(pods: &[Pod], scope: &Scope) -> Vec<Finding> {
    let mut out = Vec::new();
    for pod in live_in_scope(pods, scope) {
        if !pod_enrollment(pod).is_enrolled()
            || annotation(&pod.metadata, "prometheus.io/scrape") != Some("true")
        {
            continue;
        }
        let port = annotation(&pod.metadata, "prometheus.io/port");
        if port.is_some_and(|p| p == "15020" || p == "15090") {
            continue;
        }
        let target = match port {
            Some(p) => format!("port {p}"),
            None => "every declared container port".to_string(),
        };
        out.push(finding(
            kind::PROMETHEUS_SCRAPES_APP_PORT,
            Severity::Warning,
            workload_object(pod),
            format!(
                "prometheus.io/scrape is \"true\" on {target}, an application port: a \
                 Prometheus outside the mesh scrapes in plaintext and STRICT refuses it, so \
                 the workload's metrics stop."
            ),
            "Keep Istio's metrics merging on (drop prometheus.istio.io/merge-metrics: \
             \"false\") so scraping goes to port 15020, give Prometheus a sidecar that \
             scrapes with Istio certificates, or exempt the metrics port with a \
             PERMISSIVE portLevelMtls entry.",
        ));
    }
    dedup(out)
}

fn webhook_target<'c>(config: &'c WebhookClientConfig, hosts: &[ScopeHost]) -> Option<&'c str> {
    let svc = config.service.as_ref()?;
    hosts
        .iter()
        .any(|h| h.namespace == svc.namespace && h.name == svc.name)
        .then_some(svc.name.as_str())
}

/// Admission webhooks served by a Service in scope: the API server is not in
/// the mesh and its TLS is not Istio mTLS, so STRICT refuses its calls.
pub fn webhook_findings(
    mutating: &[MutatingWebhookConfiguration],
    validating: &[ValidatingWebhookConfiguration],
    hosts: &[ScopeHost],
) -> Vec<Finding> {
    let mut hooks: Vec<(String, &str, &WebhookClientConfig, Option<&str>)> = Vec::new();
    for cfg in mutating {
        let name = cfg.metadata.name.clone().unwrap_or_default();
        for w in cfg.webhooks.iter().flatten() {
            hooks.push((
                format!("MutatingWebhookConfiguration {name}"),
                w.name.as_str(),
                &w.client_config,
                w.failure_policy.as_deref(),
            ));
        }
    }
    for cfg in validating {
        let name = cfg.metadata.name.clone().unwrap_or_default();
        for w in cfg.webhooks.iter().flatten() {
            hooks.push((
                format!("ValidatingWebhookConfiguration {name}"),
                w.name.as_str(),
                &w.client_config,
                w.failure_policy.as_deref(),
            ));
        }
    }
    hooks
        .into_iter()
        .filter_map(|(object, hook, config, failure_policy)| {
            let svc = webhook_target(config, hosts)?;
            let svc_ns = config
                .service
                .as_ref()
                .map(|s| s.namespace.as_str())
                .unwrap_or_default();
            // admissionregistration/v1 defaults failurePolicy to Fail.
            let fails_closed = failure_policy != Some("Ignore");
            Some(finding(
                kind::WEBHOOK_SERVED_IN_SCOPE,
                if fails_closed {
                    Severity::Blocking
                } else {
                    Severity::Warning
                },
                format!("{object} (webhook {hook})"),
                format!(
                    "Served by Service {svc_ns}/{svc}, in scope. The API server is outside \
                     the mesh, so STRICT refuses its calls: {}.",
                    if fails_closed {
                        "with failurePolicy Fail every matching API request is rejected"
                    } else {
                        "with failurePolicy Ignore the webhook is silently skipped"
                    }
                ),
                "Exclude the webhook's container port from the sidecar \
                 (traffic.sidecar.istio.io/excludeInboundPorts), exempt it with a PERMISSIVE \
                 portLevelMtls entry, or serve the webhook from outside the scope.",
            ))
        })
        .collect()
}

pub fn headless_findings(hosts: &[ScopeHost]) -> Vec<Finding> {
    hosts
        .iter()
        .filter(|h| h.headless)
        .map(|h| {
            finding(
                kind::HEADLESS_SERVICE,
                Severity::Warning,
                format!("Service {}", h.key()),
                "Headless Service: clients reach the pods by their own IPs (StatefulSet \
                 peers, client-side discovery). Enrolled clients still use mTLS, but peers \
                 or tools outside the mesh that dial pod IPs are refused under STRICT.",
                "Make sure every client, including the other members of the StatefulSet, is \
                 enrolled, and check the plaintext sources for these pods before flipping.",
            )
        })
        .collect()
}

fn opted_out(meta: Option<&ObjectMeta>) -> bool {
    meta.is_some_and(|m| {
        label(m, "sidecar.istio.io/inject") == Some("false")
            || annotation(m, "sidecar.istio.io/inject") == Some("false")
    })
}

const JOB_REMEDY: &str = "Let the pods be injected (with native sidecars, the default since \
     Istio 1.27, the proxy no longer keeps a Job from completing) or enroll them in ambient; \
     otherwise make sure they do not call the scope.";

/// Jobs and CronJobs whose pods opt out of injection: plaintext clients if
/// they call the scope. Jobs created by a CronJob are reported through it;
/// finished Jobs are skipped.
pub fn job_findings(jobs: &[Job], cron_jobs: &[CronJob]) -> Vec<Finding> {
    let message = "Its pods opt out of sidecar injection (sidecar.istio.io/inject: \"false\"): \
                   if they call the scope they send plaintext, which STRICT refuses.";
    let mut out = Vec::new();
    for job in jobs {
        let from_cron = job
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "CronJob");
        let finished = job.status.as_ref().is_some_and(|s| {
            s.completion_time.is_some()
                || s.conditions
                    .iter()
                    .flatten()
                    .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        });
        let template = job.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
        if !from_cron && !finished && opted_out(template) {
            out.push(finding(
                kind::JOB_OPTED_OUT_OF_INJECTION,
                Severity::Warning,
                format!("Job {}", key(&job.metadata)),
                message,
                JOB_REMEDY,
            ));
        }
    }
    for cj in cron_jobs {
        let template = cj
            .spec
            .job_template
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref());
        if opted_out(template) {
            out.push(finding(
                kind::JOB_OPTED_OUT_OF_INJECTION,
                Severity::Warning,
                format!("CronJob {}", key(&cj.metadata)),
                message,
                JOB_REMEDY,
            ));
        }
    }
    out
}

fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Ports Istio's application requirements list as commonly carrying
/// server-first protocols (and treat as TCP): istio.io, docs/ops/deployment/
/// application-requirements, "Server First Protocols". PostgreSQL and Redis
/// are client-first and not listed.
const SERVER_FIRST_PORTS: [(i32, &str); 4] = [
    (25, "SMTP"),
    (53, "DNS"),
    (3306, "MySQL"),
    (27017, "MongoDB"),
];

/// Service port names / appProtocols Istio knows for server-first protocols,
/// which may sit on non-standard ports.
fn server_first_protocol(name: Option<&str>, app_protocol: Option<&str>) -> Option<&'static str> {
    let named = |p: &str| {
        app_protocol.is_some_and(|a| a.eq_ignore_ascii_case(p))
            || name.is_some_and(|n| n == p || n.starts_with(&format!("{p}-")))
    };
    if named("mysql") {
        Some("MySQL")
    } else if named("mongo") {
        Some("MongoDB")
    } else {
        None
    }
}

/// Server-first protocols: the server speaks first, but PERMISSIVE (the
/// migration's first step) and protocol sniffing both wait for the client's
/// first bytes, so plaintext clients can stall; after STRICT, clients outside
/// the mesh (admin tools, backups) are refused.
pub fn server_first_findings(pods: &[Pod], hosts: &[ScopeHost], scope: &Scope) -> Vec<Finding> {
    let live: Vec<&Pod> = live_in_scope(pods, scope).collect();
    // (workload object, port) -> protocol
    let mut found: BTreeMap<(String, i32), &'static str> = BTreeMap::new();
    for pod in &live {
        for c in app_containers(pod) {
            // DNS over UDP is not proxied; only TCP ports matter.
            let tcp_ports = c
                .ports
                .iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"));
            for p in tcp_ports {
                if let Some((_, proto)) = SERVER_FIRST_PORTS
                    .iter()
                    .find(|(n, _)| *n == p.container_port)
                {
                    found.insert((workload_object(pod), p.container_port), proto);
                }
            }
        }
    }
    for h in hosts {
        for sp in &h.ports {
            if let Some(proto) =
                server_first_protocol(sp.name.as_deref(), sp.app_protocol.as_deref())
            {
                found
                    .entry((format!("Service {}", h.key()), sp.port))
                    .or_insert(proto);
            }
        }
    }
    found
        .into_iter()
        .map(|((object, port), proto)| {
            finding(
                kind::SERVER_FIRST_PORT,
                Severity::Warning,
                format!("{object} port {port}"),
                format!(
                    "Port {port} carries {proto}, a server-first protocol. PERMISSIVE mode \
                     and protocol sniffing wait for the client's first bytes, so plaintext \
                     clients can stall during the migration's PERMISSIVE phase; after \
                     STRICT, clients outside the mesh (admin tools, backup jobs) are refused."
                ),
                "Declare the port as TCP on the Service (port name tcp-... or appProtocol: \
                 tcp), keep the PERMISSIVE phase short, and make sure every client is \
                 enrolled; once they are, STRICT is Istio's recommended setting for \
                 server-first protocols.",
            )
        })
        .collect()
}

/// `portLevelMtls` keys are container ports (istio/istio#49098). A key that
/// is only a Service port whose targetPort differs exempts nothing: the
/// real port turns STRICT and the clients meant to be exempted break.
pub fn port_level_findings(
    keys: &[i32],
    pods: &[Pod],
    hosts: &[ScopeHost],
    scope: &Scope,
) -> Vec<Finding> {
    let mut declared: BTreeSet<i32> = BTreeSet::new();
    let mut named: BTreeMap<String, i32> = BTreeMap::new();
    for pod in live_in_scope(pods, scope) {
        for c in app_containers(pod) {
            for p in c.ports.iter().flatten() {
                declared.insert(p.container_port);
                if let Some(n) = &p.name {
                    named.insert(n.clone(), p.container_port);
                }
            }
        }
    }
    let object = describe_scope(scope);
    let mut out = Vec::new();
    for &key in keys {
        if declared.contains(&key) {
            continue;
        }
        let via_service = hosts.iter().find_map(|h| {
            h.ports.iter().find(|sp| sp.port == key).and_then(|sp| {
                let target = match &sp.target_port {
                    None => key,
                    Some(IntOrString::Int(n)) => *n,
                    Some(IntOrString::String(name)) => *named.get(name)?,
                };
                (target != key).then(|| (h.key(), target))
            })
        });
        out.push(match via_service {
            Some((svc, target)) => finding(
                kind::PORT_LEVEL_MTLS_ON_SERVICE_PORT,
                Severity::Blocking,
                format!("{object} portLevelMtls {key}"),
                format!(
                    "{key} is a port of Service {svc}, which forwards to container port \
                     {target}. Istio matches portLevelMtls keys against container ports, so \
                     this exception applies to nothing and port {target} turns STRICT."
                ),
                format!("Use the container port {target} as the key."),
            ),
            None => finding(
                kind::PORT_LEVEL_MTLS_UNKNOWN_PORT,
                Severity::Warning,
                format!("{object} portLevelMtls {key}"),
                format!(
                    "No selected container declares port {key}. The exception only works if \
                     the application really listens on it."
                ),
                "Check the port the application listens on (containerPort) and use that \
                 number.",
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests;
