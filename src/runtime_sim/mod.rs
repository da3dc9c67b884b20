//! A legacy container runtime's streaming server, for fast tests and the demo: the server side
//! of the kubelet `cri/streaming` library as containerd 1.6 embeds it.
//!
//! * CRI side: [`RuntimeSim::exec`], [`RuntimeSim::attach`], [`RuntimeSim::port_forward`]
//!   validate the request like a CRI server, store it under a single-use token and return the
//!   streaming URL. The same calls are served as JSON on the listener (`POST /cri/exec`,
//!   `/cri/attach`, `/cri/portforward`, and `/cri/containers` to start a container), for
//!   out-of-process users.
//! * Streaming side: `GET`/`POST` `/exec/{token}`, `/attach/{token}`, `/portforward/{token}`
//!   upgrade to SPDY/3.1 exactly as the kubelet library ≥ 1.35 does (protocol.md §2), then run
//!   remote command (§3) or port-forward (§6) sessions.
//!
//! Exec runs the command on this machine; port-forward dials `127.0.0.1:<port>`, the
//! simulator's "pod network". Every process leads its own process group and is killed with
//! its session; [`RuntimeSim::shutdown`] (or dropping the simulator) stops the listener,
//! aborts every session and kills every process.

mod config;
mod container;
mod error;
mod handshake;
mod http;
mod portforward;
mod process;
mod pty;
mod remotecommand;
mod tokens;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use crate::channel::resize::{ResizeDecoder, ResizeError, TerminalSize};
pub use config::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_CHUNK, DEFAULT_MAX_TOKENS,
    DEFAULT_STREAM_CREATION_TIMEOUT, DEFAULT_TOKEN_TTL, SimConfig,
};
pub use container::ContainerSpec;
pub use error::SimError;
pub use handshake::{PORT_FORWARD_PROTOCOLS, REMOTE_COMMAND_PROTOCOLS};
pub use tokens::{TOKEN_LEN, TokenCache, TokenError};

use container::Container;

/// CRI `ExecRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecRequest {
    /// Container to run in; with [`SimConfig::any_container`] any non-empty id.
    #[serde(alias = "containerId")]
    pub container_id: String,
    /// Program and arguments.
    pub cmd: Vec<String>,
    /// Run on a terminal (then `stderr` must be false).
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// CRI `AttachRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachRequest {
    /// A container started with [`RuntimeSim::create_container`].
    #[serde(alias = "containerId")]
    pub container_id: String,
    /// Expect a terminal (adds the resize stream for v3+).
    pub tty: bool,
    /// Stream stdin.
    pub stdin: bool,
    /// Stream stdout.
    pub stdout: bool,
    /// Stream stderr.
    pub stderr: bool,
}

/// CRI `PortForwardRequest`. Over SPDY the port list is not used: every stream names its port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortForwardRequest {
    /// Sandbox id; appears in port-forward error messages.
    #[serde(alias = "podSandboxId")]
    pub pod_sandbox_id: String,
    /// Ports (CRI field `port`).
    #[serde(alias = "port")]
    pub ports: Vec<u16>,
}

