//! Pure analysis of what a migration covers: which pods (and whether they are
//! enrolled in the mesh), which Services and hosts, which PeerAuthentication
//! Istio applies, which DestinationRules would send plaintext, and the known
//! STRICT hazards a preflight reports. No IO: callers list the objects.

mod destination_rules;
mod enrollment;
mod peer_auth;
pub mod preflight;
mod selection;
mod services;
mod workload;

#[cfg(test)]
mod fixtures;

pub use destination_rules::{DEFAULT_CLUSTER_DOMAIN, conflicts};
pub use enrollment::{
    Enrollment, NOT_ENROLLED_LISTED, destination_workloads, is_finished, namespace_in_mesh,
    pod_enrollment, summarize,
};
pub use peer_auth::{
    MIGRATION_ANNOTATION, ORIGINAL_SPEC_ANNOTATION, OverrideReason, PolicyOverride,
    managed_policies, overriding_policies, policy_mode, resolve_policy,
};
pub use preflight::{Finding, PreflightInput, Severity, blocks, preflight};
pub use selection::{DEFAULT_ROOT_NAMESPACE, Scope, ScopeError, ScopeKind, labels_match};
pub use services::{ScopeHost, scope_hosts};
pub use workload::workload_name;
