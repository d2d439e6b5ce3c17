//! The CRD in `crds/` is generated from the Rust types; this fails when the
//! two disagree, so a type change cannot ship with a stale CRD.
//!
//! Regenerate with `make crds` (or `cargo run -- crd > crds/mtlsmigration.yaml`;
//! `UPDATE_CRDS=1 cargo test --test crd_drift` does the same).

use std::path::PathBuf;

#[test]
fn crd_yaml_matches_the_rust_types() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds/mtlsmigration.yaml");
    let generated = mtls_migrator::api::crd_yaml();
    if std::env::var_os("UPDATE_CRDS").is_some() {
        std::fs::write(&path, &generated).expect("write crds/mtlsmigration.yaml");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} is out of date with the Rust types (first difference at line {}).\n\
             Regenerate it: `make crds` or `cargo run -- crd > crds/mtlsmigration.yaml`.",
            path.display(),
            first_difference + 1
        );
    }
}
