use std::path::PathBuf;

/// Everything that can go wrong making, loading or checking certificates.
///
/// Messages name the file and say how to fix it; none of them ever carries
/// key material or a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file that would be overwritten already exists.
    #[error("{path} already exists; pass --overwrite to replace it, or use another --certs-dir")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A PEM or DER file holds no usable certificate, key or CRL.
    #[error("{path}: {what}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A private key file can be read by other users.
    #[error(
        "{path} is readable by group or others (mode {mode:o}); private keys must be private: run `chmod 600 {path}`"
    )]
    KeyFileTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A PKCS#12 file could not be opened (wrong password or damaged file).
    #[error(
        "{path}: cannot open PKCS#12 file: {reason}; check the password (from the *-password-file key or SEALDB_* variable) and the file"
    )]
    Pkcs12 {
        /// The file.
        path: PathBuf,
        /// The library's reason.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("the private key in {key} does not match the certificate in {cert}: {reason}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// A setting is invalid (cipher suite name, TLS version, mapping rule).
    #[error("{0}")]
    Config(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// rustls refused the material.
    #[error("TLS configuration refused: {0}")]
    Tls(String),
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Self::BadFile {
            path: path.into(),
            what: what.into(),
        }
    }
}
