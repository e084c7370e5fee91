//! The fleet uplink against a real `nats-server` (JetStream, file storage in a temp dir,
//! loopback): three hosts (a `busbridge broker`, a publisher and a `busbridge uplink` each)
//! into one stream with the server and an uplink SIGKILLed mid-stream, every event once per
//! origin at the centre; a spool overflow counted, exactly; a task scattered to collectors
//! on three hosts, complete, then partial with one uplink frozen; mutual TLS with each host
//! allowed to publish only under its own subject; a NATS credentials file against a server in
//! operator mode.

#![cfg(all(feature = "nats", feature = "cli"))]

mod common;

use busbridge::config::{TlsConfig, UplinkConfig};
use busbridge::fleet::{FleetSubscriber, FleetTask, FleetTasks, NatsUplink, UplinkStats};
use busbridge::task::{Mode, Status, TaskSpec};
use common::nats::NatsServer;
use common::procs::{self, Proc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);

/// One host: its broker, its uplink (restartable on the same spool), its configuration.
struct Host {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    config: PathBuf,
    broker: Proc,
    uplink: Option<Proc>,
    extra: Vec<Proc>,
}

impl Host {
    fn start(name: &str, nats: &str, extra_config: &str) -> Self {
        let dir = procs::sock_dir();
        let socket = procs::sock_path(&dir, "b.sock");
        let broker = procs::broker(&socket, &[]);
        let config = dir.path().join("uplink.toml");
        std::fs::write(
            &config,
            format!(
                "[uplink]\nnats = {nats:?}\nhost = {name:?}\nspool_dir = {:?}\n{extra_config}\n",
                dir.path().join("spool")
            ),
        )
        .unwrap();
        let mut host = Self {
            _dir: dir,
            socket,
            config,
            broker,
            uplink: None,
            extra: Vec::new(),
        };
        host.start_uplink();
        host
    }

    /// SIGKILL the host's broker and start it again on the same socket.
    fn restart_broker(&mut self) {
        self.broker.signal(libc::SIGKILL);
        self.broker.wait_exit();
        self.broker = procs::broker(&self.socket, &[]);
    }

    fn connect(&self) -> String {
        format!("ipc://{}", self.socket.display())
    }

    fn start_uplink(&mut self) {
        let (config, connect) = (self.config.to_string_lossy().into_owned(), self.connect());
        let p = procs::spawn(
            &[
                "uplink",
                "--config",
                &config,
                "--connect",
                &connect,
                "--stats-every",
                "100ms",
            ],
            &[],
        );
        p.wait_line("ready");
        self.uplink = Some(p);
    }

    fn uplink(&self) -> &Proc {
        self.uplink.as_ref().expect("uplink running")
    }

    /// Reads the uplink's stats lines until one satisfies `ok`.
    fn wait_stats(&self, what: &str, ok: impl Fn(&UplinkStats) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .uplink()
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("uplink never reported {what}: {e}"));
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let stats = &v["stats"];
            let typed = UplinkStats {
                spool_pending: stats["spool_pending"].as_u64().unwrap_or(0),
                publish_failures: stats["publish_failures"].as_u64().unwrap_or(0),
                acked: stats["acked"].as_u64().unwrap_or(0),
                ..UplinkStats::default()
            };
            if ok(&typed) {
                return v;
            }
        }
    }

    fn publisher(&mut self, count: u64, rate: u64) {
        let connect = self.connect();
        let (count, rate) = (count.to_string(), rate.to_string());
        // It stays (linger) to answer resend requests of a restarted uplink.
        let p = procs::spawn(
            &[
                "pub",
                "--connect",
                &connect,
                "--bridged",
                "--count",
                &count,
                "--rate",
                &rate,
                "--linger",
                "600s",
                "events.process.new",
            ],
            &[],
        );
        self.extra.push(p);
    }

    fn collector(&mut self, name: &str) {
        let p = procs::task_collector(&self.socket, name, "process", "300ms");
        self.extra.push(p);
    }
}

fn centre(url: &str) -> UplinkConfig {
    UplinkConfig {
        nats: url.into(),
        ..UplinkConfig::default()
    }
}

