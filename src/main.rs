use anyhow::Result;
use clap::Parser;
use mtls_migrator::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MTLS_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,kube_lease_manager=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // Tests unify features and may compile a second rustls provider; naming
    // ours keeps rustls from refusing to choose.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::try_parse().unwrap_or_else(|err| {
        // clap exits 2 on usage errors, which `preflight` reserves for
        // "something blocks STRICT"; usage errors exit 1 instead.
        let code = if err.use_stderr() { 1 } else { 0 };
        let _ = err.print();
        std::process::exit(code);
    });
    init_logging(cli.log_format);
    match cli.command {
        Command::Run(args) => mtls_migrator::controller::run(args).await,
        Command::Crd => {
            print!("{}", mtls_migrator::api::crd_yaml());
            Ok(())
        }
        Command::Status(args) => mtls_migrator::cli::status::run(args).await,
        Command::Preflight(args) => {
            let blocking = mtls_migrator::cli::preflight::run(args).await?;
            // Non-zero exit when something would block or break STRICT, for pipelines.
            if blocking {
                std::process::exit(2);
            }
            Ok(())
        }
    }
}
