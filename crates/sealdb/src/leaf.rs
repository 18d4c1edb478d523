//! `sealdb start --role leaf`: a leaf's node port.
//!
//! A leaf keeps no catalog, no master key and no log: it opens nothing in
//! its data directory. It listens on `node-port` for mutual TLS 1.3 from
//! nodes of its cluster only (`sealdb_pki::NodeTls`); every refused
//! handshake is logged with the peer's address and the reason. The query
//! work the aggregator hands to leaves comes with the distributed planner
//! (`docs/cluster.md`); today a leaf accepts node connections and holds
//! them until the peer closes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sealdb_config::Settings;
use sealdb_pki::{NodeName, NodeTls, NodeTlsFiles, ServerIdentitySource, TrustSource};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// `node-port` when not set.
pub(crate) const DEFAULT_NODE_PORT: u16 = 5434;

/// How long a peer has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The node channel's files from the settings; `DATA/certs/node.crt` and
/// `node.key` unless `node-cert` / `node-key` say otherwise.
pub(crate) fn node_tls_files(settings: &Settings, data: &Path) -> Result<NodeTlsFiles> {
    let certs = data.join("certs");
    let cluster_ca = settings.cluster_ca.clone().context(
        "the node channel needs cluster-ca: the CA bundle of the cluster's node certificates (--cluster-ca FILE)",
    )?;
    Ok(NodeTlsFiles {
        identity: ServerIdentitySource::Pem {
            cert: settings.node_cert.clone().unwrap_or_else(|| certs.join("node.crt")),
            key: settings.node_key.clone().unwrap_or_else(|| certs.join("node.key")),
        },
        cluster_ca: TrustSource::Pem(cluster_ca),
        crls: settings.cluster_crl.clone(),
        cluster: None,
    })
}

/// Serves the node port until the process is stopped.
pub(crate) async fn run(settings: &Settings, data: &Path) -> Result<()> {
    let tls = Arc::new(NodeTls::load(&node_tls_files(settings, data)?)?);
    let host = settings.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = settings.node_port.unwrap_or(DEFAULT_NODE_PORT);
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port} (node-port)"))?;
    let me = tls.me().clone();
    println!(
        "sealdb leaf {} of cluster {} is listening on {host}:{port} (node channel: mutual TLS 1.3, node certificates of cluster {} only)",
        me.name, me.cluster, me.cluster
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("node channel: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: the leaf stops");
                return Ok(());
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Err(_) => {
                    tracing::warn!(%peer, "node channel: refused {peer}: no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs());
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, "node channel: refused {peer}: {}", why_refused(&e));
                    return;
                }
                Ok(Ok(tls)) => tls,
            };
            let (_, conn) = tls.get_ref();
            let node = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| NodeName::of_certificate(c));
            let group = conn
                .negotiated_key_exchange_group()
                .and_then(|g| g.name().as_str())
                .unwrap_or("unknown");
            if let Some(node) = node {
                tracing::info!(%peer, "node channel: node {} of cluster {} connected from {peer} (TLS 1.3, {group})", node.name, node.cluster);
            }
            let mut tls = tls;
            let mut sink = [0u8; 4096];
            while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
        });
    }
}

/// A refused handshake in words, with rustls's own words after.
fn why_refused(error: &std::io::Error) -> String {
    use rustls::{CertificateError, Error, PeerIncompatible};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return error.to_string();
    };
    let plain = match tls {
        Error::PeerIncompatible(
            PeerIncompatible::SupportedVersionsExtensionRequired | PeerIncompatible::Tls12NotOfferedOrEnabled,
        ) => "the peer offered only TLS 1.2 or older; the node channel is TLS 1.3 only",
        Error::InvalidMessage(_) => "not a TLS handshake (plaintext?); the node channel is TLS only",
        Error::NoCertificatesPresented => {
            "no certificate presented; a node presents its node certificate (sealdb cert create-node --cluster)"
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "a certificate from a CA that is not in cluster-ca"
        }
        Error::InvalidCertificate(CertificateError::Revoked) => "a certificate revoked by cluster-crl",
        Error::InvalidCertificate(CertificateError::Expired) => "an expired certificate",
        _ => return tls.to_string(),
    };
    format!("{plain} ({tls})")
}
