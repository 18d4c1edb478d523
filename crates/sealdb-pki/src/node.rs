//! The node channel's TLS: mutual TLS 1.3 between the nodes of one
//! cluster, each presenting a node certificate that names it and its
//! cluster (`sealdb cert create-node HOST... --cluster ID --name NAME`).
//!
//! A peer is accepted only if its certificate chains to `cluster-ca`, is
//! in its validity period, is not revoked by a `cluster-crl` (every
//! certificate of the chain is checked once CRLs are given), and carries
//! the URI name `sealdb://cluster/ID/node/NAME` of *this* cluster. A user's
//! client certificate from the same CA, a node of another cluster, another
//! CA, TLS 1.2 and plaintext are all refused in the handshake, with a
//! reason the caller logs.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use crate::load::{check_private_key_permissions, pem_certs, pem_crls, pem_key, pkcs12_identity, pkcs12_trust};
use crate::tls::crypto_provider;
use crate::{PkiError, ServerIdentitySource, TrustSource, cert_info};

/// URI scheme prefix of the name a node certificate carries.
const NODE_URI_PREFIX: &str = "sealdb://cluster/";

/// What a node certificate says of its holder: its cluster and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName {
    /// The cluster's id (`--cluster`).
    pub cluster: String,
    /// The node's name (`--name`).
    pub name: String,
}

impl NodeName {
    /// A node `name` of `cluster`; both are letters, digits, `-`, `_` and
    /// `.`, 1 to 64 characters.
    pub fn new(cluster: &str, name: &str) -> Result<Self, PkiError> {
        for (what, value) in [("cluster id", cluster), ("node name", name)] {
            let ok = !value.is_empty()
                && value.len() <= 64
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(PkiError::Config(format!(
                    "{what} {value:?} is not usable: use 1 to 64 letters, digits, '-', '_' or '.'"
                )));
            }
        }
        Ok(Self {
            cluster: cluster.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `sealdb://cluster/ID/node/NAME`.
    pub fn uri(&self) -> String {
        format!("{NODE_URI_PREFIX}{}/node/{}", self.cluster, self.name)
    }

    fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(NODE_URI_PREFIX)?;
        let (cluster, name) = rest.split_once("/node/")?;
        Self::new(cluster, name).ok()
    }

    /// The node name a certificate (DER) carries, if it is a node certificate.
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            GeneralName::URI(uri) => Self::from_uri(uri),
            _ => None,
        })
    }
}

/// The files and cluster id the node channel is built from.
#[derive(Debug, Clone)]
pub struct NodeTlsFiles {
    /// This node's certificate (made with `--cluster` and `--name`) and key.
    pub identity: ServerIdentitySource,
    /// `cluster-ca`: the CAs of node certificates (two during a rollover).
    pub cluster_ca: TrustSource,
    /// `cluster-crl` files.
    pub crls: Vec<PathBuf>,
    /// The id every peer's certificate must name; `None`: the cluster this
    /// node's own certificate names.
    pub cluster: Option<String>,
}

