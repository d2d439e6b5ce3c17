use super::*;
use crate::observe::PlaintextSource;
use crate::scope::fixtures::{dynamic, from, labels, pod, service, sidecar_pod};
use serde_json::json;

const ROOT: &str = "istio-system";

fn ns_scope() -> Scope {
    Scope::new("shop", None, ROOT)
}

fn kinds(findings: &[Finding]) -> Vec<(&str, Severity)> {
    findings
        .iter()
        .map(|f| (f.kind.as_str(), f.severity))
        .collect()
}

fn mesh_namespace() -> Namespace {
    from(json!({"metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}}))
}

/// An enrolled web pod with a Deployment-style owner.
fn web_pod(name: &str) -> Pod {
    let mut p = sidecar_pod(
        "shop",
        name,
        &[("app", "web"), ("pod-template-hash", "abc")],
    );
    p.metadata.owner_references = Some(vec![from(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u", "controller": true
    }))]);
    let app = &mut p.spec.as_mut().unwrap().containers[0];
    app.ports = Some(vec![from(json!({"containerPort": 8080, "name": "http"}))]);
    p
}

fn web_service() -> Service {
    service(
        "shop",
        "web",
        &[("app", "web")],
        json!([{"port": 80, "targetPort": 8080, "name": "http"}]),
    )
}

#[test]
fn clean_namespace_reports_nothing() {
    let scope = ns_scope();
    let namespaces = [mesh_namespace()];
    let pods = [web_pod("web-abc-1"), web_pod("web-abc-2")];
    let services = [web_service()];
    let reading = Reading::Traffic {
        total_rate: 10.0,
        plaintext_rate: 0.0,
        top_sources: vec![],
        source_failure_rate: 0.0,
    };
    let input = PreflightInput {
        namespaces: &namespaces,
        pods: &pods,
        services: &services,
        port_level_mtls: &[8080],
        reading: Some(&reading),
        ..PreflightInput::new(&scope)
    };
    let found = preflight(&input);
    assert!(found.is_empty(), "{found:#?}");
    assert!(!blocks(&found));
}

#[test]
fn invalid_scope_blocks() {
    let scope = Scope::new(ROOT, Some(labels(&[("app", "web")])), ROOT);
    let found = preflight(&PreflightInput::new(&scope));
    assert_eq!(
        kinds(&found),
        vec![(kind::INVALID_SCOPE, Severity::Blocking)]
    );
    assert!(blocks(&found));
}

#[test]
fn unenrolled_pods_and_unlabelled_namespace() {
    let scope = ns_scope();
    let namespaces: [Namespace; 1] = [from(json!({"metadata": {"name": "shop"}}))];
    let pods = [web_pod("web-abc-1"), pod("shop", "legacy-0", &[])];
    let input = PreflightInput {
        namespaces: &namespaces,
        pods: &pods,
        ..PreflightInput::new(&scope)
    };
    let found = preflight(&input);
    assert_eq!(
        kinds(&found),
        vec![
            (kind::PODS_NOT_ENROLLED, Severity::Blocking),
            (kind::NAMESPACE_NOT_IN_MESH, Severity::Warning)
        ]
    );
    assert!(
        found[0].message.contains("legacy-0"),
        "{}",
        found[0].message
    );
}

#[test]
fn evidence_findings_name_sources_and_missing_data() {
    let reading = Reading::Traffic {
        total_rate: 10.0,
        plaintext_rate: 2.0,
        top_sources: vec![PlaintextSource {
            workload: "unknown".into(),
            namespace: "unknown".into(),
            rate: 2.0,
        }],
        source_failure_rate: 0.0,
    };
    let found = evidence_findings(&reading);
    assert_eq!(
        kinds(&found),
        vec![(kind::PLAINTEXT_SOURCE, Severity::Blocking)]
    );
    assert_eq!(found[0].object, "source unknown/unknown");
    assert!(found[0].message.contains("outside the mesh"));

    for r in [
        Reading::NoData,
        Reading::QueryFailed {
            message: "timeout".into(),
        },
        Reading::NotFinite {
            message: "NaN".into(),
        },
    ] {
        assert_eq!(
            kinds(&evidence_findings(&r)),
            vec![(kind::EVIDENCE_UNAVAILABLE, Severity::Warning)]
        );
    }
}

#[test]
fn destination_rule_and_duplicate_policies() {
    let scope = ns_scope();
    let pods = [web_pod("web-abc-1")];
    let services = [web_service()];
    let drs = [dynamic(json!({
        "metadata": {"namespace": "shop", "name": "web-plain"},
        "spec": {"host": "web", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}
    }))];
    let pa = |name: &str| {
        dynamic(json!({
            "metadata": {"namespace": "shop", "name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"mtls": {"mode": "PERMISSIVE"}}
        }))
    };
    let pas = [pa("default"), pa("legacy")];
    let input = PreflightInput {
        pods: &pods,
        services: &services,
        destination_rules: &drs,
        peer_authentications: &pas,
        ..PreflightInput::new(&scope)
    };
    let found = preflight(&input);
    assert_eq!(
        kinds(&found),
        vec![
            (kind::DESTINATION_RULE_CONFLICT, Severity::Blocking),
            (kind::DUPLICATE_PEER_AUTHENTICATION, Severity::Blocking)
        ]
    );
    assert_eq!(found[0].object, "DestinationRule shop/web-plain");
    assert!(
        found[1].message.contains("oldest (default)"),
        "{}",
        found[1].message
    );
}

#[test]
fn shadowing_workload_policy_blocks() {
    let scope = Scope::new("shop", Some(labels(&[("app", "web")])), ROOT);
    let pods = [web_pod("web-abc-1")];
    let pas = [dynamic(json!({
        "metadata": {"namespace": "shop", "name": "by-hash", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"selector": {"matchLabels": {"pod-template-hash": "abc"}}}
    }))];
    let input = PreflightInput {
        pods: &pods,
        peer_authentications: &pas,
        ..PreflightInput::new(&scope)
    };
    assert_eq!(
        kinds(&preflight(&input)),
        vec![(kind::POLICY_SHADOWED, Severity::Blocking)]
    );
}

fn with_http_probe(mut p: Pod, port: i32) -> Pod {
    let app = &mut p.spec.as_mut().unwrap().containers[0];
    app.liveness_probe = Some(from(json!({"httpGet": {"path": "/healthz", "port": port}})));
    app.readiness_probe = Some(from(json!({"exec": {"command": ["true"]}})));
    p
}

fn annotate(mut p: Pod, pairs: &[(&str, &str)]) -> Pod {
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend(labels(pairs));
    p
}

#[test]
fn http_probe_without_rewrite() {
    let scope = ns_scope();
    let off = [("sidecar.istio.io/rewriteAppHTTPProbers", "false")];
    let bad = annotate(with_http_probe(web_pod("web-abc-1"), 8080), &off);
    let twin = annotate(with_http_probe(web_pod("web-abc-2"), 8080), &off);
    let found = probe_findings(&[bad, twin], &scope);
    assert_eq!(
        kinds(&found),
        vec![(kind::HTTP_PROBE_WITHOUT_REWRITE, Severity::Blocking)]
    );
    assert_eq!(found[0].object, "workload shop/web");
    assert!(found[0].message.contains("liveness probe on port 8080"));

    // Rewrite on (default), a probe already on the proxy port, an ambient pod: fine.
    let rewritten = with_http_probe(web_pod("web-abc-3"), 8080);
    let proxy_port = annotate(with_http_probe(web_pod("web-abc-4"), 15020), &off);
    let mut ambient = annotate(
        with_http_probe(pod("shop", "amb", &[]), 8080),
        &[("ambient.istio.io/redirection", "enabled")],
    );
    ambient = annotate(ambient, &off);
    assert!(probe_findings(&[rewritten, proxy_port, ambient], &scope).is_empty());
}

#[test]
fn prometheus_scrape_on_app_port() {
    let scope = ns_scope();
    let app_port = annotate(
        web_pod("web-abc-1"),
        &[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "8080"),
        ],
    );
    let merged = annotate(
        web_pod("web-abc-2"),
        &[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "15020"),
        ],
    );
    let outside = annotate(
        pod("shop", "plain", &[]),
        &[("prometheus.io/scrape", "true")],
    );
    let found = scrape_findings(&[app_port, merged, outside], &scope);
    assert_eq!(
        kinds(&found),
        vec![(kind::PROMETHEUS_SCRAPES_APP_PORT, Severity::Warning)]
    );
    assert!(found[0].message.contains("port 8080"));
}

