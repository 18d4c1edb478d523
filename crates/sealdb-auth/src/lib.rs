//! Users, roles, privileges and password verifiers for sealdb.
//!
//! - [`ScramVerifier`]: SCRAM-SHA-256 verifiers in PostgreSQL's format;
//!   passwords are never stored.
//! - [`AccessControl`]: users and roles with their `REQUIRE` policy, and
//!   grants of SELECT / INSERT / UPDATE / DELETE on tables or ALL TABLES.
//! - [`decide`]: how a connecting client must authenticate, given what the
//!   connection offers (TLS, a verified client certificate).
//!
//! It knows nothing of SQL parsing, TLS or the wire protocol, and builds in
//! seconds.
#![forbid(unsafe_code)]

mod access;
mod dn;
mod persist;
mod policy;
mod scram;

pub use access::{AccessControl, AccessError, Grant, GrantObject, Privilege, Requirement, User, UserOptions};
pub use dn::{Attribute, DistinguishedName, Rdn, escape_value, short_name};
pub use policy::{AuthPlan, CertFacts, ConnectionFacts, decide};
pub use scram::{SCRAM_ITERATIONS, ScramVerifier};
