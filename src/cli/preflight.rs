//! `mtls-migrator preflight`: reads a planned migration's scope (and
//! Prometheus, when given) without changing anything, and reports what would
//! block or break STRICT.
//!
//! The checks themselves are `scope::preflight` (pure). This module parses
//! the selector, reads the cluster into an [`Inventory`], builds a
//! [`Report`] (pure) and renders it as a table or JSON (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{OutputFormat, PreflightArgs};
use crate::evidence::{
    Namespaces, PrometheusClient, PrometheusConfig, Protocols, QueryScope, QuerySet,
    promql_duration,
};
use crate::observe::Reading;
use crate::scope::preflight::describe_scope;
use crate::scope::{
    Finding, PreflightInput, Scope, ScopeKind, Severity, blocks, namespace_in_mesh, pod_enrollment,
    preflight,
};

/// Finding kind for a kind of object the CLI could not read: the checks that
/// need it did not run, which must not read as "nothing found".
pub const NOT_CHECKED: &str = "NotChecked";

// ---------------------------------------------------------------- selector

/// A `--selector` the CLI cannot turn into `matchLabels`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("empty selector: omit --selector to cover the whole namespace")]
    Empty,
    #[error(
        "{0:?}: only equality (key=value) is supported, because a PeerAuthentication selector \
         is matchLabels"
    )]
    NotEquality(String),
    #[error("{0:?}: expected key=value (pairs separated by commas, e.g. app=web,version=v1)")]
    NotAPair(String),
    #[error("{key:?} is not a valid label key: {why}")]
    BadKey { key: String, why: &'static str },
    #[error("{value:?} (for {key}) is not a valid label value: {why}")]
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("label {0:?} is given twice with different values")]
    Conflicting(String),
}

/// Parses `key=value[,key=value]` (`==` accepted, as kubectl does) into
/// `matchLabels`, checking keys and values the way the API server does.
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, SelectorError> {
    if text.trim().is_empty() {
        return Err(SelectorError::Empty);
    }
    if text.contains('(') || text.contains('!') {
        return Err(SelectorError::NotEquality(text.trim().to_string()));
    }
    let mut labels = BTreeMap::new();
    for part in text.split(',') {
        let part = part.trim();
        let Some((key, value)) = part.split_once('=') else {
            return Err(SelectorError::NotAPair(part.to_string()));
        };
        let value = value.strip_prefix('=').unwrap_or(value);
        let (key, value) = (key.trim(), value.trim());
        check_label_key(key).map_err(|why| SelectorError::BadKey {
            key: key.to_string(),
            why,
        })?;
        check_label_value(value).map_err(|why| SelectorError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            why,
        })?;
        if let Some(old) = labels.insert(key.to_string(), value.to_string())
            && old != value
        {
            return Err(SelectorError::Conflicting(key.to_string()));
        }
    }
    Ok(labels)
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn check_label_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 63 {
        return Err("longer than 63 characters");
    }
    let inner_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if inner_ok && ends_ok {
        Ok(())
    } else {
        Err("use letters, digits, '-', '_' and '.', starting and ending with a letter or digit")
    }
}

fn check_label_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty key");
    }
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let dns_ok = prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !dns_ok {
                return Err("the prefix before '/' must be a lower-case DNS subdomain");
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("empty name after the prefix");
    }
    check_label_name(name)
}

fn check_label_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Ok(())
    } else {
        check_label_name(value)
    }
}

// ---------------------------------------------------------------- reading

/// Everything read from the cluster for one scope.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub jobs: Vec<Job>,
    pub cron_jobs: Vec<CronJob>,
    pub mutating_webhooks: Vec<MutatingWebhookConfiguration>,
    pub validating_webhooks: Vec<ValidatingWebhookConfiguration>,
    pub destination_rules: Vec<DynamicObject>,
    pub peer_authentications: Vec<DynamicObject>,
    /// Kinds that could not be listed, with why.
    pub not_checked: Vec<NotChecked>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotChecked {
    /// Plural kind, e.g. `MutatingWebhookConfigurations`.
    pub what: String,
    pub why: String,
    /// The checks that did not run because of it.
    pub checks: String,
}

fn peer_authentication_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
    ))
}

fn destination_rule_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "DestinationRule",
    ))
}

