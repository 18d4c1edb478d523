//! Reading what a certificate says: names, issuer, serial, validity.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sealdb_auth::{DistinguishedName, Rdn};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use crate::PkiError;

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name as shown: DER order, RFC 4514 escapes in
    /// values (`O=Example\, Inc., CN=alice`), so that no value can pass for
    /// a separator.
    pub subject: String,
    /// The subject, attribute by attribute: what names are compared on.
    pub subject_dn: DistinguishedName,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// Subject alternative names: `DNS:host`, `IP:addr`, `email:...`, `URI:...`.
    pub sans: Vec<String>,
    /// Issuer distinguished name, shown as the subject is.
    pub issuer: String,
    /// The issuer, attribute by attribute.
    pub issuer_dn: DistinguishedName,
    /// Serial number in colon-free lower-case hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

impl CertInfo {
    /// Whole days from `now` until the certificate expires (negative once expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }

    /// `not_after` as `YYYY-MM-DD HH:MM:SS UTC`.
    pub fn not_after_text(&self) -> String {
        format_time(self.not_after)
    }
}

/// Formats a time as `YYYY-MM-DD HH:MM:SS UTC`.
/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.format(&f).unwrap_or_else(|_| t.to_string())
}

/// Parses one DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            sans.push(match name {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(b) => format!("IP:{}", ip_text(b)),
                GeneralName::RFC822Name(e) => format!("email:{e}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                other => format!("{other:?}"),
            });
        }
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let (subject_dn, issuer_dn) = (name_of(cert.subject()), name_of(cert.issuer()));
    Ok(CertInfo {
        subject: subject_dn.to_string(),
        subject_dn,
        common_name,
        sans,
        issuer: issuer_dn.to_string(),
        issuer_dn,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca: cert.is_ca(),
    })
}

/// A name's RDNs as typed attributes: string values as they are, any
/// other value as `#` and the hex of its bytes.
fn name_of(name: &X509Name<'_>) -> DistinguishedName {
    let rdns: Vec<Rdn> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let value = match attribute.as_str() {
                        Ok(text) => text.to_owned(),
                        Err(_) => {
                            let bytes = attribute.attr_value().data;
                            format!("#{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
                        }
                    };
                    (attribute.attr_type().to_id_string(), value)
                })
                .collect()
        })
        .collect();
    DistinguishedName::from_rdns(rdns)
}

/// Parses every certificate in a PEM file.
pub fn cert_info_pem_file(path: &Path) -> Result<Vec<CertInfo>, PkiError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| PkiError::bad(path, format!("cannot read PEM: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::bad(path, format!("bad PEM: {e}")))?;
    certs
        .iter()
        .map(|c| cert_info(c).map_err(|e| PkiError::bad(path, e)))
        .collect()
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => format!("{bytes:02x?}"),
    }
}
