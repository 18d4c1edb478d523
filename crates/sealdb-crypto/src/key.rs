use aws_lc_rs::{digest, hkdf};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{AeadKey, CryptoError, NONCE_LEN, TAG_LEN};

/// Bytes in a key.
pub const KEY_LEN: usize = 32;
/// Bytes in a wrapped key: nonce, the key sealed, tag.
pub const WRAPPED_KEY_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// A 256-bit secret key. Its bytes live in an allocation of their own, in
/// memory locked into RAM where the system allows it ([`crate::locked`]),
/// and are zeroized on drop; its `Debug` shows no byte of it.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Key256(Box<[u8; KEY_LEN]>);

impl Key256 {
    /// A key of zero bytes, in locked memory, to be filled.
    fn zeroed() -> Self {
        let key = Self(Box::new([0u8; KEY_LEN]));
        crate::locked::lock(&key.0[..]);
        key
    }

    /// A fresh key from the system random number generator.
    pub fn random() -> Result<Self, CryptoError> {
        let mut key = Self::zeroed();
        random_bytes(&mut key.0[..])?;
        Ok(key)
    }

    /// A key from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::Length {
                what: "key",
                actual: bytes.len(),
                expected: KEY_LEN,
            });
        }
        let mut key = Self::zeroed();
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// The secret bytes, for handing to a cipher.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

impl Clone for Key256 {
    fn clone(&self) -> Self {
        let mut key = Self::zeroed();
        key.0.copy_from_slice(&self.0[..]);
        key
    }
}

impl std::fmt::Debug for Key256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key256(<{KEY_LEN} bytes>)")
    }
}

/// Fills `out` from the system random number generator.
pub fn random_bytes(out: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(out).map_err(|_| CryptoError::Random)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Seals `key` under `kek`, binding `aad` (what the key is and where it
/// belongs). The result is [`WRAPPED_KEY_LEN`] bytes: nonce, sealed key, tag.
pub fn wrap_key(kek: &AeadKey, key: &Key256, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
    out.extend_from_slice(&[0u8; NONCE_LEN]);
    random_bytes(&mut out[..NONCE_LEN])?;
    out.extend_from_slice(key.expose());
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&out[..NONCE_LEN]);
    let tag = kek.seal_in_place(nonce, aad, &mut out[NONCE_LEN..])?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a key sealed by [`wrap_key`] under `kek` with the same `aad`.
pub fn unwrap_key(kek: &AeadKey, wrapped: &[u8], aad: &[u8]) -> Result<Key256, CryptoError> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(CryptoError::Length {
            what: "wrapped key",
            actual: wrapped.len(),
            expected: WRAPPED_KEY_LEN,
        });
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&wrapped[..NONCE_LEN]);
    let mut buf = wrapped[NONCE_LEN..].to_vec();
    let result = kek
        .open_in_place(nonce, aad, &mut buf)
        .and_then(|len| Key256::from_slice(&buf[..len]));
    buf.zeroize();
    result
}

/// HKDF-SHA256: a key for one purpose (`info`) derived from `key`.
pub fn derive_key(key: &Key256, info: &[u8]) -> Result<Key256, CryptoError> {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            KEY_LEN
        }
    }
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"sealdb key derivation v1");
    let prk = salt.extract(key.expose());
    let info = [info];
    let okm = prk
        .expand(&info, Len)
        .map_err(|_| CryptoError::Internal("hkdf expand"))?;
    let mut out = Key256::zeroed();
    okm.fill(&mut out.0[..])
        .map_err(|_| CryptoError::Internal("hkdf fill"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_key_opens_only_with_the_same_kek_and_associated_data() {
        let kek = AeadKey::new(&Key256::random().unwrap());
        let other = AeadKey::new(&Key256::random().unwrap());
        let key = Key256::random().unwrap();
        let wrapped = wrap_key(&kek, &key, b"table 7 v1").unwrap();
        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        assert!(unwrap_key(&kek, &wrapped, b"table 7 v1").unwrap().ct_eq(&key));
        assert!(matches!(
            unwrap_key(&kek, &wrapped, b"table 8 v1"),
            Err(CryptoError::Authentication)
        ));
        assert!(matches!(
            unwrap_key(&other, &wrapped, b"table 7 v1"),
            Err(CryptoError::Authentication)
        ));
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert!(unwrap_key(&kek, &flipped, b"table 7 v1").is_err());
        assert!(matches!(
            unwrap_key(&kek, &wrapped[1..], b"table 7 v1"),
            Err(CryptoError::Length { .. })
        ));
    }

    #[test]
    fn key_memory_is_locked_where_the_system_allows() {
        let keys: Vec<Key256> = (0..64).map(|_| Key256::random().unwrap()).collect();
        let copy = keys[0].clone();
        assert!(copy.ct_eq(&keys[0]));
        let locked_kib = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap();
        match crate::locked::status() {
            crate::locked::LockStatus::Locked { pages } => {
                assert!(pages >= 1);
                assert!(locked_kib >= 4, "VmLck is {locked_kib} kB");
            }
            crate::locked::LockStatus::Refused { reason } => {
                assert!(reason.contains("ulimit -l"), "{reason}");
            }
        }
    }

    #[test]
    fn debug_output_shows_no_key_bytes() {
        let key = Key256::from_slice(&[0xab; 32]).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "Key256(<32 bytes>)");
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_are_stable() {
        let key = Key256::random().unwrap();
        let a = derive_key(&key, b"log 1").unwrap();
        let b = derive_key(&key, b"log 2").unwrap();
        assert!(!a.ct_eq(&b));
        assert!(a.ct_eq(&derive_key(&key, b"log 1").unwrap()));
    }
}
