//! The node channel's TLS between real rustls endpoints built from files
//! `sealdb cert` writes: nodes of one cluster connect both ways; a user's
//! client certificate, a node of another cluster, another CA, no
//! certificate and TLS 1.2 are refused in the handshake with the reason.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use sealdb_pki::{CertsDir, KeyType, NodeName, NodeTls, NodeTlsFiles, ServerIdentitySource, TrustSource};

/// Runs a handshake in memory; the error says which side refused and why.
fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Result<(), String> {
    let mut c = ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    for _ in 0..16 {
        let mut bytes = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut bytes).unwrap();
        }
        if !bytes.is_empty() {
            s.read_tls(&mut bytes.as_slice()).unwrap();
            s.process_new_packets().map_err(|e| format!("server: {e}"))?;
        }
        let mut bytes = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut bytes).unwrap();
        }
        if !bytes.is_empty() {
            c.read_tls(&mut bytes.as_slice()).unwrap();
            c.process_new_packets().map_err(|e| format!("client: {e}"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    Err("the handshake made no progress".into())
}

/// A node certificate of `cluster` named `name` in `dir`, signed by the CA
/// in `ca`, configured for cluster `c1`.
fn node(dir: &Path, ca: &Path, cluster: &str, name: &str) -> NodeTlsFiles {
    let certs = CertsDir::new(dir, false).signed_by(ca);
    let member = NodeName::new(cluster, name).unwrap();
    certs
        .create_node(
            &["localhost".into(), "127.0.0.1".into()],
            Some(&member),
            KeyType::EcdsaP256,
            30,
        )
        .unwrap();
    NodeTlsFiles {
        identity: ServerIdentitySource::Pem {
            cert: certs.node_cert(),
            key: certs.node_key(),
        },
        cluster_ca: TrustSource::Pem(ca.join("ca.crt")),
        crls: Vec::new(),
        cluster: Some("c1".into()),
    }
}

fn ca(dir: &Path) {
    CertsDir::new(dir, false).create_ca(KeyType::EcdsaP256, 30).unwrap();
}

#[test]
fn nodes_of_one_cluster_connect_and_everything_else_is_refused_in_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    ca(&d("ca"));
    let one = NodeTls::load(&node(&d("one"), &d("ca"), "c1", "one")).unwrap();
    let two = NodeTls::load(&node(&d("two"), &d("ca"), "c1", "two")).unwrap();
    assert_eq!(one.me(), &NodeName::new("c1", "one").unwrap());

    // Both ways, TLS 1.3.
    handshake(one.client_config(), two.server_config()).unwrap();
    handshake(two.client_config(), one.server_config()).unwrap();

    // A node of another cluster under the same CA: refused by both sides.
    let mut other = node(&d("other"), &d("ca"), "c2", "other");
    other.cluster = None;
    let other = NodeTls::load(&other).unwrap();
    // (The dialling side checks the node it dialled first.)
    let err = handshake(other.client_config(), one.server_config()).unwrap_err();
    assert!(
        err.contains("client") && err.contains("node \"one\" of cluster \"c1\", not of this cluster \"c2\""),
        "{err}"
    );
    let err = handshake(one.client_config(), other.server_config()).unwrap_err();
    assert!(
        err.contains("client") && err.contains("node \"other\" of cluster \"c2\", not of this cluster \"c1\""),
        "{err}"
    );
    // The node port checks the dialler's certificate too: a client that
    // trusts the node but presents a node certificate of c2, or one of
    // another CA, or a user's client certificate, or none, is refused.
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(d("ca").join("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let roots = Arc::new(roots);
    let presenting = |cert: &Path, key: &Path| {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        Arc::new(
            ClientConfig::builder()
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain, key)
                .unwrap(),
        )
    };
    let c2 = CertsDir::new(d("other"), false);
    let err = handshake(presenting(&c2.node_cert(), &c2.node_key()), one.server_config()).unwrap_err();
    assert!(
        err.contains("server") && err.contains("node \"other\" of cluster \"c2\", not of this cluster \"c1\""),
        "{err}"
    );

    // A node certificate from another CA.
    ca(&d("ca2"));
    let stranger = node(&d("stranger"), &d("ca2"), "c1", "stranger");
    let ServerIdentitySource::Pem { cert, key } = &stranger.identity else {
        unreachable!()
    };
    let err = handshake(presenting(cert, key), one.server_config()).unwrap_err();
    assert!(err.contains("server") && err.contains("UnknownIssuer"), "{err}");

    // A user's client certificate from the same CA, and no certificate.
    let users = CertsDir::new(d("users"), false).signed_by(d("ca"));
    users.create_client("alice", KeyType::EcdsaP256, 30, None).unwrap();
    let as_user = presenting(&users.client_cert("alice"), &users.client_key("alice"));
    let err = handshake(as_user, one.server_config()).unwrap_err();
    assert!(err.contains("not a node certificate") && err.contains("alice"), "{err}");
    let anonymous = ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let err = handshake(Arc::new(anonymous), one.server_config()).unwrap_err();
    assert!(err.contains("server") && err.contains("no certificates"), "{err}");

    // TLS 1.2 only.
    let tls12 = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    let err = handshake(Arc::new(tls12), one.server_config()).unwrap_err();
    assert!(
        err.contains("server") && err.contains("Tls12NotOfferedOrEnabled"),
        "{err}"
    );
}

#[test]
fn a_certificate_that_does_not_name_this_node_of_this_cluster_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    ca(&d("ca"));
    // A server certificate without --cluster.
    let plain = CertsDir::new(d("plain"), false).signed_by(d("ca"));
    plain
        .create_node(&["localhost".into()], None, KeyType::EcdsaP256, 30)
        .unwrap();
    let files = NodeTlsFiles {
        identity: ServerIdentitySource::Pem {
            cert: plain.node_cert(),
            key: plain.node_key(),
        },
        cluster_ca: TrustSource::Pem(d("ca").join("ca.crt")),
        crls: Vec::new(),
        cluster: Some("c1".into()),
    };
    let err = NodeTls::load(&files).unwrap_err().to_string();
    assert!(
        err.contains("not a node certificate") && err.contains("--cluster c1 --name"),
        "{err}"
    );
    // A node of cluster c2 configured as c1.
    let err = NodeTls::load(&node(&d("c2"), &d("ca"), "c2", "x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"c2\"") && err.contains("\"c1\""), "{err}");
    // Names that cannot be part of the certificate's URI.
    assert!(NodeName::new("c1", "a/b").is_err());
    assert!(NodeName::new("", "a").is_err());
}
