//! Running traffic: each tick, every edge sends `rate x elapsed` requests
//! spread evenly over its client pods x server pods, each decided by
//! `istio_model` against the world the proxies currently know, and counted
//! both as Istio telemetry and as ground truth.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::istio_model::{
    self, ClientTls, Dataplane, MeshConfig, Outcome, PeerMode, PolicyLevel, Rejection, Request,
    ServerPolicy, Verdict, Wire,
};
use crate::pod_view::PodView;
use crate::scenario::{Client, Edge};
use crate::telemetry::{self, Exchange, Peer, Series};

/// What the data plane acts on: Istio config plus the pods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct World {
    pub mesh: MeshConfig,
    /// Sorted by namespace and name so equal worlds compare equal.
    pub pods: Vec<PodView>,
}

/// Holds back changes for a propagation delay, as proxies learn config
/// from istiod some time after the API server has it.
#[derive(Debug)]
pub struct DelayLine<T> {
    delay: Duration,
    current: Arc<T>,
    pending: VecDeque<(Instant, Arc<T>)>,
}

impl<T: PartialEq> DelayLine<T> {
    pub fn new(delay: Duration, initial: T) -> Self {
        DelayLine {
            delay,
            current: Arc::new(initial),
            pending: VecDeque::new(),
        }
    }

    /// Records what the API server shows at `now` (ignored when unchanged).
    pub fn observe(&mut self, now: Instant, value: T) {
        let latest = self.pending.back().map_or(&self.current, |(_, v)| v);
        if **latest != value {
            self.pending.push_back((now, Arc::new(value)));
        }
    }

    /// What the proxies act on at `now`.
    pub fn effective(&mut self, now: Instant) -> Arc<T> {
        while let Some((at, _)) = self.pending.front() {
            if *at + self.delay > now {
                break;
            }
            if let Some((_, v)) = self.pending.pop_front() {
                self.current = v;
            }
        }
        self.current.clone()
    }
}

/// Ground truth of one edge since the twin started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Truth {
    pub attempted: f64,
    pub served: f64,
    pub broken: f64,
}

/// How one client pod -> server pod pair fares right now.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PairStatus {
    pub client: String,
    pub server: Option<String>,
    pub server_mode: PeerMode,
    pub policy_level: PolicyLevel,
    pub policy: Option<String>,
    pub client_tls: ClientTls,
    pub wire: Wire,
    pub outcome: Outcome,
}

#[derive(Clone, Debug)]
pub struct EdgeRuntime {
    pub edge: Edge,
    pub active: bool,
    pub truth: Truth,
    pub pairs: Vec<PairStatus>,
}

/// Edges, their truth, and the Istio series they produced.
#[derive(Debug, Default)]
pub struct Traffic {
    pub edges: BTreeMap<String, EdgeRuntime>,
    /// Fractional counts; exported floored, so counters stay integers.
    pub series: HashMap<Series, f64>,
}

impl Traffic {
    /// Replaces the edge set, keeping counts of edges that stay.
    pub fn set_edges(&mut self, edges: Vec<Edge>) {
        for rt in self.edges.values_mut() {
            rt.active = false;
        }
        for e in edges {
            self.upsert(e);
        }
    }

    pub fn upsert(&mut self, e: Edge) {
        match self.edges.get_mut(&e.id) {
            Some(rt) => {
                rt.edge = e;
                rt.active = true;
            }
            None => {
                self.edges.insert(
                    e.id.clone(),
                    EdgeRuntime {
                        edge: e,
                        active: true,
                        truth: Truth::default(),
                        pairs: Vec::new(),
                    },
                );
            }
        }
    }

    /// Runs `dt` of traffic on every active edge against `world`.
    pub fn step(&mut self, world: &World, dt: Duration) {
        let secs = dt.as_secs_f64();
        for rt in self.edges.values_mut() {
            if !rt.active {
                rt.pairs.clear();
                continue;
            }
            rt.pairs = run_edge(
                &rt.edge,
                world,
                rt.edge.rate * secs,
                &mut rt.truth,
                &mut self.series,
            );
        }
    }
}

struct ClientInstance<'a> {
    name: String,
    dataplane: Dataplane,
    pod: Option<&'a PodView>,
    peer: Option<Peer>,
}

fn peer(p: &PodView) -> Peer {
    Peer {
        workload: p.workload.clone(),
        namespace: p.namespace.clone(),
        service_account: p.service_account.clone(),
    }
}

