//! The running twin: scenario state, watches, the tick loop, the
//! materializer loop, the HTTP API and Prometheus registration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::istio_config;
use crate::istio_model::MeshConfig;
use crate::materialize::Materializer;
use crate::metrics::{self, Exporter};
use crate::pod_view::PodView;
use crate::scenario::{EdgeSpec, Enrollment, Scenario, ScenarioError};
use crate::traffic::{DelayLine, Summary, Traffic, World, summarize};

/// Settings the binary's flags give.
#[derive(Clone, Debug)]
pub struct Settings {
    pub scenario_path: PathBuf,
    pub namespace_prefix: String,
    pub root_namespace: String,
    pub propagation_delay: Duration,
    pub tick: Duration,
}

type Key = (String, String);

/// Mutable state shared by the loops and the HTTP API.
pub struct Control {
    pub scenario: Scenario,
    /// Enrollment set over HTTP; wins over the scenario.
    overrides: HashMap<Key, Enrollment>,
    /// When each workload first appeared (for `enrollAfter`).
    first_seen: HashMap<Key, Instant>,
    /// Bumped on every (re)load so the materializer re-applies static objects.
    revision: u64,
    pub traffic: Traffic,
}

impl Control {
    fn desired_enrollment(&self, ns: &str, name: &str, now: Instant) -> Option<Enrollment> {
        let w = self.scenario.workload(ns, name)?;
        let key = (ns.to_string(), name.to_string());
        if let Some(e) = self.overrides.get(&key) {
            return Some(*e);
        }
        if let (Some(after), Some(seen)) = (w.enroll_after, self.first_seen.get(&key))
            && now >= *seen + after
        {
            return Some(w.enroll_to.unwrap_or(Enrollment::Sidecar));
        }
        Some(self.scenario.initial_enrollment(w))
    }

    fn load(&mut self, scenario: Scenario, now: Instant) -> Result<(), ScenarioError> {
        let edges = scenario.validate()?;
        for w in &scenario.workloads {
            self.first_seen
                .entry((w.namespace.clone(), w.name.clone()))
                .or_insert(now);
        }
        self.overrides.clear();
        self.scenario = scenario;
        self.traffic.set_edges(edges);
        self.revision += 1;
        Ok(())
    }
}

pub struct Twin {
    settings: Settings,
    client: Client,
    control: Mutex<Control>,
    exporter: Exporter,
    wake_materializer: Notify,
    pods: Store<Pod>,
    peer_authns: Store<DynamicObject>,
    dest_rules: Store<DynamicObject>,
    /// Whether the first materialization finished.
    ready: Mutex<bool>,
}

fn read_scenario(s: &Settings) -> Result<Scenario, ScenarioError> {
    Ok(Scenario::load(&s.scenario_path)?.with_namespace_prefix(&s.namespace_prefix))
}

