//! Command line: parse flags, set up logging, call the library.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::io::AsyncWriteExt;
use ws_spdy_bridge::runtime_sim::{ExecRequest, RuntimeSim, SimConfig};
use ws_spdy_bridge::upstream::UpstreamConfig;
use ws_spdy_bridge::upstream::remotecommand::{
    DEFAULT_ERROR_STREAM_CAP, Outcome, RemoteCommand, StreamOptions, client_connection_config,
};

#[derive(Parser)]
#[command(
    version,
    about = "WebSocket to SPDY/3.1 bridge for Kubernetes container streaming"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the legacy-runtime simulator and run commands through the SPDY engine against it.
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

async fn demo() -> ExitCode {
    let sim = match RuntimeSim::start(SimConfig::default()).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("demo: cannot start the runtime simulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("runtime simulator on {}", sim.base_url());
    let mut code = ExitCode::SUCCESS;
    for cmd in [
        vec!["echo", "hello from a legacy runtime, over SPDY/3.1"],
        vec!["sh", "-c", "echo to stderr >&2; exit 3"],
    ] {
        let request = ExecRequest {
            container_id: "demo".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdout: true,
            stderr: true,
            ..ExecRequest::default()
        };
        let url: http::Uri = match sim.exec(request).map(|u| u.parse()) {
            Ok(Ok(url)) => url,
            _ => {
                eprintln!("demo: the simulator refused the exec request");
                return ExitCode::FAILURE;
            }
        };
        println!("\n$ {}", cmd.join(" "));
        let opts = StreamOptions {
            stdout: true,
            stderr: true,
            ..StreamOptions::default()
        };
        if spdy_exec(&url, opts).await == ExitCode::FAILURE {
            code = ExitCode::FAILURE;
        }
    }
    sim.shutdown().await;
    code
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
