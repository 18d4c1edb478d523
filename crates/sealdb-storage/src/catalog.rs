//! The catalog: the one root file of a data directory.
//!
//! It lists the tables (columns, encryption, key versions wrapped by the
//! key-ring key, the segments that hold their rows with each segment's
//! wrapped data key, the deleted row ids), the sections upper layers keep
//! (users and grants), and where the write-ahead log resumes. It is replaced
//! atomically (write, fsync, rename, fsync the directory) and the log is
//! rotated after every replacement, so an older copy put back is detected.
//!
//! ```text
//! magic "SEALCATG" 8 | format u32 | generation u64
//! provider  u16 len + bytes     key provider name (`local`, `kmip:GROUP`)
//! master    u16 len + bytes     master-key id in that provider
//! ring      u16 len + bytes     key-ring key wrapped by the master key
//! system    u16 len + bytes     system key wrapped by the key-ring key
//! body      nonce 12 | AES-256-GCM(JSON) | tag 16
//!           key: HKDF(system key, "catalog"); associated data: all of the above
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use sealdb_crypto::{AeadKey, Key256, derive_key};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::StorageError;

/// The catalog's file name in the data directory.
pub const CATALOG_FILE: &str = "catalog";
const MAGIC: &[u8; 8] = b"SEALCATG";
/// The catalog format this build writes and the newest it reads.
pub const CATALOG_FORMAT: u32 = 1;
/// Largest catalog accepted (256 MiB), so a damaged length cannot make
/// start-up allocate without bound.
const CATALOG_BYTES_MAX: u64 = 256 << 20;

/// The plaintext header: who holds the master key and the wrapped keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatalogHeader {
    pub format: u32,
    pub generation: u64,
    pub provider: String,
    pub master_id: String,
    pub wrapped_ring: Vec<u8>,
    pub wrapped_system: Vec<u8>,
}

/// Table encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    /// AES-256-GCM (Parquet modular encryption for segments).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// Segments in the clear, checked against a SHA-256 in the catalog.
    #[serde(rename = "none")]
    None,
}

impl Encryption {
    /// `aes-256-gcm` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "aes-256-gcm",
            Self::None => "none",
        }
    }
}

/// One version of a table key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableKeyMeta {
    /// 1, 2, ...
    pub version: u32,
    /// The key wrapped by the key-ring key.
    #[serde(with = "b64")]
    pub wrapped: Vec<u8>,
    /// Creation time, Unix seconds.
    pub created_unix: u64,
    /// The key on the table's key provider that wrapped this version, when
    /// the table's keys live there (`key_provider = 'kmip:GROUP'`);
    /// otherwise the key ring wrapped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<String>,
}

/// Where a table's key versions are wrapped, when not by the key ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableKeyProvider {
    /// `kmip:GROUP`.
    pub provider: String,
    /// Part of the key's Name on the key server:
    /// `sealdb/<instance>/<namespace>/<table>`.
    pub namespace: String,
}

/// One immutable segment file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// Unique in the data directory.
    pub id: u64,
    /// Rows in the file.
    pub rows: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Table-key version its data key is wrapped by; 0 when unencrypted.
    pub key_version: u32,
    /// The data key wrapped by that table key version.
    #[serde(with = "b64_opt", default)]
    pub wrapped_key: Option<Vec<u8>>,
    /// SHA-256 of the whole file.
    #[serde(with = "b64")]
    pub sha256: Vec<u8>,
    /// Smallest and largest row id in the file.
    pub min_rowid: u64,
    /// Largest row id in the file.
    pub max_rowid: u64,
}

/// A table as the catalog keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableMeta {
    /// Unique, never reused.
    pub id: u64,
    /// `schema.name`.
    pub name: String,
    /// Columns (without the internal row id).
    pub schema: arrow_schema::Schema,
    /// Encryption of its segments.
    pub encryption: Encryption,
    /// Creation time, Unix seconds.
    pub created_unix: u64,
    /// Table key versions, oldest first; the last is current.
    pub keys: Vec<TableKeyMeta>,
    /// Row ids below this are allocated.
    pub next_rowid: u64,
    /// Segment files holding rows as of the checkpoint.
    pub segments: Vec<SegmentMeta>,
    /// Deleted row ids (a serialized roaring bitmap).
    #[serde(with = "b64")]
    pub deleted: Vec<u8>,
    /// Created by `CREATE TABLE AS` and not yet filled: the statement was
    /// never acknowledged, so the next open drops the table.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpublished: bool,
    /// Where its key versions are wrapped, when not by the key ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_provider: Option<TableKeyProvider>,
    /// Its earlier keys on the key server, revoked there and replaced; they
    /// are destroyed with the table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_keks: Vec<String>,
}

