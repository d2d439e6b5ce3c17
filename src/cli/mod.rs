//! Command-line surface: one binary with the operator (`run`), the CRD
//! generator (`crd`) and the user-facing commands (`status`, `preflight`).
//! Every flag can also be set from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod preflight;
pub mod status;

#[derive(Debug, Parser)]
#[command(
    name = "mtls-migrator",
    version,
    about = "Moves Istio workloads from PERMISSIVE to STRICT mTLS on evidence"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long,
        env = "MTLS_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Print the MtlsMigration CustomResourceDefinition as YAML.
    Crd,
    /// Show every MtlsMigration with its phase and what it waits for.
    Status(StatusArgs),
    /// Read a namespace (and Prometheus) and report what would block or break STRICT.
    Preflight(PreflightArgs),
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Istio's root namespace: a migration there without selector is mesh-wide.
    #[arg(long, env = "MTLS_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// Prometheus used when a migration names none.
    #[arg(long, env = "MTLS_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// File holding a bearer token sent to Prometheus (re-read on every query).
    #[arg(long, env = "MTLS_PROMETHEUS_TOKEN_FILE")]
    pub prometheus_token_file: Option<PathBuf>,
    /// Timeout of one Prometheus query.
    #[arg(long, env = "MTLS_PROMETHEUS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub prometheus_timeout: Duration,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "MTLS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "MTLS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Only the replica holding the Lease reconciles.
    #[arg(long, env = "MTLS_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    #[arg(long, env = "MTLS_LEASE_NAME", default_value = "mtls-migrator-leader")]
    pub lease_name: String,
    /// Namespace of the Lease (in a cluster: the operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mtls-migrator-system")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (in a cluster: the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    #[arg(long, env = "MTLS_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    #[arg(long, env = "MTLS_LEASE_RENEW_BEFORE", default_value = "5s", value_parser = parse_duration)]
    pub lease_renew_before: Duration,
}

#[derive(Clone, Debug, Args)]
pub struct StatusArgs {
    /// Only this namespace (default: all).
    #[arg(short, long, env = "MTLS_NAMESPACE")]
    pub namespace: Option<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

#[derive(Clone, Debug, Args)]
pub struct PreflightArgs {
    /// Namespace of the planned migration (Istio's root namespace without a
    /// selector: the whole mesh).
    #[arg(short, long, env = "MTLS_NAMESPACE")]
    pub namespace: String,
    /// Workload selector, `key=value[,key=value]` (default: the whole namespace).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Prometheus to read plaintext sources from (optional).
    #[arg(long, env = "MTLS_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// File holding a bearer token sent to Prometheus.
    #[arg(long, env = "MTLS_PROMETHEUS_TOKEN_FILE")]
    pub prometheus_token_file: Option<PathBuf>,
    /// Timeout of one Prometheus query.
    #[arg(long, env = "MTLS_PROMETHEUS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub prometheus_timeout: Duration,
    /// `rate()` window for the traffic queries.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub window: Duration,
    /// Container ports the migration will exempt (`spec.portLevelMtls` keys), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub port_level_mtls: Vec<i32>,
    /// Cluster DNS domain, for matching DestinationRule hosts.
    #[arg(long, env = "MTLS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    #[arg(long, env = "MTLS_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Go-style durations (`500ms`, `30s`, `2m`, `1h30m`), as Kubernetes users
/// write them; parsed by kube's own `Duration`, like the CRD's fields.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    // kube's parser reads "" as zero; a flag given empty is a mistake.
    if s.trim().is_empty() {
        return Err("empty duration (write it like 500ms, 30s, 2m or 1h30m)".into());
    }
    let d: kube::core::Duration = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: {e} (write it like 500ms, 30s, 2m or 1h30m)"))?;
    if d.is_negative() {
        return Err(format!("{s:?}: a duration here must not be negative"));
    }
    Ok(d.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn every_run_flag_has_an_environment_variable() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").expect("run subcommand");
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_env().is_some(),
                "--{id} has no environment variable"
            );
        }
    }
}
