//! A minimal CRI gRPC client over a unix socket.
//!
//! Built on `tonic`'s generic [`tonic::client::Grpc`] with `prost` messages from
//! [`super::proto`]: each call is one `Grpc::unary` with a [`tonic_prost::ProstCodec`] and the
//! method path from [`super::methods`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), ws_spdy_bridge::cri::CriError> {
//! use ws_spdy_bridge::cri::{CriClient, proto};
//! let cri = CriClient::connect_unix("/run/containerd/containerd.sock").await?;
//! let v = cri.version().await?;
//! println!("{} {}", v.runtime_name, v.runtime_version);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::Uri;
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

use super::methods;
use super::proto::*;

/// Errors of [`CriClient`].
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket could not be reached (or the HTTP/2 connection failed).
    #[error("cannot connect to the CRI socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered the call with a gRPC error (or the call failed in transport).
    #[error("CRI call {method} failed: {status}")]
    Call {
        method: &'static str,
        #[source]
        status: tonic::Status,
    },
}

impl CriError {
    /// The gRPC status of a failed call, if the error is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            CriError::Call { status, .. } => Some(status),
            CriError::Connect { .. } => None,
        }
    }
}

/// Settings of [`CriClient`].
#[derive(Clone, Debug)]
pub struct CriClientConfig {
    /// Bound on connecting to the socket.
    pub connect_timeout: Duration,
    /// Bound on each call (sent as `grpc-timeout` and enforced locally).
    pub call_timeout: Duration,
}

impl Default for CriClientConfig {
    fn default() -> Self {
        CriClientConfig {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// Connects every HTTP/2 connection of the channel to one unix socket, whatever the URI says.
#[derive(Clone)]
struct UnixConnector {
    path: Arc<Path>,
}

impl tower::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move { UnixStream::connect(&*path).await.map(TokioIo::new) })
    }
}

/// A codec that leaves messages as bytes.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A CRI client on one runtime socket. Cheap to clone; clones share the HTTP/2 connection.
#[derive(Clone)]
pub struct CriClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient").finish_non_exhaustive()
    }
}