async fn stream_messages(config: &UplinkConfig) -> u64 {
    let Ok(client) = busbridge::fleet::connect(config, "test", true).await else {
        return 0;
    };
    let js = async_nats::jetstream::new(client);
    match js.get_stream("BUSBRIDGE").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

async fn wait_stream(url: &str, at_least: u64) {
    let deadline = Instant::now() + LIMIT;
    while stream_messages(&centre(url)).await < at_least {
        assert!(
            Instant::now() < deadline,
            "the stream never held {at_least} messages (has {})",
            stream_messages(&centre(url)).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a count
    }
}

/// Reads the whole stream from the start: per origin, the sequence numbers stored.
async fn read_stream(url: &str, total: u64) -> BTreeMap<String, Vec<u64>> {
    let mut sub = FleetSubscriber::connect(&centre(url), &[], None)
        .await
        .unwrap();
    let mut per_origin: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..total {
        let e = tokio::time::timeout(LIMIT, sub.next())
            .await
            .expect("the stream ended early")
            .unwrap()
            .unwrap();
        assert_eq!(
            e.subject,
            format!("busbridge.{}.events.process.new", e.host)
        );
        e.ack().await.unwrap();
        per_origin
            .entry(e.envelope.origin.clone())
            .or_default()
            .push(e.envelope.seq);
    }
    per_origin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_every_event_once_across_server_and_uplink_kills() {
    const N: u64 = 4000;
    let mut nats = NatsServer::start("");
    let url = nats.url();
    let mut hosts: Vec<Host> = (1..=3)
        .map(|i| Host::start(&format!("h{i}"), &url, ""))
        .collect();
    for h in &mut hosts {
        h.publisher(N, 800);
    }
    // Mid-stream: NATS is SIGKILLed; events wait in the spools; it comes back.
    wait_stream(&url, N / 4).await;
    nats.kill();
    hosts[0].wait_stats("a failed publish", |s| s.publish_failures > 0);
    hosts[0].wait_stats("events waiting in the spool", |s| s.spool_pending >= 300);
    nats.restart();
    // An uplink SIGKILLed and restarted on its spool.
    wait_stream(&url, N).await;
    hosts[1].uplink = None;
    hosts[1].start_uplink();
    // A host's broker SIGKILLed and restarted: the bridge's resend.
    wait_stream(&url, 3 * N / 2).await;
    hosts[2].restart_broker();
    wait_stream(&url, 3 * N).await;
    let per_origin = read_stream(&url, 3 * N).await;
    assert_eq!(
        per_origin.len(),
        3,
        "one origin per host: {:?}",
        per_origin.keys()
    );
    for (origin, mut seqs) in per_origin {
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=N).collect::<Vec<_>>(),
            "origin {origin}: each event once"
        );
    }
    assert_eq!(
        stream_messages(&centre(&url)).await,
        3 * N,
        "no duplicate stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_and_counts_exactly_what_did_not_fit() {
    const N: u64 = 600;
    let port = common::nats::free_port();
    let dir = procs::sock_dir();
    let socket = procs::sock_path(&dir, "b.sock");
    let _broker = procs::broker(&socket, &[]);
    let connect = format!("ipc://{}", socket.display());
    // NATS is not there yet: everything waits in a spool of 64 KiB.
    let uplink = NatsUplink::start(
        UplinkConfig {
            nats: format!("nats://127.0.0.1:{port}"),
            host: Some("small".into()),
            spool_dir: Some(dir.path().join("spool")),
            spool_max_bytes: 1 << 16,
            tasks: false,
            ..UplinkConfig::default()
        },
        &connect,
    )
    .await
    .unwrap();
    let _publisher = common::publish_processes(&connect, N).await;
    let deadline = Instant::now() + LIMIT;
    while uplink.stats().received < N {
        assert!(Instant::now() < deadline, "{:?}", uplink.stats());
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a count
    }
    let s = uplink.stats();
    assert!(s.spool_overflow > 0 && s.spooled > 0, "{s:?}");
    assert_eq!(
        s.spooled + s.spool_overflow,
        N,
        "every event spooled or counted: {s:?}"
    );
    assert!(s.spool_bytes <= 1 << 16);
    // NATS arrives: what was spooled is stored, nothing else.
    let nats = NatsServer::start_on(port, "");
    wait_stream(&nats.url(), s.spooled).await;
    let deadline = Instant::now() + LIMIT;
    while uplink.stats().acked < s.spooled {
        assert!(Instant::now() < deadline, "{:?}", uplink.stats());
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a count
    }
    assert_eq!(stream_messages(&centre(&nats.url())).await, s.spooled);
    let end = uplink.shutdown().await.unwrap();
    assert_eq!(end.spool_overflow, s.spool_overflow);
    assert_eq!(end.spool_pending, 0);
}

async fn wait_hosts(tasks: &FleetTasks, n: usize) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let hosts = tasks.hosts().await.unwrap();
        if hosts.len() == n && hosts.iter().all(|h| !h.collectors.is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hosts never announced: {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the hosts bucket
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_scattered_across_three_hosts_is_complete_then_partial_with_one_uplink_frozen() {
    let nats = NatsServer::start("");
    let url = nats.url();
    // Entries live five heartbeats (15 s): a frozen host is still expected by both runs below.
    let mut hosts: Vec<Host> = (1..=3)
        .map(|i| Host::start(&format!("h{i}"), &url, "heartbeat = \"3s\""))
        .collect();
    for (i, h) in hosts.iter_mut().enumerate() {
        h.collector(&format!("c{}", i + 1));
    }
    let tasks = FleetTasks::connect(&centre(&url)).await.unwrap();
    wait_hosts(&tasks, 3).await;
    let echo = |timeout| {
        let mut spec = TaskSpec::new("echo", serde_json::json!({"n": 1}));
        spec.mode = Mode::AllOf;
        spec.timeout = timeout;
        FleetTask { spec, host: None }
    };
    let (status, results) = tasks
        .run(echo(Duration::from_secs(10)), |_, _| {})
        .await
        .unwrap();
    assert_eq!(status, Status::Complete, "{results:?}");
    let answered: BTreeSet<_> = results
        .iter()
        .filter(|h| h.results.len() == 1)
        .map(|h| h.host.as_str())
        .collect();
    assert_eq!(answered, BTreeSet::from(["h1", "h2", "h3"]));

    // One host's uplink frozen: the other two answer, the task is partial, h3 missing.
    hosts[2].uplink().freeze();
    let (status, results) = tasks
        .run(echo(Duration::from_secs(2)), |_, _| {})
        .await
        .unwrap();
    match &status {
        Status::Partial { missing } => {
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert_eq!(missing[0].collector, "h3");
        }
        other => panic!("expected partial, got {other:?} ({results:?})"),
    }
    // The command line says the same, with the exit code of a partial task.
    let mut cli = procs::spawn(
        &[
            "fleet",
            "task",
            "echo",
            "--all",
            "--timeout",
            "2s",
            "--nats",
            &url,
        ],
        &[],
    );
    assert_eq!(cli.wait_exit(), 7, "partial");
    hosts[2].uplink().signal(libc::SIGCONT);
}

struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "fleet-ca");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = p.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self {
            dir,
            ca,
            ca_key: key,
        }
    }

    /// A certificate named `cn` (the server's with loopback names).
    fn issue(&self, cn: &str, server: bool) -> TlsConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = if server {
            vec!["localhost".to_string()]
        } else {
            vec![]
        };
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        if server {
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let path = |ext: &str| self.dir.path().join(format!("{cn}.{ext}"));
        std::fs::write(path("pem"), cert.pem()).unwrap();
        std::fs::write(path("key"), key.serialize_pem()).unwrap();
        TlsConfig {
            cert: path("pem"),
            key: path("key"),
            ca: self.dir.path().join("ca.pem"),
        }
    }
}

fn toml_tls(tls: &TlsConfig) -> String {
    format!(
        "tls = {{ cert = {:?}, key = {:?}, ca = {:?} }}",
        tls.cert, tls.key, tls.ca
    )
}

/// The permissions migration/fleet.md documents for a host, in nats-server's syntax.
fn host_permissions(host: &str) -> String {
    format!(
        r#"{{ user: "CN={host}", permissions: {{
            publish: ["busbridge.{host}.>", "$JS.API.STREAM.INFO.BUSBRIDGE", "$JS.API.STREAM.CREATE.BUSBRIDGE",
                      "$JS.API.STREAM.INFO.KV_BUSBRIDGE_hosts", "$JS.API.STREAM.CREATE.KV_BUSBRIDGE_hosts",
                      "$KV.BUSBRIDGE_hosts.{host}", "_INBOX.>"],
            subscribe: ["_INBOX.>", "busbridge.{host}._task", "busbridge._fleet.task"] }} }}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_each_host_publishes_only_under_its_own_subject() {
    const N: u64 = 50;
    let pki = Pki::new();
    let server = pki.issue("nats", true);
    let nats = NatsServer::start(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify_and_map: true }}\n\
         authorization {{ users = [ {}, {}, {{ user: \"CN=centre\" }} ] }}",
        server.cert,
        server.key,
        server.ca,
        host_permissions("h1"),
        host_permissions("h2"),
    ));
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let h1 = pki.issue("h1", false);
    // h1 as itself; then h1's certificate on a host that claims to be h2.
    let honest = Host::start("h1", &url, &toml_tls(&h1));
    let mut impostor = Host::start(
        "h2",
        &url,
        &format!("{}\nack_timeout = \"500ms\"", toml_tls(&h1)),
    );
    let mut honest = honest;
    honest.publisher(N, 1000);
    honest.wait_stats("every event acknowledged", |s| s.acked == N);
    impostor.publisher(N, 1000);
    impostor.wait_stats("a refused publish", |s| {
        s.publish_failures > 0 && s.acked == 0
    });
    // Without a certificate the server refuses the connection outright.
    let plain = UplinkConfig {
        nats: url.clone(),
        ..UplinkConfig::default()
    };
    assert!(FleetTasks::connect(&plain).await.is_err());
    // The centre reads the stream over TLS: h1's events, each once, and nothing else.
    let centre = UplinkConfig {
        nats: url,
        tls: Some(pki.issue("centre", false)),
        ..UplinkConfig::default()
    };
    let mut sub = FleetSubscriber::connect(&centre, &[], None).await.unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < N as usize {
        let e = tokio::time::timeout(LIMIT, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.host, "h1");
        e.ack().await.unwrap();
        seqs.push(e.envelope.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    assert_eq!(stream_messages(&centre).await, N, "nothing stored under h2");
}

/// A host signs in with a NATS credentials file (`uplink.credentials`: user JWT and nkey
/// seed) to a server in operator mode: its events are stored and read back by a centre with
/// credentials of its own. A user of an account the operator never signed, no credentials
/// at all, and a credentials file that is not there are each refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_file_signs_in_and_others_are_refused() {
    use common::nats::Operator;
    const N: u64 = 20;
    let op = Operator::new();
    let nats = NatsServer::start(&op.config());
    let dir = tempfile::tempdir().unwrap();
    let creds = |file: &str, account: &nkeys::KeyPair| {
        let path = dir.path().join(file);
        std::fs::write(&path, Operator::creds(account, file)).unwrap();
        path
    };
    let host = creds("h1.creds", &op.account);
    let mut h1 = Host::start("h1", &nats.url(), &format!("credentials = {host:?}"));
    h1.publisher(N, 1000);
    h1.wait_stats("every event acknowledged", |s| s.acked == N);
    let centre = UplinkConfig {
        nats: nats.url(),
        credentials: Some(creds("centre.creds", &op.account)),
        ..UplinkConfig::default()
    };
    assert_eq!(stream_messages(&centre).await, N);

    let refused = |credentials: Option<PathBuf>| UplinkConfig {
        nats: nats.url(),
        credentials,
        ..UplinkConfig::default()
    };
    let stranger = creds("stranger.creds", &nkeys::KeyPair::new_account());
    for (what, config) in [
        ("an unknown account's user", refused(Some(stranger))),
        ("no credentials", refused(None)),
    ] {
        match busbridge::fleet::connect(&config, "test", true).await {
            Err(busbridge::fleet::FleetError::Connect { .. }) => {}
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    let missing = refused(Some(dir.path().join("missing.creds")));
    assert!(matches!(
        busbridge::fleet::connect(&missing, "test", true).await,
        Err(busbridge::fleet::FleetError::Config(_))
    ));
}
