use std::path::PathBuf;

/// What can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file failed authentication or is malformed: it was altered,
    /// truncated, moved from elsewhere, or replaced by an older copy.
    #[error("integrity check failed for {file}: {detail}")]
    Integrity {
        /// The file, relative to the data directory.
        file: String,
        /// What was found.
        detail: String,
    },
    /// Another process has the data directory open.
    #[error(
        "{} is in use by another sealdb process ({} is locked); stop that process first, or give another data directory",
        dir.display(),
        dir.join(crate::store::LOCK_FILE).display()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
    },
    /// A file the catalog lists is gone.
    #[error("{file} is missing: {detail}")]
    Missing {
        /// The file, relative to the data directory.
        file: String,
        /// What it was for.
        detail: String,
    },
    /// A file was written by a newer sealdb.
    #[error(
        "{file} has format version {found}; this sealdb reads up to {supported}: upgrade sealdb to open this data directory"
    )]
    NewerFormat {
        /// The file.
        file: String,
        /// The version found.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}{hint}", hint = io_hint(source))]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The key provider failed or refused.
    #[error(transparent)]
    Key(#[from] sealdb_kms::KmsError),
    /// A key this data needs is destroyed (crypto-shredded) or absent.
    #[error("key {key} is destroyed: {detail}")]
    KeyDestroyed {
        /// Which key.
        key: String,
        /// What became unreadable.
        detail: String,
    },
    /// The master key over this data is destroyed, or no key server has
    /// confirmed it within the grace period: the keys in memory are not used.
    #[error("cannot use table \"{table}\": {key} is {state}: {detail}")]
    KeyUnavailable {
        /// The table.
        table: String,
        /// The key: `master key ID in PROVIDER`, or the table's own key.
        key: String,
        /// `destroyed` or `unreachable`.
        state: String,
        /// What was found, and the fix.
        detail: String,
    },
    /// A table's own key could not be unwrapped by its key provider.
    #[error("the key of table \"{table}\" cannot be opened: {detail}")]
    TableKey {
        /// The table.
        table: String,
        /// The key, its provider and the failure.
        detail: String,
    },
    /// A primitive failed.
    #[error(transparent)]
    Crypto(#[from] sealdb_crypto::CryptoError),
    /// There is no such table.
    #[error("relation \"{0}\" does not exist")]
    NoSuchTable(String),
    /// The table already exists.
    #[error("relation \"{0}\" already exists")]
    TableExists(String),
    /// Rows do not match the table's columns.
    #[error("rows do not match table \"{table}\": {detail}")]
    Schema {
        /// The table.
        table: String,
        /// The mismatch.
        detail: String,
    },
    /// Another transaction holds a table this one needs to write.
    #[error(
        "could not lock table \"{0}\" for writing within the lock timeout: another transaction is writing it; nothing was changed, so retry the statement (and keep transactions that write it short)"
    )]
    LockTimeout(String),
    /// The write-ahead log stopped accepting writes after a failure it
    /// could not undo; nothing acknowledged is lost.
    #[error("the write-ahead log is closed after an earlier failure ({0}); restart sealdb once the cause is fixed")]
    LogClosed(String),
    /// Encoding or decoding Arrow or Parquet data failed.
    #[error("{context}: {detail}")]
    Format {
        /// Where.
        context: String,
        /// The codec's message.
        detail: String,
    },
    /// A bug.
    #[error("internal storage error: {0}")]
    Internal(String),
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    pub(crate) fn integrity(file: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Integrity {
            file: file.into(),
            detail: detail.into(),
        }
    }

    /// Runs `decode`, a decoder of another crate (Arrow IPC, Parquet,
    /// roaring) on bytes that passed authentication, so that a panic of
    /// theirs on malformed bytes (fuzzing finds such) is an integrity error
    /// naming `file`, not a crashed server. The panic's message is not
    /// kept: it may quote the bytes.
    pub(crate) fn contain<T>(file: &str, decode: impl FnOnce() -> Result<T, Self>) -> Result<T, Self> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|_| {
            Err(Self::integrity(
                file,
                "its decoder failed on bytes that passed authentication (written by a faulty or hostile writer holding the keys); restore it from a backup",
            ))
        })
    }

    /// Whether a retry of the same statement may succeed once the cause is
    /// fixed (disk space returns, the lock is released).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io { source, .. } => source.raw_os_error() == Some(ENOSPC),
            Self::LockTimeout(_) => true,
            Self::KeyUnavailable { state, .. } => state == crate::keygate::UNREACHABLE,
            Self::Integrity { .. }
            | Self::Missing { .. }
            | Self::InUse { .. }
            | Self::NewerFormat { .. }
            | Self::Key(_)
            | Self::KeyDestroyed { .. }
            | Self::TableKey { .. }
            | Self::Crypto(_)
            | Self::NoSuchTable(_)
            | Self::TableExists(_)
            | Self::Schema { .. }
            | Self::LogClosed(_)
            | Self::Format { .. }
            | Self::Internal(_) => false,
        }
    }

    /// Whether the failure is a full disk.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.raw_os_error() == Some(ENOSPC))
    }
}

const ENOSPC: i32 = 28;

fn io_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(ENOSPC) {
        " (the disk is full: free space and retry; nothing acknowledged was lost)"
    } else {
        ""
    }
}
