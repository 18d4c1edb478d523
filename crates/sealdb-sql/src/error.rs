use datafusion::error::DataFusionError;

/// A statement failed. Every variant maps to one SQLSTATE ([`SqlError::sqlstate`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The session lacks a privilege (42501).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The statement does not parse (42601).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A table or relation does not exist (42P01).
    #[error("{0}")]
    UndefinedTable(String),
    /// A role does not exist (42704).
    #[error("{0}")]
    UndefinedObject(String),
    /// An object exists already (42710).
    #[error("{0}")]
    DuplicateObject(String),
    /// Not supported by sealdb (0A000).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// A bad value in a statement or parameter (22023).
    #[error("{0}")]
    InvalidValue(String),
    /// TLS reload or another server operation failed (55000).
    #[error("{0}")]
    ServerState(String),
    /// The storage engine failed: disk full (53100), integrity (XX001),
    /// lock timeout (55P03), missing key or file (XX000).
    #[error("{0}")]
    Storage(#[from] sealdb_storage::StorageError),
    /// Planning or execution failed in DataFusion (42000 for plans, XX000 otherwise).
    #[error("{message}")]
    Query {
        /// DataFusion's message.
        message: String,
        /// Whether it was a planning error (user's fault).
        plan: bool,
    },
}

impl SqlError {
    /// The SQLSTATE code for the wire.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::PermissionDenied(_) => "42501",
            Self::Syntax(_) => "42601",
            Self::UndefinedTable(_) => "42P01",
            Self::UndefinedObject(_) => "42704",
            Self::DuplicateObject(_) => "42710",
            Self::NotSupported(_) => "0A000",
            Self::InvalidValue(_) => "22023",
            Self::ServerState(_) => "55000",
            Self::Storage(e) if e.is_disk_full() => "53100",
            Self::Storage(sealdb_storage::StorageError::Integrity { .. }) => "XX001",
            Self::Storage(sealdb_storage::StorageError::LockTimeout(_)) => "55P03",
            Self::Storage(sealdb_storage::StorageError::Schema { .. }) => "23502",
            Self::Storage(_) => "XX000",
            Self::Query { plan: true, .. } => "42000",
            Self::Query { plan: false, .. } => "XX000",
        }
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        let e = e.find_root().to_owned();
        let message = e.to_string();
        match &e {
            DataFusionError::SQL(..) => Self::Syntax(strip_prefix(&message)),
            DataFusionError::Plan(m) if m.contains("not found") && m.contains("table") => {
                Self::UndefinedTable(m.clone())
            }
            DataFusionError::Plan(m) => Self::Query {
                message: m.clone(),
                plan: true,
            },
            DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) => {
                Self::Query { message, plan: true }
            }
            _ => Self::Query { message, plan: false },
        }
    }
}

fn strip_prefix(m: &str) -> String {
    m.trim_start_matches("SQL error: ")
        .trim_start_matches("ParserError(\"")
        .trim_end_matches("\")")
        .to_owned()
}
