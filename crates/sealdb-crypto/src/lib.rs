//! The cryptography sealdb stores data with.
//!
//! - [`Key256`]: a 256-bit secret, zeroized on drop, never printed.
//! - [`AeadKey`]: AES-256-GCM with a prepared key schedule; every seal binds
//!   associated data, and every open authenticates before it returns bytes.
//! - [`wrap_key`] / [`unwrap_key`]: envelope encryption of one key by another
//!   (AES-256-GCM, random nonce, associated data naming what the key is for).
//! - [`derive_key`]: HKDF-SHA256 for keys that need not be stored.
//! - [`PassphraseKdf`]: Argon2id for keys sealed under a passphrase.
//!
//! It does not know files, catalogs or key servers; those live in
//! `sealdb-storage` and `sealdb-kms`. It builds in seconds.
#![forbid(unsafe_code)]

mod aead;
mod error;
mod key;
pub mod locked;
mod passphrase;

pub use aead::{AeadKey, NONCE_LEN, TAG_LEN, nonce_from_counter, random_nonce};
pub use error::CryptoError;
pub use key::{KEY_LEN, Key256, WRAPPED_KEY_LEN, derive_key, random_bytes, sha256, unwrap_key, wrap_key};
pub use passphrase::PassphraseKdf;
