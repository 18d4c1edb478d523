//! Certificates for sealdb.
//!
//! This crate makes, loads and inspects the X.509 material a sealdb node
//! needs, and turns it into rustls configurations:
//!
//! - [`generate`]: a CA, node (server) certificates and client certificates,
//!   written with the file naming scheme of `sealdb cert` (`ca.crt`,
//!   `node.key`, `client.USER.p12`, ...), private keys mode 0600.
//! - [`TlsFiles`] / [`TlsMaterial`]: load PEM or PKCS#12 identities, CA
//!   bundles, trust stores and CRLs, and build the rustls `ServerConfig`.
//!   [`TlsReloader`] swaps in new material atomically, keeping the old on error.
//! - [`ClientCertificate`] and [`CertUserMap`]: what a verified client
//!   certificate says, and which database user it names.
//!
//! It does not know about SQL, users or the wire protocol. Client
//! certificates are verified in two steps: the TLS handshake checks only
//! that the client holds the private key of the certificate it sent, and
//! [`TlsMaterial::verify_client`] then checks the chain, validity dates and
//! CRLs, so that a refusal can reach the client as a PostgreSQL error that
//! names the cause instead of a bare TLS alert.
#![forbid(unsafe_code)]

mod error;
pub mod generate;
mod identity;
mod inspect;
mod load;
mod node;
mod tls;

pub use error::PkiError;
pub use generate::{CertsDir, KeyType};
pub use identity::{CertUserMap, ClientCertificate, UserMapRule};
pub use inspect::{CertInfo, cert_info, cert_info_pem_file, format_time};
pub use load::check_private_key_permissions;
pub use node::{NodeName, NodeTls, NodeTlsFiles};
pub use tls::{
    LoadedCertificate, LoadedCrl, MinTlsVersion, ServerIdentitySource, TlsFiles, TlsMaterial, TlsReloader, TrustSource,
    client_config, crypto_provider, install_crypto_provider, supported_cipher_suite_names,
};

/// Entry points of the fuzz targets (`fuzz/fuzz_targets/`), which the test
/// suite also replays over the committed corpus; not a stable API.
#[doc(hidden)]
pub mod internal {
    use crate::{CertInfo, CertUserMap};

    /// `cert-user-map` rules (one per line, then a blank line) applied to
    /// a certificate whose subject and names follow.
    pub fn fuzz_cert_user_map(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let (rules, names) = text
            .split_once("\n\n")
            .unwrap_or((text, "CN=alice, O=Example\nDNS:alice.example"));
        let rules: Vec<&str> = rules.lines().collect();
        let Ok(map) = CertUserMap::parse(&rules) else {
            return;
        };
        let mut names = names.lines();
        let subject = names.next().unwrap_or_default().to_owned();
        let info = CertInfo {
            common_name: subject
                .strip_prefix("CN=")
                .map(|s| s.split(',').next().unwrap_or_default().to_owned()),
            subject_dn: sealdb_auth::DistinguishedName::parse(&subject).unwrap_or_default(),
            subject,
            issuer_dn: sealdb_auth::DistinguishedName::default(),
            sans: names.map(str::to_owned).collect(),
            issuer: "CN=fuzz CA".into(),
            serial: "01".into(),
            not_before: time::OffsetDateTime::UNIX_EPOCH,
            not_after: time::OffsetDateTime::UNIX_EPOCH,
            is_ca: false,
        };
        if let Some(user) = map.user_for(&info) {
            assert!(!user.is_empty(), "a rule mapped a certificate to an empty user name");
        }
    }
}
