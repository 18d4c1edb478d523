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

pub mod client;
mod error;
pub mod message;
pub mod spec;
pub mod ttlv;

pub use client::{HostStatus, HostTest, KmipClient, KmipClientConfig};
pub use error::KmipError;
pub use message::ProtocolVersion;
pub use spec::{Operation, State};
