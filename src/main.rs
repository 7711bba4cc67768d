//! The `paygate` binary: parses the command line, sets up the process (logging, the open-files
//! limit, shutdown signals) and hands over to the library.
//!
//! The library forbids `unsafe`; the one exception lives here: `getrlimit`/`setrlimit`, which
//! std does not wrap, to raise the open-files limit before serving.
#![deny(unsafe_code)]

use std::future::Future;

use paygate::config::{self, Command, GatewayConfig, ServeArgs};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status when a second SIGINT cuts a graceful shutdown short (128 + signal number, as a
/// shell reports a process killed by it).
const EXIT_SECOND_SIGINT: i32 = 130;
/// Exit status when a second SIGTERM cuts a graceful shutdown short.
const EXIT_SECOND_SIGTERM: i32 = 143;

fn main() {
    let cli = config::parse(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    init_logging(matches!(&cli.command, Command::Serve(a) if a.log_format == "json"));
    let mut runtime = match &cli.command {
        Command::Serve(args) if single_threaded(args) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Command::Serve(args) = &cli.command
        && let Some(n) = args.worker_threads
    {
        runtime.worker_threads(n);
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
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

/// CPUs at or below which `--runtime auto` picks the `current_thread` scheduler: on two CPUs
/// it served the same latency with 21 % less CPU per request than two work-stealing workers
/// (perf.md, "tokio runtime"); with more, the pool's scaling wins.
const AUTO_SINGLE_THREAD_MAX_CPUS: usize = 2;

/// Whether `serve` runs on tokio's `current_thread` scheduler.
fn single_threaded(args: &ServeArgs) -> bool {
    match args.runtime.as_str() {
        "current-thread" => true,
        "auto" => {
            args.worker_threads.is_none()
                && std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) <= AUTO_SINGLE_THREAD_MAX_CPUS
        }
        _ => false,
    }
}

/// Logs to stderr, as text or as one JSON object per line (`--log-format json`).
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    if json {
        logs.json().flatten_event(true).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = GatewayConfig::try_from(args)?;
    // Before anything opens descriptors of its own, such as the built-in processors.
    let open_files = raise_open_files_limit();
    if config.processors.is_empty() {
        config.processors = paygate::gateway::start_builtin_processors().await?;
    }
    let requested = config.max_connections;
    let max_connections = config.fit_to_open_files(open_files)?;
    tracing::info!(max_connections, requested, open_files, reserved = config.fd_reserve(), "client connection limit");
    // Installed before the listening line, so a signal sent as soon as we are up is ours.
    let shutdown = shutdown_signals().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    // A machine-readable line for scripts and tests that start us on port 0.
    println!("paygate listening on {}", listener.local_addr().map_err(|e| e.to_string())?);
    paygate::gateway::run(config, listener, shutdown).await
}

/// Resolves on the first SIGTERM or SIGINT, which starts the graceful shutdown. A second one
/// exits at once with [`EXIT_SECOND_SIGTERM`] or [`EXIT_SECOND_SIGINT`]: every 202 was made
/// durable before it was sent, and recovery resolves sends whose outcome is unknown.
fn shutdown_signals() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = first, "shutdown requested; a second signal exits at once");
        tokio::spawn(async move {
            let (signal, code) = tokio::select! {
                _ = term.recv() => ("SIGTERM", EXIT_SECOND_SIGTERM),
                _ = int.recv() => ("SIGINT", EXIT_SECOND_SIGINT),
            };
            tracing::warn!(signal, code, "second signal: exiting without finishing the shutdown");
            std::process::exit(code);
        });
    })
}

/// Raises the soft open-files limit (RLIMIT_NOFILE) to the hard limit, logs both, and returns
/// the soft limit in force. Each client connection is a descriptor: a low soft limit (often
/// 1 024) would make accepts fail long before `--max-connections`.
#[allow(unsafe_code)]
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a live, writable rlimit; getrlimit only writes that struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the open-files limit; assuming 1024");
        return 1024;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: `raised` is a live rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, soft = before, hard = limit.rlim_max, "cannot raise the open-files limit; keeping the soft limit");
        }
    }
    tracing::info!(soft_before = before, soft = limit.rlim_cur, hard = limit.rlim_max, "open-files limit");
    limit.rlim_cur
}
