//! Command line: parse flags, load the configuration, set up logging, call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use ws_spdy_bridge::config::{Config, ConfigErrors, Flags, LogFormat, LogSection, Sources};
use ws_spdy_bridge::metrics::Metrics;
use ws_spdy_bridge::runtime_sim::{ExecRequest, RuntimeSim, SimConfig};
use ws_spdy_bridge::server::admin::{ReadyCheck, serve_admin};
use ws_spdy_bridge::server::{Bridge, BridgeConfig};
use ws_spdy_bridge::upstream::UpstreamConfig;
use ws_spdy_bridge::upstream::remotecommand::{
    DEFAULT_ERROR_STREAM_CAP, Outcome, RemoteCommand, StreamOptions, client_connection_config,
};
use ws_spdy_bridge::wsclient;

#[derive(Parser)]
#[command(
    version,
    about = "WebSocket to SPDY/3.1 bridge for Kubernetes container streaming"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket streaming clients in front of a legacy runtime's streaming server.
    /// Settings come from --config, then WS_SPDY_BRIDGE_… environment variables, then these
    /// flags (README "Configuration"). SIGTERM or Ctrl-C drains: the listener closes, live
    /// sessions get `drain.deadline` to finish, then the rest are ended; exit 0.
    Serve(ServeArgs),
    /// Print the effective configuration of FILE (plus WS_SPDY_BRIDGE_… environment
    /// variables), secrets masked; or every error with its key, and exit 1.
    CheckConfig {
        /// A .yaml, .yml or .toml configuration file.
        file: PathBuf,
    },
    /// Run one command over WebSocket v5 (as kubectl ≥ 1.30 does) against a bridge URL such as
    /// ws://127.0.0.1:8765/exec/TOKEN?stdout=true&stderr=true
    WsExec {
        /// The WebSocket URL, with the stream options as query parameters.
        url: String,
        /// Send this process's stdin (and CLOSE at its end).
        #[arg(long)]
        stdin: bool,
    },
    /// Ask a runtime simulator for an exec token, then run the command through a bridge over
    /// WebSocket v5 (what `serve` prints to try it).
    SimExec {
        /// The simulator's base URL.
        #[arg(long)]
        runtime: String,
        /// The bridge's address.
        #[arg(long)]
        bridge: SocketAddr,
        /// Send this process's stdin (and CLOSE at its end).
        #[arg(long)]
        stdin: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Start the legacy-runtime simulator and the bridge, and run commands through both.
    Demo,
    /// Serve a legacy runtime's streaming endpoints (kubelet streaming library behaviour) until
    /// interrupted. Exec runs commands on this machine.
    RuntimeSim {
        /// Address to listen on (loopback unless --allow-non-loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Allow a non-loopback listen address.
        #[arg(long)]
        allow_non_loopback: bool,
    },
    /// Run one remote command against a runtime's SPDY streaming URL (as client-go's SPDY
    /// executor does): stdin is relayed when --stdin is given, output is printed, and the exit
    /// code becomes this process's.
    SpdyExec {
        /// The streaming URL a CRI Exec or Attach call returned.
        url: http::Uri,
        /// The CRI request asked for stdin.
        #[arg(long)]
        stdin: bool,
        /// The CRI request did not ask for stdout.
        #[arg(long)]
        no_stdout: bool,
        /// The CRI request did not ask for stderr.
        #[arg(long)]
        no_stderr: bool,
    },
}

