//! The running operator: watches, the controller, probes, metrics and
//! leader election, stopped in order by one cancellation signal.

mod error;
mod reconcile;

use std::sync::Arc;

use anyhow::Context as _;
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use error::Error;
pub use reconcile::{
    Context, FINALIZER, PrometheusSettings, Stores, error_policy, reconcile, report_invalid,
};

use crate::api::istio::{DestinationRule, PeerAuthentication};
use crate::api::migration::MtlsMigration;
use crate::cli::RunArgs;
use crate::runtime::http::{self, Health};
use crate::runtime::leader::{self, LeaderConfig};
use crate::runtime::telemetry::Metrics;

/// Cancels `token` on SIGTERM or SIGINT.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
}

/// The reconciler's context plus this replica's role.
struct LeaderGated {
    ctx: Arc<Context>,
    leading: watch::Receiver<bool>,
}

/// Reconciles only while this replica holds the lease (always, without
/// leader election). A standby leaves the object alone; `reconcile_all_on`
/// brings every migration back when it takes over.
/// An object that does not deserialize reaches the reconciler as an error
/// instead of breaking the watch (`DeserializeGuard`).
async fn reconcile_if_leading(obj: Arc<Guarded>, gated: Arc<LeaderGated>) -> Result<Action, Error> {
    if !*gated.leading.borrow() {
        return Ok(Action::await_change());
    }
    match &obj.0 {
        Ok(mig) => reconcile(Arc::new(mig.clone()), gated.ctx.clone()).await,
        Err(invalid) => {
            report_invalid(&obj, &invalid.error, &gated.ctx).await;
            Ok(Action::await_change())
        }
    }
}

fn error_policy_if_leading(obj: Arc<Guarded>, err: &Error, gated: Arc<LeaderGated>) -> Action {
    let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    error_policy(&key, err, &gated.ctx)
}

/// What the controller watches: a migration, or what could not be read of one.
type Guarded = DeserializeGuard<MtlsMigration>;

/// Keeps the `leader` gauge equal to this replica's role.
async fn mirror_leadership(mut leading: watch::Receiver<bool>, metrics: Metrics) {
    loop {
        let led = *leading.borrow_and_update();
        metrics.leader.set(i64::from(led));
        if leading.changed().await.is_err() {
            return;
        }
    }
}