impl TableMeta {
    /// Every key of this table on its key server, current and retired,
    /// each once.
    pub(crate) fn keks_to_destroy(&self) -> Vec<KeyToDestroy> {
        let Some(kp) = &self.key_provider else {
            return Vec::new();
        };
        let mut ids: Vec<String> = self.keys.iter().filter_map(|k| k.kek.clone()).collect();
        ids.extend(self.retired_keks.iter().cloned());
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| KeyToDestroy {
                provider: kp.provider.clone(),
                id,
                table: self.name.clone(),
            })
            .collect()
    }
}

/// The encrypted body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatalogBody {
    /// Same as the header's; checked against it.
    pub generation: u64,
    /// Every log record at or below this is in the segments.
    pub checkpoint_lsn: u64,
    /// The first log file recovery needs.
    pub log_seq_min: u64,
    /// Next table id.
    pub next_table_id: u64,
    /// Next file id (segments).
    pub next_file_id: u64,
    /// Tables.
    pub tables: Vec<TableMeta>,
    /// Opaque sections of upper layers (`access`: users and grants).
    pub sections: BTreeMap<String, serde_json::Value>,
    /// Keys on key servers that protect nothing any more (a dropped
    /// table's) and are still to be destroyed there; kept until done, so a
    /// crash or an unreachable server does not leave them alive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys_to_destroy: Vec<KeyToDestroy>,
    /// Re-encryption jobs, running and recent (`sys.jobs`); a running one
    /// resumes after a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobMeta>,
    /// Earlier system keys, wrapped by the key ring, kept by `ALTER SYSTEM
    /// REKEY` until no log or audit file needs them (a crash in the middle
    /// of it leaves files under either key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_system_keys: Vec<RetiredKey>,
}

/// A wrapped key kept to read older files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredKey {
    /// Wrapped by the key ring.
    #[serde(with = "b64")]
    pub wrapped: Vec<u8>,
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// `ALTER TABLE t REKEY` or `ALTER TABLE t SET (encryption = ...)`.
    #[serde(rename = "rekey table")]
    RekeyTable,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Working, or to resume at the next start.
    #[serde(rename = "running")]
    Running,
    /// Finished.
    #[serde(rename = "done")]
    Done,
    /// Stopped by an error it names; the statement may be run again.
    #[serde(rename = "failed")]
    Failed,
}

impl JobState {
    /// `running`, `done`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// One re-encryption job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMeta {
    /// Unique in the data directory.
    pub id: u64,
    /// What it does.
    pub kind: JobKind,
    /// The table's id and name.
    pub table_id: u64,
    /// The table's name.
    pub table: String,
    /// The table-key version the rewritten files go under (0: in the clear).
    pub target_version: u32,
    /// Where it is.
    pub state: JobState,
    /// Unix seconds.
    pub started_unix: u64,
    /// Unix seconds, once done or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix: Option<u64>,
    /// Bytes of the files to rewrite, as counted at the start.
    pub bytes_total: u64,
    /// Bytes of those files rewritten so far.
    pub bytes_done: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Table-key versions destroyed when it finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destroyed_versions: Vec<u32>,
}

/// A key on a key server to destroy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyToDestroy {
    /// `kmip:GROUP`.
    pub provider: String,
    /// Its id there.
    pub id: String,
    /// The table it protected.
    pub table: String,
}

pub(crate) fn body_key(system: &Key256) -> Result<AeadKey, StorageError> {
    Ok(AeadKey::new(&derive_key(system, b"catalog")?))
}

