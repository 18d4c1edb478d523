//! rustls server configuration from files, client certificate checks, and
//! atomic reload.

use std::path::{Path, PathBuf};

use std::sync::Arc;
use time::OffsetDateTime;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use zeroize::Zeroizing;

use crate::inspect::format_time;
use crate::load::{check_private_key_permissions, pem_certs, pem_crls, pem_key, pkcs12_identity, pkcs12_trust};
use crate::{CertInfo, ClientCertificate, PkiError, cert_info};

/// Installs aws-lc-rs as the process-wide rustls crypto provider. Both
/// `ring` and `aws-lc-rs` may be linked into the binary, and rustls refuses
/// to guess; call this once at start. Calling it again does nothing.
pub fn install_crypto_provider() {
    let _ = crypto_provider().install_default();
}

/// Where the server's own certificate and key come from.
#[derive(Clone)]
pub enum ServerIdentitySource {
    /// `ssl-cert` (chain, leaf first) and `ssl-private-key`, PEM.
    Pem {
        /// Certificate chain file.
        cert: PathBuf,
        /// Private key file; refused if group or others can read it.
        key: PathBuf,
    },
    /// `ssl-keystore` with `ssl-keystore-password`.
    Pkcs12 {
        /// The PKCS#12 file.
        path: PathBuf,
        /// Its password.
        password: Zeroizing<String>,
    },
}

impl std::fmt::Debug for ServerIdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pem { cert, key } => f.debug_struct("Pem").field("cert", cert).field("key", key).finish(),
            Self::Pkcs12 { path, .. } => f
                .debug_struct("Pkcs12")
                .field("path", path)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// Where the CAs that client certificates must chain to come from.
#[derive(Clone)]
pub enum TrustSource {
    /// `ssl-trust-ca`: a PEM bundle.
    Pem(PathBuf),
    /// `ssl-trust-store` with `ssl-trust-password`.
    Pkcs12 {
        /// The PKCS#12 file.
        path: PathBuf,
        /// Its password.
        password: Zeroizing<String>,
    },
}

impl std::fmt::Debug for TrustSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pem(p) => f.debug_tuple("Pem").field(p).finish(),
            Self::Pkcs12 { path, .. } => f
                .debug_struct("Pkcs12")
                .field("path", path)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// The lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinTlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl std::str::FromStr for MinTlsVersion {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        match s.trim().trim_start_matches("TLSv").trim_start_matches("tls") {
            "1.2" => Ok(Self::Tls12),
            "1.3" => Ok(Self::Tls13),
            _ => Err(PkiError::Config(format!(
                "ssl-min-version {s:?} is not supported; use \"1.2\" or \"1.3\" (TLS 1.0 and 1.1 are broken and never offered)"
            ))),
        }
    }
}

/// Every file and setting the TLS listener is built from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate and key.
    pub identity: ServerIdentitySource,
    /// CAs for client certificates; without it clients cannot present one.
    pub trust: Option<TrustSource>,
    /// CRL files.
    pub crls: Vec<PathBuf>,
    /// Refuse client certificates while a CRL is past its next update
    /// (`ssl-crl-expired = refuse`); by default they are accepted, with a
    /// warning and a finding.
    pub refuse_expired_crls: bool,
    /// Lowest TLS version.
    pub min_version: MinTlsVersion,
    /// Allowed cipher suites by name; empty means the safe defaults.
    pub cipher_suites: Vec<String>,
}

/// One CRL the server has loaded.
#[derive(Debug, Clone)]
pub struct LoadedCrl {
    /// The file it came from.
    pub path: PathBuf,
    /// Its issuer, as shown.
    pub issuer: String,
    /// When its issuer promised the next one (`None`: not said).
    pub next_update: Option<OffsetDateTime>,
}

impl LoadedCrl {
    /// Whether it is past its next update at `now`: stale, so a
    /// certificate revoked since may be missing from it.
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        self.next_update.is_some_and(|t| t < now)
    }
}

