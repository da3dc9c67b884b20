//! Starting the processes behind exec sessions and containers, with pipes or a terminal.
//!
//! Every process leads its own process group (`process_group(0)`, or `setsid` for a terminal),
//! and [`GroupKiller`] kills that whole group when dropped, so that ending a session or
//! shutting the simulator down leaves nothing behind, grandchildren included.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::{Child, Command};

use super::pty::{self, PtyMaster, PtyReader, PtyWriter};

/// What to start and which standard streams to connect.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    /// Program and arguments; the program is looked up in `PATH` unless it contains `/`.
    pub argv: Vec<String>,
    /// Run on a new terminal (stdout and stderr both go to it).
    pub tty: bool,
    /// Connect stdin (otherwise `/dev/null`, or an unused terminal input).
    pub stdin: bool,
    /// Connect stdout (otherwise `/dev/null`).
    pub stdout: bool,
    /// Connect stderr (otherwise `/dev/null`; ignored with a terminal).
    pub stderr: bool,
}

/// A boxed async reader of process output.
pub type Output = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed async writer of process input.
pub type Input = Box<dyn AsyncWrite + Send + Unpin>;

/// A started process and its connected streams.
pub struct Spawned {
    /// The process (the command itself; `setsid` replaces itself with it).
    pub child: Child,
    /// Kills the process group on drop.
    pub killer: GroupKiller,
    /// Process stdin, if requested (the terminal input with a tty).
    pub stdin: Option<Input>,
    /// Process stdout (the terminal output with a tty), if requested or with a tty.
    pub stdout: Option<Output>,
    /// Process stderr, if requested and without a tty.
    pub stderr: Option<Output>,
    /// The terminal, for resizing.
    pub terminal: Option<Arc<PtyMaster>>,
}

/// Kills a process group (SIGKILL) when dropped.
#[derive(Debug)]
pub struct GroupKiller {
    pgid: Option<Pid>,
}

impl GroupKiller {
    fn for_child(child: &Child) -> Self {
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw);
        GroupKiller { pgid }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (group already gone) is the normal case after a clean exit.
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
    }
}

/// Why a process could not be started; the text is what the runtime reports.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Empty argv.
    #[error("no command specified")]
    NoCommand,
    /// The program was not found or is not executable.
    #[error("exec: {name:?}: {reason}")]
    NotFound {
        /// Program as given.
        name: String,
        /// Why it was not usable.
        reason: String,
    },
    /// The OS refused (fork, pty, ...).
    #[error("{what}: {source}")]
    Os {
        /// What failed.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// Starts `spec.argv`. Must run inside a tokio runtime.
pub fn spawn(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    let name = spec.argv.first().ok_or(SpawnError::NoCommand)?;
    let program = look_path(name)?;
    if spec.tty {
        spawn_tty(spec, &program)
    } else {
        spawn_pipes(spec, &program)
    }
}

fn spawn_pipes(spec: &SpawnSpec, program: &Path) -> Result<Spawned, SpawnError> {
    let pipe_or_null = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut cmd = Command::new(program);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .stdin(pipe_or_null(spec.stdin))
        .stdout(pipe_or_null(spec.stdout))
        .stderr(pipe_or_null(spec.stderr))
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| SpawnError::Os {
        what: "start process",
        source,
    })?;
    let killer = GroupKiller::for_child(&child);
    Ok(Spawned {
        stdin: child.stdin.take().map(|s| Box::new(s) as Input),
        stdout: child.stdout.take().map(|s| Box::new(s) as Output),
        stderr: child.stderr.take().map(|s| Box::new(s) as Output),
        terminal: None,
        killer,
        child,
    })
}

/// A terminal child: `setsid --ctty` makes it a session leader with the pty slave (its stdin)
/// as controlling terminal, which needs no `pre_exec` hook and so no `unsafe`.
fn spawn_tty(spec: &SpawnSpec, program: &Path) -> Result<Spawned, SpawnError> {
    let os = |what| move |source| SpawnError::Os { what, source };
    let (master, slave) = pty::open().map_err(os("open pseudo-terminal"))?;
    let slave_stdio = |fd: &OwnedFd| -> Result<Stdio, SpawnError> {
        Ok(Stdio::from(
            fd.try_clone().map_err(os("duplicate pty slave"))?,
        ))
    };
    let mut cmd = Command::new("setsid");
    cmd.arg("--ctty")
        .arg(program)
        // containerd sets this for every terminal process.
        .env("TERM", "xterm")
        .args(&spec.argv[1..])
        .stdin(slave_stdio(&slave)?)
        .stdout(slave_stdio(&slave)?)
        .stderr(slave_stdio(&slave)?)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(os("start setsid"))?;
    // Our copies of the slave must go, or the master never reads EOF.
    drop(slave);
    drop(cmd);
    let killer = GroupKiller::for_child(&child);
    Ok(Spawned {
        stdin: spec
            .stdin
            .then(|| Box::new(PtyWriter(master.clone())) as Input),
        stdout: Some(Box::new(PtyReader(master.clone())) as Output),
        stderr: None,
        terminal: Some(master),
        killer,
        child,
    })
}

/// Go's `exec.LookPath`: a name with a slash is used as is, others are searched in `PATH`.
fn look_path(name: &str) -> Result<PathBuf, SpawnError> {
    let not_found = |reason: &str| SpawnError::NotFound {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(not_found("executable file not found in $PATH"));
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(not_found("no such executable file"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".").join(name)
            } else {
                dir.join(name)
            }
        })
        .find(|p| is_executable(p))
        .ok_or_else(|| not_found("executable file not found in $PATH"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The exit code a runtime reports: the process's own code, or 128 + signal number.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn spec(argv: &[&str], tty: bool) -> SpawnSpec {
        SpawnSpec {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            tty,
            stdin: true,
            stdout: true,
            stderr: !tty,
        }
    }

    #[tokio::test]
    async fn piped_process_echoes_stdin_and_reports_its_exit_code() {
        let mut p = spawn(&spec(&["sh", "-c", "cat; echo err >&2; exit 3"], false)).unwrap();
        let mut stdin = p.stdin.take().unwrap();
        stdin.write_all(b"hello").await.unwrap();
        drop(stdin);
        let mut out = String::new();
        p.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        let mut err = String::new();
        p.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        assert_eq!((out.as_str(), err.as_str()), ("hello", "err\n"));
        assert_eq!(exit_code(p.child.wait().await.unwrap()), 3);
    }

    #[tokio::test]
    async fn terminal_process_sees_a_tty_of_the_size_set() {
        let mut p = spawn(&spec(&["sh", "-c", "read x; tty -s && stty size"], true)).unwrap();
        p.terminal.as_ref().unwrap().set_size(100, 30).unwrap();
        p.stdin.take().unwrap().write_all(b"go\n").await.unwrap();
        let mut out = Vec::new();
        p.stdout
            .take()
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("30 100\r\n"), "{out:?}");
        assert_eq!(exit_code(p.child.wait().await.unwrap()), 0);
    }

    #[tokio::test]
    async fn missing_program_is_reported_like_go() {
        let err = spawn(&spec(&["no-such-program-xyz"], false)).err().unwrap();
        assert_eq!(
            err.to_string(),
            "exec: \"no-such-program-xyz\": executable file not found in $PATH"
        );
    }

    #[tokio::test]
    async fn dropping_the_killer_kills_the_whole_group() {
        let mut p = spawn(&spec(&["sh", "-c", "sleep 30 & wait"], false)).unwrap();
        drop(p.killer);
        let status = p.child.wait().await.unwrap();
        assert_eq!(exit_code(status), 128 + 9);
    }
}