impl CatalogHeader {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.format.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        for field in [
            self.provider.as_bytes(),
            self.master_id.as_bytes(),
            &self.wrapped_ring,
            &self.wrapped_system,
        ] {
            out.extend_from_slice(&(field.len() as u16).to_le_bytes());
            out.extend_from_slice(field);
        }
        out
    }
}

/// Reads the header of the catalog at `path` (no key needed).
pub(crate) fn read_header(path: &Path) -> Result<(CatalogHeader, Vec<u8>, usize), StorageError> {
    let len = std::fs::metadata(path)
        .map_err(StorageError::io("reading", path))?
        .len();
    if len > CATALOG_BYTES_MAX {
        return Err(StorageError::integrity(
            CATALOG_FILE,
            format!("{len} bytes is larger than any catalog"),
        ));
    }
    let bytes = std::fs::read(path).map_err(StorageError::io("reading", path))?;
    let (header, at) = parse_header(&bytes)?;
    Ok((header, bytes, at))
}

/// The header at the start of `bytes` and its length: the decoder of a
/// catalog's unauthenticated bytes (fuzzed by `fuzz/fuzz_targets/catalog.rs`).
pub(crate) fn parse_header(bytes: &[u8]) -> Result<(CatalogHeader, usize), StorageError> {
    let bad = |d: &str| StorageError::integrity(CATALOG_FILE, d.to_owned());
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(bad("not a sealdb catalog (bad magic or too short)"));
    }
    let format = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| bad("header"))?);
    if format > CATALOG_FORMAT {
        return Err(StorageError::NewerFormat {
            file: CATALOG_FILE.into(),
            found: format,
            supported: CATALOG_FORMAT,
        });
    }
    let generation = u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| bad("header"))?);
    let mut at = 20;
    let mut fields = Vec::with_capacity(4);
    for _ in 0..4 {
        let l = bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| bad("header is truncated"))?;
        let f = bytes
            .get(at + 2..at + 2 + l)
            .ok_or_else(|| bad("header is truncated"))?;
        fields.push(f.to_vec());
        at += 2 + l;
    }
    let text = |v: &Vec<u8>| String::from_utf8(v.clone()).map_err(|_| bad("header names are not UTF-8"));
    let header = CatalogHeader {
        format,
        generation,
        provider: text(&fields[0])?,
        master_id: text(&fields[1])?,
        wrapped_ring: fields[2].clone(),
        wrapped_system: fields[3].clone(),
    };
    Ok((header, at))
}

/// Opens the body that follows the header.
pub(crate) fn open_body(bytes: &[u8], header_len: usize, key: &AeadKey) -> Result<CatalogBody, StorageError> {
    let (header, body) = bytes.split_at(header_len);
    let plain = Zeroizing::new(key.open_with_nonce_prefix(header, body).map_err(|_| {
        StorageError::integrity(
            CATALOG_FILE,
            "the catalog failed authentication (altered, truncated, or sealed under another key)",
        )
    })?);
    let body: CatalogBody = serde_json::from_slice(&plain)
        .map_err(|e| StorageError::integrity(CATALOG_FILE, format!("authenticated but unreadable body: {e}")))?;
    Ok(body)
}

/// Writes the catalog durably.
pub(crate) fn write(dir: &Path, header: &CatalogHeader, body: &CatalogBody, key: &AeadKey) -> Result<(), StorageError> {
    debug_assert_eq!(header.generation, body.generation);
    let plain =
        Zeroizing::new(serde_json::to_vec(body).map_err(|e| StorageError::Internal(format!("catalog encoding: {e}")))?);
    let file = encode_file(header, &plain, key)?;
    let path = dir.join(CATALOG_FILE);
    sealdb_kms::replace_file_durably(&path, &file).map_err(StorageError::io("writing", path))
}

/// A catalog file's bytes: `header`, then `plain` (the body's JSON) sealed.
pub(crate) fn encode_file(header: &CatalogHeader, plain: &[u8], key: &AeadKey) -> Result<Vec<u8>, StorageError> {
    let head = header.encode();
    let sealed = key.seal_with_random_nonce(&head, plain)?;
    let mut file = head;
    file.extend_from_slice(&sealed);
    Ok(file)
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => super::b64::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(Some)
                    .map_err(serde::de::Error::custom)
            }
        }
    }
}
