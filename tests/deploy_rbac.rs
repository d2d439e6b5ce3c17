//! Least privilege, shown against the sandbox's RBAC: the operator's rules
//! (`config/rbac/role.yaml` and the leader-election Role) are enough for
//! everything it does, and taking away any single verb of any rule breaks
//! something the probe below observes.
//!
//! One probe per permission set, all in parallel, each in its own namespace
//! with its own ServiceAccount, ClusterRole and two operator processes
//! authenticating with that account's token:
//! 1. A starts (creates the Lease) and leads; B starts and stands by.
//! 2. Two migrations (spec.mode PERMISSIVE, onDelete Restore): `adopted`
//!    takes over the namespace's existing DISABLE policy, `created` creates
//!    a workload policy. Both reach Permissive with events.
//! 3. The created policy is edited by hand twice; A corrects it twice (the
//!    second identical event is aggregated with a PATCH).
//! 4. A gets SIGTERM: B takes over (through its Lease watch).
//! 5. Both migrations are deleted: B restores the adopted policy (get +
//!    update) and deletes the created one.
//!
//! A probe fails at the first step that does not happen in time, or as soon
//! as an operator logs a forbidden request.

mod deploy_support;

use std::time::{Duration, Instant};

use deploy_support::*;
use futures::StreamExt;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::Client;
use kube::api::{Api, DeleteParams};
use mtls_migrator::api::migration::MtlsMigration;
use serde_json::json;

/// One permission set to probe.
struct Variant {
    label: String,
    cluster: Vec<PolicyRule>,
    lease: Vec<PolicyRule>,
}

/// `rules` without `verb` on `resource` of rule `index` (the rule is split
/// so its other resources keep the verb).
fn without(rules: &[PolicyRule], index: usize, resource: &str, verb: &str) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if i != index {
            out.push(rule.clone());
            continue;
        }
        let resources = rule.resources.clone().unwrap_or_default();
        let others: Vec<String> = resources
            .iter()
            .filter(|r| *r != resource)
            .cloned()
            .collect();
        if !others.is_empty() {
            out.push(PolicyRule {
                resources: Some(others),
                ..rule.clone()
            });
        }
        let verbs: Vec<String> = rule.verbs.iter().filter(|v| *v != verb).cloned().collect();
        if !verbs.is_empty() {
            out.push(PolicyRule {
                resources: Some(vec![resource.to_string()]),
                verbs,
                ..rule.clone()
            });
        }
    }
    out
}

/// Every (rule, resource, verb) taken away once.
fn variants() -> Vec<Variant> {
    let cluster = cluster_rules();
    let lease = lease_rules();
    let mut out = vec![Variant {
        label: "all rules".into(),
        cluster: cluster.clone(),
        lease: lease.clone(),
    }];
    for (kind, rules) in [("ClusterRole", &cluster), ("Role", &lease)] {
        for (i, rule) in rules.iter().enumerate() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    let reduced = without(rules, i, &resource, verb);
                    let (c, l) = if kind == "ClusterRole" {
                        (reduced, lease.clone())
                    } else {
                        (cluster.clone(), reduced)
                    };
                    out.push(Variant {
                        label: format!("{kind} without {verb} {resource}"),
                        cluster: c,
                        lease: l,
                    });
                }
            }
        }
    }
    out
}

const STEP: Duration = Duration::from_secs(20);

/// Fails as soon as an operator reports a forbidden request.
fn check_forbidden(ops: &[&Operator]) -> Result<(), String> {
    for op in ops {
        if let Some(line) = op.forbidden_lines().first() {
            return Err(format!("{} logged a forbidden request: {line}", op.name));
        }
    }
    Ok(())
}