/// Lists `api`, or records why it could not when the object kind is
/// forbidden to this user or not installed; other errors fail the command.
async fn list_optional<K>(
    api: Api<K>,
    what: &str,
    checks: &str,
    not_checked: &mut Vec<NotChecked>,
) -> anyhow::Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(s)) if s.is_forbidden() || s.is_not_found() => {
            let why = if s.is_forbidden() {
                format!("forbidden: {}", s.message)
            } else {
                "the API server does not serve this kind (CRD not installed?)".to_string()
            };
            not_checked.push(NotChecked {
                what: what.to_string(),
                why,
                checks: checks.to_string(),
            });
            Ok(Vec::new())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("listing {what}"))),
    }
}

async fn list_required<K>(api: Api<K>, what: &str) -> anyhow::Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {what}"))?
        .items)
}

/// Reads what the checks need, without writing anything. A mesh-wide scope
/// keeps only namespaces that are in the mesh (or the system namespaces'
/// pods would read as not enrolled forever).
pub async fn read_cluster(client: &Client, scope: &Scope) -> anyhow::Result<Inventory> {
    let mut inv = Inventory::default();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let mesh_wide = scope.kind() == ScopeKind::MeshWide;
    if mesh_wide {
        inv.namespaces = list_required(ns_api, "namespaces").await?;
    } else {
        match ns_api.get_opt(&scope.namespace).await {
            Ok(Some(ns)) => inv.namespaces.push(ns),
            Ok(None) => bail!("namespace {:?} not found", scope.namespace),
            // A namespace admin may not read Namespace objects: the
            // injection-label check is skipped, the rest still runs.
            Err(kube::Error::Api(s)) if s.is_forbidden() => inv.not_checked.push(NotChecked {
                what: format!("Namespace {}", scope.namespace),
                why: format!("forbidden: {}", s.message),
                checks: "injection labels of the namespace".into(),
            }),
            Err(e) => return Err(anyhow::Error::new(e).context("reading the namespace")),
        }
    }

    let ns = scope.namespace.as_str();
    let (pods, services, jobs, cron_jobs) = if mesh_wide {
        (
            Api::<Pod>::all(client.clone()),
            Api::<Service>::all(client.clone()),
            Api::<Job>::all(client.clone()),
            Api::<CronJob>::all(client.clone()),
        )
    } else {
        (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        )
    };
    inv.pods = list_required(pods, "pods").await?;
    inv.services = list_required(services, "services").await?;
    let nc = &mut inv.not_checked;
    inv.jobs = list_optional(jobs, "Jobs", "Jobs opted out of injection", nc).await?;
    inv.cron_jobs =
        list_optional(cron_jobs, "CronJobs", "CronJobs opted out of injection", nc).await?;
    inv.mutating_webhooks = list_optional(
        Api::all(client.clone()),
        "MutatingWebhookConfigurations",
        "admission webhooks served in scope",
        nc,
    )
    .await?;
    inv.validating_webhooks = list_optional(
        Api::all(client.clone()),
        "ValidatingWebhookConfigurations",
        "admission webhooks served in scope",
        nc,
    )
    .await?;
    // Clients anywhere may hold a DestinationRule for the scope's hosts.
    inv.destination_rules = list_optional(
        Api::all_with(client.clone(), &destination_rule_resource()),
        "DestinationRules",
        "DestinationRules forcing plaintext",
        nc,
    )
    .await?;
    let pa = peer_authentication_resource();
    inv.peer_authentications = if mesh_wide {
        // Namespace-wide policies elsewhere override a mesh-wide one.
        list_optional(
            Api::all_with(client.clone(), &pa),
            "PeerAuthentications",
            "duplicate and overriding PeerAuthentications",
            nc,
        )
        .await?
    } else {
        let mut pas = Vec::new();
        for n in BTreeSet::from([ns, scope.root_namespace.as_str()]) {
            pas.extend(
                list_optional(
                    Api::namespaced_with(client.clone(), n, &pa),
                    &format!("PeerAuthentications in {n}"),
                    "duplicate and overriding PeerAuthentications",
                    nc,
                )
                .await?,
            );
        }
        pas
    };

    if mesh_wide {
        let in_mesh: BTreeSet<String> = inv
            .namespaces
            .iter()
            .filter(|n| namespace_in_mesh(n))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let keep = |ns: Option<&String>| ns.is_some_and(|n| in_mesh.contains(n));
        inv.pods.retain(|o| keep(o.metadata.namespace.as_ref()));
        inv.services.retain(|o| keep(o.metadata.namespace.as_ref()));
        inv.jobs.retain(|o| keep(o.metadata.namespace.as_ref()));
        inv.cron_jobs
            .retain(|o| keep(o.metadata.namespace.as_ref()));
    }
    Ok(inv)
}

