//! SQL for sealdb, on Apache DataFusion.
//!
//! [`Engine`] owns the catalog shared by every session, the users and grants
//! ([`sealdb_auth::AccessControl`]) and the `sys` schema. A [`SqlSession`]
//! is one client's view: its identity, its settings and its transaction
//! state. Statements go through three doors:
//!
//! 1. the security statements DataFusion does not know (`CREATE USER ...
//!    REQUIRE X509`, `GRANT`, `ALTER SYSTEM RELOAD TLS`, `SHOW ssl`,
//!    `BEGIN`/`COMMIT`), parsed by [`security`];
//! 2. everything else is parsed with PostgreSQL compatibility rewrites
//!    and a bound on how deeply it nests ([`MAX_EXPRESSION_DEPTH`]),
//!    planned by DataFusion, and its plan is checked against the session's
//!    privileges before anything runs ([`privileges`]);
//! 3. `sys.*` tables read live state from the server through [`ServerHooks`].
//!
//! It does not speak the wire protocol and does not know TLS.
#![forbid(unsafe_code)]

mod cache;
pub mod copy;
mod durable;
mod engine;
mod error;
pub mod executor;
mod parse;
mod prepared;
mod privileges;
pub mod spill;
pub mod status;
mod storage_table;
mod sys;

pub use engine::{
    ACCESS_SECTION, ClientCertSummary, Engine, Executed, Output, Prepared, QueryMemory, SessionInfo, SqlSession,
    TlsSessionInfo,
};
pub use error::SqlError;
pub use parse::MAX_EXPRESSION_DEPTH;
/// The statements parsed before DataFusion (its own crate, free of DataFusion).
pub use sealdb_statements as security;
pub use sys::{CertificateRow, KeyAdmin, SERVER_VERSION, ServerHooks};
