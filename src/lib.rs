//! mtls-migrator: moves Istio workloads from PERMISSIVE to STRICT mutual TLS
//! on evidence. Everything testable lives in this library; `main.rs` is thin.

pub mod api;
pub mod cli;
pub mod controller;
pub mod evidence;
pub mod migration;
pub mod observe;
pub mod runtime;
pub mod scope;