/// The evidence part of a preflight, when Prometheus was given.
#[derive(Clone, Debug)]
pub struct Evidence {
    pub url: String,
    pub window: Duration,
    pub queries: QuerySet,
    pub reading: Reading,
}

/// What Prometheus is asked about the scope.
pub fn query_scope(scope: &Scope, pods: &[Pod], window: Duration) -> QueryScope {
    QueryScope {
        namespaces: match scope.kind() {
            ScopeKind::MeshWide => Namespaces::MeshWide,
            _ => Namespaces::one(&scope.namespace),
        },
        workloads: crate::scope::destination_workloads(pods, scope),
        protocols: Protocols::Both,
        window,
    }
}

// ---------------------------------------------------------------- report

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeSummary {
    pub namespace: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `MeshWide`, `Namespace` or `Workload`.
    pub kind: &'static str,
    pub root_namespace: String,
    /// How findings name the scope (`namespace shop`).
    pub description: String,
}

impl ScopeSummary {
    /// The scope in a sentence.
    fn title(&self) -> String {
        if self.kind == "MeshWide" {
            format!(
                "the whole mesh (root namespace {}, no selector)",
                self.root_namespace
            )
        } else {
            self.description.clone()
        }
    }
}

/// How much was read, so an empty report is not mistaken for an empty read.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadCounts {
    /// Namespaces covered: the scope's own, or for a mesh-wide scope every
    /// namespace labelled for the mesh.
    pub namespaces: usize,
    /// Live pods the scope selects.
    pub selected_pods: usize,
    pub enrolled_pods: usize,
    pub services: usize,
    pub destination_rules: usize,
    pub peer_authentications: usize,
}

/// The result of one preflight, as `-o json` prints it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub scope: ScopeSummary,
    pub read: ReadCounts,
    /// `null` when no Prometheus was given.
    pub prometheus: Option<Value>,
    pub findings: Vec<Finding>,
    /// True when a finding blocks (exit code 2).
    pub blocking: bool,
}

fn kind_name(kind: ScopeKind) -> &'static str {
    match kind {
        ScopeKind::MeshWide => "MeshWide",
        ScopeKind::Namespace => "Namespace",
        ScopeKind::Workload => "Workload",
    }
}

fn not_checked_finding(n: &NotChecked) -> Finding {
    Finding {
        kind: NOT_CHECKED.to_string(),
        severity: Severity::Warning,
        object: n.what.clone(),
        message: format!(
            "Could not read {} ({}), so these checks did not run: {}. Absence of findings \
             there proves nothing.",
            n.what, n.why, n.checks
        ),
        remedy: "Run preflight with credentials that can list them, or check by hand.".to_string(),
    }
}

fn reading_json(r: &Reading) -> Value {
    match r {
        Reading::Traffic {
            total_rate,
            plaintext_rate,
            top_sources,
            source_failure_rate,
        } => json!({
            "result": "Traffic",
            "totalRate": total_rate,
            "plaintextRate": plaintext_rate,
            "ratio": if *total_rate > 0.0 { Some(plaintext_rate / total_rate) } else { None },
            "sourceFailureRate": source_failure_rate,
            "topSources": top_sources,
        }),
        Reading::QueryFailed { message } => json!({"result": "QueryFailed", "message": message}),
        Reading::NoData => json!({"result": "NoData"}),
        Reading::NotFinite { message } => json!({"result": "NotFinite", "message": message}),
    }
}

