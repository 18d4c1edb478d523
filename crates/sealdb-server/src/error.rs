use pgwire::error::{ErrorInfo, PgWireError};
use sealdb_sql::SqlError;

/// Why the server could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Certificates, keys, CAs or CRLs are unusable.
    #[error(transparent)]
    Pki(#[from] sealdb_pki::PkiError),
    /// The SQL engine could not be set up.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// The listening socket could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// host:port.
        address: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The settings contradict each other.
    #[error("{0}")]
    Settings(String),
}

/// The one place a statement error becomes a wire error.
pub(crate) fn sql_error_to_wire(error: &SqlError) -> PgWireError {
    wire_error("ERROR", error.sqlstate(), error.to_string())
}

/// A wire error with a severity, SQLSTATE and message.
pub(crate) fn wire_error(severity: &str, code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

/// A FATAL error that ends the connection during startup.
pub(crate) fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    wire_error("FATAL", code, message)
}
