//! Mutual TLS on TCP: certificates generated at test time; a valid client is served; no
//! certificate, another CA, an expired certificate, a name that is not the certificate's,
//! and a name outside the access rules are each refused.

use busbridge::client::{ClientError, ClientOptions};
use busbridge::config::{AccessRule, Config, TlsConfig};
use busbridge::{AsyncClient, Broker, QoS};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// Writes cert, key and the CA's cert as PEM files and returns their configuration.
fn leaf(dir: &Path, ca: &Ca, trust: &Ca, cn: &str, expired: bool) -> TlsConfig {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    if expired {
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        p.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let tag = format!("{cn}-{}", uuid::Uuid::new_v4().simple());
    let (c, k, a) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
        dir.join(format!("{tag}-ca.crt")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&a, trust.cert.pem()).unwrap();
    TlsConfig {
        cert: c,
        key: k,
        ca: a,
    }
}

fn opts(name: &str, tls: TlsConfig) -> ClientOptions {
    ClientOptions {
        tls: Some(tls),
        timeout: Duration::from_secs(3),
        ..ClientOptions::default().name(name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_the_right_clients_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (ca("busbridge test CA"), ca("someone else's CA"));
    let server_tls = leaf(dir.path(), &good, &good, "broker", false);
    let mut config = Config::default();
    config.transport.socket_path = dir.path().join("b.sock");
    config.transport.tls_listen = Some("127.0.0.1:0".into());
    config.tls = Some(server_tls);
    for (name, publish, subscribe) in [
        ("procmond", "events.process.*", "control.*"),
        ("agent", "#", "#"),
    ] {
        config.access.insert(
            name.into(),
            AccessRule {
                publish: vec![publish.into()],
                subscribe: vec![subscribe.into()],
            },
        );
    }
    let mut broker = Broker::from_config(&config).unwrap();
    broker.set_name(uuid::Uuid::new_v4().to_string());
    broker.spawn().await.unwrap();
    let uri = format!("tls://{}", broker.tls_addrs()[0]);

    // Valid clients are served, and their access rules apply.
    let mut agent = AsyncClient::connect_with(
        &uri,
        opts("agent", leaf(dir.path(), &good, &good, "agent", false)),
    )
    .await
    .unwrap();
    agent.subscribe("events.#", QoS::Processed).await.unwrap();
    let procmond = AsyncClient::connect_with(
        &uri,
        opts(
            "procmond",
            leaf(dir.path(), &good, &good, "procmond", false),
        ),
    )
    .await
    .unwrap();
    procmond
        .publish("events.process.new", b"over mTLS".to_vec(), QoS::Processed)
        .await
        .unwrap();
    let m = tokio::time::timeout(LIMIT, agent.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.payload(), m.sender()), (&b"over mTLS"[..], "procmond"));
    assert!(matches!(
        procmond
            .publish("events.network.connection", b"no".to_vec(), QoS::Processed)
            .await,
        Err(ClientError::Denied(_))
    ));

    let refused = |name: &'static str, tls: TlsConfig| {
        let uri = uri.clone();
        async move {
            let r = AsyncClient::connect_with(&uri, opts(name, tls)).await;
            assert!(r.is_err(), "{name} must be refused");
        }
    };
    // A certificate from another CA.
    refused(
        "procmond",
        leaf(dir.path(), &other, &good, "procmond", false),
    )
    .await;
    // An expired certificate.
    refused("procmond", leaf(dir.path(), &good, &good, "procmond", true)).await;
    // A busrt name that is not the certificate's identity.
    refused("agent", leaf(dir.path(), &good, &good, "procmond", false)).await;
    // A valid certificate whose name the access rules do not know.
    refused(
        "stranger",
        leaf(dir.path(), &good, &good, "stranger", false),
    )
    .await;
    // A client that trusts another CA refuses the broker.
    refused("agent", leaf(dir.path(), &good, &other, "agent", false)).await;
    // No client certificate at all.
    let tcp = tokio::net::TcpStream::connect(broker.tls_addrs()[0])
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(good.cert.der().clone()).unwrap();
    let anonymous = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let r = async {
        use tokio::io::AsyncReadExt;
        let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(anonymous))
            .connect("localhost".try_into().unwrap(), tcp)
            .await?;
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.map(|_| ())
    };
    assert!(
        tokio::time::timeout(LIMIT, r).await.unwrap().is_err(),
        "no certificate, no greeting"
    );
    let stats = broker.stats().await;
    assert!(stats.refused_tls >= 4, "{stats:?}");
}

#[test]
fn plaintext_tcp_on_a_non_loopback_address_needs_explicit_consent() {
    let mut broker = Broker::new();
    let err = broker.spawn_tcp_server("0.0.0.0:0", 10).unwrap_err();
    assert!(err.to_string().contains("allow_plaintext_remote"), "{err}");
    broker.allow_plaintext_remote(true);
    broker.spawn_tcp_server("0.0.0.0:0", 10).unwrap();
    broker.spawn_tcp_server("127.0.0.1:0", 10).unwrap();
}