fn evidence_json(e: &Evidence) -> Value {
    let queries: Vec<Value> = e
        .queries
        .protocols
        .iter()
        .map(|q| {
            json!({
                "protocol": q.protocol.as_str(),
                "total": q.total,
                "plaintext": q.plaintext,
                "topSources": q.top_sources,
                "sourceFailures": q.source_failures,
            })
        })
        .collect();
    json!({
        "url": e.url,
        "window": promql_duration(e.window),
        "reading": reading_json(&e.reading),
        "queries": queries,
    })
}

/// Runs the checks over what was read. Pure.
pub fn build_report(
    scope: &Scope,
    inv: &Inventory,
    port_level_mtls: &[i32],
    cluster_domain: &str,
    evidence: Option<&Evidence>,
) -> Report {
    let input = PreflightInput {
        namespaces: &inv.namespaces,
        pods: &inv.pods,
        services: &inv.services,
        jobs: &inv.jobs,
        cron_jobs: &inv.cron_jobs,
        mutating_webhooks: &inv.mutating_webhooks,
        validating_webhooks: &inv.validating_webhooks,
        destination_rules: &inv.destination_rules,
        peer_authentications: &inv.peer_authentications,
        port_level_mtls,
        cluster_domain,
        reading: evidence.map(|e| &e.reading),
        ..PreflightInput::new(scope)
    };
    let mut findings = preflight(&input);
    findings.extend(inv.not_checked.iter().map(not_checked_finding));
    findings
        .sort_by(|a, b| (a.severity, &a.kind, &a.object).cmp(&(b.severity, &b.kind, &b.object)));

    let live: Vec<&Pod> = inv
        .pods
        .iter()
        .filter(|p| scope.selects_pod(p) && !crate::scope::is_finished(p))
        .collect();
    let read = ReadCounts {
        namespaces: match scope.kind() {
            ScopeKind::MeshWide => inv
                .namespaces
                .iter()
                .filter(|n| namespace_in_mesh(n))
                .count(),
            _ => 1,
        },
        selected_pods: live.len(),
        enrolled_pods: live
            .iter()
            .filter(|p| pod_enrollment(p).is_enrolled())
            .count(),
        services: crate::scope::scope_hosts(&inv.services, &inv.pods, scope).len(),
        destination_rules: inv.destination_rules.len(),
        peer_authentications: inv.peer_authentications.len(),
    };
    Report {
        scope: ScopeSummary {
            namespace: scope.namespace.clone(),
            selector: scope.match_labels.clone(),
            kind: kind_name(scope.kind()),
            root_namespace: scope.root_namespace.clone(),
            description: describe_scope(scope),
        },
        read,
        prometheus: evidence.map(evidence_json),
        blocking: blocks(&findings),
        findings,
    }
}

// ---------------------------------------------------------------- rendering

/// Greedy word wrap of `text` to lines of at most `width` characters (a
/// longer word gets a line of its own).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let needed = if line.is_empty() {
            word.chars().count()
        } else {
            line.chars().count() + 1 + word.chars().count()
        };
        if needed > width && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn evidence_line(e: &Option<Value>) -> String {
    let Some(e) = e else {
        return "Prometheus: not given (--prometheus-url), plaintext sources not measured."
            .to_string();
    };
    let url = e["url"].as_str().unwrap_or_default();
    let window = e["window"].as_str().unwrap_or_default();
    let r = &e["reading"];
    let what = match r["result"].as_str() {
        Some("Traffic") => format!(
            "{:.3}/s to the scope, {:.3}/s of it plaintext",
            r["totalRate"].as_f64().unwrap_or_default(),
            r["plaintextRate"].as_f64().unwrap_or_default()
        ),
        Some("NoData") => "no telemetry for the scope".to_string(),
        _ => format!(
            "no usable measurement ({})",
            r["message"].as_str().unwrap_or_default()
        ),
    };
    format!("Prometheus {url} (window {window}): {what}.")
}

