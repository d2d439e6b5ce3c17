//! mesh-twin: simulated Istio mTLS data plane. See `mesh_twin` and
//! notes/twin.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mesh_twin::app::{Registration, Settings, Twin};
use mesh_twin::scenario::parse_duration;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(
    name = "mesh-twin",
    about = "Simulated Istio mTLS data plane over a real API server"
)]
struct Args {
    /// Scenario YAML file.
    #[arg(long, env = "MESH_TWIN_SCENARIO")]
    scenario: PathBuf,
    /// Port on 127.0.0.1 for /metrics, /truth and the control API (0 = any free one).
    #[arg(long, env = "MESH_TWIN_PORT", default_value_t = 0)]
    port: u16,
    /// Prepended to every scenario namespace, so parallel runs do not collide.
    #[arg(long, env = "MESH_TWIN_NAMESPACE_PREFIX", default_value = "")]
    namespace_prefix: String,
    /// How long proxies take to act on a change (e.g. 1s, 500ms, 0).
    #[arg(long, env = "MESH_TWIN_PROPAGATION_DELAY", default_value = "1s", value_parser = parse_duration)]
    propagation_delay: Duration,
    /// Traffic step interval.
    #[arg(long, env = "MESH_TWIN_TICK", default_value = "100ms", value_parser = parse_duration)]
    tick: Duration,
    /// Istio's root namespace (mesh-wide policies live there).
    #[arg(long, env = "MESH_TWIN_ROOT_NAMESPACE", default_value = "istio-system")]
    root_namespace: String,
    /// Folder Prometheus reads file_sd targets from; no registration when unset.
    #[arg(long, env = "PROMETHEUS_TARGETS_DIR")]
    prometheus_targets_dir: Option<PathBuf>,
    /// `job` label of the scrape target.
    #[arg(long, env = "MESH_TWIN_JOB", default_value = "mesh-twin")]
    job: String,
    /// Delete the twin's pods on exit.
    #[arg(long, env = "MESH_TWIN_CLEANUP_ON_EXIT")]
    cleanup_on_exit: bool,
    /// Log format: text or json.
    #[arg(long, env = "MESH_TWIN_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs on stderr: stdout carries the `listening on` line tests read.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }

    // kube (ring) and reqwest (aws-lc-rs) both compile a rustls provider in.
    testkit::sandbox::install_crypto_provider();
    let client = kube::Client::try_default().await?;
    let settings = Settings {
        scenario_path: args.scenario.clone(),
        namespace_prefix: args.namespace_prefix.clone(),
        root_namespace: args.root_namespace.clone(),
        propagation_delay: args.propagation_delay,
        tick: args.tick,
    };
    let twin = Twin::new(settings, client)?;
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    let addr = listener.local_addr()?;

    twin.wait_for_watches(Duration::from_secs(60)).await?;
    let mut revision = 0;
    twin.materialize_once(&mut revision).await?;
    twin.mark_ready();
    tokio::spawn(twin.clone().tick_loop());
    tokio::spawn(twin.clone().materializer_loop(revision));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, twin.clone().router()).with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    let server = tokio::spawn(async move { server.await });

    let _registration = match &args.prometheus_targets_dir {
        Some(dir) => Some(Registration::write(dir, &args.job, addr)?),
        None => None,
    };
    println!("listening on {addr}");
    tracing::info!(%addr, "mesh twin serving");

    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = twin.reload() {
                    tracing::error!(error = %e, "reload failed; keeping the previous scenario");
                }
            }
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    let _ = server.await;
    if args.cleanup_on_exit {
        twin.delete_pods().await?;
    }
    Ok(())
}