/// Migrations whose scope covers `namespace` (a mesh-wide migration covers
/// every namespace).
fn affected(
    migrations: &Store<Guarded>,
    root_namespace: &str,
    namespace: Option<String>,
) -> Vec<ObjectRef<Guarded>> {
    migrations
        .state()
        .iter()
        .filter(|m| {
            let ns = m.namespace();
            let mesh_wide = m.0.as_ref().is_ok_and(|m| m.spec.selector.is_none());
            namespace.is_none()
                || ns == namespace
                || (ns.as_deref() == Some(root_namespace) && mesh_wide)
        })
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

fn strip_managed_fields<K: Resource>(obj: &mut K) {
    // Server-side apply bookkeeping is most of an object's size; we never read it.
    obj.meta_mut().managed_fields = None;
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("mtls-migrator-{}", std::process::id()))
    });
    let metrics = Metrics::default();
    let health = Arc::new(Health::new(args.leader_elect));
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());

    let listener = http::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    // Printed so a supervisor (or a test) that asked for port 0 learns the port.
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let http_stop = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        health.clone(),
        http_stop.clone(),
    ));

    let (leading_tx, mut leading) = watch::channel(!args.leader_elect);
    let lease_stop = CancellationToken::new();
    let lease_task = if args.leader_elect {
        let cfg = LeaderConfig {
            lease_name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
            duration_secs: args.lease_duration.as_secs().max(2),
            grace_secs: args
                .lease_renew_before
                .as_secs()
                .clamp(1, args.lease_duration.as_secs().max(2) - 1),
        };
        Some(tokio::spawn(leader::run(
            client.clone(),
            cfg,
            health.clone(),
            leading_tx,
            lease_stop.clone(),
        )))
    } else {
        health
            .leader
            .store(true, std::sync::atomic::Ordering::Release);
        None
    };

    // The controller runs on every replica from the start, so a standby's
    // caches are synced (its /readyz is meaningful) and a takeover needs no
    // cold start; `reconcile_if_leading` keeps a standby from writing.
    let (controller, stores, synced) = build_controller(client.clone(), &args);
    let health_synced = health.clone();
    tokio::spawn(async move {
        synced.await;
        health_synced
            .synced
            .store(true, std::sync::atomic::Ordering::Release);
        info!("caches synced");
    });
    tokio::spawn(mirror_leadership(leading.clone(), metrics.clone()));

    let ctx = Arc::new(LeaderGated {
        leading: leading.clone(),
        ctx: Arc::new(Context::new(
            client.clone(),
            &identity,
            args.root_namespace.clone(),
            PrometheusSettings {
                default_url: args.prometheus_url.clone(),
                timeout: args.prometheus_timeout,
                token_file: args.prometheus_token_file.clone(),
            },
            metrics.clone(),
            stores,
        )),
    });
    // Whatever a standby skipped is picked up when it takes over.
    let mut became_leader = leading.clone();
    let takeover =
        futures::stream::once(async move { became_leader.wait_for(|l| *l).await.is_ok() })
            .filter_map(|led| future::ready(led.then_some(())));
    let stop_controller = shutdown.clone();
    let controller_run = controller
        .reconcile_all_on(takeover)
        .graceful_shutdown_on(async move { stop_controller.cancelled().await })
        .run(reconcile_if_leading, error_policy_if_leading, ctx)
        .for_each(|res| async move {
            match res {
                // A migration deleted while its reconcile was queued: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    debug!(%obj, "migration gone before its reconcile");
                }
                // error_policy has already logged and counted reconcile failures.
                Err(err) => warn!(%err, "controller error"),
                Ok(_) => {}
            }
        });
    let lost = async {
        if leading.wait_for(|l| *l).await.is_err() {
            return "leader election stopped";
        }
        info!(%identity, "leading: reconciling");
        match leading.wait_for(|l| !*l).await {
            Ok(_) => "lost the leader lease",
            Err(_) => "leader election stopped",
        }
    };
    tokio::select! {
        _ = controller_run => info!("controller stopped"),
        why = lost => {
            // Another replica may be writing (or soon will): stop at once
            // rather than compete, and let the restart rejoin as a standby.
            // The election's own error says why (e.g. RBAC on the Lease); a
            // lost lease leaves the task running, hence the timeout.
            if let Some(task) = lease_task {
                match tokio::time::timeout(std::time::Duration::from_secs(1), task).await {
                    Ok(Ok(Err(err))) => error!(%err, "leader election failed"),
                    Ok(Err(err)) => error!(%err, "lease task panicked"),
                    _ => {}
                }
            }
            error!("{why}: exiting so a fresh process can rejoin");
            std::process::exit(1);
        }
    }

    // Order: the controller has finished its in-flight reconciles; now
    // release the lease so a standby takes over, then stop serving.
    lease_stop.cancel();
    if let Some(task) = lease_task {
        match task.await {
            Ok(Err(err)) => warn!(%err, "releasing the leader lease"),
            Err(err) => warn!(%err, "lease task panicked"),
            Ok(Ok(())) => {}
        }
    }
    http_stop.cancel();
    http_task.await??;
    info!("stopped");
    Ok(())
}