/// The human report: a header saying what was read, one block per finding
/// (severity, kind and object on one line, then why and what to do,
/// wrapped to `width`), and a verdict line.
pub fn render_table(report: &Report, width: usize) -> String {
    let r = &report.read;
    let header = [
        format!("Preflight of {}.", report.scope.title()),
        format!(
            "Read {}{} ({} enrolled), {} in scope, {}, {}.",
            if report.scope.kind == "MeshWide" {
                format!(
                    "{} in the mesh, ",
                    plural(r.namespaces, "namespace", "namespaces")
                )
            } else {
                String::new()
            },
            plural(r.selected_pods, "selected pod", "selected pods"),
            r.enrolled_pods,
            plural(r.services, "Service", "Services"),
            plural(r.destination_rules, "DestinationRule", "DestinationRules"),
            plural(
                r.peer_authentications,
                "PeerAuthentication",
                "PeerAuthentications"
            ),
        ),
        evidence_line(&report.prometheus),
    ];
    let mut out = String::new();
    for line in header.iter().flat_map(|h| wrap(h, width)) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push('\n');

    let findings = &report.findings;
    if !findings.is_empty() {
        let sev = |f: &Finding| match f.severity {
            Severity::Blocking => "BLOCKING",
            Severity::Warning => "WARNING",
        };
        let w_sev = findings
            .iter()
            .map(|f| sev(f).len())
            .max()
            .unwrap_or(0)
            .max(8);
        let w_kind = findings
            .iter()
            .map(|f| f.kind.len())
            .max()
            .unwrap_or(0)
            .max(4);
        out.push_str(&format!(
            "{:<w_sev$}   {:<w_kind$}   OBJECT\n",
            "SEVERITY", "KIND"
        ));
        // Prose is indented under KIND so the severity column stays clear.
        let indent = w_sev + 3;
        let label_width = "to do: ".len();
        let text_width = width.saturating_sub(indent + label_width).max(30);
        for f in findings {
            out.push_str(&format!(
                "{:<w_sev$}   {:<w_kind$}   {}\n",
                sev(f),
                f.kind,
                f.object
            ));
            for (label, text) in [("why:", &f.message), ("to do:", &f.remedy)] {
                for (i, line) in wrap(text, text_width).into_iter().enumerate() {
                    let l = if i == 0 { label } else { "" };
                    out.push_str(&format!("{:indent$}{l:<label_width$}{line}\n", ""));
                }
            }
            out.push('\n');
        }
    }

    let blocking = findings
        .iter()
        .filter(|f| f.severity == Severity::Blocking)
        .count();
    let warnings = findings.len() - blocking;
    let verdict = if blocking > 0 {
        format!(
            "{} and {}: STRICT would break traffic or cannot be applied safely. Fix the \
             blocking findings first.",
            plural(blocking, "blocking finding", "blocking findings"),
            plural(warnings, "warning", "warnings")
        )
    } else if warnings > 0 {
        format!(
            "Nothing blocks STRICT for {}; {} worth checking above.",
            report.scope.title(),
            plural(warnings, "warning", "warnings")
        )
    } else {
        format!(
            "Nothing blocks STRICT for {}: no findings.",
            report.scope.title()
        )
    };
    for line in wrap(&verdict, width) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

pub fn render_json(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).expect("a report always serializes");
    s.push('\n');
    s
}

/// Terminal width for wrapping: `$COLUMNS` when set, else 100.
fn output_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&w: &usize| w >= 40)
        .unwrap_or(100)
}

