use datafusion::error::DataFusionError;
use sealdb_storage::StorageError;

use crate::storage_table::StorageTableError;

/// A statement failed. Every variant maps to one SQLSTATE ([`SqlError::sqlstate`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The session lacks a privilege (42501).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The statement nests too deeply or is too large to analyse (54001).
    #[error("statement too complex: {0}")]
    TooComplex(String),
    /// No prepared statement of that name (26000).
    #[error("{0}")]
    UndefinedPreparedStatement(String),
    /// A prepared statement of that name exists already (42P05).
    #[error("{0}")]
    DuplicatePreparedStatement(String),
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
    /// Malformed `COPY` data: wrong field count or quoting (22P04), a value
    /// that does not convert (22P02), bad UTF-8 (22021).
    #[error("{message}")]
    BadData {
        /// SQLSTATE.
        code: &'static str,
        /// What and where (the line).
        message: String,
    },
    /// A column named twice (42701).
    #[error("{0}")]
    DuplicateColumn(String),
    /// A NULL for a NOT NULL column (23502).
    #[error("{0}")]
    NotNullViolation(String),
    /// A column does not exist (42703).
    #[error("{0}")]
    UndefinedColumn(String),
    /// The client abandoned a `COPY FROM STDIN` (57014).
    #[error("{0}")]
    CopyAborted(String),
    /// A table exists already (42P07).
    #[error("{0}")]
    DuplicateTable(String),
    /// The statement cannot run inside a transaction block (25001).
    #[error("{0}")]
    ActiveTransaction(String),
    /// An earlier statement of the transaction block failed (25P02).
    #[error("current transaction is aborted, commands ignored until end of transaction block; ROLLBACK to continue")]
    TransactionAborted,
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
    /// lock timeout (55P03), NULL in a NOT NULL column (23502), missing
    /// key or file (XX000). `code` is the SQLSTATE.
    #[error("{message}")]
    Storage {
        /// SQLSTATE.
        code: &'static str,
        /// What failed, naming the file or table.
        message: String,
    },
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
            Self::TooComplex(_) => "54001",
            Self::UndefinedPreparedStatement(_) => "26000",
            Self::DuplicatePreparedStatement(_) => "42P05",
            Self::UndefinedTable(_) => "42P01",
            Self::UndefinedObject(_) => "42704",
            Self::DuplicateObject(_) => "42710",
            Self::DuplicateTable(_) => "42P07",
            Self::UndefinedColumn(_) => "42703",
            Self::NotNullViolation(_) => "23502",
            Self::BadData { code, .. } => code,
            Self::DuplicateColumn(_) => "42701",
            Self::CopyAborted(_) => "57014",
            Self::ActiveTransaction(_) => "25001",
            Self::TransactionAborted => "25P02",
            Self::NotSupported(_) => "0A000",
            Self::InvalidValue(_) => "22023",
            Self::ServerState(_) => "55000",
            Self::Storage { code, .. } => code,
            Self::Query { plan: true, .. } => "42000",
            Self::Query { plan: false, .. } => "XX000",
        }
    }
}

impl From<sealdb_statements::StatementError> for SqlError {
    fn from(e: sealdb_statements::StatementError) -> Self {
        use sealdb_statements::StatementError as E;
        match e {
            E::Syntax(m) => Self::Syntax(m),
            E::NotSupported(m) => Self::NotSupported(m),
            E::PermissionDenied(m) => Self::PermissionDenied(m),
            // Non-exhaustive: a new kind is still a refusal of the text.
            other => Self::Syntax(other.to_string()),
        }
    }
}

impl From<StorageError> for SqlError {
    fn from(e: StorageError) -> Self {
        Self::from_storage(&e)
    }
}

impl SqlError {
    fn from_storage(e: &StorageError) -> Self {
        let code = if e.is_disk_full() {
            "53100"
        } else {
            match e {
                StorageError::Integrity { .. } => "XX001",
                StorageError::LockTimeout(_) => "55P03",
                StorageError::NoSuchTable(_) => "42P01",
                StorageError::TableExists(_) => "42P07",
                StorageError::Schema { .. } => "23502",
                // Errors external to the database: the key server.
                StorageError::KeyUnavailable { .. } => "58000",
                _ => "XX000",
            }
        };
        Self::Storage {
            code,
            message: e.to_string(),
        }
    }

    fn from_storage_table(e: &StorageTableError) -> Self {
        match e {
            StorageTableError::Storage(s) => Self::from_storage(s),
            StorageTableError::NotNull { .. } => Self::NotNullViolation(e.to_string()),
            _ => Self::Storage {
                code: "XX000",
                message: e.to_string(),
            },
        }
    }
}

impl From<StorageTableError> for SqlError {
    fn from(e: StorageTableError) -> Self {
        Self::from_storage_table(&e)
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        let e = e.find_root();
        let message = e.to_string();
        if let DataFusionError::External(inner) = e {
            if let Some(s) = inner.downcast_ref::<StorageError>() {
                return Self::from_storage(s);
            }
            if let Some(s) = inner.downcast_ref::<StorageTableError>() {
                return Self::from_storage_table(s);
            }
            if let Some(s) = inner.downcast_ref::<crate::spill::SpillError>() {
                let code = match s {
                    crate::spill::SpillError::Integrity { .. } => "XX001",
                    crate::spill::SpillError::Io { source, .. } if source.raw_os_error() == Some(28) => "53100",
                    _ => "XX000",
                };
                return Self::Storage {
                    code,
                    message: s.to_string(),
                };
            }
        }
        if let DataFusionError::ResourcesExhausted(m) = e {
            return Self::Storage {
                code: "53200",
                message: format!("the query needs more memory than memory-limit allows ({m}); raise memory-limit"),
            };
        }
        // The Parquet reader could not authenticate an encrypted segment:
        // it was damaged, or replaced by another file.
        if let DataFusionError::ParquetError(p) = e {
            let text = p.to_string();
            if text.contains("decrypt") || text.contains("AAD") {
                return Self::Storage {
                    code: "XX001",
                    message: format!(
                        "integrity check failed: a segment file was damaged or replaced ({text}); run `sealdb verify` with the server stopped, and restore the file from a backup"
                    ),
                };
            }
        }
        // DataFusion's own check of INSERT values against NOT NULL columns.
        if let DataFusionError::ArrowError(a, _) = e
            && let datafusion::arrow::error::ArrowError::InvalidArgumentError(m) = a.as_ref()
            && m.contains("non-nullable")
        {
            return Self::NotNullViolation(format!("null value violates not-null constraint: {m}"));
        }
        match e {
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