fn run_edge(
    edge: &Edge,
    world: &World,
    amount: f64,
    truth: &mut Truth,
    series: &mut HashMap<Series, f64>,
) -> Vec<PairStatus> {
    let serving = |ns: &str, workload: &str| -> Vec<&PodView> {
        world
            .pods
            .iter()
            .filter(|p| p.serving && p.namespace == ns && p.workload == workload)
            .collect()
    };
    let clients: Vec<ClientInstance<'_>> = match &edge.client {
        Client::External { name } => vec![ClientInstance {
            name: format!("external:{name}"),
            dataplane: Dataplane::None,
            pod: None,
            peer: None,
        }],
        Client::Workload { name, namespace } => serving(namespace, name)
            .into_iter()
            .map(|p| ClientInstance {
                name: p.name.clone(),
                dataplane: p.dataplane,
                pod: Some(p),
                peer: Some(peer(p)),
            })
            .collect(),
    };
    // A client workload with no running pod sends nothing.
    if clients.is_empty() {
        return Vec::new();
    }
    let servers = serving(&edge.server_namespace, &edge.server_workload);
    let fqdn = format!(
        "{}.{}.svc.cluster.local",
        edge.service, edge.server_namespace
    );
    let port = u32::from(edge.port);
    let per_client = amount / clients.len() as f64;

    let mut pairs = Vec::new();
    for c in &clients {
        let targets: Vec<Option<&PodView>> = if servers.is_empty() {
            vec![None]
        } else {
            servers.iter().map(|s| Some(*s)).collect()
        };
        let share = per_client / targets.len() as f64;
        for s in targets {
            let verdict = match s {
                Some(s) => istio_model::decide(
                    &world.mesh,
                    &Request {
                        client_dataplane: c.dataplane,
                        client: c.pod.map(|p| (p.namespace.as_str(), &p.labels)),
                        server_namespace: &s.namespace,
                        server_labels: &s.labels,
                        server_dataplane: s.dataplane,
                        server_tls_mode_istio: s.tls_mode_istio,
                        container_port: port,
                        service_fqdn: &fqdn,
                        service_port: port,
                    },
                ),
                None => no_endpoints(c.dataplane),
            };
            let server_peer = s.map(peer);
            let exchange = Exchange {
                protocol: edge.protocol,
                client: c.peer.as_ref(),
                client_dataplane: c.dataplane,
                server: server_peer.as_ref(),
                server_dataplane: s.map_or(Dataplane::None, |s| s.dataplane),
                service_name: &edge.service,
                service_namespace: &edge.server_namespace,
                verdict: &verdict,
            };
            for key in telemetry::series(&exchange) {
                *series.entry(key).or_default() += share;
            }
            truth.attempted += share;
            if verdict.outcome.served() {
                truth.served += share;
            } else {
                truth.broken += share;
            }
            pairs.push(PairStatus {
                client: c.name.clone(),
                server: s.map(|s| s.name.clone()),
                server_mode: verdict.server_policy.mode,
                policy_level: verdict.server_policy.level,
                policy: verdict.server_policy.policy.clone(),
                client_tls: verdict.client_tls.clone(),
                wire: verdict.wire,
                outcome: verdict.outcome,
            });
        }
    }
    pairs
}

fn no_endpoints(client: Dataplane) -> Verdict {
    Verdict {
        server_policy: ServerPolicy {
            mode: PeerMode::Permissive,
            level: PolicyLevel::Default,
            policy: None,
        },
        client_tls: if client == Dataplane::None {
            ClientTls::NoProxy
        } else {
            ClientTls::Auto {
                wire: Wire::Plaintext,
            }
        },
        wire: Wire::Plaintext,
        outcome: Outcome::Rejected(Rejection::NoEndpoints),
    }
}

