//! `mtls-migrator status` against live MtlsMigrations in the sandbox. No
//! operator runs here: each test writes the status the operator would,
//! through the status subresource with the operator's field manager.

mod support;

use std::collections::BTreeMap;

use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use mtls_migrator::api::{MtlsMigration, MtlsMigrationSpec};
use serde_json::{Value, json};
use support::cli::cli;
use testkit::{Sandbox, TestNamespace};
use tokio::sync::OnceCell;

/// The sandbox installs crds/ when it starts; apply the current file again
/// so a sandbox started before the last CRD change still matches the types.
async fn sandbox_with_crd() -> &'static Sandbox {
    static CRD: OnceCell<()> = OnceCell::const_new();
    let sb = testkit::sandbox().await;
    CRD.get_or_init(|| async {
        let crd = sb.repo_root().join("crds/mtlsmigration.yaml");
        let mut apply = sb.kubectl();
        apply.args(["apply", "--server-side", "--force-conflicts", "-f"]);
        apply.arg(&crd);
        let mut wait = sb.kubectl();
        wait.args([
            "wait",
            "--for=condition=Established",
            "crd/mtlsmigrations.mtls.migrator.dev",
            "--timeout=60s",
        ]);
        for mut cmd in [apply, wait] {
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .unwrap()
                .expect("run kubectl");
            assert!(
                out.status.success(),
                "kubectl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    })
    .await;
    sb
}

async fn create_migration(client: &Client, ns: &str, name: &str, spec: Value) {
    let spec: MtlsMigrationSpec = serde_json::from_value(spec).expect("spec JSON");
    Api::<MtlsMigration>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &MtlsMigration::new(name, spec))
        .await
        .unwrap_or_else(|e| panic!("create MtlsMigration {ns}/{name}: {e}"));
}

/// Writes `status` as the operator does: server-side apply on the status
/// subresource under the field manager `mtls-migrator`.
async fn write_status(client: &Client, ns: &str, name: &str, status: Value) {
    let body = json!({
        "apiVersion": "mtls.migrator.dev/v1alpha1",
        "kind": "MtlsMigration",
        "status": status,
    });
    Api::<MtlsMigration>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::apply("mtls-migrator").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap_or_else(|e| panic!("write status of {ns}/{name}: {e}"));
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": kind, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1,
    })
}

const BLOCKED_MESSAGE: &str = "3 PeerAuthentications govern the namespace (default, \
    legacy-default, mesh-default); Istio applies only the oldest and ignores the rest, so which \
    one to migrate is a guess. Delete the duplicates so that one policy remains.";

/// Five migrations in the states a user meets: observing with plaintext,
/// enforced, blocked with a long message, rolled back, and not yet seen by
/// the operator.
async fn populate(client: &Client, ns: &str) {
    for name in ["web", "api", "blocked", "fresh"] {
        create_migration(client, ns, name, json!({"mode": "STRICT"})).await;
    }
    create_migration(client, ns, "rolled", json!({"mode": "PERMISSIVE"})).await;

    write_status(
        client,
        ns,
        "web",
        json!({
            "observedGeneration": 1,
            "phase": "Observing",
            "conditions": [
                condition("Ready", "False", "PlaintextAboveThreshold",
                    "12.5% of requests to the scope are plaintext (max 0%). Top source: shop/legacy at 1.2/s."),
                condition("PermissiveApplied", "True", "PolicyPermissive", "PERMISSIVE is applied."),
                condition("EnrollmentVerified", "False", "PodsNotEnrolled", "1 of 4 pods is not enrolled."),
            ],
            "plaintextRatio": "12.5%",
            "enrolled": "3/4",
        }),
    )
    .await;
    write_status(
        client,
        ns,
        "api",
        json!({
            "observedGeneration": 1,
            "phase": "Enforced",
            "conditions": [condition("Ready", "True", "Enforced", "STRICT is applied.")],
            "plaintextRatio": "0%",
            "enrolled": "4/4",
            "enforcedAt": "2025-01-01T00:10:00Z",
        }),
    )
    .await;
    write_status(
        client,
        ns,
        "blocked",
        json!({
            "observedGeneration": 1,
            "phase": "Blocked",
            "conditions": [condition("Ready", "False", "AmbiguousPolicy", BLOCKED_MESSAGE)],
        }),
    )
    .await;
    write_status(
        client,
        ns,
        "rolled",
        json!({
            "observedGeneration": 1,
            "phase": "RolledBack",
            "conditions": [condition("Ready", "True", "RolledBack", "PERMISSIVE is applied again.")],
            "plaintextRatio": "0%",
            "enrolled": "4/4",
        }),
    )
    .await;
}

