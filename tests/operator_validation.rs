//! Invalid MtlsMigrations are refused by the API server itself (CRD schema
//! and CEL rules), at `kubectl apply`, with a message that says what to fix.
//! Issue 4, "What proves it" (g). No operator needed: this is the CRD.

mod support;

use serde_json::{Value, json};
use support::kubectl;
use testkit::TestNamespace;

fn migration(ns: &str, name: &str, spec: Value) -> String {
    json!({
        "apiVersion": "mtls.migrator.dev/v1alpha1",
        "kind": "MtlsMigration",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
    .to_string()
}

#[tokio::test]
async fn invalid_specs_are_rejected_by_the_api_server_with_readable_messages() {
    let sb = testkit::sandbox().await;
    let client = sb.client().await;
    let ns = TestNamespace::create(&client, "op-g").await;
    let ns_name = ns.name().to_string();

    // (name, spec, what stderr must say)
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "ratio-above-one",
            json!({"mode": "STRICT", "analysis": {"maxPlaintextRatio": 1.5}}),
            "analysis.maxPlaintextRatio must be between 0 and 1",
        ),
        (
            "ratio-negative",
            json!({"mode": "STRICT", "analysis": {"maxPlaintextRatio": -0.1}}),
            "analysis.maxPlaintextRatio must be between 0 and 1",
        ),
        (
            "hold-shorter-than-interval",
            json!({"mode": "STRICT", "analysis": {"interval": "1m", "hold": "30s"}}),
            "analysis.hold must be at least analysis.interval",
        ),
        (
            "window-shorter-than-interval",
            json!({"mode": "STRICT", "analysis": {"interval": "1m", "window": "30s", "hold": "5m"}}),
            "analysis.window must be at least analysis.interval",
        ),
        (
            "zero-hold",
            json!({"mode": "STRICT", "analysis": {"hold": "0s"}}),
            "analysis.hold must be a positive duration",
        ),
        (
            "negative-interval",
            json!({"mode": "STRICT", "analysis": {"interval": "-5s"}}),
            "analysis.interval must be a positive duration",
        ),
        (
            "garbage-window",
            json!({"mode": "STRICT", "analysis": {"window": "soon"}}),
            "analysis.window must be a positive duration",
        ),
        (
            "negative-min-rate",
            json!({"mode": "STRICT", "analysis": {"minRequestRate": -1}}),
            "analysis.minRequestRate must not be negative",
        ),
        (
            "port-level-without-selector",
            json!({"mode": "STRICT", "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
            "portLevelMtls requires selector.matchLabels",
        ),
        (
            "port-out-of-range",
            json!({"mode": "STRICT", "selector": {"matchLabels": {"app": "api"}},
                   "portLevelMtls": {"70000": {"mode": "DISABLE"}}}),
            "portLevelMtls keys must be container port numbers from 1 to 65535",
        ),
        (
            "port-zero",
            json!({"mode": "STRICT", "selector": {"matchLabels": {"app": "api"}},
                   "portLevelMtls": {"0": {"mode": "DISABLE"}}}),
            "portLevelMtls keys must be container port numbers from 1 to 65535",
        ),
        (
            "unknown-mode",
            json!({"mode": "LOOSE"}),
            "Unsupported value: \"LOOSE\"",
        ),
        (
            "unknown-port-mode",
            json!({"mode": "STRICT", "selector": {"matchLabels": {"app": "api"}},
                   "portLevelMtls": {"8080": {"mode": "OFF"}}}),
            "Unsupported value: \"OFF\"",
        ),
        (
            "unknown-on-delete",
            json!({"mode": "STRICT", "onDelete": "Delete"}),
            "Unsupported value: \"Delete\"",
        ),
        ("missing-mode", json!({}), "spec.mode: Required value"),
    ];

    let mut failures = Vec::new();
    for (name, spec, expected) in &cases {
        let doc = migration(&ns_name, name, spec.clone());
        let (ok, out, err) = kubectl(sb, &["apply", "-f", "-"], Some(&doc)).await;
        if ok {
            failures.push(format!("{name}: accepted ({out})"));
        } else if !err.contains(expected) {
            failures.push(format!("{name}: stderr lacks {expected:?}:\n{err}"));
        } else {
            println!("{name}: {}", err.trim());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A valid spec passes, and its scope cannot be changed afterwards.
    let valid = json!({"mode": "STRICT", "selector": {"matchLabels": {"app": "api"}},
                       "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}});
    let (ok, _, err) = kubectl(
        sb,
        &["apply", "-f", "-"],
        Some(&migration(&ns_name, "valid", valid)),
    )
    .await;
    assert!(ok, "a valid spec was rejected: {err}");
    let moved = json!({"mode": "STRICT", "selector": {"matchLabels": {"app": "web"}}});
    let (ok, _, err) = kubectl(
        sb,
        &["apply", "-f", "-"],
        Some(&migration(&ns_name, "valid", moved)),
    )
    .await;
    assert!(!ok, "changing the selector was accepted");
    assert!(err.contains("selector is immutable"), "{err}");
    ns.cleanup().await;
}
