//! The `paygate` binary: parses the command line and hands over to the library.

use paygate::config::{self, Command, GatewayConfig};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = config::parse(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command
        && let Some(n) = args.worker_threads
    {
        runtime.worker_threads(n);
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let mut config = GatewayConfig::try_from(args)?;
                if config.processors.is_empty() {
                    config.processors = paygate::gateway::start_builtin_processors().await?;
                }
                let listener =
                    tokio::net::TcpListener::bind(&config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
                // A machine-readable line for scripts and tests that start us on port 0.
                println!("paygate listening on {}", listener.local_addr().map_err(|e| e.to_string())?);
                paygate::gateway::run(config, listener, paygate::http::shutdown_signal()).await
            }
            Command::ProcessorSim(args) => paygate::sim::run(args).await,
            Command::Loadgen(args) => paygate::loadgen::run(args).await,
            Command::Healthcheck(args) => paygate::healthcheck::run(args).await,
        }
    });
    if let Err(e) = result {
        tracing::error!("{e}");
        eprintln!("paygate: {e}");
        std::process::exit(1);
    }
}