impl Twin {
    /// Loads the scenario and starts the watches (not yet the loops).
    pub fn new(settings: Settings, client: Client) -> Result<Arc<Twin>, ScenarioError> {
        let scenario = read_scenario(&settings)?;
        let mut control = Control {
            scenario: Scenario::default(),
            overrides: HashMap::new(),
            first_seen: HashMap::new(),
            revision: 0,
            traffic: Traffic::default(),
        };
        control.load(scenario, Instant::now())?;

        let pods = spawn_reflector(
            Api::<Pod>::all(client.clone()),
            reflector::store::Writer::default(),
        );
        let pa = istio_config::peer_authentication_resource();
        let peer_authns = spawn_reflector(
            Api::<DynamicObject>::all_with(client.clone(), &pa),
            reflector::store::Writer::new(pa.clone()),
        );
        let dr = istio_config::destination_rule_resource();
        let dest_rules = spawn_reflector(
            Api::<DynamicObject>::all_with(client.clone(), &dr),
            reflector::store::Writer::new(dr.clone()),
        );
        Ok(Arc::new(Twin {
            settings,
            client,
            control: Mutex::new(control),
            exporter: Exporter::new(),
            wake_materializer: Notify::new(),
            pods,
            peer_authns,
            dest_rules,
            ready: Mutex::new(false),
        }))
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic elsewhere must not wedge the API: the data is still usable.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the three watches have listed once.
    pub async fn wait_for_watches(&self, timeout: Duration) -> anyhow::Result<()> {
        let all = async {
            self.pods.wait_until_ready().await?;
            self.peer_authns.wait_until_ready().await?;
            self.dest_rules.wait_until_ready().await
        };
        tokio::time::timeout(timeout, all)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "watches not ready after {timeout:?}: are Istio's CRDs (PeerAuthentication, DestinationRule) installed?"
                )
            })?
            .map_err(|e| anyhow::anyhow!("watch writer dropped: {e}"))
    }

    /// What the API server shows now, in the model's terms.
    fn observe_world(&self) -> World {
        let mut pods: Vec<PodView> = self
            .pods
            .state()
            .iter()
            .map(|p| PodView::from_pod(p))
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut peer_authns: Vec<_> = self
            .peer_authns
            .state()
            .iter()
            .map(|o| istio_config::peer_authn(o))
            .collect();
        peer_authns.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut dest_rules: Vec<_> = self
            .dest_rules
            .state()
            .iter()
            .map(|o| istio_config::dest_rule(o))
            .collect();
        dest_rules.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        World {
            mesh: MeshConfig {
                root_namespace: self.settings.root_namespace.clone(),
                peer_authns,
                dest_rules,
            },
            pods,
        }
    }

    /// Runs traffic forever, one step per tick.
    pub async fn tick_loop(self: Arc<Self>) {
        let mut line = DelayLine::new(self.settings.propagation_delay, World::default());
        let mut interval = tokio::time::interval(self.settings.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            interval.tick().await;
            let now = Instant::now();
            line.observe(now, self.observe_world());
            let world = line.effective(now);
            let dt = now - last;
            last = now;
            let mut control = self.control();
            control.traffic.step(&world, dt);
            self.exporter.sync(&control.traffic);
        }
    }

    /// Applies the scenario once; later passes keep pods in their desired shape.
    pub async fn materialize_once(&self, applied_revision: &mut u64) -> anyhow::Result<()> {
        let m = Materializer::new(self.client.clone());
        let now = Instant::now();
        let (scenario, revision, desired) = {
            let c = self.control();
            let desired: Vec<_> = c
                .scenario
                .workloads
                .iter()
                .map(|w| {
                    let e = c
                        .desired_enrollment(&w.namespace, &w.name, now)
                        .unwrap_or(Enrollment::None);
                    (w.clone(), e)
                })
                .collect();
            (c.scenario.clone(), c.revision, desired)
        };
        if revision != *applied_revision {
            m.apply_static(&scenario).await?;
            let namespaces: Vec<String> = scenario
                .all_namespaces()
                .into_iter()
                .map(|n| n.name)
                .collect();
            m.prune(&scenario, &namespaces).await?;
            *applied_revision = revision;
        }
        for (w, enrollment) in desired {
            if m.reconcile_workload(&w, enrollment).await? {
                tracing::info!(workload = %w.name, namespace = %w.namespace, ?enrollment, "workload rolled");
            }
        }
        Ok(())
    }

    /// Keeps the API server matching the scenario: on change requests and
    /// every second (for `enrollAfter` and lost writes).
    pub async fn materializer_loop(self: Arc<Self>, mut applied_revision: u64) {
        loop {
            tokio::select! {
                _ = self.wake_materializer.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if let Err(e) = self.materialize_once(&mut applied_revision).await {
                tracing::warn!(error = %e, "materializing failed; retrying");
            }
        }
    }

    pub fn mark_ready(&self) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// Re-reads the scenario file.
    pub fn reload(&self) -> Result<(), ScenarioError> {
        let scenario = read_scenario(&self.settings)?;
        self.control().load(scenario, Instant::now())?;
        self.wake_materializer.notify_one();
        tracing::info!(path = %self.settings.scenario_path.display(), "scenario reloaded");
        Ok(())
    }

    /// Maps a namespace given over HTTP (as written in the scenario, or
    /// already prefixed) to the materialized one.
    fn namespace(&self, c: &Control, ns: &str) -> String {
        let prefixed = format!("{}{ns}", self.settings.namespace_prefix);
        let known = |n: &str| c.scenario.workloads.iter().any(|w| w.namespace == n);
        if known(&prefixed) || !known(ns) {
            prefixed
        } else {
            ns.to_string()
        }
    }

    /// Removes the twin's pods (flag `--cleanup-on-exit`).
    pub async fn delete_pods(&self) -> anyhow::Result<()> {
        let scenario = self.control().scenario.clone();
        Materializer::new(self.client.clone())
            .delete_pods(&scenario)
            .await?;
        Ok(())
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/truth", get(truth_handler))
            .route("/healthz", get(|| async { "ok" }))
            .route("/reload", post(reload_handler))
            .route(
                "/workloads/{namespace}/{name}/enrollment",
                post(enroll_handler),
            )
            .route("/edges", post(add_edge_handler))
            .route("/edges/{id}", delete(remove_edge_handler))
            .route("/edges/{id}/rate", post(rate_handler))
            .with_state(self)
    }
}

fn spawn_reflector<K>(api: Api<K>, writer: reflector::store::Writer<K>) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let store = writer.as_reader();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watch error; retrying");
            }
        }
    });
    store
}

fn error(status: StatusCode, msg: impl ToString) -> Response {
    (status, axum::Json(json!({"error": msg.to_string()}))).into_response()
}

async fn metrics_handler(State(t): State<Arc<Twin>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        t.exporter.encode(),
    )
        .into_response()
}

/// One edge in `/truth`.
#[derive(Serialize)]
struct EdgeTruth {
    id: String,
    active: bool,
    edge: crate::scenario::Edge,
    /// Whole requests (TCP: connections) since start.
    attempted: u64,
    served: u64,
    broken: u64,
    /// mtls-accepted | plaintext-accepted | rejected | mixed | idle
    outcome: String,
    server_mode: Value,
    client_tls: Value,
    pairs: Vec<crate::traffic::PairStatus>,
}

