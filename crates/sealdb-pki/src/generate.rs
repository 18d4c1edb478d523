//! Making certificates: a CA, node certificates and client certificates.
//!
//! Files follow one naming scheme inside a certificates directory:
//! `ca.crt`, `ca.key`, `node.crt`, `node.key`, `client.USER.crt`,
//! `client.USER.key`, `client.USER.p12`. Private keys and PKCS#12 files are
//! created with mode 0600 and never overwritten unless asked.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use p12_keystore::{Certificate as P12Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::PkiError;

/// The key algorithm of a new certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256 (the default: small, fast, and what
    /// PyKMIP and most HSM front ends accept).
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256 (for old clients).
    Rsa2048,
    /// RSA 3072 with SHA-256.
    Rsa3072,
    /// Ed25519.
    Ed25519,
}

impl std::str::FromStr for KeyType {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        match s {
            "ecdsa-p256" => Ok(Self::EcdsaP256),
            "rsa-2048" => Ok(Self::Rsa2048),
            "rsa-3072" => Ok(Self::Rsa3072),
            "ed25519" => Ok(Self::Ed25519),
            other => Err(PkiError::Config(format!(
                "unknown key type {other:?}; use one of ecdsa-p256, rsa-2048, rsa-3072, ed25519"
            ))),
        }
    }
}

impl KeyType {
    fn generate(self) -> Result<KeyPair, PkiError> {
        let generated = match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Self::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            Self::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
            Self::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072),
        };
        generated.map_err(|e| PkiError::Generate(e.to_string()))
    }
}

/// A certificates directory and the files in it.
#[derive(Debug, Clone)]
pub struct CertsDir {
    dir: PathBuf,
    overwrite: bool,
    /// Where the signing CA's `ca.crt` and `ca.key` are, if not in `dir`.
    authority: Option<PathBuf>,
}

/// What one generation step wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The files written, certificate first.
    pub files: Vec<PathBuf>,
}

impl CertsDir {
    /// The directory `dir`; files that exist are refused unless `overwrite`.
    pub fn new(dir: impl Into<PathBuf>, overwrite: bool) -> Self {
        Self {
            dir: dir.into(),
            overwrite,
            authority: None,
        }
    }

