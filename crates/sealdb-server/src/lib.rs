//! sealdb's PostgreSQL wire protocol frontend.
//!
//! [`Server`] listens on TCP, negotiates TLS (PostgreSQL `SSLRequest` or
//! PostgreSQL 17 direct TLS with ALPN `postgresql`), refuses plaintext unless
//! `ssl-mode` allows it, authenticates with SCRAM-SHA-256(-PLUS) or a client
//! certificate, and hands SQL to [`sealdb_sql::Engine`] through the simple and
//! extended query protocols.
//!
//! Every error a client can cause ends its own connection at most: the
//! listener keeps serving.
#![forbid(unsafe_code)]

mod admission;
mod connection;
mod copy;
mod encode;
mod error;
mod fuzzing;
mod query;
mod refusals;
mod startup;
mod state;

pub use error::ServerError;
pub use state::{Server, ServerSettings, readable, stale_crls};

/// Entry points of the `wire` fuzz target (`fuzz/wire/`), which the test
/// suite also replays over the committed corpus; not a stable API.
#[doc(hidden)]
pub mod internal {
    pub use crate::fuzzing::{fuzz_wire, start_wire_server};
}