/// Splits a kubectl-style table into rows keyed by column title, using the
/// header's column positions (titles are separated by 2+ spaces).
fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("header line");
    let mut starts = Vec::new();
    let bytes: Vec<char> = header.chars().collect();
    for i in 0..bytes.len() {
        let at_start = i == 0 || (i >= 2 && bytes[i - 1] == ' ' && bytes[i - 2] == ' ');
        if bytes[i] != ' ' && at_start {
            starts.push(i);
        }
    }
    let titles: Vec<String> = starts
        .iter()
        .enumerate()
        .map(|(n, &s)| {
            let end = starts.get(n + 1).copied().unwrap_or(bytes.len());
            bytes[s..end].iter().collect::<String>().trim().to_string()
        })
        .collect();
    lines
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            titles
                .iter()
                .enumerate()
                .map(|(n, t)| {
                    let s = starts[n].min(chars.len());
                    let e = starts
                        .get(n + 1)
                        .copied()
                        .unwrap_or(chars.len())
                        .min(chars.len());
                    (
                        t.clone(),
                        chars[s..e].iter().collect::<String>().trim().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn row<'a>(rows: &'a [BTreeMap<String, String>], name: &str) -> &'a BTreeMap<String, String> {
    rows.iter()
        .find(|r| r["NAME"] == name)
        .unwrap_or_else(|| panic!("no row {name} in {rows:#?}"))
}

fn is_young_age(age: &str) -> bool {
    // Created by this test: seconds, or a few minutes on a slow machine.
    age.strip_suffix('s')
        .is_some_and(|n| n.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[tokio::test]
async fn table_shows_phase_mode_evidence_and_what_each_waits_for() {
    let sb = sandbox_with_crd().await;
    let client = sb.client().await;
    let ns = TestNamespace::create(&client, "status-table").await;
    populate(&client, ns.name()).await;

    let out = cli(sb, &["status", "-n", ns.name()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let header = out.stdout.lines().next().unwrap();
    let titles: Vec<&str> = header
        .split("  ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(
        titles,
        [
            "NAMESPACE",
            "NAME",
            "PHASE",
            "MODE",
            "PLAINTEXT",
            "ENROLLED",
            "WAITING FOR",
            "AGE"
        ]
    );
    let rows = parse_table(&out.stdout);
    let names: Vec<&str> = rows.iter().map(|r| r["NAME"].as_str()).collect();
    assert_eq!(
        names,
        ["api", "blocked", "fresh", "rolled", "web"],
        "sorted by name"
    );
    assert!(rows.iter().all(|r| r["NAMESPACE"] == ns.name()));
    assert!(rows.iter().all(|r| is_young_age(&r["AGE"])), "{rows:#?}");

    let web = row(&rows, "web");
    assert_eq!(web["PHASE"], "Observing");
    assert_eq!(web["MODE"], "STRICT");
    assert_eq!(web["PLAINTEXT"], "12.5%");
    assert_eq!(web["ENROLLED"], "3/4");
    assert_eq!(
        web["WAITING FOR"],
        "12.5% of requests to the scope are plaintext (max 0%)"
    );

    let api = row(&rows, "api");
    assert_eq!(
        (
            api["PHASE"].as_str(),
            api["PLAINTEXT"].as_str(),
            api["ENROLLED"].as_str()
        ),
        ("Enforced", "0%", "4/4")
    );
    assert_eq!(api["WAITING FOR"], "-", "nothing to wait for once enforced");

    let blocked = row(&rows, "blocked");
    assert_eq!(blocked["PHASE"], "Blocked");
    assert_eq!(blocked["PLAINTEXT"], "-");
    let waiting = &blocked["WAITING FOR"];
    assert!(
        waiting.starts_with("3 PeerAuthentications govern the namespace"),
        "{waiting}"
    );
    assert!(
        waiting.ends_with('…') && waiting.chars().count() <= 72,
        "{waiting}"
    );

    let rolled = row(&rows, "rolled");
    assert_eq!(
        (rolled["PHASE"].as_str(), rolled["MODE"].as_str()),
        ("RolledBack", "PERMISSIVE")
    );
    assert_eq!(rolled["WAITING FOR"], "-");

    let fresh = row(&rows, "fresh");
    assert_eq!(fresh["PHASE"], "-");
    assert_eq!(
        fresh["WAITING FOR"],
        "the operator: no status yet (is it running?)"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn json_lists_the_same_rows_with_whole_messages() {
    let sb = sandbox_with_crd().await;
    let client = sb.client().await;
    let ns = TestNamespace::create(&client, "status-json").await;
    populate(&client, ns.name()).await;

    let out = cli(sb, &["status", "-n", ns.name(), "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).expect("a JSON array");
    let by_name: BTreeMap<&str, &Value> = rows
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r))
        .collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["api", "blocked", "fresh", "rolled", "web"]
    );
    let web = by_name["web"];
    assert_eq!(web["namespace"], ns.name());
    assert_eq!(web["phase"], "Observing");
    assert_eq!(web["mode"], "STRICT");
    assert_eq!(web["plaintext"], "12.5%");
    assert_eq!(web["enrolled"], "3/4");
    assert_eq!(web["reason"], "PlaintextAboveThreshold");
    assert_eq!(
        web["waitingFor"],
        "12.5% of requests to the scope are plaintext (max 0%). Top source: shop/legacy at 1.2/s."
    );
    assert!(web["created"].as_str().is_some());
    assert!(is_young_age(web["age"].as_str().unwrap()));

    assert_eq!(
        by_name["blocked"]["waitingFor"], BLOCKED_MESSAGE,
        "not shortened"
    );
    assert_eq!(by_name["blocked"]["plaintext"], Value::Null);
    assert_eq!(by_name["api"]["waitingFor"], Value::Null);
    assert_eq!(by_name["api"]["reason"], "Enforced");
    assert_eq!(by_name["fresh"]["phase"], Value::Null);
    assert_eq!(by_name["fresh"]["reason"], Value::Null);
    assert_eq!(by_name["rolled"]["mode"], "PERMISSIVE");
    ns.cleanup().await;
}

#[tokio::test]
async fn all_namespaces_by_default_and_a_clear_line_when_empty() {
    let sb = sandbox_with_crd().await;
    let client = sb.client().await;
    let a = TestNamespace::create(&client, "status-all-a").await;
    let b = TestNamespace::create(&client, "status-all-b").await;
    let empty = TestNamespace::create(&client, "status-empty").await;
    create_migration(&client, a.name(), "one", json!({"mode": "STRICT"})).await;
    create_migration(&client, b.name(), "two", json!({"mode": "STRICT"})).await;

    let out = cli(sb, &["status"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = parse_table(&out.stdout);
    // Other tests may have migrations too: look for ours only.
    let ours: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r["NAMESPACE"] == a.name() || r["NAMESPACE"] == b.name())
        .map(|r| (r["NAMESPACE"].as_str(), r["NAME"].as_str()))
        .collect();
    let mut expected = vec![(a.name(), "one"), (b.name(), "two")];
    expected.sort();
    assert_eq!(ours, expected, "sorted by namespace");

    let out = cli(sb, &["status", "-n", empty.name()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!("No MtlsMigrations found in namespace {}.\n", empty.name())
    );
    let out = cli(sb, &["status", "-n", empty.name(), "-o", "json"]).await;
    assert_eq!(out.stdout.trim(), "[]");
    a.cleanup().await;
    b.cleanup().await;
    empty.cleanup().await;
}
