//! SCRAM-SHA-256 verifiers (RFC 5802 / RFC 7677), stored the way
//! PostgreSQL stores them: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
//!
//! A verifier lets the server check a client's proof without knowing the
//! password or anything a client could log in with.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// PBKDF2 iterations for new verifiers (PostgreSQL's default is 4096; we
/// take more, the cost is paid once per login).
pub const SCRAM_ITERATIONS: u32 = 4096;

const SALT_BYTES: usize = 16;

/// A SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl ScramVerifier {
    /// A verifier for `password` with a fresh random salt.
    pub fn new(password: &str, iterations: u32) -> Self {
        let salt: [u8; SALT_BYTES] = rand::random();
        Self::with_salt(password, &salt, iterations)
    }

    /// A verifier for `password` with a given salt (for tests and for a
    /// dummy exchange with unknown users).
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        // Clients normalize with SASLprep (RFC 4013) and fall back to the raw
        // bytes when it fails, as PostgreSQL does.
        let prepared = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_owned());
        let prepared = Zeroizing::new(prepared);
        let salted = salted_password(prepared.as_bytes(), salt, iterations);
        let client_key = hmac(&salted[..], b"Client Key");
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted[..], b"Server Key"),
        }
    }

    /// PostgreSQL's text form.
    pub fn to_pg_string(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Parses PostgreSQL's text form (so `CREATE USER ... PASSWORD
    /// 'SCRAM-SHA-256$...'` takes a verifier made elsewhere).
    pub fn parse_pg_string(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let key32 = |s: &str| -> Option<[u8; 32]> { B64.decode(s).ok()?.try_into().ok() };
        Some(Self {
            iterations: iterations.parse().ok().filter(|i| *i > 0)?,
            salt: B64.decode(salt).ok().filter(|s| !s.is_empty())?,
            stored_key: key32(stored)?,
            server_key: key32(server)?,
        })
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // Hmac accepts keys of every length; the error case cannot happen.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out[..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ScramVerifier {
        /// Checks a client proof: `ClientKey = proof XOR HMAC(StoredKey, auth)`,
        /// and `H(ClientKey)` must equal `StoredKey` (compared in constant time).
        fn verify_proof(&self, auth_message: &[u8], proof: &[u8]) -> bool {
            use subtle::ConstantTimeEq;
            if proof.len() != 32 {
                return false;
            }
            let signature = hmac(&self.stored_key, auth_message);
            let mut client_key = Zeroizing::new([0u8; 32]);
            for i in 0..32 {
                client_key[i] = proof[i] ^ signature[i];
            }
            let computed: [u8; 32] = Sha256::digest(&client_key[..]).into();
            computed.ct_eq(&self.stored_key).into()
        }

        /// The server's signature proving to the client that it holds the verifier.
        fn server_signature(&self, auth_message: &[u8]) -> [u8; 32] {
            hmac(&self.server_key, auth_message)
        }
    }

    // RFC 7677 section 3 test vector.
    const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

    #[test]
    fn rfc7677_exchange_verifies_and_signs() {
        let salt = B64.decode(SALT_B64).unwrap();
        let v = ScramVerifier::with_salt("pencil", &salt, 4096);
        let auth = b"n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = B64.decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").unwrap();
        assert!(v.verify_proof(auth, &proof));
        assert_eq!(
            B64.encode(v.server_signature(auth)),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let mut bad = proof.clone();
        bad[0] ^= 1;
        assert!(!v.verify_proof(auth, &bad));
    }

    #[test]
    fn pg_text_form_round_trips_and_rejects_garbage() {
        let v = ScramVerifier::new("secret", 4096);
        let text = v.to_pg_string();
        assert!(!text.contains("secret"));
        assert_eq!(ScramVerifier::parse_pg_string(&text), Some(v));
        assert_eq!(ScramVerifier::parse_pg_string("SCRAM-SHA-256$0:AAAA$x:y"), None);
        assert_eq!(ScramVerifier::parse_pg_string("md5abc"), None);
    }
}