/// One certificate the server has loaded, for `sys.certificates`.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// `server`, `server-chain`, `trusted-ca`.
    pub role: &'static str,
    /// The file it came from.
    pub path: PathBuf,
    /// What it says.
    pub info: CertInfo,
}

/// TLS material loaded from [`TlsFiles`]: immutable; reloading builds a new one.
#[derive(Debug)]
pub struct TlsMaterial {
    server_config: Arc<ServerConfig>,
    server_leaf: CertificateDer<'static>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    certificates: Vec<LoadedCertificate>,
    crl_count: usize,
    crls: Vec<LoadedCrl>,
}

impl TlsMaterial {
    /// Loads and checks everything; any bad file is an error naming it.
    pub fn load(files: &TlsFiles) -> Result<Self, PkiError> {
        let provider = Arc::new(provider_with_suites(&files.cipher_suites)?);
        let mut certificates = Vec::new();

        let (chain, key, chain_path) = match &files.identity {
            ServerIdentitySource::Pem { cert, key } => {
                check_private_key_permissions(key)?;
                (pem_certs(cert)?, pem_key(key)?, cert.clone())
            }
            ServerIdentitySource::Pkcs12 { path, password } => {
                if let Err(e) = check_private_key_permissions(path) {
                    tracing::warn!("{e}");
                }
                let (chain, key) = pkcs12_identity(path, password)?;
                (chain, key, path.clone())
            }
        };
        let server_leaf = chain
            .first()
            .cloned()
            .ok_or_else(|| PkiError::bad(&chain_path, "no server certificate"))?;
        for (i, der) in chain.iter().enumerate() {
            let info = cert_info(der).map_err(|e| PkiError::bad(&chain_path, e))?;
            certificates.push(LoadedCertificate {
                role: if i == 0 { "server" } else { "server-chain" },
                path: chain_path.clone(),
                info,
            });
        }

        let mut loaded_crls = Vec::new();
        let (client_verifier, crl_count) = match &files.trust {
            None => (None, 0),
            Some(trust) => {
                let (roots, path) = match trust {
                    TrustSource::Pem(path) => (pem_certs(path)?, path.clone()),
                    TrustSource::Pkcs12 { path, password } => (pkcs12_trust(path, password)?, path.clone()),
                };
                let mut store = RootCertStore::empty();
                for der in &roots {
                    store
                        .add(der.clone())
                        .map_err(|e| PkiError::bad(&path, format!("not a usable CA certificate: {e}")))?;
                    let info = cert_info(der).map_err(|e| PkiError::bad(&path, e))?;
                    certificates.push(LoadedCertificate {
                        role: "trusted-ca",
                        path: path.clone(),
                        info,
                    });
                }
                let mut crls = Vec::new();
                for crl_path in &files.crls {
                    for der in pem_crls(crl_path)? {
                        let loaded = inspect_crl(crl_path, &der)?;
                        if loaded.expired(OffsetDateTime::now_utc()) {
                            tracing::warn!(
                                crl = %crl_path.display(),
                                issuer = %loaded.issuer,
                                "the CRL is past its next update: a certificate revoked since may be missing from it; \
                                 install a current CRL{}",
                                if files.refuse_expired_crls { " (client certificates of its issuer are refused until then)" } else { " (or set ssl-crl-expired = refuse)" }
                            );
                        }
                        loaded_crls.push(loaded);
                        crls.push(der);
                    }
                }
                let crl_count = crls.len();
                // With CRLs, every certificate of the chain is checked, and
                // one whose issuer has no CRL among them is refused: its
                // status is unknown. Without CRLs, none is checked.
                let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .with_crls(crls)
                    .allow_unauthenticated();
                if crl_count == 0 {
                    builder = builder.allow_unknown_revocation_status();
                }
                if files.refuse_expired_crls {
                    builder = builder.enforce_revocation_expiration();
                }
                let verifier = builder
                    .build()
                    .map_err(|e| PkiError::Tls(format!("client verifier from {}: {e}", path.display())))?;
                (Some(verifier), crl_count)
            }
        };
        if client_verifier.is_none() && !files.crls.is_empty() {
            return Err(PkiError::Config("ssl-crl is set but no ssl-trust-ca or ssl-trust-store: CRLs only apply to client certificates, which need a trusted CA".into()));
        }

        let versions: &[&'static rustls::SupportedProtocolVersion] = match files.min_version {
            MinTlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinTlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let tls_verifier: Arc<dyn ClientCertVerifier> = match &client_verifier {
            Some(inner) => Arc::new(DeferredClientVerifier { inner: inner.clone() }),
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let key_path = match &files.identity {
            ServerIdentitySource::Pem { key, .. } => key.clone(),
            ServerIdentitySource::Pkcs12 { path, .. } => path.clone(),
        };
        // The key must belong to the certificate. We compare the public keys
        // ourselves rather than through rustls's check, which refuses the
        // X.509 v1 certificates that `openssl x509 -req -signkey` makes.
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| PkiError::bad(&key_path, format!("unsupported private key: {e}")))?;
        let leaf_spki = leaf_public_key(&server_leaf).map_err(|e| PkiError::bad(&chain_path, e))?;
        match signing_key.public_key() {
            Some(spki) if spki.as_ref() == leaf_spki.as_slice() => {}
            Some(_) => {
                return Err(PkiError::KeyMismatch {
                    cert: chain_path.clone(),
                    key: key_path,
                    reason: "different public keys".into(),
                });
            }
            None => {}
        }
        let certified = Arc::new(CertifiedKey::new(chain, signing_key));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| {
                PkiError::Config(format!(
                    "ssl-cipher-suites and ssl-min-version leave nothing to negotiate: {e}"
                ))
            })?
            .with_client_cert_verifier(tls_verifier)
            .with_cert_resolver(Arc::new(OneCertificate(certified)));
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        config.ignore_client_order = true;
        Ok(Self {
            server_config: Arc::new(config),
            server_leaf,
            client_verifier,
            certificates,
            crl_count,
            crls: loaded_crls,
        })
    }

