//! sealdb's own KMIP client.
//!
//! No maintained Rust KMIP client implements Encrypt and Decrypt, which
//! sealdb's `wrap` mode needs (the master key never leaves the key server),
//! so sealdb owns one:
//!
//! - [`ttlv`]: the TTLV codec, strict about untrusted bytes;
//! - [`message`]: request messages and response parsing for KMIP 1.0 to
//!   1.4 and 2.0 (the attribute encodings differ between 1.x and 2.0);
//! - [`client`]: mutual TLS over tokio-rustls, timeouts, one reused
//!   connection, ordered failover across a group's hosts, and the
//!   operations Discover Versions, Query, Create, Activate, Get, Get
//!   Attributes, Locate, Encrypt, Decrypt (AES-GCM with its tag), Revoke
//!   and Destroy.
#![forbid(unsafe_code)]

pub mod client;
mod error;
pub mod message;
pub mod spec;
pub mod ttlv;

pub use client::{HostStatus, HostTest, KmipClient, KmipClientConfig};
pub use error::KmipError;
pub use message::ProtocolVersion;
pub use spec::{Operation, State};

/// Entry points of the fuzz targets (`fuzz/fuzz_targets/`), which the test
/// suite also replays over the committed corpus; not a stable API.
#[doc(hidden)]
pub mod internal {
    use crate::message;
    use crate::spec::{Operation, tag};
    use crate::ttlv::Item;

    /// The TTLV decoder: what decodes encodes back to the same bytes.
    pub fn fuzz_ttlv(data: &[u8]) {
        if let Ok(item) = Item::decode(data) {
            let mut again = Vec::new();
            item.encode(&mut again);
            assert_eq!(again, data, "a decoded message encodes back to other bytes");
            assert_eq!(item.encoded_len(), data.len());
        }
    }

    /// Every response parser, on a decoded message, for every operation.
    pub fn fuzz_response(data: &[u8]) {
        let Ok(response) = Item::decode(data) else {
            return;
        };
        for operation in Operation::ALL {
            let Ok(payload) = message::response_payload(&response, operation, "fuzz:5696", Some("1")) else {
                continue;
            };
            let _ = message::discovered_versions(&payload);
            let _ = message::query_result(&payload).missing();
            let _ = message::unique_identifier(&payload);
            let _ = message::located(&payload);
            let _ = message::key_attributes(&payload);
            let _ = message::key_material(&payload);
            let _ = message::bytes(&payload, tag::DATA);
            let _ = message::bytes(&payload, tag::AUTHENTICATED_ENCRYPTION_TAG);
        }
    }
}