/// `serve`'s flags: each sets one configuration key, over the file and the environment.
#[derive(Args)]
struct ServeArgs {
    /// Configuration file (.yaml, .yml or .toml). Without it every key starts at its default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// `listen`: address of the streaming listener [default: 127.0.0.1:8765].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// `upstream.url`: the runtime's streaming server, e.g. http://127.0.0.1:41235. With no
    /// --config, no upstream and no CRI settings, a built-in legacy-runtime simulator is
    /// started on loopback and used (it runs commands on this machine).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// `base_path`: prefix of the bridge's routes.
    #[arg(long)]
    base_path: Option<String>,
    /// `compat.upgrade_client_first`: API-server order, answer 101 before contacting the
    /// runtime (upstream errors then arrive as a status on channel 3 instead of an HTTP error).
    #[arg(long)]
    compat_upgrade_client_first: bool,
    /// `compat.upstream_loss_is_success`: report a runtime that vanished mid-session as Success.
    #[arg(long)]
    compat_upstream_loss_is_success: bool,
    /// `cri.listen`: serve the CRI API on this socket (`unix:PATH`) and forward it to
    /// --runtime-endpoint; point the kubelet's --container-runtime-endpoint (or crictl's
    /// --runtime-endpoint) here. Needs --runtime-endpoint and --advertise-url.
    #[arg(long)]
    cri_listen: Option<String>,
    /// `cri.runtime_endpoint`: the runtime's CRI socket (`unix:PATH`).
    #[arg(long)]
    runtime_endpoint: Option<String>,
    /// `cri.advertise_url`: the bridge's streaming URL as the kubelet reaches it, e.g.
    /// http://127.0.0.1:8765; CRI Exec/Attach/PortForward answers point there.
    #[arg(long, value_name = "URL")]
    advertise_url: Option<String>,
    /// `cri.runtime_stream_base`: the runtime's streaming address, for runtime URLs that lack a
    /// scheme or host.
    #[arg(long, value_name = "URL")]
    runtime_stream_base: Option<String>,
    /// `metrics.listen`: address of the admin listener (/metrics, /debug/sessions, /healthz,
    /// /readyz) [default: 127.0.0.1:9765].
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

impl ServeArgs {
    fn flags(&self) -> Flags {
        Flags {
            listen: self.listen,
            upstream: self.upstream.clone(),
            base_path: self.base_path.clone(),
            compat_upgrade_client_first: self.compat_upgrade_client_first,
            compat_upstream_loss_is_success: self.compat_upstream_loss_is_success,
            cri_listen: self.cri_listen.clone(),
            runtime_endpoint: self.runtime_endpoint.clone(),
            advertise_url: self.advertise_url.clone(),
            runtime_stream_base: self.runtime_stream_base.clone(),
            metrics_listen: self.metrics_listen,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::CheckConfig { file } => return check_config(file),
        // Logging is set up from the configuration, once it is loaded.
        Command::Serve(args) => return block_on(serve_main(args)),
        other => other,
    };
    init_tracing(&LogSection::default());
    block_on(async {
        match command {
            Command::Demo => demo().await,
            Command::Serve(_) | Command::CheckConfig { .. } => unreachable!("handled above"),
            Command::WsExec { url, stdin } => ws_exec(&url, stdin).await,
            Command::SimExec {
                runtime,
                bridge,
                stdin,
                cmd,
            } => sim_exec(&runtime, bridge, stdin, cmd).await,
            Command::RuntimeSim {
                listen,
                allow_non_loopback,
            } => runtime_sim(listen, allow_non_loopback).await,
            Command::SpdyExec {
                url,
                stdin,
                no_stdout,
                no_stderr,
            } => {
                let opts = StreamOptions {
                    stdin,
                    stdout: !no_stdout,
                    stderr: !no_stderr,
                    tty: false,
                };
                spdy_exec(&url, opts).await
            }
        }
    })
}

fn block_on<F: std::future::Future<Output = ExitCode>>(fut: F) -> ExitCode {
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(fut)
}

/// Tracing on stderr, as `log` says; `RUST_LOG`, when set, wins over `log.level`.
fn init_tracing(log: &LogSection) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
}

fn print_errors(what: &str, errors: &ConfigErrors) {
    let n = errors.0.len();
    let plural = if n == 1 { "" } else { "s" };
    eprintln!("{what}: invalid configuration ({n} error{plural}):");
    for e in &errors.0 {
        eprintln!("  {e}");
    }
}

/// `check-config FILE`: the effective configuration, secrets masked, or every error.
fn check_config(file: PathBuf) -> ExitCode {
    let sources = Sources::from_process(Some(file), Flags::default());
    let cfg = match Config::load(&sources) {
        Ok(cfg) => cfg,
        Err(errors) => {
            print_errors("check-config", &errors);
            return ExitCode::FAILURE;
        }
    };
    let files = cfg.check_files();
    if !files.is_empty() {
        print_errors("check-config", &ConfigErrors(files));
        return ExitCode::FAILURE;
    }
    print!("{}", cfg.to_masked_yaml());
    ExitCode::SUCCESS
}

/// Resolves when the process is asked to stop: SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `serve`: load the configuration (the built-in simulator stands in for a missing upstream
/// when there is no file), set up logging, then [`serve`].
async fn serve_main(args: ServeArgs) -> ExitCode {
    let sources = Sources::from_process(args.config.clone(), args.flags());
    let mut cfg = match Config::load_unvalidated(&sources) {
        Ok(cfg) => cfg,
        Err(errors) => {
            print_errors("serve", &errors);
            return ExitCode::FAILURE;
        }
    };
    let sim = if args.config.is_none() && cfg.cri.is_none() && cfg.upstream.url.is_none() {
        match RuntimeSim::start(SimConfig::default()).await {
            Ok(sim) => {
                cfg.upstream.url = Some(sim.base_url().parse().expect("simulator URL"));
                Some(sim)
            }
            Err(e) => {
                eprintln!("serve: cannot start the runtime simulator: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let cfg = match cfg.validated() {
        Ok(cfg) => cfg,
        Err(errors) => {
            print_errors("serve", &errors);
            return ExitCode::FAILURE;
        }
    };
    init_tracing(&cfg.log);
    let code = serve(&cfg, sim.as_ref()).await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
    code
}

/// Starts the admin listener, the CRI interceptor (CRI mode) and the bridge, then drains on
/// the first stop signal; a second one exits at once.
async fn serve(cfg: &Config, sim: Option<&RuntimeSim>) -> ExitCode {
    let mut bridge_cfg = match cfg.to_bridge_config() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::new());
    bridge_cfg.metrics = Some(metrics.clone());
    let cri = cfg.to_cri_config().map(|mut cri| {
        cri.metrics = Some(metrics.clone());
        cri
    });
    let ready = match &cri {
        Some(cri) => ReadyCheck::cri(&cri.runtime_endpoint),
        None => ReadyCheck::standalone(&bridge_cfg.upstream),
    };
    ready.expect_listener("streaming");
    let admin = match serve_admin(cfg.metrics.clone(), metrics, ready.clone()).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("serve: {e}");
            return ExitCode::FAILURE;
        }
    };

    // CRI interception: the bridge hands out its own streaming URLs and learns every
    // session's options from the CRI request behind them.
    let proxy = match cri {
        Some(cri) => {
            let store = Arc::new(cri.token_store());
            bridge_cfg.tokens = Some(store.clone());
            let listen = cri.listen.clone();
            match ws_spdy_bridge::cri::serve(cri, store).await {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("serve: CRI socket {}: {e}", listen.display());
                    admin.shutdown().await;
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    let bridge = match Bridge::start(bridge_cfg).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("serve: {e}");
            if let Some(p) = proxy {
                p.shutdown().await;
            }
            admin.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    ready.set_listener("streaming", true);
    print_banner(&bridge, proxy.as_ref(), sim, admin.addr());

    stop_signal().await;
    // Not ready any more, so that endpoints drop this instance while its sessions drain.
    ready.set_listener("streaming", false);
    tracing::info!(deadline = ?cfg.drain.deadline, "stop signal: draining");
    let drain = async {
        let cri = async {
            if let Some(p) = proxy {
                p.shutdown().await;
            }
        };
        tokio::join!(cri, bridge.drain(cfg.drain.deadline));
    };
    tokio::select! {
        () = drain => tracing::info!("drained"),
        () = stop_signal() => tracing::warn!("second stop signal: exiting without waiting"),
    }
    admin.shutdown().await;
    ExitCode::SUCCESS
}

/// What `serve` prints on stdout once it listens. A closed stdout does not stop the server.
fn print_banner(
    bridge: &Bridge,
    proxy: Option<&ws_spdy_bridge::cri::CriProxy>,
    sim: Option<&RuntimeSim>,
    admin: SocketAddr,
) {
    use std::io::Write;
    let addr = bridge.addr();
    let mut lines = Vec::new();
    if let Some(proxy) = proxy {
        lines.push(format!(
            "bridge on ws://{addr}; CRI on unix:{} (point the kubelet's --container-runtime-endpoint here)",
            proxy.socket_path().display()
        ));
    } else if let Some(sim) = sim {
        let base = sim.base_url();
        lines.push(format!(
            "bridge on ws://{addr} in front of the built-in runtime simulator ({base})"
        ));
        // The path of this very binary, so the printed commands work from any directory.
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "ws-spdy-bridge".into());
        lines.push("try it (in another terminal):".into());
        lines.push(format!(
            "  {exe} sim-exec --runtime {base} --bridge {addr} -- sh -c 'echo hello; exit 3'"
        ));
        lines.push(format!(
            "  echo typed | {exe} sim-exec --stdin --runtime {base} --bridge {addr} -- cat"
        ));
    } else {
        lines.push(format!("bridge on ws://{addr}"));
    }
    lines.push(format!("admin (metrics, health) on http://{admin}"));
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

async fn runtime_sim(listen: SocketAddr, allow_non_loopback: bool) -> ExitCode {
    let cfg = SimConfig {
        listen,
        allow_non_loopback,
        ..SimConfig::default()
    };
    let sim = match RuntimeSim::start(cfg).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("runtime-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base = sim.base_url().to_owned();
    println!("runtime simulator listening on {base}");
    println!(
        "get a streaming URL:  curl -s -XPOST {base}/cri/exec -d '{{\"container_id\":\"demo\",\"cmd\":[\"echo\",\"hi\"],\"stdout\":true,\"stderr\":true}}'"
    );
    println!("then run it:          ws-spdy-bridge spdy-exec <url>");
    let _ = tokio::signal::ctrl_c().await;
    sim.shutdown().await;
    ExitCode::SUCCESS
}

async fn sim_exec(runtime: &str, bridge: SocketAddr, stdin: bool, cmd: Vec<String>) -> ExitCode {
    let request = ExecRequest {
        container_id: "demo".into(),
        cmd,
        stdin,
        stdout: true,
        stderr: true,
        ..ExecRequest::default()
    };
    let token = match cri_exec_token(runtime, &request).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: asking the runtime simulator for an exec URL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("ws://{bridge}/exec/{token}?stdin={stdin}&stdout=true&stderr=true");
    ws_exec(&url, stdin).await
}

/// `POST <runtime>/cri/exec` on the simulator; the token of the URL it returns.
async fn cri_exec_token(runtime: &str, request: &ExecRequest) -> Result<String, String> {
    let uri: http::Uri = runtime.parse().map_err(|e| format!("{e}"))?;
    let authority = uri
        .authority()
        .ok_or("no host in the runtime URL")?
        .to_string();
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let mut tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST /cri/exec HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(&body).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let json = text.split("\r\n\r\n").nth(1).ok_or("malformed response")?;
    let value: serde_json::Value =
        serde_json::from_str(json.trim()).map_err(|e| format!("{e}: {json}"))?;
    let url = value["url"]
        .as_str()
        .ok_or_else(|| format!("no url in {json}"))?;
    Ok(url.rsplit('/').next().unwrap_or_default().to_owned())
}

async fn ws_exec(url: &str, stdin: bool) -> ExitCode {
    let input = stdin.then(tokio::io::stdin);
    match wsclient::run(url, input, tokio::io::stdout(), tokio::io::stderr()).await {
        Ok(outcome) => report(outcome),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> ExitCode {
    let sim = match RuntimeSim::start(SimConfig::default()).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("demo: cannot start the runtime simulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = BridgeConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        upstream: sim.base_url().parse().expect("simulator URL"),
        ..BridgeConfig::default()
    };
    let bridge = match Bridge::start(cfg).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("demo: cannot start the bridge: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "legacy runtime (SPDY only) on {}; bridge (WebSocket v5) on ws://{}",
        sim.base_url(),
        bridge.addr()
    );
    let mut code = ExitCode::SUCCESS;
    for (cmd, stdin) in [
        (
            vec!["echo", "hello from a legacy runtime, over WebSocket v5"],
            None,
        ),
        (
            vec!["cat"],
            Some("stdin reaches the runtime and CLOSE ends it\n"),
        ),
        (vec!["sh", "-c", "echo to stderr >&2; exit 3"], None),
    ] {
        let request = ExecRequest {
            container_id: "demo".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdin: stdin.is_some(),
            stdout: true,
            stderr: true,
            ..ExecRequest::default()
        };
        let Ok(runtime_url) = sim.exec(request) else {
            eprintln!("demo: the simulator refused the exec request");
            return ExitCode::FAILURE;
        };
        let token = runtime_url.rsplit('/').next().unwrap_or_default();
        let url = format!(
            "ws://{}/exec/{token}?stdin={}&stdout=true&stderr=true",
            bridge.addr(),
            stdin.is_some()
        );
        println!("\n$ {}", cmd.join(" "));
        let input = stdin.map(|s| std::io::Cursor::new(s.as_bytes().to_vec()));
        let outcome = wsclient::run(&url, input, tokio::io::stdout(), tokio::io::stderr()).await;
        match outcome {
            Ok(o) => {
                let _ = report(o);
            }
            Err(e) => {
                eprintln!("demo: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    bridge.shutdown().await;
    sim.shutdown().await;
    code
}

/// Prints an outcome as kubectl would and turns it into an exit code.
fn report(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Success => ExitCode::SUCCESS,
        Outcome::ExitCode { code, .. } => {
            eprintln!("command terminated with exit code {code}");
            ExitCode::from(code)
        }
        Outcome::Failure(status) => {
            eprintln!("error: {}", status.message);
            ExitCode::FAILURE
        }
        Outcome::Text(text) => {
            eprintln!("error executing remote command: {text}");
            ExitCode::FAILURE
        }
        Outcome::ProtocolError(text) => {
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

async fn spdy_exec(url: &http::Uri, opts: StreamOptions) -> ExitCode {
    let mut session = match RemoteCommand::start(
        url,
        opts,
        &UpstreamConfig::default(),
        client_connection_config(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdin_task = session.stdin.take().map(|mut w| {
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match tokio::io::AsyncReadExt::read(&mut input, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.send(bytes::Bytes::copy_from_slice(&buf[..n]))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = w.finish().await;
        })
    });
    let copy = |reader: Option<ws_spdy_bridge::connection::StreamReader>, to_stderr: bool| {
        tokio::spawn(async move {
            let Some(mut reader) = reader else { return };
            while let Some(piece) = reader.recv().await {
                // Flushed per piece so output keeps its order with what we print around it.
                let _ = if to_stderr {
                    let mut e = tokio::io::stderr();
                    let _ = e.write_all(&piece).await;
                    e.flush().await
                } else {
                    let mut o = tokio::io::stdout();
                    let _ = o.write_all(&piece).await;
                    o.flush().await
                };
            }
        })
    };
    let out = copy(session.stdout.take(), false);
    let err = copy(session.stderr.take(), true);
    let outcome = session.read_outcome(DEFAULT_ERROR_STREAM_CAP).await;
    let _ = tokio::join!(out, err);
    if let Some(t) = stdin_task {
        t.abort();
    }
    session.close().await;
    let _ = tokio::io::stdout().flush().await;
    report(outcome)
}
