//! Test support for mtls-migrator: a real local control plane (etcd,
//! kube-apiserver, Prometheus) started by `e2e/sandbox`, a namespace per
//! test, pods in each of Istio's enrollment shapes, waiting helpers, and the
//! mesh twin and the operator as child processes.
//!
//! ```no_run
//! # async fn demo() {
//! let sb = testkit::sandbox().await;
//! let client = sb.client().await;
//! let ns = testkit::TestNamespace::create(&client, "demo").await;
//! // ... test against ns.name() ...
//! ns.cleanup().await;
//! # }
//! ```

pub mod namespace;
pub mod pods;
pub mod poll;
pub mod process;
pub mod prometheus;
pub mod sandbox;

pub use namespace::{NamespaceGuard, TestNamespace};
pub use poll::{PollTimeout, poll_until};
pub use prometheus::{Sample, ScrapeTarget};
pub use sandbox::{Sandbox, install_crypto_provider, repo_root, sandbox};
