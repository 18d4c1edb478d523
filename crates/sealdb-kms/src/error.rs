use std::path::PathBuf;

/// What can go wrong with a key provider.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The keystore is sealed under a passphrase and none was given.
    #[error(
        "the keystore {path} is sealed under a passphrase; give it with keystore-password-file or SEALDB_KEYSTORE_PASSWORD"
    )]
    PassphraseRequired {
        /// The keystore file.
        path: PathBuf,
    },
    /// The passphrase does not open the keystore.
    #[error(
        "the keystore passphrase is wrong: {path} could not be unsealed (nothing was changed); check keystore-password-file or SEALDB_KEYSTORE_PASSWORD"
    )]
    WrongPassphrase {
        /// The keystore file.
        path: PathBuf,
    },
    /// The keystore file is damaged or not a keystore.
    #[error("the keystore {path} is damaged: {reason}; restore it from a backup")]
    Corrupt {
        /// The keystore file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The keystore was written by a newer sealdb.
    #[error("the keystore {path} has format version {found}; this sealdb reads up to {supported}: upgrade sealdb")]
    NewerFormat {
        /// The keystore file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// A master-key version the data needs is not in the provider.
    #[error("master key {id} is not in {provider}; it was destroyed or the key store was replaced")]
    UnknownMasterKey {
        /// The id.
        id: String,
        /// The provider.
        provider: String,
    },
    /// A master key was destroyed: what it protected is unreadable.
    #[error("master key {id} in {provider} is destroyed; data under it cannot be read")]
    Destroyed {
        /// The id.
        id: String,
        /// The provider.
        provider: String,
    },
    /// The key server refuses to decrypt with a revoked master key.
    #[error(
        "master key {id} in {provider} is {state} on the key server, and the server refuses to decrypt with it ({detail}); KMIP lets a {state} key decrypt, so allow that on the key server: sealdb then opens the key ring once and moves to a new master key at once"
    )]
    Retired {
        /// The id.
        id: String,
        /// The provider.
        provider: String,
        /// `deactivated` or `compromised`.
        state: &'static str,
        /// The key server's answer.
        detail: String,
    },
    /// A wrapped key did not authenticate under the master key.
    #[error("a key wrapped by master key {id} failed authentication (altered, or wrapped under another master key)")]
    Unwrap {
        /// The id.
        id: String,
    },
    /// Reading or writing the keystore failed.
    #[error("keystore {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A primitive failed.
    #[error(transparent)]
    Crypto(#[from] sealdb_crypto::CryptoError),
    /// The KMIP key server failed or could not be reached.
    #[error(transparent)]
    Kmip(#[from] sealdb_kmip::KmipError),
    /// Bad provider settings.
    #[error("{0}")]
    Config(String),
}
