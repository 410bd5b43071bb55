//! `spinwire` binary: parse the command line, load the config (no IO beyond reading it), build
//! the node, bind the listeners, serve until SIGTERM/SIGINT, then drain.

use std::process::ExitCode;

use anyhow::{Context, Result};
use spinwire::cli::{self, Args};
use spinwire::node::Node;
use spinwire::server::Server;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(command) = args.command.as_deref().filter(|c| *c != "serve") {
        return match cli::run_subcommand(command, &args) {
            Ok(code) => ExitCode::from(code as u8),
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs at `log.level` (`RUST_LOG` wins) to stderr, or as JSON lines appended to `log.file`
/// (created with mode 0644, as Centrifugo does; no rotation: rotate with copytruncate).
fn init_logging(log: &spinwire::config::Log) -> Result<()> {
    let (level, unknown) = log.filter_level();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},h2=warn,hyper=warn,tower=warn")));
    if log.file.is_empty() {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        let file =
            options.open(&log.file).with_context(|| format!("log.file: cannot open {:?}", log.file))?;
        let writer = std::sync::Mutex::new(file);
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(writer).init();
    }
    if let Some(warning) = unknown {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// `pid_file`: the process id and a newline (mode 0600), removed when the server stops.
struct PidFile(Option<std::path::PathBuf>);

impl PidFile {
    fn write(path: &str) -> Result<Self> {
        if path.is_empty() {
            return Ok(Self(None));
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).write(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).with_context(|| format!("pid_file: cannot write {path:?}"))?;
        std::io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes())
            .with_context(|| format!("pid_file: cannot write {path:?}"))?;
        Ok(Self(Some(path.into())))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn serve(args: Args) -> Result<()> {
    let loaded = cli::load(&args)?;
    init_logging(&loaded.config.log)?;
    let _pid_file = PidFile::write(&loaded.config.pid_file)?;
    for warning in &loaded.warnings {
        tracing::warn!("config: {warning}");
    }
    let config = loaded.config;
    let dev = args.dev;
    if !dev {
        for warning in spinwire::config::exposure_warnings(&config) {
            tracing::warn!("{warning}");
        }
    }
    if !dev
        && config.client.token.hmac_secret_key.is_empty()
        && config.client.token.rsa_public_key.is_empty()
        && config.client.token.ecdsa_public_key.is_empty()
        && config.client.token.jwks_public_endpoint.is_empty()
        && !config.client.proxy.connect.enabled
        && !config.client.allow_anonymous_connect_without_token
        && !config.client.insecure
    {
        tracing::warn!(
            "no token key, JWKS, connect proxy or anonymous access configured: clients cannot connect \
             (run with --dev to try it out)"
        );
    }
    let node = Node::new(config)?;
    node.map_broker_ready().await.map_err(anyhow::Error::msg)?;
    let server = Server::bind(node.clone())?;
    tracing::info!(
        version = spinwire::VERSION,
        http = %server.http_addr(),
        http3 = ?server.http3_addr(),
        grpc_api = ?server.grpc_addr(),
        uni_grpc = ?server.uni_grpc_addr(),
        grpc_stream = ?server.grpc_stream_addr(),
        engine = %node.config.engine.kind,
        "spinwire started"
    );
    if dev {
        cli::print_dev_banner(&node.config, server.http_addr().port());
    }
    server.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