    /// Node and client certificates made here are signed by the CA in
    /// `authority` (its `ca.crt` and `ca.key`), which may be kept apart
    /// from the certificates a server reads.
    pub fn signed_by(mut self, authority: impl Into<PathBuf>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ca.crt`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// `ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// `node.crt`.
    pub fn node_cert(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    /// `node.key`.
    pub fn node_key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    /// `client.USER.crt`.
    pub fn client_cert(&self, user: &str) -> PathBuf {
        self.dir.join(format!("client.{user}.crt"))
    }
    /// `client.USER.key`.
    pub fn client_key(&self, user: &str) -> PathBuf {
        self.dir.join(format!("client.{user}.key"))
    }
    /// `client.USER.p12`.
    pub fn client_pkcs12(&self, user: &str) -> PathBuf {
        self.dir.join(format!("client.{user}.p12"))
    }

    /// Makes a self-signed CA: `ca.crt` and `ca.key`.
    pub fn create_ca(&self, key_type: KeyType, days: u32) -> Result<Written, PkiError> {
        self.ensure_dir()?;
        self.refuse_existing(&[self.ca_cert(), self.ca_key()])?;
        let key = key_type.generate()?;
        let mut params = base_params(days)?;
        // A unique name, so that the CAs of two installations are told apart
        // (a client certificate from the other one is "unknown issuer", not
        // a bad signature from a namesake).
        let tag: [u8; 4] = rand::random();
        let cn = format!("sealdb CA {:02x}{:02x}{:02x}{:02x}", tag[0], tag[1], tag[2], tag[3]);
        params.distinguished_name = dn(&[(DnType::OrganizationName, "sealdb"), (DnType::CommonName, cn.as_str())]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        write_file(&self.ca_cert(), cert.pem().as_bytes(), 0o644)?;
        write_file(&self.ca_key(), Zeroizing::new(key.serialize_pem()).as_bytes(), 0o600)?;
        Ok(Written {
            files: vec![self.ca_cert(), self.ca_key()],
        })
    }

    /// Makes a node (server) certificate for `hosts` (DNS names or IP
    /// addresses), signed by the CA in this directory: `node.crt` (leaf then
    /// CA) and `node.key`. With `member`, it also names the node and its
    /// cluster (a `sealdb://cluster/ID/node/NAME` URI name; the common name
    /// is the node's name), so that it opens the node channel of that
    /// cluster ([`crate::NodeName`]).
    pub fn create_node(
        &self,
        hosts: &[String],
        member: Option<&crate::NodeName>,
        key_type: KeyType,
        days: u32,
    ) -> Result<Written, PkiError> {
        let first = hosts
            .first()
            .ok_or_else(|| PkiError::Config("create-node needs at least one host name or address".into()))?;
        self.refuse_existing(&[self.node_cert(), self.node_key()])?;
        let (issuer, ca_pem) = self.load_issuer()?;
        let key = key_type.generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())
            .map_err(|e| PkiError::Config(format!("bad host name in {hosts:?}: {e}")))?;
        apply_validity(&mut params, days)?;
        params.distinguished_name = match member {
            None => dn(&[(DnType::OrganizationName, "sealdb"), (DnType::CommonName, first)]),
            Some(node) => {
                let uri = rcgen::string::Ia5String::try_from(node.uri())
                    .map_err(|e| PkiError::Config(format!("bad cluster or node name in {}: {e}", node.uri())))?;
                params.subject_alt_names.push(rcgen::SanType::URI(uri));
                let unit = format!("sealdb cluster {}", node.cluster);
                dn(&[
                    (DnType::OrganizationName, "sealdb"),
                    (DnType::OrganizationalUnitName, unit.as_str()),
                    (DnType::CommonName, node.name.as_str()),
                ])
            }
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        let chain = format!("{}{}", cert.pem(), ca_pem);
        write_file(&self.node_cert(), chain.as_bytes(), 0o644)?;
        write_file(&self.node_key(), Zeroizing::new(key.serialize_pem()).as_bytes(), 0o600)?;
        Ok(Written {
            files: vec![self.node_cert(), self.node_key()],
        })
    }

    /// Makes a client certificate whose common name is `user`, signed by the
    /// CA in this directory: `client.USER.crt` and `client.USER.key`, and
    /// with `pkcs12_password` also `client.USER.p12` (key, certificate and CA).
    pub fn create_client(
        &self,
        user: &str,
        key_type: KeyType,
        days: u32,
        pkcs12_password: Option<&str>,
    ) -> Result<Written, PkiError> {
        validate_user_name(user)?;
        let mut targets = vec![self.client_cert(user), self.client_key(user)];
        if pkcs12_password.is_some() {
            targets.push(self.client_pkcs12(user));
        }
        self.refuse_existing(&targets)?;
        let (issuer, ca_pem) = self.load_issuer()?;
        let key = key_type.generate()?;
        let mut params = base_params(days)?;
        params.distinguished_name = dn(&[(DnType::OrganizationName, "sealdb"), (DnType::CommonName, user)]);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        write_file(&self.client_cert(user), cert.pem().as_bytes(), 0o644)?;
        write_file(
            &self.client_key(user),
            Zeroizing::new(key.serialize_pem()).as_bytes(),
            0o600,
        )?;
        if let Some(password) = pkcs12_password {
            let ca_der = pem_to_der(&self.ca_cert(), &ca_pem)?;
            let p12 = pkcs12_bytes(&key.serialize_der(), cert.der(), &ca_der, user, password)?;
            write_file(&self.client_pkcs12(user), &p12, 0o600)?;
        }
        Ok(Written { files: targets })
    }

    fn load_issuer(&self) -> Result<(Issuer<'static, KeyPair>, String), PkiError> {
        self.ensure_dir()?;
        let authority = self.authority.as_deref().unwrap_or(&self.dir);
        let (ca_cert, ca_key) = (authority.join("ca.crt"), authority.join("ca.key"));
        let ca_pem = fs::read_to_string(&ca_cert).map_err(|e| {
            PkiError::bad(
                &ca_cert,
                format!(
                    "cannot read the CA certificate ({e}); run `sealdb cert create-ca --certs-dir {}` first",
                    authority.display()
                ),
            )
        })?;
        let key_pem = Zeroizing::new(fs::read_to_string(&ca_key).map_err(|e| {
            PkiError::bad(
                &ca_key,
                format!("cannot read the CA's private key ({e}); certificates are made where the CA key is kept"),
            )
        })?);
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::bad(&ca_key, format!("not a usable private key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
            .map_err(|e| PkiError::bad(&ca_cert, format!("not a usable CA certificate: {e}")))?;
        Ok((issuer, ca_pem))
    }

    fn ensure_dir(&self) -> Result<(), PkiError> {
        fs::create_dir_all(&self.dir).map_err(|e| PkiError::io(&self.dir, e))
    }

    fn refuse_existing(&self, files: &[PathBuf]) -> Result<(), PkiError> {
        if self.overwrite {
            return Ok(());
        }
        match files.iter().find(|f| f.exists()) {
            Some(path) => Err(PkiError::Exists { path: path.clone() }),
            None => Ok(()),
        }
    }
}

/// Encodes a PKCS#12 file holding `key_pkcs8_der`, `cert_der` and the CA,
/// under `password` (PBES2 AES-256, HMAC-SHA-256 MAC: read by OpenSSL 3 and
/// Java's keytool).
pub fn pkcs12_bytes(
    key_pkcs8_der: &[u8],
    cert_der: &[u8],
    ca_der: &[u8],
    alias: &str,
    password: &str,
) -> Result<Vec<u8>, PkiError> {
    let p12err = |e: p12_keystore::error::Error| PkiError::Generate(format!("PKCS#12: {e}"));
    let key = PrivateKey::from_der(key_pkcs8_der).map_err(p12err)?;
    let certs = [
        P12Certificate::from_der(cert_der).map_err(p12err)?,
        P12Certificate::from_der(ca_der).map_err(p12err)?,
    ];
    let mut store = KeyStore::new();
    store.add_entry(
        alias,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(alias.as_bytes().to_vec(), key, certs)),
    );
    store.writer(password).write().map_err(p12err)
}

fn validate_user_name(user: &str) -> Result<(), PkiError> {
    let ok = !user.is_empty()
        && user.len() <= 63
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Config(format!(
            "user name {user:?} cannot be used in a file name; use 1-63 letters, digits, '_', '-', '.' or '@'"
        )))
    }
}

fn base_params(days: u32) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    apply_validity(&mut params, days)?;
    Ok(params)
}

fn apply_validity(params: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
    if days == 0 || days > 36_500 {
        return Err(PkiError::Config(format!(
            "--days {days} is out of range; use 1 to 36500"
        )));
    }
    let now = OffsetDateTime::now_utc();
    // Backdate a little so a client whose clock is slightly behind accepts it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

fn dn(parts: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (ty, value) in parts {
        dn.push(ty.clone(), *value);
    }
    dn
}

fn pem_to_der(path: &Path, pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::bad(path, format!("no PEM certificate: {e}")))
}

/// Writes `bytes` to a new file with `mode`, replacing it only through a
/// temporary file and a rename so that a crash never leaves half a key.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp-write");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| PkiError::io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| PkiError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| PkiError::io(path, e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