/// Reads the cluster (and Prometheus), prints the report, and returns
/// whether something blocks.
pub async fn run(args: PreflightArgs) -> anyhow::Result<bool> {
    let selector = args
        .selector
        .as_deref()
        .map(parse_selector)
        .transpose()
        .context("invalid --selector")?;
    let scope = Scope::new(&args.namespace, selector, &args.root_namespace);
    // Build the Prometheus client first: a bad URL should fail before any
    // cluster reads.
    let prometheus = match &args.prometheus_url {
        Some(url) => {
            let bearer_token = match &args.prometheus_token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            Some(PrometheusClient::new(PrometheusConfig {
                url: url.clone(),
                timeout: args.prometheus_timeout,
                bearer_token,
            })?)
        }
        None => None,
    };

    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let inv = read_cluster(&client, &scope).await?;

    let evidence = match (&prometheus, &args.prometheus_url) {
        (Some(p), Some(url)) => {
            let qs = query_scope(&scope, &inv.pods, args.window);
            let queries = qs.queries();
            let reading = p.measure(&qs).await;
            Some(Evidence {
                url: url.clone(),
                window: args.window,
                queries,
                reading,
            })
        }
        _ => None,
    };

    let report = build_report(
        &scope,
        &inv,
        &args.port_level_mtls,
        &args.cluster_domain,
        evidence.as_ref(),
    );
    match args.output {
        OutputFormat::Table => print!("{}", render_table(&report, output_width())),
        OutputFormat::Json => print!("{}", render_json(&report)),
    }
    Ok(report.blocking)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(ns: &str, name: &str, sidecar: bool) -> Pod {
        let mut containers = vec![json!({"name": "app", "image": "app"})];
        let mut annotations = json!({});
        if sidecar {
            containers.push(json!({"name": "istio-proxy", "image": "proxyv2"}));
            annotations = json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
        }
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": "web"},
                         "annotations": annotations},
            "spec": {"containers": containers},
            "status": {"phase": "Running"},
        }))
        .unwrap()
    }

    #[test]
    fn selectors_parse_to_match_labels() {
        assert_eq!(
            parse_selector("app=web, version==v1").unwrap(),
            labels(&[("app", "web"), ("version", "v1")])
        );
        assert_eq!(
            parse_selector("app.kubernetes.io/name=web,tier=").unwrap(),
            labels(&[("app.kubernetes.io/name", "web"), ("tier", "")])
        );
        assert_eq!(parse_selector("a=b,a=b").unwrap(), labels(&[("a", "b")]));
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        let err = |s: &str| parse_selector(s).unwrap_err();
        assert_eq!(err(" "), SelectorError::Empty);
        assert!(matches!(err("app!=web"), SelectorError::NotEquality(_)));
        assert!(matches!(err("app in (a,b)"), SelectorError::NotEquality(_)));
        assert!(matches!(err("app"), SelectorError::NotAPair(_)));
        assert!(matches!(err("app=web,"), SelectorError::NotAPair(_)));
        assert!(matches!(err("=web"), SelectorError::BadKey { .. }));
        assert!(matches!(err("-app=web"), SelectorError::BadKey { .. }));
        assert!(matches!(
            err("Bad_Prefix/app=web"),
            SelectorError::BadKey { .. }
        ));
        assert!(matches!(err("app=we b"), SelectorError::BadValue { .. }));
        assert!(matches!(
            err(&format!("app={}", "x".repeat(64))),
            SelectorError::BadValue { .. }
        ));
        assert_eq!(err("a=b,a=c"), SelectorError::Conflicting("a".into()));
        // Messages are for people: they show the input and an example.
        assert_eq!(
            err("app").to_string(),
            "\"app\": expected key=value (pairs separated by commas, e.g. app=web,version=v1)"
        );
    }

    #[test]
    fn mesh_wide_scope_names_itself_and_counts_mesh_namespaces() {
        let scope = Scope::new("istio-system", None, "istio-system");
        let ns = |name: &str, labels: Value| -> Namespace {
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
        };
        let inv = Inventory {
            namespaces: vec![
                ns("shop", json!({"istio-injection": "enabled"})),
                ns("kube-system", json!({})),
            ],
            pods: vec![pod("shop", "web-1", true)],
            ..Inventory::default()
        };
        let report = build_report(&scope, &inv, &[], "cluster.local", None);
        assert_eq!(report.scope.kind, "MeshWide");
        assert_eq!(report.read.namespaces, 1);
        let text = render_table(&report, 200);
        assert!(
            text.starts_with("Preflight of the whole mesh (root namespace istio-system, no selector).\nRead 1 namespace in the mesh, 1 selected pod"),
            "{text}"
        );
    }

    #[test]
    fn wrapping_keeps_words_whole() {
        assert_eq!(
            wrap("one two three four five", 9),
            ["one two", "three", "four five"]
        );
        assert_eq!(
            wrap("averyveryverylongword x", 5),
            ["averyveryverylongword", "x"]
        );
        assert!(wrap("  ", 10).is_empty());
    }

    #[test]
    fn clean_namespace_says_nothing_blocks() {
        let scope = Scope::new("shop", None, "istio-system");
        let inv = Inventory {
            namespaces: vec![
                serde_json::from_value(json!({"metadata": {"name": "shop",
                    "labels": {"istio-injection": "enabled"}}}))
                .unwrap(),
            ],
            pods: vec![pod("shop", "web-1", true)],
            ..Inventory::default()
        };
        let report = build_report(&scope, &inv, &[], "cluster.local", None);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert!(!report.blocking);
        let text = render_table(&report, 100);
        assert!(text.contains("Nothing blocks STRICT for namespace shop: no findings."));
        assert!(text.contains("Read 1 selected pod (1 enrolled)"), "{text}");
        assert!(text.contains("Prometheus: not given"));
        assert!(!text.contains("SEVERITY"));
    }

    #[test]
    fn findings_render_as_wrapped_blocks_and_json() {
        let scope = Scope::new("shop", Some(labels(&[("app", "web")])), "istio-system");
        let inv = Inventory {
            pods: vec![pod("shop", "web-1", false), pod("shop", "web-2", true)],
            not_checked: vec![NotChecked {
                what: "MutatingWebhookConfigurations".into(),
                why: "forbidden: no".into(),
                checks: "admission webhooks served in scope".into(),
            }],
            ..Inventory::default()
        };
        let report = build_report(&scope, &inv, &[], "cluster.local", None);
        let kinds: Vec<&str> = report.findings.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(kinds, ["PodsNotEnrolled", NOT_CHECKED]);
        assert!(report.blocking);

        let text = render_table(&report, 80);
        assert!(text.contains("SEVERITY   KIND"), "{text}");
        assert!(text.contains("BLOCKING   PodsNotEnrolled   namespace shop selector app=web"));
        assert!(text.contains("WARNING    NotChecked        MutatingWebhookConfigurations"));
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert!(
            text.contains("           why:   1 of 2 selected pods"),
            "{text}"
        );
        assert!(
            text.contains("           to do: Label the namespace"),
            "{text}"
        );
        assert!(
            text.trim_end()
                .ends_with("Fix the blocking findings first.")
        );
        assert!(text.contains("1 blocking finding and 1 warning:"));

        let v: Value = serde_json::from_str(&render_json(&report)).unwrap();
        assert_eq!(v["blocking"], true);
        assert_eq!(v["scope"]["kind"], "Workload");
        assert_eq!(v["scope"]["selector"]["app"], "web");
        assert_eq!(v["findings"][0]["kind"], "PodsNotEnrolled");
        assert_eq!(v["findings"][0]["severity"], "Blocking");
        assert!(v["findings"][0]["remedy"].as_str().is_some());
        assert_eq!(v["prometheus"], Value::Null);
        assert_eq!(v["read"]["selectedPods"], 2);
    }

    #[test]
    fn evidence_is_reported_with_its_queries() {
        let scope = Scope::new("shop", None, "istio-system");
        let inv = Inventory {
            pods: vec![pod("shop", "web-1", true)],
            ..Inventory::default()
        };
        let qs = query_scope(&scope, &inv.pods, Duration::from_secs(120));
        assert_eq!(qs.workloads, None, "namespace scope queries every workload");
        let evidence = Evidence {
            url: "http://prom:9090".into(),
            window: qs.window,
            queries: qs.queries(),
            reading: Reading::Traffic {
                total_rate: 4.0,
                plaintext_rate: 1.0,
                top_sources: vec![crate::observe::PlaintextSource {
                    workload: "legacy".into(),
                    namespace: "shop".into(),
                    rate: 1.0,
                }],
                source_failure_rate: 0.0,
            },
        };
        let report = build_report(&scope, &inv, &[], "cluster.local", Some(&evidence));
        assert_eq!(report.findings[0].kind, "PlaintextSource");
        assert_eq!(report.findings[0].object, "source shop/legacy");
        let p = report.prometheus.as_ref().unwrap();
        assert_eq!(p["window"], "120s");
        assert_eq!(p["reading"]["ratio"], 0.25);
        assert!(
            p["queries"][0]["total"]
                .as_str()
                .unwrap()
                .contains("istio_requests_total")
        );
        let text = render_table(&report, 100);
        assert!(text.contains("Prometheus http://prom:9090 (window 120s): 4.000/s to the scope, 1.000/s of it plaintext."), "{text}");

        let workload = Scope::new("shop", Some(labels(&[("app", "web")])), "istio-system");
        let qs = query_scope(&workload, &inv.pods, Duration::from_secs(60));
        assert_eq!(qs.workloads, Some(BTreeSet::from(["web-1".to_string()])));
    }
}
