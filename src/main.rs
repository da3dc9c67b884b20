//! Command line: parse flags, set up logging, call the library.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use ws_spdy_bridge::cri::CriProxyConfig;
use ws_spdy_bridge::runtime_sim::{ExecRequest, RuntimeSim, SimConfig};
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
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = BridgeConfig::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// The runtime's streaming server, e.g. http://127.0.0.1:41235. Without it, a built-in
        /// legacy-runtime simulator is started on loopback and used.
        #[arg(long)]
        upstream: Option<http::Uri>,
        /// Prefix of the bridge's routes.
        #[arg(long, default_value = "")]
        base_path: String,
        /// API-server order: answer 101 before contacting the runtime (upstream errors then
        /// arrive as a status on channel 3 instead of an HTTP error).
        #[arg(long)]
        compat_upgrade_client_first: bool,
        /// API-server behaviour: report a runtime that vanished mid-session as Success.
        #[arg(long)]
        compat_upstream_loss_is_success: bool,
        /// CRI interception: serve the CRI API on this socket (`unix:PATH`) and forward it to
        /// --runtime-endpoint; point the kubelet's --container-runtime-endpoint (or crictl's
        /// --runtime-endpoint) here.
        #[arg(long, requires_all = ["runtime_endpoint", "advertise_url"])]
        cri_listen: Option<String>,
        /// The runtime's CRI socket (`unix:PATH`).
        #[arg(long)]
        runtime_endpoint: Option<String>,
        /// The bridge's streaming URL as the kubelet reaches it, e.g. http://127.0.0.1:8765;
        /// CRI Exec/Attach/PortForward answers point there.
        #[arg(long)]
        advertise_url: Option<http::Uri>,
        /// The runtime's streaming address, for runtime URLs that lack a scheme or host.
        #[arg(long)]
        runtime_stream_base: Option<http::Uri>,
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        match cli.command {
            Command::Demo => demo().await,
            Command::Serve {
                listen,
                upstream,
                base_path,
                compat_upgrade_client_first,
                compat_upstream_loss_is_success,
                cri_listen,
                runtime_endpoint,
                advertise_url,
                runtime_stream_base,
            } => {
                let mut cfg = BridgeConfig {
                    listen,
                    base_path,
                    compat_upgrade_client_first,
                    ..BridgeConfig::default()
                };
                cfg.session.compat_upstream_loss_is_success = compat_upstream_loss_is_success;
                match (cri_listen, runtime_endpoint, advertise_url) {
                    (Some(listen), Some(endpoint), Some(advertise)) => {
                        let mut cri = CriProxyConfig::new(
                            unix_path(&listen),
                            unix_path(&endpoint),
                            advertise,
                        );
                        cri.runtime_stream_base = runtime_stream_base;
                        serve_cri(cfg, cri).await
                    }
                    _ => serve(cfg, upstream).await,
                }
            }
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

async fn serve(mut cfg: BridgeConfig, upstream: Option<http::Uri>) -> ExitCode {
    let sim = match upstream {
        Some(u) => {
            cfg.upstream = u;
            None
        }
        None => match RuntimeSim::start(SimConfig::default()).await {
            Ok(sim) => {
                cfg.upstream = sim.base_url().parse().expect("simulator URL");
                Some(sim)
            }
            Err(e) => {
                eprintln!("serve: cannot start the runtime simulator: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let bridge = match Bridge::start(cfg).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(sim) = &sim {
        let base = sim.base_url();
        println!(
            "bridge on ws://{} in front of the built-in runtime simulator ({base})",
            bridge.addr()
        );
        println!("try it:");
        println!(
            "  ws-spdy-bridge sim-exec --runtime {base} --bridge {} -- sh -c 'echo hello; exit 3'",
            bridge.addr()
        );
        println!(
            "  echo typed | ws-spdy-bridge sim-exec --stdin --runtime {base} --bridge {} -- cat",
            bridge.addr()
        );
    } else {
        println!("bridge on ws://{}", bridge.addr());
    }
    let _ = tokio::signal::ctrl_c().await;
    bridge.shutdown().await;
    if let Some(sim) = sim {
        sim.shutdown().await;
    }
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

fn unix_path(endpoint: &str) -> std::path::PathBuf {
    endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint)
        .into()
}

/// CRI interception: the bridge hands out its own streaming URLs and learns every session's
/// options from the CRI request behind them.
async fn serve_cri(mut cfg: BridgeConfig, cri: CriProxyConfig) -> ExitCode {
    if let Err(e) = cri.validate() {
        eprintln!("serve: {e}");
        return ExitCode::FAILURE;
    }
    let store = Arc::new(cri.token_store());
    cfg.tokens = Some(store.clone());
    cfg.base_path = cri.advertise_url.path().trim_end_matches('/').to_owned();
    let listen = cri.listen.clone();
    let proxy = match ws_spdy_bridge::cri::serve(cri, store).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("serve: CRI socket {}: {e}", listen.display());
            return ExitCode::FAILURE;
        }
    };
    let bridge = match Bridge::start(cfg).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("serve: {e}");
            proxy.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    println!(
        "bridge on ws://{}; CRI on unix:{} (point the kubelet's --container-runtime-endpoint here)",
        bridge.addr(),
        listen.display()
    );
    let _ = tokio::signal::ctrl_c().await;
    proxy.shutdown().await;
    bridge.shutdown().await;
    ExitCode::SUCCESS
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