#[test]
fn webhooks_served_from_scope() {
    let scope = ns_scope();
    let pods = [web_pod("web-abc-1")];
    let hosts = scope_hosts(&[web_service()], &pods, &scope);
    let hook = |name: &str, svc_ns: &str, policy: Option<&str>| {
        json!({"name": name, "clientConfig": {"service": {"namespace": svc_ns, "name": "web"}},
               "failurePolicy": policy, "sideEffects": "None", "admissionReviewVersions": ["v1"]})
    };
    let mutating: MutatingWebhookConfiguration = from(json!({
        "metadata": {"name": "web-mutator"},
        "webhooks": [hook("m.web.dev", "shop", None), hook("elsewhere.dev", "other", None)]
    }));
    let validating: ValidatingWebhookConfiguration = from(json!({
        "metadata": {"name": "web-validator"},
        "webhooks": [hook("v.web.dev", "shop", Some("Ignore"))]
    }));
    let found = webhook_findings(&[mutating], &[validating], &hosts);
    assert_eq!(
        kinds(&found),
        vec![
            (kind::WEBHOOK_SERVED_IN_SCOPE, Severity::Blocking),
            (kind::WEBHOOK_SERVED_IN_SCOPE, Severity::Warning)
        ]
    );
    assert_eq!(
        found[0].object,
        "MutatingWebhookConfiguration web-mutator (webhook m.web.dev)"
    );
}