fn summary_json<T: Serialize + PartialEq + Clone>(s: Summary<T>) -> Value {
    match s {
        Summary::Idle => json!("idle"),
        Summary::Mixed => json!("mixed"),
        Summary::One(v) => serde_json::to_value(v).unwrap_or(Value::Null),
    }
}

async fn truth_handler(State(t): State<Arc<Twin>>) -> Response {
    let now = Instant::now();
    let ready = *t.ready.lock().unwrap_or_else(|e| e.into_inner());
    let c = t.control();
    let edges: Vec<EdgeTruth> = c
        .traffic
        .edges
        .values()
        .map(|rt| EdgeTruth {
            id: rt.edge.id.clone(),
            active: rt.active,
            edge: rt.edge.clone(),
            attempted: rt.truth.attempted.floor() as u64,
            served: rt.truth.served.floor() as u64,
            broken: rt.truth.broken.floor() as u64,
            outcome: match summarize(&rt.pairs, |p| p.outcome.label()) {
                Summary::Idle => "idle".into(),
                Summary::Mixed => "mixed".into(),
                Summary::One(o) => o.into(),
            },
            server_mode: summary_json(summarize(&rt.pairs, |p| p.server_mode)),
            client_tls: summary_json(summarize(&rt.pairs, |p| p.client_tls.clone())),
            pairs: rt.pairs.clone(),
        })
        .collect();
    let workloads: Vec<Value> = c
        .scenario
        .workloads
        .iter()
        .map(|w| {
            json!({
                "namespace": w.namespace, "name": w.name,
                "enrollment": c.desired_enrollment(&w.namespace, &w.name, now),
            })
        })
        .collect();
    axum::Json(json!({"ready": ready, "edges": edges, "workloads": workloads})).into_response()
}

async fn reload_handler(State(t): State<Arc<Twin>>) -> Response {
    match t.reload() {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"reloaded": true}))).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
struct EnrollBody {
    enrollment: Enrollment,
}

async fn enroll_handler(
    State(t): State<Arc<Twin>>,
    Path((namespace, name)): Path<(String, String)>,
    axum::Json(body): axum::Json<EnrollBody>,
) -> Response {
    {
        let mut c = t.control();
        let ns = t.namespace(&c, &namespace);
        if c.scenario.workload(&ns, &name).is_none() {
            return error(StatusCode::NOT_FOUND, format!("no workload {ns}/{name}"));
        }
        c.overrides.insert((ns, name), body.enrollment);
    }
    t.wake_materializer.notify_one();
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"enrollment": body.enrollment})),
    )
        .into_response()
}

async fn add_edge_handler(
    State(t): State<Arc<Twin>>,
    axum::Json(mut spec): axum::Json<EdgeSpec>,
) -> Response {
    let mut c = t.control();
    spec.to.namespace = t.namespace(&c, &spec.to.namespace);
    if let Some(ns) = &spec.from.namespace {
        spec.from.namespace = Some(t.namespace(&c, ns));
    }
    match c.scenario.resolve_edge(&spec) {
        Ok(edge) => {
            let id = edge.id.clone();
            c.traffic.upsert(edge);
            (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn remove_edge_handler(State(t): State<Arc<Twin>>, Path(id): Path<String>) -> Response {
    let mut c = t.control();
    match c.traffic.edges.get_mut(&id) {
        Some(rt) => {
            rt.active = false;
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no edge {id}")),
    }
}

#[derive(Deserialize)]
struct RateBody {
    rate: f64,
}

async fn rate_handler(
    State(t): State<Arc<Twin>>,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<RateBody>,
) -> Response {
    if !(body.rate.is_finite() && body.rate >= 0.0) {
        return error(StatusCode::BAD_REQUEST, "rate must be >= 0");
    }
    let mut c = t.control();
    match c.traffic.edges.get_mut(&id) {
        Some(rt) => {
            rt.edge.rate = body.rate;
            axum::Json(json!({"id": id, "rate": body.rate})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no edge {id}")),
    }
}

/// A file_sd registration, removed on drop.
pub struct Registration {
    path: PathBuf,
}

impl Registration {
    /// Writes `<dir>/<job>-<port>.json` atomically.
    pub fn write(
        dir: &std::path::Path,
        job: &str,
        addr: SocketAddr,
    ) -> std::io::Result<Registration> {
        std::fs::create_dir_all(dir)?;
        let name = format!("{job}-{}", addr.port());
        let path = dir.join(format!("{name}.json"));
        let tmp = dir.join(format!(".{name}.json.tmp"));
        let body = json!([{"targets": [addr.to_string()], "labels": {"job": job}}]);
        std::fs::write(&tmp, body.to_string())?;
        std::fs::rename(&tmp, &path)?;
        Ok(Registration { path })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