    /// The CRLs in force.
    pub fn crls(&self) -> &[LoadedCrl] {
        &self.crls
    }

    /// The rustls configuration for new connections.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config.clone()
    }

    /// The server's own certificate as PEM (for SCRAM channel binding).
    pub fn server_certificate_pem(&self) -> Option<String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.server_leaf.as_ref());
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).ok()?);
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        Some(pem)
    }

    /// Every loaded certificate.
    pub fn certificates(&self) -> &[LoadedCertificate] {
        &self.certificates
    }

    /// How many CRLs are in force.
    pub fn crl_count(&self) -> usize {
        self.crl_count
    }

    /// Checks a client's certificate chain (leaf first) against the trusted
    /// CAs, the validity dates and the CRLs. The error is a sentence for the
    /// client that names the cause and the fix.
    pub fn verify_client(&self, chain: &[CertificateDer<'_>]) -> Result<ClientCertificate, String> {
        let Some(verifier) = &self.client_verifier else {
            return Err("this server trusts no CA for client certificates (set ssl-trust-ca); connect without a client certificate".into());
        };
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or("the client sent an empty certificate chain")?;
        let info = cert_info(leaf).map_err(|e| format!("the client certificate is unreadable: {e}"))?;
        match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            Ok(_) => Ok(ClientCertificate { info }),
            Err(e) => Err(describe_refusal(&info, &e)),
        }
    }
}

