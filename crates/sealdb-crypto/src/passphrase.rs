use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroize;

use crate::{CryptoError, KEY_LEN, Key256};

/// Argon2id parameters for turning a passphrase into a key; stored next to
/// what they seal so that they can be raised later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassphraseKdf {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for PassphraseKdf {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 1 lane.
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// Largest memory cost accepted from a file (4 GiB), so a tampered header
/// cannot make start-up allocate without bound.
const MEMORY_KIB_MAX: u32 = 4 * 1024 * 1024;
/// Largest pass count accepted from a file.
const ITERATIONS_MAX: u32 = 64;

impl PassphraseKdf {
    /// The key for `passphrase` and `salt`.
    pub fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<Key256, CryptoError> {
        if self.memory_kib > MEMORY_KIB_MAX || self.iterations > ITERATIONS_MAX || self.parallelism > 16 {
            return Err(CryptoError::Passphrase(format!(
                "parameters out of range: m={} KiB t={} p={}",
                self.memory_kib, self.iterations, self.parallelism
            )));
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(KEY_LEN))
            .map_err(|e| CryptoError::Passphrase(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = [0u8; KEY_LEN];
        argon
            .hash_password_into(passphrase, salt, &mut out)
            .map_err(|e| CryptoError::Passphrase(e.to_string()))?;
        let key = Key256::from_slice(&out);
        out.zeroize();
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_passphrase_and_salt_give_the_same_key() {
        let kdf = PassphraseKdf {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let a = kdf.derive(b"correct horse", b"0123456789abcdef").unwrap();
        let b = kdf.derive(b"correct horse", b"0123456789abcdef").unwrap();
        let c = kdf.derive(b"wrong horse", b"0123456789abcdef").unwrap();
        assert!(a.ct_eq(&b));
        assert!(!a.ct_eq(&c));
    }

    #[test]
    fn absurd_parameters_from_a_file_are_refused() {
        let kdf = PassphraseKdf {
            memory_kib: u32::MAX,
            iterations: 1,
            parallelism: 1,
        };
        assert!(kdf.derive(b"x", b"0123456789abcdef").is_err());
    }
}