/// The controller plus the shared caches it reads, and a future that
/// resolves when every cache has listed its objects.
fn build_controller(
    client: Client,
    args: &RunArgs,
) -> (
    Controller<Guarded>,
    Stores,
    impl Future<Output = ()> + Send + 'static,
) {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = args.watch_namespace.as_deref();
    let cfg = watcher::Config::default;
    let migrations: Api<Guarded> = api(&client, ns);
    let controller = Controller::new(migrations, cfg());
    let mig_store = controller.store();
    let root = args.root_namespace.clone();

    let (pods, pods_w) = reflector::store::<Pod>();
    let pod_stream = watcher(api::<Pod>(&client, ns), cfg())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(pods_w)
        .touched_objects();
    let (services, services_w) = reflector::store::<Service>();
    let service_stream = watcher(api::<Service>(&client, ns), cfg())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(services_w)
        .touched_objects();
    let (namespaces, namespaces_w) = reflector::store::<Namespace>();
    let namespace_stream = watcher(Api::<Namespace>::all(client.clone()), cfg())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(namespaces_w)
        .touched_objects();

    let pa_resource = ApiResource::erase::<PeerAuthentication>(&());
    let dr_resource = ApiResource::erase::<DestinationRule>(&());
    let dynamic_api = |res: &ApiResource, ns: Option<&str>| match ns {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, res),
        None => Api::<DynamicObject>::all_with(client.clone(), res),
    };
    let pa_writer = reflector::store::Writer::<DynamicObject>::new(pa_resource.clone());
    let policies = pa_writer.as_reader();
    // Mesh-wide policies live in the root namespace, outside a watched namespace.
    let pa_stream = watcher(dynamic_api(&pa_resource, None), cfg())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(pa_writer)
        .touched_objects();
    let dr_writer = reflector::store::Writer::<DynamicObject>::new(dr_resource.clone());
    let destination_rules = dr_writer.as_reader();
    // Clients anywhere may hold a DestinationRule for a host in scope.
    let dr_stream = watcher(dynamic_api(&dr_resource, None), cfg())
        .default_backoff()
        .modify(strip_managed_fields)
        .reflect(dr_writer)
        .touched_objects();

    let mapper = |store: Store<Guarded>, root: String| {
        move |obj_ns: Option<String>| affected(&store, &root, obj_ns)
    };
    let by_ns = mapper(mig_store.clone(), root.clone());
    let by_ns2 = mapper(mig_store.clone(), root.clone());
    let by_ns3 = mapper(mig_store.clone(), root.clone());
    let all = mapper(mig_store.clone(), root.clone());
    let all2 = mapper(mig_store, root);
    let controller = controller
        .watches_stream(pod_stream, move |p: Pod| by_ns(p.namespace()))
        .watches_stream(service_stream, move |s: Service| by_ns2(s.namespace()))
        .watches_stream_with(
            pa_stream,
            move |p: DynamicObject| by_ns3(p.namespace()),
            pa_resource,
        )
        // A DestinationRule anywhere may target a host in any scope.
        .watches_stream_with(dr_stream, move |_: DynamicObject| all(None), dr_resource)
        // Namespace labels decide which namespaces a mesh-wide scope covers.
        .watches_stream(namespace_stream, move |_: Namespace| all2(None));

    // This future is the only waiter on the stores' readiness: a store
    // wakes just one waiting task, so reconciles wait on `synced_rx` instead.
    let (synced_tx, synced_rx) = watch::channel(false);
    let stores = Stores {
        pods: pods.clone(),
        services: services.clone(),
        namespaces: namespaces.clone(),
        policies: policies.clone(),
        destination_rules: destination_rules.clone(),
        synced: synced_rx,
    };
    let synced = async move {
        let (a, b, c, d, e) = future::join5(
            pods.wait_until_ready(),
            services.wait_until_ready(),
            namespaces.wait_until_ready(),
            policies.wait_until_ready(),
            destination_rules.wait_until_ready(),
        )
        .await;
        if a.is_ok() && b.is_ok() && c.is_ok() && d.is_ok() && e.is_ok() {
            let _ = synced_tx.send(true);
        }
    };
    (controller, stores, synced)
}