fn describe_refusal(info: &CertInfo, error: &rustls::Error) -> String {
    let who = format!("client certificate \"{}\" (serial {})", info.subject, info.serial);
    let rustls::Error::InvalidCertificate(cause) = error else {
        return format!("{who} was refused: {error}");
    };
    match cause {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
            "{who} expired on {}; issue a new one (sealdb cert create-client USER) and connect with it",
            format_time(info.not_after)
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
            "{who} is not valid before {}; check the clocks of client and server, or use a certificate that is valid now",
            format_time(info.not_before)
        ),
        CertificateError::Revoked => format!(
            "{who} or a CA certificate of its chain has been revoked: it is listed in a CRL from ssl-crl; ask for a new certificate"
        ),
        CertificateError::UnknownRevocationStatus => format!(
            "the revocation status of {who} is unknown: ssl-crl holds no CRL from its issuer \"{}\" (or from a CA of its chain); add the issuer's CRL to ssl-crl",
            info.issuer
        ),
        CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. } => format!(
            "{who} cannot be checked: the CRL of its issuer is past its next update and ssl-crl-expired = refuse; install a current CRL"
        ),
        CertificateError::UnknownIssuer => format!(
            "{who} is signed by \"{}\", which this server does not trust; use a certificate signed by a CA in ssl-trust-ca",
            info.issuer
        ),
        CertificateError::BadSignature => format!(
            "{who} has a signature that does not verify against the trusted CA \"{}\": it was signed by another CA of the same name, or it is forged or damaged; use a certificate signed by a CA in ssl-trust-ca",
            info.issuer
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!("{who} is not meant for client authentication (extended key usage lacks clientAuth)")
        }
        other => format!("{who} was refused: {other:?}"),
    }
}

/// What a CRL says of itself, read from its DER.
fn inspect_crl(path: &Path, der: &rustls_pki_types::CertificateRevocationListDer<'_>) -> Result<LoadedCrl, PkiError> {
    use x509_parser::prelude::FromDer;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
        .map_err(|e| PkiError::bad(path, format!("not a readable CRL: {e}")))?;
    Ok(LoadedCrl {
        path: path.to_path_buf(),
        issuer: crl.issuer().to_string(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
    })
}

/// Asks for a client certificate during the handshake and checks that the
/// client holds its private key, but leaves the chain, dates and CRLs to
/// [`TlsMaterial::verify_client`], which runs before any authentication
/// decision so that the refusal can be a readable PostgreSQL error.
#[derive(Debug)]
struct DeferredClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred: the server calls `TlsMaterial::verify_client` on every
        // presented chain before it authenticates anybody.
        Ok(ClientCertVerified::assertion())
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

/// Serves one certificate to every client.
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn leaf_public_key(der: &[u8]) -> Result<Vec<u8>, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.public_key().raw.to_vec())
}

/// Names of the cipher suites `ssl-cipher-suites` accepts.
pub fn supported_cipher_suite_names() -> Vec<String> {
    rustls::crypto::aws_lc_rs::default_provider()
        .cipher_suites
        .iter()
        .map(|s| suite_name(s.suite()))
        .collect()
}

fn suite_name(suite: rustls::CipherSuite) -> String {
    suite
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{suite:?}"))
}

