//! A namespace per test, removed afterwards.
//!
//! No kube-controller-manager runs in the sandbox, so deleting a namespace
//! never completes on its own (the namespace controller would empty it and
//! drop the `kubernetes` finalizer). Cleanup does that job: it deletes every
//! namespaced object it can discover in the namespace (grace period 0),
//! strips finalizers from what remains, deletes the namespace and empties
//! its `spec.finalizers` through the `finalize` subresource, which removes it.
//! Leftovers (e.g. from a killed test) carry the label [`TEST_LABEL`];
//! `e2e/sandbox down` wipes etcd anyway.
//!
//! Set `TESTKIT_KEEP_NAMESPACES=1` to keep namespaces for debugging.

use std::hash::{BuildHasher, Hasher};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Label on every namespace a test creates (value `true`).
pub const TEST_LABEL: &str = "testkit.mtls.migrator.dev/test";

/// A uniquely named namespace owned by one test.
pub struct TestNamespace {
    name: String,
    client: Client,
    done: bool,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` (prefix cut to fit a DNS label) with a
    /// `default` ServiceAccount, as a real cluster's controllers would add.
    pub async fn create(client: &Client, prefix: &str) -> TestNamespace {
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(50)
            .collect();
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let name = format!("{}-{:08x}", prefix.trim_matches('-'), h.finish() as u32);
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {TEST_LABEL: "true"}}
        }))
        .expect("namespace JSON");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("SA JSON");
        Api::<ServiceAccount>::namespaced(client.clone(), &name)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap_or_else(|e| panic!("create default service account in {name}: {e}"));
        TestNamespace {
            name,
            client: client.clone(),
            done: false,
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Removes the namespace and everything in it now, reporting failures.
    pub async fn cleanup(mut self) {
        self.done = true;
        if keep() {
            return;
        }
        if let Err(e) = remove_namespace(&self.client, &self.name).await {
            panic!("clean up namespace {}: {e}", self.name);
        }
    }
}

fn keep() -> bool {
    std::env::var_os("TESTKIT_KEEP_NAMESPACES").is_some_and(|v| v != "0" && !v.is_empty())
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        remove_on_own_runtime(vec![self.name.clone()]);
    }
}

/// Removes namespaces created by something other than [`TestNamespace`]
/// (e.g. the mesh twin's, which carry no [`TEST_LABEL`]) when dropped, also
/// when the test panics.
pub struct NamespaceGuard {
    names: Vec<String>,
}

impl NamespaceGuard {
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        NamespaceGuard {
            names: names.into_iter().collect(),
        }
    }
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        remove_on_own_runtime(std::mem::take(&mut self.names));
    }
}

/// Removes `names` from a drop: the test's runtime may be gone or blocked on
/// this very thread, and a kube::Client is tied to the runtime that built it,
/// so this runs on a thread with its own runtime and client.
fn remove_on_own_runtime(names: Vec<String>) {
    if keep() || names.is_empty() {
        return;
    }
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        rt.block_on(async {
            let Some(client) = crate::sandbox::cleanup_client().await else {
                return;
            };
            for name in names {
                if let Err(e) = remove_namespace(&client, &name).await {
                    eprintln!("testkit: leaving namespace {name}: {e}");
                }
            }
        })
    })
    .join();
    if joined.is_err() {
        eprintln!("testkit: namespace cleanup panicked");
    }
}

/// Deletes everything in `ns` and then `ns` itself, doing the namespace
/// controller's work (see the module docs).
pub async fn remove_namespace(client: &Client, ns: &str) -> Result<(), kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let delete = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE_COLLECTION)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            api.delete_collection(&delete, &ListParams::default())
                .await?;
            // Finalizers nobody will ever process would keep objects forever.
            for obj in api.list(&ListParams::default()).await? {
                if obj.finalizers().is_empty() {
                    continue;
                }
                let patch = json!({"metadata": {"finalizers": null}});
                match api
                    .patch(
                        &obj.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(ns, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    let Some(mut current) = namespaces.get_opt(ns).await? else {
        return Ok(());
    };
    if let Some(spec) = current.spec.as_mut() {
        spec.finalizers = Some(Vec::new());
    }
    match namespaces
        .replace_subresource("finalize", ns, &PostParams::default(), &current)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