/// Loaded node-channel TLS: the server and client configurations of one
/// node. Immutable; reloading builds a new one.
#[derive(Debug)]
pub struct NodeTls {
    me: NodeName,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl NodeTls {
    /// Loads and checks everything; a bad file is an error naming it, and
    /// a certificate that does not name this node of this cluster is
    /// refused with the command that makes a right one.
    pub fn load(files: &NodeTlsFiles) -> Result<Self, PkiError> {
        let (chain, key, chain_path) = match &files.identity {
            ServerIdentitySource::Pem { cert, key } => {
                check_private_key_permissions(key)?;
                (pem_certs(cert)?, pem_key(key)?, cert.clone())
            }
            ServerIdentitySource::Pkcs12 { path, password } => {
                check_private_key_permissions(path)?;
                let (chain, key) = pkcs12_identity(path, password)?;
                (chain, key, path.clone())
            }
        };
        let leaf = chain
            .first()
            .ok_or_else(|| PkiError::bad(&chain_path, "no node certificate"))?;
        let me = NodeName::of_certificate(leaf).ok_or_else(|| {
            let subject = cert_info(leaf).map(|i| i.subject).unwrap_or_default();
            PkiError::bad(
                &chain_path,
                format!(
                    "{subject} is not a node certificate (it names no cluster); make one with \
                     sealdb cert create-node HOST... --cluster {} --name NAME",
                    files.cluster.as_deref().unwrap_or("ID")
                ),
            )
        })?;
        let cluster = files.cluster.clone().unwrap_or_else(|| me.cluster.clone());
        if me.cluster != cluster {
            return Err(PkiError::bad(
                &chain_path,
                format!(
                    "the node certificate is for cluster {:?}, this node is configured for cluster {cluster:?}",
                    me.cluster
                ),
            ));
        }
        let (roots, trust_path) = match &files.cluster_ca {
            TrustSource::Pem(path) => (pem_certs(path)?, path.clone()),
            TrustSource::Pkcs12 { path, password } => (pkcs12_trust(path, password)?, path.clone()),
        };
        let mut store = RootCertStore::empty();
        for der in roots {
            store
                .add(der)
                .map_err(|e| PkiError::bad(&trust_path, format!("not a usable CA certificate: {e}")))?;
        }
        let store = Arc::new(store);
        let mut crls = Vec::new();
        for path in &files.crls {
            crls.extend(pem_crls(path)?);
        }
        let provider = Arc::new(crypto_provider());
        let mut client_builder =
            WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone()).with_crls(crls.clone());
        let mut server_builder =
            WebPkiServerVerifier::builder_with_provider(store.clone(), provider.clone()).with_crls(crls.clone());
        if crls.is_empty() {
            client_builder = client_builder.allow_unknown_revocation_status();
            server_builder = server_builder.allow_unknown_revocation_status();
        }
        let client_verifier = client_builder
            .build()
            .map_err(|e| PkiError::Tls(format!("node verifier from {}: {e}", trust_path.display())))?;
        let server_verifier = server_builder
            .build()
            .map_err(|e| PkiError::Tls(format!("node verifier from {}: {e}", trust_path.display())))?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| PkiError::bad(&chain_path, format!("unsupported private key: {e}")))?;
        let certified = Arc::new(CertifiedKey::new(chain, signing_key));
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PkiError::Tls(format!("node channel: {e}")))?
            .with_client_cert_verifier(Arc::new(ClusterClientVerifier {
                inner: client_verifier,
                cluster: cluster.clone(),
            }))
            .with_cert_resolver(Arc::new(OneNodeCertificate(certified.clone())));
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PkiError::Tls(format!("node channel: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier {
                inner: server_verifier,
                cluster,
            }))
            .with_client_cert_resolver(Arc::new(OneNodeCertificate(certified)));
        Ok(Self {
            me,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// This node's name and cluster, from its certificate.
    pub fn me(&self) -> &NodeName {
        &self.me
    }

    /// For the node port: TLS 1.3, a node certificate of this cluster required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// For connections to other nodes: TLS 1.3, presenting this node's
    /// certificate, accepting only a node of this cluster with the name
    /// dialled.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }
}

/// Why a peer's certificate is not a node of `cluster`, if it is not.
fn refuse_non_member(end_entity: &CertificateDer<'_>, cluster: &str) -> Result<NodeName, rustls::Error> {
    match NodeName::of_certificate(end_entity) {
        Some(node) if node.cluster == cluster => Ok(node),
        Some(node) => Err(rustls::Error::General(format!(
            "the peer is node {:?} of cluster {:?}, not of this cluster {cluster:?}",
            node.name, node.cluster
        ))),
        None => {
            let subject = cert_info(end_entity).map(|i| i.subject).unwrap_or_default();
            Err(rustls::Error::General(format!(
                "the peer's certificate {subject} is not a node certificate (a user's client certificate, or a server certificate made without --cluster)"
            )))
        }
    }
}

/// The node port's check of a connecting node: the chain (WebPKI, CRLs),
/// then membership of this cluster.
#[derive(Debug)]
struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cluster: String,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        refuse_non_member(end_entity, &self.cluster)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A node's check of the node it dials: the chain and host name (WebPKI,
/// CRLs), then membership of this cluster.
#[derive(Debug)]
struct ClusterServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    cluster: String,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        refuse_non_member(end_entity, &self.cluster)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// This node's certificate, on both sides of a node connection.
#[derive(Debug)]
struct OneNodeCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for OneNodeCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for OneNodeCertificate {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