/// The edge-level summary of its pairs: one value when they agree, else "mixed".
pub fn summarize<T: PartialEq + Clone>(
    pairs: &[PairStatus],
    f: impl Fn(&PairStatus) -> T,
) -> Summary<T> {
    let mut it = pairs.iter().map(f);
    match it.next() {
        None => Summary::Idle,
        Some(first) => {
            if it.all(|v| v == first) {
                Summary::One(first)
            } else {
                Summary::Mixed
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Summary<T> {
    Idle,
    One(T),
    Mixed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio_model::{Labels, PeerAuthn};
    use crate::telemetry::Protocol;

    fn pod(ns: &str, name: &str, workload: &str, dp: Dataplane) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            workload: workload.into(),
            labels: Labels::from([("app".to_string(), workload.to_string())]),
            dataplane: dp,
            tls_mode_istio: dp == Dataplane::Sidecar,
            service_account: workload.into(),
            serving: true,
        }
    }

    fn edge(client: Client, rate: f64) -> Edge {
        Edge {
            id: "e".into(),
            client,
            server_workload: "api".into(),
            server_namespace: "shop".into(),
            service: "api".into(),
            port: 8080,
            protocol: Protocol::Http,
            rate,
        }
    }

    fn strict() -> PeerAuthn {
        PeerAuthn {
            namespace: "shop".into(),
            name: "strict".into(),
            created: jiff::Timestamp::from_second(1).unwrap(),
            selector: None,
            mode: PeerMode::Strict,
            port_level: BTreeMap::new(),
        }
    }

    #[test]
    fn delay_line_holds_changes_back() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(Duration::from_secs(1), 0);
        line.observe(t0, 1);
        assert_eq!(*line.effective(t0 + Duration::from_millis(500)), 0);
        line.observe(t0 + Duration::from_millis(600), 2);
        assert_eq!(*line.effective(t0 + Duration::from_millis(1000)), 1);
        assert_eq!(*line.effective(t0 + Duration::from_millis(1600)), 2);
        // Zero delay applies at once.
        let mut now = DelayLine::new(Duration::ZERO, 0);
        now.observe(t0, 7);
        assert_eq!(*now.effective(t0), 7);
    }

    #[test]
    fn counts_grow_with_rate_times_time_and_strict_breaks_plaintext() {
        let mut world = World {
            mesh: MeshConfig {
                root_namespace: "istio-system".into(),
                ..Default::default()
            },
            pods: vec![pod("shop", "api-1", "api", Dataplane::Sidecar)],
        };
        let mut t = Traffic::default();
        t.set_edges(vec![edge(Client::External { name: "x".into() }, 10.0)]);
        for _ in 0..10 {
            t.step(&world, Duration::from_millis(100));
        }
        let truth = t.edges["e"].truth.clone();
        assert!((truth.attempted - 10.0).abs() < 1e-9);
        assert!((truth.served - 10.0).abs() < 1e-9);
        let none: f64 = t
            .series
            .iter()
            .filter_map(|(k, v)| match k {
                Series::Requests(l) if l.connection_security_policy == "none" => Some(*v),
                _ => None,
            })
            .sum();
        assert!((none - 10.0).abs() < 1e-9);

        world.mesh.peer_authns.push(strict());
        t.step(&world, Duration::from_secs(1));
        let truth = &t.edges["e"].truth;
        assert!((truth.broken - 10.0).abs() < 1e-9);
        assert_eq!(
            summarize(&t.edges["e"].pairs, |p| p.outcome),
            Summary::One(Outcome::Rejected(Rejection::PlaintextToStrict))
        );
    }

    #[test]
    fn traffic_splits_over_pods_during_a_rollout() {
        let world = World {
            mesh: MeshConfig {
                root_namespace: "istio-system".into(),
                peer_authns: vec![strict()],
                ..Default::default()
            },
            pods: vec![
                pod("shop", "api-1", "api", Dataplane::Sidecar),
                pod("shop", "web-old", "web", Dataplane::None),
                pod("shop", "web-new", "web", Dataplane::Sidecar),
            ],
        };
        let mut t = Traffic::default();
        let client = Client::Workload {
            name: "web".into(),
            namespace: "shop".into(),
        };
        t.set_edges(vec![edge(client, 4.0)]);
        t.step(&world, Duration::from_secs(1));
        let truth = &t.edges["e"].truth;
        assert!((truth.served - 2.0).abs() < 1e-9);
        assert!((truth.broken - 2.0).abs() < 1e-9);
        assert_eq!(
            summarize(&t.edges["e"].pairs, |p| p.outcome),
            Summary::Mixed
        );
    }

    #[test]
    fn no_server_pods_breaks_everything_no_client_pods_sends_nothing() {
        let world = World::default();
        let mut t = Traffic::default();
        t.set_edges(vec![edge(Client::External { name: "x".into() }, 1.0)]);
        t.step(&world, Duration::from_secs(2));
        assert!((t.edges["e"].truth.broken - 2.0).abs() < 1e-9);

        let mut t = Traffic::default();
        let client = Client::Workload {
            name: "web".into(),
            namespace: "shop".into(),
        };
        t.set_edges(vec![edge(client, 1.0)]);
        t.step(&world, Duration::from_secs(2));
        assert_eq!(t.edges["e"].truth.attempted, 0.0);
    }

    #[test]
    fn removed_edges_keep_their_counts() {
        let mut t = Traffic::default();
        t.set_edges(vec![edge(Client::External { name: "x".into() }, 1.0)]);
        t.step(&World::default(), Duration::from_secs(1));
        t.set_edges(vec![]);
        t.step(&World::default(), Duration::from_secs(1));
        let rt = &t.edges["e"];
        assert!(!rt.active);
        assert!((rt.truth.attempted - 1.0).abs() < 1e-9);
    }
}
