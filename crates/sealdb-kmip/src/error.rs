use thiserror::Error;

/// What went wrong talking KMIP. Messages name the host, the operation and
/// the object, never key material or plaintext.
#[derive(Debug, Error)]
pub enum KmipError {
    /// Bytes that are not valid TTLV.
    #[error("malformed KMIP message at byte {offset}: {detail}")]
    Malformed {
        /// Where in the message.
        offset: usize,
        /// What is wrong.
        detail: String,
    },
    /// Valid TTLV that is not the expected KMIP message.
    #[error("unexpected KMIP response from {host} to {operation}: {detail}")]
    Unexpected {
        /// The key server.
        host: String,
        /// The operation asked for.
        operation: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The key server refused or failed the operation.
    #[error("the key server {host} failed {operation}{object}: {reason}{message}")]
    Failed {
        /// The key server.
        host: String,
        /// The operation.
        operation: &'static str,
        /// ` on object ID`, or empty.
        object: String,
        /// The Result Reason's name (`Item Not Found`, `Permission Denied`, ...).
        reason: String,
        /// `: ` and the Result Message, or empty.
        message: String,
        /// The Result Reason's code.
        code: u32,
    },
    /// No host of the group could be reached; each host and why.
    #[error("no KMIP host answered ({}); check that the key server runs, the addresses in [kmip_hosts] and the TLS files", .tried.iter().map(|(h, e)| format!("{h}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreachable {
        /// Every host tried, in order, with its failure.
        tried: Vec<(String, String)>,
    },
    /// A request was sent but its answer did not come back in time or the
    /// connection broke.
    #[error("KMIP {operation} on {host} failed: {detail}")]
    Transport {
        /// The key server.
        host: String,
        /// The operation.
        operation: &'static str,
        /// Timeout or I/O error.
        detail: String,
    },
    /// The server and sealdb have no KMIP version in common.
    #[error("the key server {host} speaks KMIP {offered}, none of which sealdb supports ({supported})")]
    NoCommonVersion {
        /// The key server.
        host: String,
        /// What it offered.
        offered: String,
        /// What sealdb speaks.
        supported: String,
    },
    /// The operation needs a newer KMIP version than the connection speaks.
    #[error(
        "the key server {host} speaks KMIP {speaks}, and {operation} {what} needs KMIP {needs} or later; upgrade the key server, or use mode = \"get\" in [kmip_hosts] (the key is fetched and used in memory)"
    )]
    VersionTooOld {
        /// The key server.
        host: String,
        /// The operation.
        operation: &'static str,
        /// What of it needs the newer version.
        what: &'static str,
        /// The version negotiated.
        speaks: String,
        /// The version needed.
        needs: String,
    },
    /// Bad client settings (hosts, TLS).
    #[error("KMIP client settings: {0}")]
    Config(String),
}

impl KmipError {
    /// Whether the key server said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Failed { code: 0x01, .. })
    }
}
