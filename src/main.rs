//! The usher command line: `run` (the default), `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use usher::Config;

/// Exit code for a config that cannot be used (from `check` and `run`).
const EXIT_BAD_CONFIG: u8 = 2;
/// Exit code for a failure at run time (a port in use, an unreadable certificate).
const EXIT_RUNTIME: u8 = 1;

/// A small, fast reverse proxy: TLS with a local CA or your certificates, static files, and
/// upstream app pools.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (for `usher` with no subcommand, which means `usher run`).
    #[arg(long, short, global = true, default_value = "proxy.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config and exit: 0 if it is usable, 2 with every error if not.
    Check,
    /// List the ACME-managed sites: issuer, expiry, renewal, next attempt, last error.
    Certs {
        #[command(subcommand)]
        action: Option<CertsAction>,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// Revoke a site's ACME certificate at its CA and remove it from storage.
    Revoke {
        /// One of the site's names.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(log_filter(std::env::var("USHER_LOG").ok()))
        .init();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!("{}: ok: {}", cli.config.display(), config.summary());
            ExitCode::SUCCESS
        }
        Command::Run => run(config),
        Command::Certs { action } => certs(&config, action),
    }
}

/// The diagnostics filter: `USHER_LOG` (a `tracing` filter), `info` without it or when it does
/// not parse. rustls warns about what a peer sent (an IP address as SNI, which wrk and some
/// scripts send on every handshake), so any client could fill the log: its events are kept to
/// errors unless the filter names rustls itself.
fn log_filter(env: Option<String>) -> tracing_subscriber::EnvFilter {
    let mut text = env.unwrap_or_else(|| "info".to_owned());
    if !text.contains("rustls") {
        text.push_str(",rustls=error");
    }
    tracing_subscriber::EnvFilter::try_new(&text)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"))
}

fn certs(config: &Config, action: Option<CertsAction>) -> ExitCode {
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        match action {
            None => usher::acme::cli::list(config).await,
            Some(CertsAction::Revoke { name }) => usher::acme::cli::revoke(config, &name).await,
        }
    });
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("usher certs: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn run(config: Config) -> ExitCode {
    // before the runtime's threads: keep freed body buffers instead of faulting them back in
    usher::heap::keep_freed_memory(std::env::var("GLIBC_TUNABLES").ok().as_deref());
    let rt = match runtime(runtime_builder()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let signal = match usher::signals::shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("usher: cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        // before starting: a SIGHUP's default action would end the process
        let hup = usher::signals::reload_signal();
        let summary = config.summary();
        let run_as = config.user.clone();
        let owned: Vec<std::path::PathBuf> = std::iter::once(config.certs_dir.clone())
            .chain(config.cache.disk.as_ref().map(|d| d.dir.clone()))
            .collect();
        let handle = match usher::start(config).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("usher: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        if let Some(user) = &run_as {
            let owned: Vec<&std::path::Path> = owned.iter().map(|p| p.as_path()).collect();
            match usher::privileges::drop_to(user, &owned) {
                Ok(what) => tracing::info!("{what}"),
                Err(e) => {
                    tracing::error!("cannot drop root privileges: {e}");
                    eprintln!("usher: cannot drop root privileges: {e}");
                    handle.shutdown();
                    handle.wait().await;
                    return ExitCode::from(EXIT_RUNTIME);
                }
            }
        }
        let show = |a: Option<std::net::SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
        tracing::info!(
            "usher {} listening: http={} https={} ({summary})",
            env!("CARGO_PKG_VERSION"),
            show(handle.http_addr),
            show(handle.https_addr),
        );
        if let Some(ca) = &handle.local_ca {
            tracing::info!("local CA certificate: {ca} (trust it, e.g. curl --cacert {ca})");
        }
        match hup {
            Ok(mut hup) => {
                let control = handle.control().clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!(
                            "SIGHUP: reloading {}",
                            control
                                .status()
                                .map(|s| s.file.display().to_string())
                                .unwrap_or_default()
                        );
                        // the outcome is logged (every error, when the running config stays)
                        let _ = control.reload().await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!("cannot install the SIGHUP handler (no reload by signal): {e}")
            }
        }
        let which = signal.await;
        tracing::info!("{which}: draining");
        handle.shutdown();
        handle.wait().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// The runtime for the CPUs usher may use (its affinity mask, or TOKIO_WORKER_THREADS): with
/// one, a current-thread runtime (no work-stealing machinery, no cross-thread wakeups; it
/// measured faster pinned to one CPU), otherwise one worker per CPU.
fn runtime_builder() -> tokio::runtime::Builder {
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    if workers == 1 {
        tracing::info!("runtime: current-thread (one CPU)");
        tokio::runtime::Builder::new_current_thread()
    } else {
        tracing::info!("runtime: multi-thread, {workers} workers");
        tokio::runtime::Builder::new_multi_thread()
    }
}

/// Builds a runtime, or says why not and gives the exit code.
fn runtime(builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = builder;
    builder.enable_all().build().map_err(|e| {
        eprintln!("usher: cannot start the runtime: {e}");
        ExitCode::from(EXIT_RUNTIME)
    })
}
