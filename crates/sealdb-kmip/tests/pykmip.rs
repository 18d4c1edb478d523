//! sealdb's KMIP client against a real PyKMIP server that the test starts
//! (mutual TLS 1.2, ECDSA certificates) and stops by PID: version
//! negotiation, Query, the key life cycle, AES-GCM Encrypt/Decrypt with
//! the tag on the key server, failover, and the errors of a host that is
//! down, a wrong client certificate and a destroyed key.
//!
//! Needs the Python environment of `scripts/setup-test-env.sh` (PyKMIP);
//! `./scripts/test.sh` sets it up.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "../../sealdb/tests/support/kmip.rs"]
mod kmip_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kmip_support::{KmipServer, Relay, certs, free_port};

use sealdb_kmip::{KmipClient, KmipClientConfig, KmipError, ProtocolVersion, State};
use sealdb_pki::{ServerIdentitySource, TrustSource};

fn tls(certs: &Path, client: &str) -> Arc<rustls::ClientConfig> {
    kmip_support::client_config(certs, client, Vec::new()).tls
}

fn client(hosts: Vec<String>, tls: Arc<rustls::ClientConfig>, version: Option<ProtocolVersion>) -> KmipClient {
    client_with_timeout(hosts, tls, version, Duration::from_secs(10))
}

fn client_with_timeout(
    hosts: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    version: Option<ProtocolVersion>,
    timeout: Duration,
) -> KmipClient {
    KmipClient::new(KmipClientConfig {
        hosts,
        tls,
        timeout,
        version,
    })
    .unwrap()
}

#[tokio::test]
async fn the_key_life_cycle_and_gcm_wrapping_work_against_pykmip() {
    sealdb_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let server = KmipServer::start(dir.path(), &certs);
    let kmip = client(vec![server.host()], tls(&certs, "client"), None);

    // Negotiated: the newest version both speak that PyKMIP lists first.
    let versions = kmip.discover_versions().await.unwrap();
    assert!(versions.contains(&ProtocolVersion::new(1, 4)), "{versions:?}");
    let negotiated = kmip.version().await.unwrap();
    assert_eq!(negotiated, versions[0], "the server's first choice that sealdb speaks");

    let query = kmip.query().await.unwrap();
    assert!(query.vendor.as_deref().unwrap_or("").contains("PyKMIP"), "{query:?}");
    assert!(query.missing().is_empty(), "PyKMIP lacks {:?}", query.missing());

    for version in [None, Some(ProtocolVersion::new(1, 4)), Some(ProtocolVersion::new(2, 0))] {
        let kmip = client(vec![server.host()], tls(&certs, "client"), version);
        let name = format!(
            "sealdb/test/mk/{}",
            version.map_or("negotiated".into(), |v| v.to_string())
        );
        let id = kmip.create_aes256(&name).await.unwrap();
        assert_eq!(kmip.state(&id).await.unwrap(), State::PreActive, "{version:?}");
        kmip.activate(&id).await.unwrap();
        let attributes = kmip.attributes(&id).await.unwrap();
        assert_eq!(attributes.state, Some(State::Active), "{version:?}");
        assert_eq!(attributes.names, vec![name.clone()], "{version:?}");
        assert_eq!(kmip.locate(&name).await.unwrap(), vec![id.clone()], "{version:?}");

        // Wrap a data key on the key server, and unwrap it.
        let secret = [7u8; 32];
        let nonce = [1u8; 12];
        let (wrapped, tag) = kmip.encrypt_gcm(&id, &secret, &nonce, b"table 7 v1").await.unwrap();
        assert_ne!(&wrapped[..], &secret[..]);
        let opened = kmip
            .decrypt_gcm(&id, &wrapped, &nonce, b"table 7 v1", &tag)
            .await
            .unwrap();
        assert_eq!(&opened[..], &secret[..]);
        // Other additional data, or a flipped byte, does not open.
        assert!(
            kmip.decrypt_gcm(&id, &wrapped, &nonce, b"table 8 v1", &tag)
                .await
                .is_err()
        );
        let mut flipped = wrapped.clone();
        flipped[0] ^= 1;
        assert!(
            kmip.decrypt_gcm(&id, &flipped, &nonce, b"table 7 v1", &tag)
                .await
                .is_err()
        );
        // Get mode: the key itself (held in memory only by the caller).
        assert_eq!(kmip.get_key(&id).await.unwrap().len(), 32);

        kmip.revoke(&id, false).await.unwrap();
        assert_eq!(kmip.state(&id).await.unwrap(), State::Deactivated, "{version:?}");
        kmip.destroy(&id).await.unwrap();
        // Revoked for compromise (with the Compromise Occurrence Date).
        let other = kmip
            .create_aes256(&format!("sealdb-test/{version:?}/compromised"))
            .await
            .unwrap();
        kmip.activate(&other).await.unwrap();
        kmip.revoke(&other, true).await.unwrap();
        assert_eq!(kmip.state(&other).await.unwrap(), State::Compromised, "{version:?}");
        // Locate without a filter finds it among every object.
        assert!(kmip.locate_all().await.unwrap().contains(&other), "{version:?}");
        let e = kmip.encrypt_gcm(&id, &secret, &nonce, b"x").await.unwrap_err();
        assert!(matches!(e, KmipError::Failed { .. }), "{e}");
        assert!(e.to_string().contains(&format!("on object {id}")), "{e}");
    }
}