#[test]
fn headless_services() {
    let scope = ns_scope();
    let pods = [web_pod("web-abc-1")];
    let mut peers = service(
        "shop",
        "web-peers",
        &[("app", "web")],
        json!([{"port": 7000}]),
    );
    peers.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    let hosts = scope_hosts(&[web_service(), peers], &pods, &scope);
    let found = headless_findings(&hosts);
    assert_eq!(
        kinds(&found),
        vec![(kind::HEADLESS_SERVICE, Severity::Warning)]
    );
    assert_eq!(found[0].object, "Service shop/web-peers");
}

#[test]
fn jobs_opted_out_of_injection() {
    let job = |name: &str, template_meta: serde_json::Value, extra: serde_json::Value| -> Job {
        let mut v = json!({
            "metadata": {"namespace": "shop", "name": name},
            "spec": {"template": {"metadata": template_meta, "spec": {"containers": [{"name": "c"}]}}}
        });
        if let Some(owner) = extra.get("owner") {
            v["metadata"]["ownerReferences"] = json!([owner]);
        }
        if let Some(status) = extra.get("status") {
            v["status"] = status.clone();
        }
        from(v)
    };
    let by_label = job(
        "backfill",
        json!({"labels": {"sidecar.istio.io/inject": "false"}}),
        json!({}),
    );
    let by_annotation = job(
        "seed",
        json!({"annotations": {"sidecar.istio.io/inject": "false"}}),
        json!({}),
    );
    let injected = job("fine", json!({}), json!({}));
    let from_cron = job(
        "nightly-29000000",
        json!({"labels": {"sidecar.istio.io/inject": "false"}}),
        json!({"owner": {"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "uid": "u"}}),
    );
    let done = job(
        "old",
        json!({"labels": {"sidecar.istio.io/inject": "false"}}),
        json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}),
    );
    let cron: CronJob = from(json!({
        "metadata": {"namespace": "shop", "name": "nightly"},
        "spec": {"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": {
            "metadata": {"labels": {"sidecar.istio.io/inject": "false"}},
            "spec": {"containers": [{"name": "c"}]}}}}}
    }));
    let found = job_findings(
        &[by_label, by_annotation, injected, from_cron, done],
        &[cron],
    );
    let objects: Vec<&str> = found.iter().map(|f| f.object.as_str()).collect();
    assert_eq!(
        objects,
        vec!["Job shop/backfill", "Job shop/seed", "CronJob shop/nightly"]
    );
    assert!(
        found
            .iter()
            .all(|f| f.kind == kind::JOB_OPTED_OUT_OF_INJECTION && f.severity == Severity::Warning)
    );
}

