/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A ciphertext failed authentication: it was altered, truncated, moved
    /// to another place, or sealed under another key.
    #[error("authentication failed: the data was altered, moved, or sealed under another key")]
    Authentication,
    /// A key or wrapped key had the wrong length.
    #[error("{what} has {actual} bytes, expected {expected}")]
    Length {
        /// What was measured.
        what: &'static str,
        /// Its length.
        actual: usize,
        /// The required length.
        expected: usize,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Key derivation from a passphrase failed (bad parameters).
    #[error("passphrase key derivation failed: {0}")]
    Passphrase(String),
    /// A bug: the crypto library refused a well-formed request.
    #[error("internal cryptography error: {0}")]
    Internal(&'static str),
}
