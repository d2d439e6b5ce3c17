//! The resource types: our `MtlsMigration` CRD, its condition vocabulary, and
//! typed views of the Istio resources we read and write.

pub mod conditions;
pub mod istio;
pub mod migration;

pub use migration::{
    Analysis, AnalysisTimes, InvalidDuration, Measurement, MtlsMigration, MtlsMigrationSpec,
    MtlsMigrationStatus, MtlsMode, OnDelete, Phase, PolicyStatus, PortMode, PortMtls, Protocols,
    Sidecars, WorkloadSelector,
};

use kube::CustomResourceExt;

/// Header of the generated CRD file.
const CRD_HEADER: &str = "# Generated from the Rust types by `mtls-migrator crd`. Do not edit.\n";

/// The `MtlsMigration` CustomResourceDefinition as YAML, exactly as
/// `crds/mtlsmigration.yaml` should hold it.
pub fn crd_yaml() -> String {
    let body = serde_saphyr::to_string(&MtlsMigration::crd())
        .expect("a CustomResourceDefinition always serializes");
    format!("{CRD_HEADER}{body}")
}