/// A request stored under a token.
#[derive(Clone, Debug)]
pub(crate) enum Cached {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

/// The running simulator. Dropping it shuts it down (without waiting).
pub struct RuntimeSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// State shared by the listener, the HTTP handlers and the sessions.
pub(crate) struct Shared {
    cfg: SimConfig,
    base_url: String,
    tokens: Mutex<TokenCache<Cached>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Every task the simulator started; `None` once shut down.
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl RuntimeSim {
    /// Binds the listener and starts serving. Must run inside a tokio runtime.
    pub async fn start(cfg: SimConfig) -> Result<RuntimeSim, SimError> {
        if !cfg.listen.ip().is_loopback() && !cfg.allow_non_loopback {
            return Err(SimError::NonLoopback(cfg.listen));
        }
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| SimError::io(format!("listen on {}", cfg.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SimError::io("read listen address", e))?;
        let base_url = format!("http://{addr}{}", cfg.normalized_base_path());
        let shared = Arc::new(Shared {
            tokens: Mutex::new(TokenCache::new(cfg.token_ttl, cfg.max_tokens)),
            containers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Some(JoinSet::new())),
            base_url,
            cfg,
        });
        shared.spawn(http::serve(listener, shared.clone()));
        tracing::info!(%addr, "runtime simulator listening");
        Ok(RuntimeSim { shared, addr })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><base path>`, the prefix of every streaming URL.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// CRI `Exec`: validates `req` and returns its streaming URL.
    pub fn exec(&self, req: ExecRequest) -> Result<String, SimError> {
        self.shared.exec(req)
    }

    /// CRI `Attach`: validates `req` and returns its streaming URL.
    pub fn attach(&self, req: AttachRequest) -> Result<String, SimError> {
        self.shared.attach(req)
    }

    /// CRI `PortForward`: validates `req` and returns its streaming URL.
    pub fn port_forward(&self, req: PortForwardRequest) -> Result<String, SimError> {
        self.shared.port_forward(req)
    }

    /// Starts a long-running container whose stdio attach sessions connect to.
    pub fn create_container(&self, spec: ContainerSpec) -> Result<(), SimError> {
        self.shared.create_container(spec)
    }

    /// Outstanding streaming tokens.
    pub fn outstanding_tokens(&self) -> usize {
        self.shared.tokens.lock().expect("token lock").len()
    }

    /// Stops the listener, aborts every connection and session, kills every process and
    /// waits until all of it is gone.
    pub async fn shutdown(self) {
        let tasks = self.shared.stop();
        if let Some(mut tasks) = tasks {
            while tasks.join_next().await.is_some() {}
        }
    }
}

impl Drop for RuntimeSim {
    fn drop(&mut self) {
        // Aborted tasks drop their processes' kill guards when the runtime next polls them.
        drop(self.shared.stop());
    }
}

impl Shared {
    /// Runs `fut` as a task the simulator tracks and aborts at shutdown. After shutdown the
    /// future is dropped unstarted.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = self.tasks.lock().expect("task lock");
        if let Some(set) = tasks.as_mut() {
            // Reap finished tasks so the set does not grow with the number of sessions served.
            while set.try_join_next().is_some() {}
            set.spawn(fut);
        }
    }

    /// Marks the simulator shut down, aborts every task and kills every container.
    fn stop(&self) -> Option<JoinSet<()>> {
        let mut tasks = self.tasks.lock().expect("task lock").take();
        if let Some(set) = tasks.as_mut() {
            set.abort_all();
        }
        self.containers.lock().expect("container lock").clear();
        tasks
    }

    pub(crate) fn config(&self) -> &SimConfig {
        &self.cfg
    }

    fn check_open(&self) -> Result<(), SimError> {
        if self.tasks.lock().expect("task lock").is_none() {
            return Err(SimError::ShutDown);
        }
        Ok(())
    }

    fn insert(&self, path: &str, req: Cached) -> Result<String, SimError> {
        self.check_open()?;
        let token = self
            .tokens
            .lock()
            .expect("token lock")
            .insert(req, Instant::now())
            .map_err(|e| match e {
                TokenError::Full => SimError::ResourceExhausted,
                TokenError::NoUniqueToken => SimError::io(
                    "generate token",
                    std::io::Error::other("failed to generate unique token"),
                ),
            })?;
        Ok(format!("{}/{path}/{token}", self.base_url))
    }

    /// Takes the request stored under `token`, if any and not expired.
    pub(crate) fn consume(&self, token: &str) -> Option<Cached> {
        self.tokens
            .lock()
            .expect("token lock")
            .consume(token, Instant::now())
    }

    pub(crate) fn container(&self, id: &str) -> Option<Arc<Container>> {
        self.containers
            .lock()
            .expect("container lock")
            .get(id)
            .cloned()
    }

    fn running_container(&self, id: &str) -> Result<Arc<Container>, SimError> {
        let c = self.container(id).ok_or_else(|| {
            SimError::NotFound(format!(
                "an error occurred when try to find container {id:?}: not found"
            ))
        })?;
        if !c.is_running() {
            return Err(SimError::FailedPrecondition(
                "container is in CONTAINER_EXITED state".into(),
            ));
        }
        Ok(c)
    }

    pub(crate) fn exec(&self, req: ExecRequest) -> Result<String, SimError> {
        validate_streams(
            &req.container_id,
            req.tty,
            req.stdin,
            req.stdout,
            req.stderr,
            "or",
        )?;
        if !self.cfg.any_container {
            self.running_container(&req.container_id)?;
        }
        self.insert("exec", Cached::Exec(req))
    }

    pub(crate) fn attach(&self, req: AttachRequest) -> Result<String, SimError> {
        validate_streams(
            &req.container_id,
            req.tty,
            req.stdin,
            req.stdout,
            req.stderr,
            "and",
        )?;
        self.running_container(&req.container_id)?;
        self.insert("attach", Cached::Attach(req))
    }

    pub(crate) fn port_forward(&self, req: PortForwardRequest) -> Result<String, SimError> {
        if req.pod_sandbox_id.is_empty() {
            return Err(SimError::InvalidArgument(
                "missing required pod_sandbox_id".into(),
            ));
        }
        self.insert("portforward", Cached::PortForward(req))
    }

    pub(crate) fn create_container(&self, spec: ContainerSpec) -> Result<(), SimError> {
        self.check_open()?;
        if spec.id.is_empty() {
            return Err(SimError::InvalidArgument("missing required id".into()));
        }
        let mut containers = self.containers.lock().expect("container lock");
        if containers.contains_key(&spec.id) {
            return Err(SimError::AlreadyExists(format!(
                "container {:?} already exists",
                spec.id
            )));
        }
        let (container, run) = Container::start(&spec, self.cfg.max_chunk)
            .map_err(|e| SimError::InvalidArgument(format!("failed to start container: {e}")))?;
        containers.insert(spec.id.clone(), container);
        drop(containers);
        self.spawn(run);
        Ok(())
    }
}

/// The CRI server's checks common to exec and attach. `conj` reproduces the one-word
/// difference between the two messages ("stdin, stdout, or stderr" for exec, "and" for attach).
fn validate_streams(
    container_id: &str,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    conj: &str,
) -> Result<(), SimError> {
    if container_id.is_empty() {
        return Err(SimError::InvalidArgument(
            "missing required container_id".into(),
        ));
    }
    if tty && stderr {
        return Err(SimError::InvalidArgument(
            "tty and stderr cannot both be true".into(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(SimError::InvalidArgument(format!(
            "one of stdin, stdout, {conj} stderr must be set"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sim() -> RuntimeSim {
        RuntimeSim::start(SimConfig::default()).await.unwrap()
    }

    fn exec(cmd: &str) -> ExecRequest {
        ExecRequest {
            container_id: "c".into(),
            cmd: vec![cmd.into()],
            stdout: true,
            ..ExecRequest::default()
        }
    }

    #[tokio::test]
    async fn exec_returns_a_url_with_an_eight_character_token() {
        let sim = sim().await;
        let url = sim.exec(exec("true")).unwrap();
        let prefix = format!("http://{}/exec/", sim.addr());
        let token = url.strip_prefix(&prefix).unwrap();
        assert_eq!(token.len(), TOKEN_LEN);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn cri_validation_rejects_tty_with_stderr_and_no_streams() {
        let sim = sim().await;
        let mut req = exec("true");
        req.tty = true;
        req.stderr = true;
        let err = sim.exec(req).unwrap_err();
        assert_eq!(err.to_string(), "tty and stderr cannot both be true");
        assert_eq!(err.grpc_code(), "InvalidArgument");
        let mut req = exec("true");
        req.stdout = false;
        assert_eq!(
            sim.exec(req).unwrap_err().to_string(),
            "one of stdin, stdout, or stderr must be set"
        );
        let err = sim
            .attach(AttachRequest {
                container_id: "c".into(),
                ..AttachRequest::default()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "one of stdin, stdout, and stderr must be set"
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn token_limit_fails_cri_calls_with_resource_exhausted() {
        let sim = RuntimeSim::start(SimConfig {
            max_tokens: 2,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        sim.exec(exec("true")).unwrap();
        sim.exec(exec("true")).unwrap();
        let err = sim.exec(exec("true")).unwrap_err();
        assert!(matches!(err, SimError::ResourceExhausted));
        assert_eq!(
            err.to_string(),
            "maximum number of in-flight requests exceeded"
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn unknown_containers_are_refused_unless_any_container() {
        let sim = RuntimeSim::start(SimConfig {
            any_container: false,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        assert!(matches!(
            sim.exec(exec("true")).unwrap_err(),
            SimError::NotFound(_)
        ));
        sim.create_container(ContainerSpec {
            id: "c".into(),
            command: vec!["cat".into()],
            tty: false,
            stdin: true,
        })
        .unwrap();
        sim.exec(exec("true")).unwrap();
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn non_loopback_listen_address_is_refused_by_default() {
        let err = RuntimeSim::start(SimConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            ..SimConfig::default()
        })
        .await
        .err()
        .unwrap();
        assert!(matches!(err, SimError::NonLoopback(_)));
    }
}