/// Polls `check` until it holds, failing early on a forbidden request.
async fn step<F>(what: &str, ops: &[&Operator], mut check: F) -> Result<(), String>
where
    F: AsyncFnMut() -> bool,
{
    let deadline = Instant::now() + STEP;
    loop {
        check_forbidden(ops)?;
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let tails: Vec<String> = ops
                .iter()
                .map(|o| format!("{}:\n{}", o.name, o.log_tail(8)))
                .collect();
            return Err(format!("{what}: not within {STEP:?}\n{}", tails.join("\n")));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn run_probe(
    sb: &testkit::Sandbox,
    admin: &Client,
    ns: &str,
    v: &Variant,
) -> Result<(), String> {
    let id = Identity::provision(sb, admin, ns, v.cluster.clone(), v.lease.clone()).await;
    let result = probe(admin, ns, &id).await;
    id.cleanup(admin).await;
    result
}

async fn probe(admin: &Client, ns: &str, id: &Identity) -> Result<(), String> {
    let migrations: Api<MtlsMigration> = Api::namespaced(admin.clone(), ns);
    // The user's namespace-wide policy, taken over by `adopted`.
    apply_peer_authentication(
        admin,
        ns,
        "default",
        json!({"mtls": {"mode": "DISABLE"}}),
        "probe-user",
    )
    .await;

    let start = async |name: &str| {
        let mut opts = OperatorOptions::new(name, &id.kubeconfig, ns);
        opts.lease = Some((ns, DEFAULT_LEASE));
        start_operator(opts).await
    };
    let a_name = format!("{ns}-a");
    let mut a = start(&a_name).await;
    step("A leads", &[&a], async || {
        a.wait_ready("leader", Duration::ZERO).await.is_ok()
    })
    .await?;
    let b = start(&format!("{ns}-b")).await;
    step("B stands by", &[&a, &b], async || {
        b.wait_ready("standby", Duration::ZERO).await.is_ok()
    })
    .await?;

    for (name, selector) in [
        ("adopted", None),
        ("created", Some(json!({"matchLabels": {"app": "probe"}}))),
    ] {
        let mut spec = json!({"mode": "PERMISSIVE", "onDelete": "Restore"});
        if let Some(s) = selector {
            spec["selector"] = s;
        }
        create_migration(admin, ns, json!({"metadata": {"name": name}, "spec": spec})).await;
    }
    step(
        "both migrations Permissive with a finalizer",
        &[&a, &b],
        async || {
            let mut ok = true;
            for name in ["adopted", "created"] {
                let m = migrations.get_opt(name).await.ok().flatten();
                ok &= m.is_some_and(|m| {
                    phase(&m).as_deref() == Some("Permissive")
                        && !m.metadata.finalizers.unwrap_or_default().is_empty()
                });
            }
            ok
        },
    )
    .await?;
    step("policies PERMISSIVE", &[&a, &b], async || {
        let adopted = peer_authentication(admin, ns, "default").await;
        let created = peer_authentication(admin, ns, "created").await;
        adopted.as_ref().and_then(pa_mode) == Some("PERMISSIVE")
            && created.as_ref().and_then(pa_mode) == Some("PERMISSIVE")
    })
    .await?;
    step("an event about each migration", &[&a, &b], async || {
        !operator_events(admin, ns, "adopted").await.is_empty()
            && !operator_events(admin, ns, "created").await.is_empty()
    })
    .await?;

    for round in 1..=2 {
        // A person edits the managed policy; the operator puts it back.
        let ar =
            kube::api::ApiResource::erase::<mtls_migrator::api::istio::PeerAuthentication>(&());
        let pas: Api<kube::api::DynamicObject> = Api::namespaced_with(admin.clone(), ns, &ar);
        pas.patch(
            "created",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"mtls": {"mode": "DISABLE"}}})),
        )
        .await
        .map_err(|e| format!("edit policy: {e}"))?;
        step(&format!("drift {round} corrected"), &[&a, &b], async || {
            let events = operator_events(admin, ns, "created").await;
            let pa = peer_authentication(admin, ns, "created").await;
            pa.as_ref().and_then(pa_mode) == Some("PERMISSIVE")
                && occurrences(&events, "PolicyDriftCorrected") >= round
        })
        .await?;
    }

    // SIGTERM: A stops reconciling and releases the Lease; B sees the release.
    a.signal("TERM");
    let code = a.wait_exit(Duration::from_secs(15)).await;
    if code != Some(0) {
        return Err(format!("A exited with {code:?}:\n{}", a.log_tail(10)));
    }
    step("B takes over", &[&a, &b], async || {
        b.wait_ready("leader", Duration::ZERO).await.is_ok()
    })
    .await?;

    let dp = DeleteParams::default();
    for name in ["adopted", "created"] {
        migrations
            .delete(name, &dp)
            .await
            .map_err(|e| format!("delete {name}: {e}"))?;
    }
    step("both migrations gone", &[&a, &b], async || {
        migrations.get_opt("adopted").await.ok().flatten().is_none()
            && migrations.get_opt("created").await.ok().flatten().is_none()
    })
    .await?;
    let restored = peer_authentication(admin, ns, "default")
        .await
        .ok_or("default policy gone")?;
    if pa_mode(&restored) != Some("DISABLE")
        || restored["metadata"]["annotations"]
            .as_object()
            .is_some_and(|a| !a.is_empty())
    {
        return Err(format!("default policy not restored: {restored}"));
    }
    if let Some(pa) = peer_authentication(admin, ns, "created").await {
        return Err(format!("created policy not deleted: {pa}"));
    }
    check_forbidden(&[&a, &b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_permission_is_needed_and_enough() {
    let sb = testkit::sandbox().await;
    let admin = sb.client().await;
    let mut variants = variants();
    assert!(variants.len() > 20, "{} variants", variants.len());
    // For debugging one permission: DEPLOY_RBAC_ONLY='without patch'.
    if let Ok(only) = std::env::var("DEPLOY_RBAC_ONLY") {
        variants.retain(|v| v.label.contains(&only));
    }
    let started = Instant::now();
    // Bounded: two operator processes per probe on a 2-core machine.
    let results: Vec<(String, Result<(), String>, Duration)> =
        futures::stream::iter(variants.iter().enumerate())
            .map(|(i, v)| {
                let admin = admin.clone();
                async move {
                    let ns = testkit::TestNamespace::create(&admin, &format!("rbac-{i}")).await;
                    let t0 = Instant::now();
                    let res = run_probe(sb, &admin, ns.name(), v).await;
                    let took = t0.elapsed();
                    ns.cleanup().await;
                    (v.label.clone(), res, took)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
    let mut report = String::new();
    let mut wrong = Vec::new();
    for (label, res, took) in &results {
        let expected_ok = label == "all rules";
        let line = match res {
            Ok(()) => format!("{label}: passed ({took:.1?})"),
            Err(e) => format!(
                "{label}: failed ({took:.1?}): {}",
                e.lines().next().unwrap_or_default()
            ),
        };
        report.push_str(&line);
        report.push('\n');
        if res.is_ok() != expected_ok {
            wrong.push(match res {
                Ok(()) => format!("{label}: passed although the permission was taken away"),
                Err(e) => format!("{label}: {e}"),
            });
        }
    }
    eprintln!(
        "{} probes in {:.1?}\n{report}",
        results.len(),
        started.elapsed()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn taking_a_verb_away_keeps_the_rest_of_the_rule() {
    let rule: PolicyRule = serde_json::from_value(json!({
        "apiGroups": [""], "resources": ["pods", "services"], "verbs": ["list", "watch"],
    }))
    .unwrap();
    let reduced = without(std::slice::from_ref(&rule), 0, "pods", "watch");
    let as_json = serde_json::to_value(&reduced).unwrap();
    assert_eq!(
        as_json,
        json!([
            {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        ])
    );
    // One probe per resource and verb, plus the full set.
    let atoms: usize = cluster_rules()
        .iter()
        .chain(lease_rules().iter())
        .map(|r| r.resources.as_ref().map_or(0, Vec::len) * r.verbs.len())
        .sum();
    assert_eq!(variants().len(), atoms + 1);
}