#[tokio::test]
async fn failover_skips_a_host_that_is_down_and_an_unreachable_group_names_every_host() {
    sealdb_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let server = KmipServer::start(dir.path(), &certs);
    let down = format!("localhost:{}", free_port());
    let kmip = client(vec![down.clone(), server.host()], tls(&certs, "client"), None);
    let id = kmip.create_aes256("sealdb/test/failover").await.unwrap();
    assert_eq!(kmip.connected_host().await, Some(server.host()));
    let status = kmip.host_status();
    assert_eq!(status[0].status, "unreachable", "{status:?}");
    assert_eq!(status[1].status, "ok", "{status:?}");
    assert!(status[1].latency.is_some());

    // The server goes away: the kept connection breaks, and the error lists
    // every host with its cause.
    drop(server);
    let e = kmip.state(&id).await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, KmipError::Unreachable { .. } | KmipError::Transport { .. }),
        "{text}"
    );
    let e = kmip.state(&id).await.unwrap_err().to_string();
    assert!(e.contains(&down), "{e}");
    assert!(e.contains("no KMIP host answered"), "{e}");
}

/// A host that stops answering a kept connection (a network partition,
/// through a relay that drops its packets): a read goes to the next host
/// within the timeout. A Create goes over a fresh connection, to the first
/// host that completes a handshake. A Create the server carried out but
/// never answered (the connection cut as its answer started) fails,
/// naming the host, and is not sent again: one key exists, not two.
#[tokio::test]
async fn a_read_fails_over_when_the_kept_host_stops_answering_and_a_create_is_never_sent_twice() {
    sealdb_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let first = KmipServer::start(dir.path(), &certs);
    let second = first.peer();
    let relays = [Relay::to(first.port), Relay::to(second.port)];
    let kmip = client_with_timeout(
        vec![relays[0].host(), relays[1].host()],
        tls(&certs, "client"),
        None,
        Duration::from_secs(2),
    );
    let id = kmip.create_aes256("sealdb/test/partition").await.unwrap();
    assert_eq!(kmip.connected_host().await, Some(relays[0].host()));

    relays[0].block();
    let started = std::time::Instant::now();
    assert_eq!(kmip.state(&id).await.unwrap(), State::PreActive);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(kmip.connected_host().await, Some(relays[1].host()));
    let status = kmip.host_status();
    assert_eq!(status[0].status, "unreachable", "{status:?}");

    // The first host still drops everything: a Create's fresh connection
    // to it never completes a handshake (nothing was sent), and the second
    // host makes the key.
    let made = kmip.create_aes256("sealdb/test/fresh").await.unwrap();
    assert_eq!(kmip.connected_host().await, Some(relays[1].host()));
    assert_eq!(kmip.locate("sealdb/test/fresh").await.unwrap(), vec![made]);

    // The server carries a Create out and the connection dies before the
    // answer: reported, naming the host, and not sent again anywhere.
    relays[0].unblock();
    // Each connection's first answer is to Discover Versions; the second,
    // to the Create.
    relays[0].cut_answers(2);
    relays[1].cut_answers(2);
    let e = kmip.create_aes256("sealdb/test/once").await.unwrap_err();
    assert!(e.to_string().contains("may have been carried out"), "{e}");
    relays[0].cut_answers(0);
    relays[1].cut_answers(0);
    let made = kmip.locate("sealdb/test/once").await.unwrap();
    assert_eq!(made.len(), 1, "the Create was carried out once: {made:?}");
    assert_eq!(kmip.state(&id).await.unwrap(), State::PreActive);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_in_the_handshake() {
    sealdb_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let other = self::certs(&dir.path().join("other"));
    let server = KmipServer::start(dir.path(), &certs);
    // Trusts the right CA, but presents a certificate the server's CA did not sign.
    let tls = sealdb_pki::client_config(
        &ServerIdentitySource::Pem {
            cert: other.join("client.crt"),
            key: other.join("client.key"),
        },
        &TrustSource::Pem(certs.join("ca.crt")),
    )
    .unwrap();
    let kmip = client(vec![server.host()], tls, None);
    let e = kmip.query().await.unwrap_err().to_string();
    assert!(e.contains("no KMIP host answered") && e.contains(&server.host()), "{e}");

    // And a server signed by a CA the client does not trust is refused too.
    let kmip = client(vec![server.host()], self::tls(&other, "client"), None);
    let e = kmip.query().await.unwrap_err().to_string();
    assert!(e.contains("TLS handshake failed"), "{e}");
}

/// KMIP 1.0 to 1.3 pinned: the key life cycle and `get` mode's Get work;
/// AES-GCM Encrypt (1.4 and later) is refused before anything is sent,
/// naming the version and the fix.
#[tokio::test]
async fn kmip_1_0_to_1_3_serve_the_life_cycle_and_refuse_gcm_clearly() {
    sealdb_pki::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let server = KmipServer::start(dir.path(), &certs);
    for minor in 0..=3 {
        let version = ProtocolVersion::new(1, minor);
        let kmip = client(vec![server.host()], tls(&certs, "client"), Some(version));
        let name = format!("sealdb/test/old/{version}");
        let id = kmip.create_aes256(&name).await.unwrap();
        kmip.activate(&id).await.unwrap();
        let attributes = kmip.attributes(&id).await.unwrap();
        assert_eq!(attributes.state, Some(State::Active), "{version}");
        assert_eq!(attributes.names, vec![name.clone()], "{version}");
        assert_eq!(kmip.locate(&name).await.unwrap(), vec![id.clone()], "{version}");
        assert_eq!(kmip.get_key(&id).await.unwrap().len(), 32, "{version}");
        let e = kmip.encrypt_gcm(&id, &[0u8; 32], &[0u8; 12], b"x").await.unwrap_err();
        assert!(matches!(e, KmipError::VersionTooOld { .. }), "{version}: {e}");
        assert!(
            e.to_string().contains(&format!("speaks KMIP {version}")) && e.to_string().contains("mode = \"get\""),
            "{e}"
        );
        kmip.revoke(&id, false).await.unwrap();
        assert_eq!(kmip.state(&id).await.unwrap(), State::Deactivated, "{version}");
        kmip.destroy(&id).await.unwrap();
        assert!(kmip.state(&id).await.unwrap_err().is_not_found(), "{version}");
    }
}
