//! Loading certificates, keys, trust stores and CRLs from files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use p12_keystore::{KeyStore, Pkcs12Archive, Pkcs12ImportPolicy};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::PkiError;

/// Refuses a private key file that group or others can read.
pub fn check_private_key_permissions(path: &Path) -> Result<(), PkiError> {
    let meta = std::fs::metadata(path).map_err(|e| PkiError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyFileTooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// All certificates in a PEM file, in order; an empty file is an error.
pub(crate) fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = std::fs::read(path).map_err(|e| PkiError::io(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::bad(path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::bad(
            path,
            "no certificate found; expected PEM blocks starting with -----BEGIN CERTIFICATE-----",
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub(crate) fn pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| PkiError::io(path, e))?);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        PkiError::bad(path, format!("no usable private key ({e}); expected an unencrypted PEM key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"))
    })
}

/// CRLs in PEM files.
pub(crate) fn pem_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    let bytes = std::fs::read(path).map_err(|e| PkiError::io(path, e))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::bad(path, format!("bad PEM CRL: {e}")))?;
    if crls.is_empty() {
        return Err(PkiError::bad(
            path,
            "no CRL found; expected PEM blocks starting with -----BEGIN X509 CRL-----",
        ));
    }
    Ok(crls)
}

/// The key and certificate chain of a PKCS#12 keystore.
pub(crate) fn pkcs12_identity(
    path: &Path,
    password: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let store = open_pkcs12(path, password, Pkcs12ImportPolicy::Relaxed)?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| PkiError::bad(path, "the PKCS#12 keystore holds no private key with a certificate"))?;
    let certs: Vec<CertificateDer<'static>> = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(PkiError::bad(
            path,
            "the PKCS#12 keystore's private key has no certificate",
        ));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
    Ok((certs, key))
}

/// Every certificate in a PKCS#12 trust store: Java's trusted entries and
/// OpenSSL's plain certificate bags alike.
pub(crate) fn pkcs12_trust(path: &Path, password: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| PkiError::io(path, e))?);
    let archive = Pkcs12Archive::from_pkcs12(&bytes, password).map_err(|e| PkiError::Pkcs12 {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let certs: Vec<CertificateDer<'static>> = archive
        .certs
        .iter()
        .map(|b| CertificateDer::from(b.cert.as_der().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(PkiError::bad(path, "the PKCS#12 trust store holds no certificate"));
    }
    Ok(certs)
}

fn open_pkcs12(path: &Path, password: &str, policy: Pkcs12ImportPolicy) -> Result<KeyStore, PkiError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| PkiError::io(path, e))?);
    KeyStore::from_pkcs12(&bytes, password, policy).map_err(|e| PkiError::Pkcs12 {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