/// A TLS client configuration for mutual TLS to servers signed by one of
/// `trust`'s CAs (KMIP servers, other nodes), presenting `identity` (its
/// certificate chain and key, PEM or PKCS#12). TLS 1.2 and 1.3.
pub fn client_config(
    identity: &ServerIdentitySource,
    trust: &TrustSource,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let (chain, key) = match identity {
        ServerIdentitySource::Pem { cert, key } => {
            check_private_key_permissions(key)?;
            (pem_certs(cert)?, pem_key(key)?)
        }
        ServerIdentitySource::Pkcs12 { path, password } => {
            check_private_key_permissions(path)?;
            pkcs12_identity(path, password)?
        }
    };
    let identity_file = match identity {
        ServerIdentitySource::Pem { cert, .. } => cert,
        ServerIdentitySource::Pkcs12 { path, .. } => path,
    };
    // A certificate out of its validity would only be refused by the peer,
    // with a bare TLS alert: say which one, and until when it was valid.
    if let Some(leaf) = chain.first()
        && let Ok(info) = cert_info(leaf)
    {
        let now = time::OffsetDateTime::now_utc();
        if info.not_after < now {
            return Err(PkiError::bad(
                identity_file,
                format!(
                    "the client certificate {} expired on {}; issue a new one and point the setting at it",
                    info.subject,
                    info.not_after_text()
                ),
            ));
        }
        if info.not_before > now {
            return Err(PkiError::bad(
                identity_file,
                format!(
                    "the client certificate {} is not valid before {} (check this machine's clock)",
                    info.subject,
                    format_time(info.not_before)
                ),
            ));
        }
    }
    let (roots, trust_path) = match trust {
        TrustSource::Pem(path) => (pem_certs(path)?, path.clone()),
        TrustSource::Pkcs12 { path, password } => (pkcs12_trust(path, password)?, path.clone()),
    };
    let mut store = RootCertStore::empty();
    for der in roots {
        store
            .add(der)
            .map_err(|e| PkiError::bad(&trust_path, format!("not a usable CA certificate: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| PkiError::Config(format!("TLS client: {e}")))?
        .with_root_certificates(store)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            PkiError::bad(
                identity_file,
                format!("the certificate and key do not make a TLS identity: {e}"),
            )
        })?;
    Ok(Arc::new(config))
}

/// The crypto provider of every TLS endpoint and client of sealdb:
/// aws-lc-rs, preferring the hybrid post-quantum key exchange
/// X25519MLKEM768 (so traffic recorded today stays safe from a future
/// quantum computer), then X25519, P-256 and P-384 for peers without it.
pub fn crypto_provider() -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::kx_group;
    CryptoProvider {
        kx_groups: vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
            kx_group::SECP384R1,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

fn provider_with_suites(names: &[String]) -> Result<CryptoProvider, PkiError> {
    let mut provider = crypto_provider();
    if names.is_empty() {
        return Ok(provider);
    }
    let wanted: Vec<String> = names.iter().map(|n| normalize_suite(n)).collect();
    for (given, want) in names.iter().zip(&wanted) {
        if !provider.cipher_suites.iter().any(|s| suite_name(s.suite()) == *want) {
            return Err(PkiError::Config(format!(
                "ssl-cipher-suites: unknown or unsupported suite {given:?}; choose from {}",
                supported_cipher_suite_names().join(", ")
            )));
        }
    }
    provider
        .cipher_suites
        .retain(|s| wanted.contains(&suite_name(s.suite())));
    Ok(provider)
}

fn normalize_suite(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase().replace('-', "_");
    for tls13 in ["AES_128_GCM_SHA256", "AES_256_GCM_SHA384", "CHACHA20_POLY1305_SHA256"] {
        if upper == format!("TLS_{tls13}") {
            return format!("TLS13_{tls13}");
        }
    }
    upper
}

/// The TLS material in force, replaced atomically by [`TlsReloader::reload`].
#[derive(Debug)]
pub struct TlsReloader {
    files: TlsFiles,
    current: ArcSwap<TlsMaterial>,
}

impl TlsReloader {
    /// Loads the files once; fails if any is bad.
    pub fn new(files: TlsFiles) -> Result<Self, PkiError> {
        let material = TlsMaterial::load(&files)?;
        Ok(Self {
            files,
            current: ArcSwap::from_pointee(material),
        })
    }

    /// The material for the next connection.
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.current.load_full()
    }

    /// Reads every file again. On success new connections use the new
    /// material; established sessions keep theirs. On error nothing changes.
    pub fn reload(&self) -> Result<Arc<TlsMaterial>, PkiError> {
        let material = Arc::new(TlsMaterial::load(&self.files)?);
        self.current.store(material.clone());
        Ok(material)
    }
}
