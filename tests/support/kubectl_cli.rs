//! Running real kubectl binaries from tests: finding `kubectl.1.NN`, running one with a time
//! limit and stdin/stdout/stderr of the test's choosing, a pseudo-terminal for `-it`, and the
//! reading helpers those need. Nothing here knows about the bridge or the fake API server.
//!
//! Binaries: `kubectl.1.NN` is looked for beside the `kubectl` on `PATH` (after resolving
//! symlinks), then in every `PATH` folder; [`KUBECTL_DIR_ENV`] names the only folder to use
//! instead. Each must report client version `v1.NN.*`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Env var naming the only folder to look for `kubectl.1.NN` in.
pub const KUBECTL_DIR_ENV: &str = "WS_SPDY_BRIDGE_KUBECTL_DIR";

/// One kubectl binary, checked to report the expected client version.
#[derive(Clone, Debug)]
pub struct Kubectl {
    pub path: PathBuf,
    /// `clientVersion.gitVersion`, e.g. `v1.31.4`.
    pub git_version: String,
}

/// Folders to look for `kubectl.1.NN` in, best first.
fn kubectl_dirs() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os(KUBECTL_DIR_ENV) {
        return vec![PathBuf::from(dir)];
    }
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut dirs = Vec::new();
    // The versioned binaries sit beside the real `kubectl`, which PATH often reaches through a
    // symlink.
    if let Some(real_dir) = path_dirs
        .iter()
        .map(|d| d.join("kubectl"))
        .filter(|k| k.is_file())
        .find_map(|k| fs::canonicalize(k).ok()?.parent().map(Path::to_path_buf))
    {
        dirs.push(real_dir);
    }
    dirs.extend(path_dirs);
    dirs
}

/// The `kubectl.<version>` binary (`version` is `1.NN`), looked up once per process.
pub fn find_kubectl(version: &'static str) -> Result<Kubectl, String> {
    static FOUND: Mutex<Option<HashMap<&'static str, Result<Kubectl, String>>>> = Mutex::new(None);
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    found
        .get_or_insert_with(HashMap::new)
        .entry(version)
        .or_insert_with(|| locate(version))
        .clone()
}

fn locate(version: &str) -> Result<Kubectl, String> {
    let file = format!("kubectl.{version}");
    let dirs = kubectl_dirs();
    let path = dirs
        .iter()
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{file} not found in {dirs:?}"))?;
    let out = Command::new(&path)
        .args(["version", "--client", "-o", "json"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} version --client: {e}", path.display()))?;
    let git_version = json["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !git_version.starts_with(&format!("v{version}.")) {
        return Err(format!(
            "{} reports client version {git_version:?}, not {version}",
            path.display()
        ));
    }
    Ok(Kubectl { path, git_version })
}

/// The minor version of `1.NN`.
pub fn minor(version: &str) -> u32 {
    version
        .rsplit('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_default()
}

/// Kills the child if it still runs when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl ChildGuard {
    /// The exit status, or `None` if the child still runs after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A finished run.
pub struct Run<T> {
    pub status: ExitStatus,
    pub out: T,
    pub stderr: String,
    pub elapsed: Duration,
}

pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// Runs `cmd` with `input` on stdin followed by EOF (`None`: `/dev/null`), `consume` reading
/// stdout; a run still going after `timeout` is killed and fails the test.
pub fn run_with<T: Send + 'static>(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
    what: &str,
    consume: impl FnOnce(ChildStdout) -> T + Send + 'static,
) -> Run<T> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = ChildGuard(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}")),
    );
    let writer = child.0.stdin.take().map(|mut stdin| {
        let data = input.unwrap_or_default();
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
            // Dropping stdin is the EOF that kubectl turns into the v5 CLOSE of stdin.
        })
    });
    let stdout = child.0.stdout.take().expect("stdout pipe");
    let out = thread::spawn(move || consume(stdout));
    let stderr = child.0.stderr.take().expect("stderr pipe");
    let err = thread::spawn(move || read_all(stderr));
    let Some(status) = child.wait_timeout(timeout) else {
        child.kill();
        let err = err.join().unwrap_or_default();
        panic!(
            "{what}: kubectl did not finish within {timeout:?}; stderr: {}",
            String::from_utf8_lossy(&err)
        );
    };
    let elapsed = t0.elapsed();
    if let Some(w) = writer {
        let _ = w.join();
    }
    let out = out.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    Run {
        status,
        out,
        stderr,
        elapsed,
    }
}

/// [`run_with`] collecting stdout.
pub fn run(cmd: Command, input: Option<Vec<u8>>, timeout: Duration, what: &str) -> Run<Vec<u8>> {
    run_with(cmd, input, timeout, what, read_all)
}

/// The run exited 0.
pub fn assert_success(run: &Run<Vec<u8>>, what: &str) {
    assert!(
        run.status.success(),
        "{what}: kubectl exited with {}; stdout {:?}; stderr {:?}",
        run.status,
        String::from_utf8_lossy(&run.out),
        run.stderr
    );
}

/// Chunks read from `r` on a thread of their own.
pub fn chunks(mut r: impl Read + Send + 'static) -> (Receiver<Vec<u8>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    (rx, handle)
}

/// Adds chunks from `rx` to `seen` until it holds `needle` (true), or `deadline` passes or the
/// output ends without it (false).
pub fn wait_for(
    rx: &Receiver<Vec<u8>>,
    seen: &mut Vec<u8>,
    needle: &[u8],
    deadline: Instant,
) -> bool {
    let found = |seen: &Vec<u8>| seen.windows(needle.len()).any(|w| w == needle);
    loop {
        if found(seen) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(RecvTimeoutError::Timeout) => return false,
            Err(RecvTimeoutError::Disconnected) => return found(seen),
        }
    }
}

/// A pseudo-terminal: kubectl gets the terminal side, the test keeps the master.
pub struct Pty {
    pub master: File,
    pub terminal: OwnedFd,
}

impl Pty {
    /// A new pty of `rows` × `cols`.
    pub fn open(rows: u16, cols: u16) -> Pty {
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        // NOCTTY: the test process must not make it its own controlling terminal.
        let terminal = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the terminal side");
        let pty = Pty {
            master: File::from(master),
            terminal,
        };
        set_window_size(&pty.master, rows, cols);
        pty
    }

    /// A copy of the terminal side for a child's stdio.
    pub fn stdio(&self) -> Stdio {
        Stdio::from(self.terminal.try_clone().expect("dup the terminal side"))
    }
}

/// Sets the window size through the master side; the kernel signals SIGWINCH to the
/// terminal's foreground process group.
pub fn set_window_size(master: &File, rows: u16, cols: u16) {
    rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .expect("set the window size");
}

/// `GET /` on `127.0.0.1:port`, half-closing after the request; the whole response.
pub fn http_get(port: u16, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    conn.shutdown(std::net::Shutdown::Write)?;
    Ok(read_all(conn))
}
