//! Running the real `busbridge` binary from tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_busbridge");

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Waits (bounded) for a line of stdout that contains `needle`; returns it.
    pub fn wait_line(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => skipped.push(l),
                Err(e) => panic!("no line containing `{needle}`: {e}; before: {skipped:#?}"),
            }
        }
    }

    /// Writes one line to the child's stdin.
    pub fn say(&mut self, text: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin piped");
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }

    /// Collects stdout lines until one contains `needle` (inclusive).
    pub fn lines_until(&self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let l = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "no line containing `{needle}` after {} lines: {e}",
                    out.len()
                )
            });
            let done = l.contains(needle);
            out.push(l);
            if done {
                return out;
            }
        }
    }

    /// Every stdout line until the process exits (bounded), and its exit code checked 0.
    pub fn lines_until_exit(&mut self) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => out.push(l),
                // The reader thread ends with stdout, at exit.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("still running after {} lines: {e}", out.len()),
            }
        }
        assert_eq!(self.wait_exit(), 0);
        out
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGSTOP, returning once the kernel reports the process stopped: kill(2) only queues
    /// the signal, and a running process could still answer one more message.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            if s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
            {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "process did not stop");
            std::thread::sleep(Duration::from_millis(1)); // polling a state, not synchronising
        }
    }

    /// Waits (bounded) for the exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(std::time::Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(10)); // polling an exit, not synchronising
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `busbridge ARGS` with stdout captured line by line (stderr to `stderr`).
pub fn spawn(args: &[&str], env: &[(&str, &Path)]) -> Proc {
    spawn_with_stdin(args, env, Stdio::null())
}

/// Like [`spawn`], with stdin piped for the test to write to.
pub fn spawn_piped(args: &[&str]) -> Proc {
    spawn_with_stdin(args, &[], Stdio::piped())
}

/// Like [`spawn`], with stderr's lines read too (for a readiness line printed there), each
/// prefixed `stderr: `.
pub fn spawn_both(args: &[&str]) -> Proc {
    spawn_inner(args, &[], Stdio::null(), true)
}

fn spawn_with_stdin(args: &[&str], env: &[(&str, &Path)], stdin: Stdio) -> Proc {
    spawn_inner(args, env, stdin, false)
}

fn spawn_inner(args: &[&str], env: &[(&str, &Path)], stdin: Stdio, stderr: bool) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(if stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .stdin(stdin);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn busbridge");
    let (tx, lines) = std::sync::mpsc::channel();
    let forward = |read: Box<dyn std::io::Read + Send>, prefix: &'static str| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(read).lines().map_while(Result::ok) {
                if tx.send(format!("{prefix}{line}")).is_err() {
                    break;
                }
            }
        });
    };
    forward(Box::new(child.stdout.take().unwrap()), "");
    if let Some(err) = child.stderr.take() {
        forward(Box::new(err), "stderr: ");
    }
    Proc { child, lines }
}

/// Starts `busbridge broker --socket PATH [extra]` and waits until it is ready.
pub fn broker(socket: &Path, extra: &[&str]) -> Proc {
    let s = socket.to_string_lossy().into_owned();
    let mut args = vec!["broker", "--socket", &s];
    args.extend_from_slice(extra);
    let p = spawn(&args, &[]);
    p.wait_line("ready");
    p
}

/// Starts `busbridge collector --type KIND` (capacity 8) on the broker at `socket` and waits
/// until it is ready.
pub fn task_collector(socket: &Path, name: &str, kind: &str, heartbeat: &str) -> Proc {
    let connect = format!("ipc://{}", socket.display());
    let p = spawn(
        &[
            "collector",
            "--connect",
            &connect,
            "--name",
            name,
            "--type",
            kind,
            "--capacity",
            "8",
            "--heartbeat",
            heartbeat,
        ],
        &[],
    );
    p.wait_line("ready");
    p
}

/// A fresh private temp dir for sockets.
pub fn sock_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn sock_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
