//! Long-running "containers": a process whose stdio an attach session connects to.
//!
//! Output is pumped all the time; while nobody is attached it is dropped, like a runtime
//! without container logs. One attach session at a time.

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::process::{self, Input, Output, SpawnSpec};
use super::pty::PtyMaster;

/// Output chunks queued per attached stream before the container's pump waits.
const ATTACH_QUEUE: usize = 16;

/// A container to start (`POST /cri/containers`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Container id, used by attach and exec requests.
    pub id: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Run on a terminal.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open for attach sessions (otherwise the process reads `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
}

#[derive(Default)]
struct Attached {
    id: u64,
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Option<mpsc::Sender<Bytes>>,
}

#[derive(Default)]
struct Outputs {
    next_id: u64,
    current: Option<Attached>,
    /// Both output pumps have ended: new attachments get no output.
    ended: bool,
}

/// A started container.
pub struct Container {
    id: String,
    tty: bool,
    stdin: Option<tokio::sync::Mutex<Input>>,
    terminal: Option<Arc<PtyMaster>>,
    outputs: Mutex<Outputs>,
    /// `Some(exit code)` once the process has exited.
    exit: watch::Receiver<Option<i32>>,
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy)]
enum Which {
    Stdout,
    Stderr,
}

impl Container {
    /// Starts the container's process. The returned future pumps its output and owns the
    /// process: dropping it (aborting its task) kills the process group.
    pub fn start(
        spec: &ContainerSpec,
        max_chunk: usize,
    ) -> Result<(Arc<Container>, impl Future<Output = ()> + Send + 'static), process::SpawnError>
    {
        let mut spawned = process::spawn(&SpawnSpec {
            argv: spec.command.clone(),
            tty: spec.tty,
            stdin: spec.stdin,
            stdout: true,
            stderr: !spec.tty,
        })?;
        let (exit_tx, exit_rx) = watch::channel(None);
        let container = Arc::new(Container {
            id: spec.id.clone(),
            tty: spec.tty,
            stdin: spawned.stdin.take().map(tokio::sync::Mutex::new),
            terminal: spawned.terminal.clone(),
            outputs: Mutex::new(Outputs::default()),
            exit: exit_rx,
        });
        let stdout = spawned.stdout.take();
        let stderr = spawned.stderr.take();
        let this = container.clone();
        let run = async move {
            let killer = spawned.killer;
            tokio::join!(
                this.pump(stdout, Which::Stdout, max_chunk),
                this.pump(stderr, Which::Stderr, max_chunk)
            );
            {
                let mut outputs = this.outputs.lock().expect("outputs lock");
                outputs.ended = true;
                // Dropping the senders ends the attached session's output.
                if let Some(current) = outputs.current.as_mut() {
                    current.stdout = None;
                    current.stderr = None;
                }
            }
            let code = match spawned.child.wait().await {
                Ok(status) => process::exit_code(status),
                Err(_) => 255,
            };
            tracing::debug!(container = %this.id, code, "container exited");
            drop(killer);
            let _ = exit_tx.send(Some(code));
        };
        Ok((container, run))
    }

    async fn pump(&self, output: Option<Output>, which: Which, max_chunk: usize) {
        let Some(mut output) = output else { return };
        loop {
            let mut buf = BytesMut::with_capacity(max_chunk);
            match output.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let sender = {
                let outputs = self.outputs.lock().expect("outputs lock");
                outputs.current.as_ref().and_then(|a| match which {
                    Which::Stdout => a.stdout.clone(),
                    Which::Stderr => a.stderr.clone(),
                })
            };
            if let Some(sender) = sender {
                // A detached session drops its receiver; the chunk is then dropped too.
                let _ = sender.send(buf.freeze()).await;
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// The terminal, if the container has one.
    pub fn terminal(&self) -> Option<&Arc<PtyMaster>> {
        self.terminal.as_ref()
    }

    /// The process's stdin, if the container keeps it open.
    pub fn stdin(&self) -> Option<&tokio::sync::Mutex<Input>> {
        self.stdin.as_ref()
    }

    /// Resolves with the exit code once the process has exited.
    pub async fn exited(&self) -> i32 {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(255),
            // The pump was dropped (simulator shut down): the process is gone.
            Err(_) => 137,
        }
    }

    /// Connects a session to the container's output. Fails while another session is attached.
    /// With a terminal all output arrives as stdout.
    pub fn attach(self: &Arc<Self>, stdout: bool, stderr: bool) -> Result<Attachment, String> {
        let mut outputs = self.outputs.lock().expect("outputs lock");
        if outputs.current.is_some() {
            return Err(format!(
                "container {:?} already has an attached session",
                self.id
            ));
        }
        outputs.next_id += 1;
        let id = outputs.next_id;
        let channel = |wanted: bool| {
            if wanted && !outputs.ended {
                let (tx, rx) = mpsc::channel(ATTACH_QUEUE);
                (Some(tx), Some(rx))
            } else {
                (None, None)
            }
        };
        let (out_tx, out_rx) = channel(stdout);
        let (err_tx, err_rx) = channel(stderr && !self.tty);
        outputs.current = Some(Attached {
            id,
            stdout: out_tx,
            stderr: err_tx,
        });
        Ok(Attachment {
            container: self.clone(),
            id,
            stdout: out_rx,
            stderr: err_rx,
        })
    }
}

/// A session's connection to a container's output; detaches when dropped.
pub struct Attachment {
    container: Arc<Container>,
    id: u64,
    /// Container stdout (all output with a terminal), if requested.
    pub stdout: Option<mpsc::Receiver<Bytes>>,
    /// Container stderr, if requested and the container has no terminal.
    pub stderr: Option<mpsc::Receiver<Bytes>>,
}

impl Attachment {
    /// The container attached to.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut outputs = self.container.outputs.lock().expect("outputs lock");
        if outputs.current.as_ref().is_some_and(|a| a.id == self.id) {
            outputs.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn spec(command: &[&str], stdin: bool) -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            tty: false,
            stdin,
        }
    }

    #[tokio::test]
    async fn attached_session_receives_output_and_feeds_stdin() {
        let (c, run) = Container::start(&spec(&["cat"], true), 1024).unwrap();
        let task = tokio::spawn(run);
        let mut a = c.attach(true, true).unwrap();
        assert!(c.attach(true, false).is_err(), "second attach refused");
        c.stdin()
            .unwrap()
            .lock()
            .await
            .write_all(b"ping\n")
            .await
            .unwrap();
        assert_eq!(a.stdout.as_mut().unwrap().recv().await.unwrap(), "ping\n");
        drop(a);
        // Detached: a new session may attach.
        let _b = c.attach(true, false).unwrap();
        task.abort();
        let _ = task.await;
        assert_eq!(c.exited().await, 137);
    }

    #[tokio::test]
    async fn output_ends_when_the_container_exits() {
        let (c, run) =
            Container::start(&spec(&["sh", "-c", "read x; echo bye"], true), 1024).unwrap();
        let mut a = c.attach(true, false).unwrap();
        tokio::spawn(run);
        c.stdin()
            .unwrap()
            .lock()
            .await
            .write_all(b"\n")
            .await
            .unwrap();
        let rx = a.stdout.as_mut().unwrap();
        assert_eq!(rx.recv().await.unwrap(), "bye\n");
        assert!(rx.recv().await.is_none());
        assert_eq!(c.exited().await, 0);
        assert!(!c.is_running());
    }
}
