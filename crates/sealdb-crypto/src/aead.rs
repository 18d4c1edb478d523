use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::{CryptoError, Key256, random_bytes};

/// Bytes in an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes in an AES-GCM tag.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key with its key schedule prepared once.
///
/// Callers choose nonces: each must be used once per key. The helpers
/// [`nonce_from_counter`] (for keys used for one file, with a counter that
/// never repeats in it) and [`random_nonce`] (for keys that seal few
/// messages) cover the two ways sealdb uses keys.
pub struct AeadKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(AES-256-GCM, <32 bytes>)")
    }
}

impl AeadKey {
    /// Prepares `key` for AES-256-GCM. aws-lc clears the schedule when the
    /// key is dropped.
    pub fn new(key: &Key256) -> Self {
        // A 32-byte key is always accepted by AES-256-GCM.
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose())
            .unwrap_or_else(|_| unreachable!("AES-256-GCM accepts every 32-byte key"));
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `in_out` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| CryptoError::Internal("seal"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Authenticates and decrypts `in_out`, which ends with the tag; returns
    /// the length of the plaintext now at its start. On failure nothing of
    /// the plaintext is released: the buffer is zeroed.
    pub fn open_in_place(&self, nonce: [u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<usize, CryptoError> {
        if in_out.len() < TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        match self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
        {
            Ok(plain) => Ok(plain.len()),
            Err(_) => {
                in_out.fill(0);
                Err(CryptoError::Authentication)
            }
        }
    }

    /// Seals `plaintext` with a random nonce: returns nonce, ciphertext, tag.
    /// For keys that seal few messages (catalog images, keystores).
    pub fn seal_with_random_nonce(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = random_nonce()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(nonce, aad, &mut out[NONCE_LEN..])?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what [`Self::seal_with_random_nonce`] sealed.
    pub fn open_with_nonce_prefix(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let len = self.open_in_place(nonce, aad, &mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }
}

/// A nonce from a 64-bit counter that never repeats under one key.
pub fn nonce_from_counter(counter: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce
}

/// A random nonce. Safe for up to 2^32 messages per key.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_their_nonce_and_associated_data() {
        let key = AeadKey::new(&Key256::random().unwrap());
        let mut buf = b"marker-12345".to_vec();
        let tag = key.seal_in_place(nonce_from_counter(1), b"file 3", &mut buf).unwrap();
        assert_ne!(&buf, b"marker-12345");
        let mut whole = buf.clone();
        whole.extend_from_slice(&tag);
        let mut copy = whole.clone();
        let n = key.open_in_place(nonce_from_counter(1), b"file 3", &mut copy).unwrap();
        assert_eq!(&copy[..n], b"marker-12345");
        let mut copy = whole.clone();
        assert!(key.open_in_place(nonce_from_counter(2), b"file 3", &mut copy).is_err());
        assert!(copy.iter().all(|b| *b == 0), "nothing released on failure");
        let mut copy = whole.clone();
        assert!(key.open_in_place(nonce_from_counter(1), b"file 4", &mut copy).is_err());
    }

    #[test]
    fn random_nonce_boxes_round_trip_and_detect_flips() {
        let key = AeadKey::new(&Key256::random().unwrap());
        let sealed = key.seal_with_random_nonce(b"ad", b"hello").unwrap();
        assert_eq!(key.open_with_nonce_prefix(b"ad", &sealed).unwrap(), b"hello");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(key.open_with_nonce_prefix(b"ad", &bad).is_err(), "flip at {i} detected");
        }
        assert!(key.open_with_nonce_prefix(b"ad", &sealed[..sealed.len() - 1]).is_err());
    }
}