impl CriClient {
    /// Connects to the runtime's CRI socket with default settings.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Self, CriError> {
        Self::connect_unix_with(path, CriClientConfig::default()).await
    }

    /// Connects to the runtime's CRI socket.
    pub async fn connect_unix_with(
        path: impl AsRef<Path>,
        config: CriClientConfig,
    ) -> Result<Self, CriError> {
        let path: Arc<Path> = Arc::from(path.as_ref());
        // The authority is only used for the HTTP/2 `:authority` pseudo-header; gRPC servers
        // on unix sockets (containerd uses grpc-go) accept any.
        let endpoint = Endpoint::from_static("http://localhost")
            .connect_timeout(config.connect_timeout)
            .timeout(config.call_timeout);
        let channel = endpoint
            .connect_with_connector(UnixConnector { path: path.clone() })
            .await
            .map_err(|source| CriError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(CriClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// Performs one unary call with a `prost` codec.
    pub async fn unary<Req, Resp>(&self, method: &'static str, req: Req) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        let fail = |status| CriError::Call { method, status };
        grpc.ready().await.map_err(|e| {
            fail(tonic::Status::unavailable(format!(
                "CRI connection not ready: {e}"
            )))
        })?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        grpc.unary(
            tonic::Request::new(req),
            PathAndQuery::from_static(method),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(fail)
    }

    /// `Version`.
    pub async fn version(&self) -> Result<VersionResponse, CriError> {
        self.unary(
            methods::VERSION,
            VersionRequest {
                version: "v1".into(),
            },
        )
        .await
    }

    /// `RunPodSandbox`: creates and starts a sandbox; returns its id.
    pub async fn run_pod_sandbox(&self, req: RunPodSandboxRequest) -> Result<String, CriError> {
        let resp: RunPodSandboxResponse = self.unary(methods::RUN_POD_SANDBOX, req).await?;
        Ok(resp.pod_sandbox_id)
    }

    /// `StopPodSandbox`: stops the sandbox and every container in it.
    pub async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriError> {
        let _: StopPodSandboxResponse = self
            .unary(
                methods::STOP_POD_SANDBOX,
                StopPodSandboxRequest {
                    pod_sandbox_id: pod_sandbox_id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// `RemovePodSandbox`: removes a stopped sandbox and its containers.
    pub async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriError> {
        let _: RemovePodSandboxResponse = self
            .unary(
                methods::REMOVE_POD_SANDBOX,
                RemovePodSandboxRequest {
                    pod_sandbox_id: pod_sandbox_id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// `CreateContainer`: returns the new container's id.
    pub async fn create_container(&self, req: CreateContainerRequest) -> Result<String, CriError> {
        let resp: CreateContainerResponse = self.unary(methods::CREATE_CONTAINER, req).await?;
        Ok(resp.container_id)
    }

    /// `StartContainer`.
    pub async fn start_container(&self, container_id: &str) -> Result<(), CriError> {
        let _: StartContainerResponse = self
            .unary(
                methods::START_CONTAINER,
                StartContainerRequest {
                    container_id: container_id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// `StopContainer` with a grace period in seconds (0 kills at once).
    pub async fn stop_container(&self, container_id: &str, timeout: i64) -> Result<(), CriError> {
        let _: StopContainerResponse = self
            .unary(
                methods::STOP_CONTAINER,
                StopContainerRequest {
                    container_id: container_id.into(),
                    timeout,
                },
            )
            .await?;
        Ok(())
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&self, container_id: &str) -> Result<(), CriError> {
        let _: RemoveContainerResponse = self
            .unary(
                methods::REMOVE_CONTAINER,
                RemoveContainerRequest {
                    container_id: container_id.into(),
                },
            )
            .await?;
        Ok(())
    }

    /// `ListContainers`.
    pub async fn list_containers(
        &self,
        filter: Option<ContainerFilter>,
    ) -> Result<Vec<Container>, CriError> {
        let resp: ListContainersResponse = self
            .unary(methods::LIST_CONTAINERS, ListContainersRequest { filter })
            .await?;
        Ok(resp.containers)
    }

    /// `ListPodSandbox`.
    pub async fn list_pod_sandbox(
        &self,
        filter: Option<PodSandboxFilter>,
    ) -> Result<Vec<PodSandbox>, CriError> {
        let resp: ListPodSandboxResponse = self
            .unary(methods::LIST_POD_SANDBOX, ListPodSandboxRequest { filter })
            .await?;
        Ok(resp.items)
    }

    /// Performs one unary call with an already encoded request and returns the response
    /// message's bytes as the server sent them: for any method, known to [`super::proto`] or
    /// not, and for comparing answers byte for byte.
    pub async fn unary_raw(&self, method: &'static str, req: Bytes) -> Result<Bytes, CriError> {
        let mut grpc = self.grpc.clone();
        let fail = |status| CriError::Call { method, status };
        grpc.ready().await.map_err(|e| {
            fail(tonic::Status::unavailable(format!(
                "CRI connection not ready: {e}"
            )))
        })?;
        grpc.unary(
            tonic::Request::new(req),
            PathAndQuery::from_static(method),
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(fail)
    }

    /// `Exec`: returns the single-use streaming URL.
    pub async fn exec(&self, req: ExecRequest) -> Result<String, CriError> {
        let resp: ExecResponse = self.unary(methods::EXEC, req).await?;
        Ok(resp.url)
    }

    /// `Attach`: returns the single-use streaming URL.
    pub async fn attach(&self, req: AttachRequest) -> Result<String, CriError> {
        let resp: AttachResponse = self.unary(methods::ATTACH, req).await?;
        Ok(resp.url)
    }

    /// `PortForward`: returns the single-use streaming URL.
    pub async fn port_forward(&self, req: PortForwardRequest) -> Result<String, CriError> {
        let resp: PortForwardResponse = self.unary(methods::PORT_FORWARD, req).await?;
        Ok(resp.url)
    }

    /// `ListImages` (ImageService; containerd serves both services on one socket).
    pub async fn list_images(&self, filter: Option<ImageFilter>) -> Result<Vec<Image>, CriError> {
        let resp: ListImagesResponse = self
            .unary(methods::LIST_IMAGES, ListImagesRequest { filter })
            .await?;
        Ok(resp.images)
    }
}