#[test]
fn server_first_ports() {
    let scope = ns_scope();
    let mut db = sidecar_pod("shop", "mysql-0", &[("app", "mysql")]);
    db.spec.as_mut().unwrap().containers[0].ports = Some(vec![
        from(json!({"containerPort": 3306})),
        from(json!({"containerPort": 53, "protocol": "UDP"})),
    ]);
    let mut pg = sidecar_pod("shop", "pg-0", &[("app", "pg")]);
    pg.spec.as_mut().unwrap().containers[0].ports =
        Some(vec![from(json!({"containerPort": 5432}))]);
    let mongo = sidecar_pod("shop", "mongo-0", &[("app", "mongo")]);
    let pods = [db, pg, mongo];
    let services = [service(
        "shop",
        "mongo",
        &[("app", "mongo")],
        json!([{"port": 27018, "name": "mongo-main"}]),
    )];
    let hosts = scope_hosts(&services, &pods, &scope);
    let found = server_first_findings(&pods, &hosts, &scope);
    let objects: Vec<&str> = found.iter().map(|f| f.object.as_str()).collect();
    assert_eq!(
        objects,
        vec![
            "Service shop/mongo port 27018",
            "workload shop/mysql-0 port 3306"
        ]
    );
    assert!(found[1].message.contains("MySQL"));
}

#[test]
fn port_level_keys_must_be_container_ports() {
    let scope = Scope::new("shop", Some(labels(&[("app", "web")])), ROOT);
    let pods = [web_pod("web-abc-1")];
    let services = [
        web_service(),
        service(
            "shop",
            "web-admin",
            &[("app", "web")],
            json!([{"port": 9090, "targetPort": "http"}]),
        ),
    ];
    let hosts = scope_hosts(&services, &pods, &scope);
    let found = port_level_findings(&[80, 8080, 9090, 9999], &pods, &hosts, &scope);
    assert_eq!(
        kinds(&found),
        vec![
            (kind::PORT_LEVEL_MTLS_ON_SERVICE_PORT, Severity::Blocking),
            (kind::PORT_LEVEL_MTLS_ON_SERVICE_PORT, Severity::Blocking),
            (kind::PORT_LEVEL_MTLS_UNKNOWN_PORT, Severity::Warning)
        ]
    );
    assert!(found[0].remedy.contains("8080"));
    assert!(found[1].message.contains("9090"));
}

#[test]
fn existing_policy_port_keys_are_checked_too() {
    let scope = Scope::new("shop", Some(labels(&[("app", "web")])), ROOT);
    let pods = [web_pod("web-abc-1")];
    let services = [web_service()];
    let pas = [dynamic(json!({
        "metadata": {"namespace": "shop", "name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"80": {"mode": "PERMISSIVE"}}}
    }))];
    let input = PreflightInput {
        pods: &pods,
        services: &services,
        peer_authentications: &pas,
        ..PreflightInput::new(&scope)
    };
    assert_eq!(
        kinds(&preflight(&input)),
        vec![(kind::PORT_LEVEL_MTLS_ON_SERVICE_PORT, Severity::Blocking)]
    );
}

#[test]
fn findings_serialize_for_json_output() {
    let f = &scope_findings(&Scope::new(ROOT, Some(labels(&[("a", "b")])), ROOT))[0];
    let v = serde_json::to_value(f).unwrap();
    assert_eq!(v["kind"], "InvalidScope");
    assert_eq!(v["severity"], "Blocking");
    assert!(v["remedy"].is_string());
}
