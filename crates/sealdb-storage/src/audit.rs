//! The audit log: logins, changes of users and grants, key operations.
//!
//! ```text
//! audit/<seq>.audit   16 hex digits; a new file at every start, after ALTER SYSTEM REKEY
//!                     and once a file holds FILE_BYTES_TARGET
//! header  magic "SEALAUD2" 8 | seq u64 | salt 16 | tag 16
//!         (AES-256-GCM over nothing, key HKDF(system key, "audit header" salt), nonce seq,
//!         AAD: the 32 bytes before it)
//! record  len u32 | !len u32 | number u64 | ciphertext | tag 16
//!         key HKDF(system key, "audit <seq> " salt), nonce: the number, AAD: seq and number
//! ```
//!
//! The salt, 16 random bytes drawn when the file is begun, keeps a data
//! directory restored from a copy (which numbers its files and records as
//! the original went on to) from sealing different records under the same
//! key and nonce. Files of format 1 (magic "SEALAUD1", no salt) are read,
//! never written. Reading the log checks it one file at a time, keeping
//! only the chain's end, so a long log is never held in memory.
//!
//! Each record's plaintext is JSON holding its number, its time, what
//! happened, and `prev`, the SHA-256 of the plaintext of the record before
//! it. Numbers run on across files. [`read`] checks that every record
//! authenticates, that the numbers have no gap and that every `prev`
//! matches: a record removed, edited or put back out of order, even by
//! someone holding the keys, breaks the chain where it happened, which
//! `sealdb verify` reports. Every record is fsynced before the action it
//! records is acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sealdb_crypto::{AeadKey, Key256, derive_key, nonce_from_counter, sha256};
use serde::{Deserialize, Serialize};

use crate::StorageError;
use crate::salt::{FileSalt, SALT_LEN, salted_info};

/// The audit log's directory in the data directory.
pub const AUDIT_DIR: &str = "audit";
const MAGIC_V1: &[u8; 8] = b"SEALAUD1";
const MAGIC: &[u8; 8] = b"SEALAUD2";
const HEADER_FIELDS_LEN_V1: usize = 16;
const HEADER_FIELDS_LEN: usize = HEADER_FIELDS_LEN_V1 + SALT_LEN;
const HEADER_LEN: usize = HEADER_FIELDS_LEN + 16;
const RECORD_MAX: usize = 1 << 20;
/// A file is closed and the next one begun past this size.
const FILE_BYTES_TARGET: u64 = 16 << 20;

/// What an audit file's keys are derived from besides the system key.
#[derive(Debug, Clone, Copy)]
struct FileId {
    seq: u64,
    /// `None` in a format-1 file.
    salt: Option<FileSalt>,
}

impl FileId {
    fn new(seq: u64) -> Result<Self, StorageError> {
        Ok(Self {
            seq,
            salt: Some(FileSalt::random()?),
        })
    }

    fn info(&self, label: &str) -> Vec<u8> {
        salted_info(label, self.salt.as_ref())
    }

    fn header_len(&self) -> usize {
        match self.salt {
            None => HEADER_FIELDS_LEN_V1 + 16,
            Some(_) => HEADER_LEN,
        }
    }
}

/// What happened, as the caller tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// `login`, `login failed`, `create user`, `grant`, `master key rotated`, ...
    pub event: String,
    /// Who (the session's user, or `sealdb` for the server itself).
    pub user: String,
    /// Everything else: client address, auth method, TLS version and
    /// cipher, certificate subject, key ids. Never a secret.
    pub detail: String,
}

impl AuditEvent {
    /// A new event.
    pub fn new(event: impl Into<String>, user: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            event: event.into(),
            user: user.into(),
            detail: detail.into(),
        }
    }
}

/// One record as stored and read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, ... with no gap.
    pub number: u64,
    /// Unix milliseconds.
    pub time_unix_ms: u64,
    /// What happened.
    pub event: String,
    /// Who.
    pub user: String,
    /// The rest.
    pub detail: String,
    /// SHA-256 (hex) of the previous record's plaintext; empty for the first.
    pub prev: String,
}

/// The audit log read back, with what is wrong with it.
#[derive(Debug, Default)]
pub struct AuditLog {
    /// Every record that authenticated, in order.
    pub records: Vec<AuditRecord>,
    /// Breaks of the chain and records that failed authentication.
    pub problems: Vec<String>,
}

fn header_key(system: &Key256, file: &FileId) -> Result<AeadKey, StorageError> {
    Ok(AeadKey::new(&derive_key(system, &file.info("audit header"))?))
}

fn record_key(system: &Key256, file: &FileId) -> Result<AeadKey, StorageError> {
    Ok(AeadKey::new(&derive_key(
        system,
        &file.info(&format!("audit {}", file.seq)),
    )?))
}

fn record_ad(seq: u64, number: u64) -> [u8; 16] {
    let mut ad = [0u8; 16];
    ad[..8].copy_from_slice(&seq.to_le_bytes());
    ad[8..].copy_from_slice(&number.to_le_bytes());
    ad
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The audit files of `dir`, oldest first.
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let audit = dir.join(AUDIT_DIR);
    let entries = match std::fs::read_dir(&audit) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("listing", &audit)(e)),
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let seq = u64::from_str_radix(name.strip_suffix(".audit")?, 16).ok()?;
            Some((seq, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn file_name(seq: u64) -> String {
    format!("{seq:016x}.audit")
}

/// Appends records, each durable before [`AuditWriter::append`] returns.
pub(crate) struct AuditWriter {
    dir: PathBuf,
    system: Key256,
    /// `None` until the file could be created (a disk full at start).
    file: Option<File>,
    file_id: FileId,
    seq: u64,
    key: AeadKey,
    /// Bytes in the current file.
    written: u64,
    next_number: u64,
    last_hash: String,
    /// A file is closed and the next one begun past this size.
    file_bytes_target: u64,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Reads the existing log (checking it with `keys`, the system key
    /// first), then begins a new file under `keys[0]` that continues the
    /// chain.
    pub(crate) fn open(dir: &Path, keys: &[Key256]) -> Result<Self, StorageError> {
        // A crash while appending leaves a partial record at the end of the
        // newest file (never acknowledged): cut it off, so that the file,
        // no longer the newest once this one begins, reads whole.
        if let Some((seq, path)) = list_files(dir)?.pop() {
            let shown = format!("{AUDIT_DIR}/{}", file_name(seq));
            let whole = whole_len(&path, &shown, seq, keys)?;
            let len = std::fs::metadata(&path)
                .map_err(StorageError::io("reading", &path))?
                .len();
            if let Some(whole) = whole.filter(|w| *w < len) {
                tracing::warn!(file = %shown, "the audit file ended in a partial record (a crash while writing it); cut it off");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| {
                        f.set_len(whole)?;
                        f.sync_all()
                    })
                    .map_err(StorageError::io("truncating", &path))?;
            }
        }
        let existing = check(dir, keys)?;
        if let Some(problem) = existing.problems.first() {
            return Err(StorageError::integrity(
                AUDIT_DIR,
                format!(
                    "the audit log is damaged: {problem}; nothing was changed. Run sealdb verify, keep the damaged file for investigation, and move it out of {AUDIT_DIR}/ to start"
                ),
            ));
        }
        let (next_number, last_hash) = (existing.next_number, existing.last_hash);
        let next_seq = list_files(dir)?.last().map(|(s, _)| s + 1).unwrap_or(1);
        let file_id = FileId::new(next_seq)?;
        let system = keys
            .first()
            .cloned()
            .ok_or_else(|| StorageError::Internal("the audit log needs a key".into()))?;
        // A full disk must not keep the server from starting: the file is
        // begun by the first record once space returns.
        let file = match begin_file(dir, &system, &file_id) {
            Ok(file) => Some(file),
            Err(e) if e.is_disk_full() => {
                tracing::warn!("{e}; audit records fail until space returns");
                None
            }
            Err(e) => return Err(e),
        };
        let key = record_key(&system, &file_id)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            system,
            file,
            file_id,
            seq: next_seq,
            key,
            written: HEADER_LEN as u64,
            next_number,
            last_hash,
            file_bytes_target: FILE_BYTES_TARGET,
        })
    }

    /// Appends one record and fsyncs it.
    pub(crate) fn append(&mut self, event: &AuditEvent) -> Result<AuditRecord, StorageError> {
        let record = AuditRecord {
            number: self.next_number,
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            event: event.event.clone(),
            user: event.user.clone(),
            detail: event.detail.clone(),
            prev: self.last_hash.clone(),
        };
        let plain = serde_json::to_vec(&record).map_err(|e| StorageError::Internal(format!("audit record: {e}")))?;
        if self.file.is_some() && self.written >= self.file_bytes_target {
            // The chain goes on in the next file.
            let system = self.system.clone();
            self.switch_key(&system)?;
        }
        let frame = seal_record(&self.key, self.seq, record.number, &plain)?;
        let path = self.dir.join(AUDIT_DIR).join(file_name(self.seq));
        if self.file.is_none() {
            self.file = Some(begin_file(&self.dir, &self.system, &self.file_id)?);
        }
        let written = match self.file.as_mut() {
            Some(file) => file.write_all(&frame).and_then(|()| file.sync_data()),
            None => Ok(()),
        };
        if let Err(e) = written {
            // Cut back to the last whole record, so the next one follows it.
            if let Some(file) = self.file.as_mut() {
                let whole = whole_len(
                    &path,
                    &path.display().to_string(),
                    self.seq,
                    std::slice::from_ref(&self.system),
                )
                .ok()
                .flatten();
                if let Some(len) = whole {
                    let _ = file.set_len(len);
                }
            }
            return Err(StorageError::io("writing", &path)(e));
        }
        self.written += frame.len() as u64;
        self.next_number += 1;
        self.last_hash = hex(&sha256(&plain));
        Ok(record)
    }

    /// Continues in a new file under `system` (after `ALTER SYSTEM REKEY`).
    pub(crate) fn switch_key(&mut self, system: &Key256) -> Result<(), StorageError> {
        let file_id = FileId::new(self.seq + 1)?;
        let file = begin_file(&self.dir, system, &file_id)?;
        self.file = Some(file);
        self.key = record_key(system, &file_id)?;
        self.file_id = file_id;
        self.seq += 1;
        self.written = HEADER_LEN as u64;
        self.system = system.clone();
        Ok(())
    }

    /// Rewrites every file older than the current one under the current
    /// key, each replaced atomically (after `ALTER SYSTEM REKEY`).
    pub(crate) fn rewrite_older(&self, keys: &[Key256]) -> Result<usize, StorageError> {
        let mut rewritten = 0;
        for (seq, path) in list_files(&self.dir)? {
            if seq >= self.seq {
                continue;
            }
            let display = format!("{AUDIT_DIR}/{}", file_name(seq));
            let (plains, problems) = read_file(&path, &display, seq, keys, false)?;
            if let Some(p) = problems.first() {
                return Err(StorageError::integrity(&display, p.clone()));
            }
            let file_id = FileId::new(seq)?;
            let key = record_key(&self.system, &file_id)?;
            let mut bytes = header(&header_key(&self.system, &file_id)?, &file_id)?;
            for (number, plain) in plains {
                bytes.extend_from_slice(&seal_record(&key, seq, number, &plain)?);
            }
            sealdb_kms::replace_file_durably(&path, &bytes).map_err(StorageError::io("writing", &path))?;
            rewritten += 1;
        }
        Ok(rewritten)
    }
}

/// The end of the audit log's chain and what is wrong with it, from
/// [`check`], which keeps no record.
#[derive(Debug, Default)]
pub struct ChainEnd {
    /// The number the next record gets.
    pub next_number: u64,
    /// The hash the next record must name.
    pub last_hash: String,
    /// Records read.
    pub records: u64,
    /// Breaks of the chain and records that failed authentication.
    pub problems: Vec<String>,
}

fn header(key: &AeadKey, file: &FileId) -> Result<Vec<u8>, StorageError> {
    let salt = file
        .salt
        .ok_or_else(|| StorageError::Internal("an audit file is begun without a salt".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&file.seq.to_le_bytes());
    out.extend_from_slice(&salt.0);
    let tag = key.seal_in_place(nonce_from_counter(file.seq), &out, &mut [0u8; 0])?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn seal_record(key: &AeadKey, seq: u64, number: u64, plain: &[u8]) -> Result<Vec<u8>, StorageError> {
    let mut sealed = plain.to_vec();
    let tag = key.seal_in_place(nonce_from_counter(number), &record_ad(seq, number), &mut sealed)?;
    sealed.extend_from_slice(&tag);
    let len = u32::try_from(sealed.len()).map_err(|_| StorageError::Internal("audit record too long".into()))?;
    let mut out = Vec::with_capacity(16 + sealed.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn begin_file(dir: &Path, system: &Key256, file_id: &FileId) -> Result<File, StorageError> {
    let audit = dir.join(AUDIT_DIR);
    std::fs::create_dir_all(&audit).map_err(StorageError::io("creating", &audit))?;
    let path = audit.join(file_name(file_id.seq));
    let mut options = OpenOptions::new();
    options.append(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let bytes = header(&header_key(system, file_id)?, file_id)?;
    let file = match options.open(&path).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()?;
        Ok(f)
    }) {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(StorageError::io("creating", &path)(e));
        }
    };
    sealdb_kms::fsync_dir(&audit).map_err(StorageError::io("syncing", &audit))?;
    Ok(file)
}

/// (number, plaintext) of each record that authenticated, and problems.
type FileRecords = (Vec<(u64, Vec<u8>)>, Vec<String>);

/// Reads one file: (number, plaintext) of each record that authenticated,
/// and problems. A torn last record (a crash while appending it: never
/// acknowledged) is not a problem.
fn read_file(path: &Path, display: &str, seq: u64, keys: &[Key256], newest: bool) -> Result<FileRecords, StorageError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(StorageError::io("reading", path))?;
    let mut problems = Vec::new();
    let file_id = match bytes.get(..8) {
        Some(m) if m == MAGIC && bytes.len() >= HEADER_LEN => Some(FileId {
            seq,
            salt: FileSalt::read(&bytes[HEADER_FIELDS_LEN_V1..]),
        }),
        Some(m) if m == MAGIC_V1 && bytes.len() >= HEADER_FIELDS_LEN_V1 + 16 => Some(FileId { seq, salt: None }),
        _ => None,
    };
    let Some(file_id) = file_id.filter(|_| bytes[8..16] == seq.to_le_bytes()) else {
        problems.push(format!(
            "{display}: not an audit file of this sequence (bad magic, number or length)"
        ));
        return Ok((Vec::new(), problems));
    };
    let header_len = file_id.header_len();
    let fields_len = header_len - 16;
    let mut chosen = None;
    for system in keys {
        let mut tag = bytes[fields_len..header_len].to_vec();
        if header_key(system, &file_id)?
            .open_in_place(nonce_from_counter(seq), &bytes[..fields_len], &mut tag)
            .is_ok()
        {
            chosen = Some(record_key(system, &file_id)?);
            break;
        }
    }
    let Some(key) = chosen else {
        problems.push(format!(
            "{display}: the header failed authentication (altered, or from another data directory)"
        ));
        return Ok((Vec::new(), problems));
    };
    let mut out = Vec::new();
    let mut at = header_len;
    // Only the newest file may end in a partial record (a crash while
    // appending it); older files were complete when the next one began.
    let torn = |at: usize| format!("{display}: cut short at byte {at} (records removed)");
    while at < bytes.len() {
        if bytes.len() - at < 16 {
            if !newest {
                problems.push(torn(at));
            }
            break;
        }
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let check = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        if check != !len || len as usize > RECORD_MAX {
            problems.push(format!("{display}: damaged record length at byte {at}"));
            break;
        }
        let number = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap_or([0; 8]));
        let end = at + 16 + len as usize;
        if end > bytes.len() {
            if !newest {
                problems.push(torn(at));
            }
            break;
        }
        let mut sealed = bytes[at + 16..end].to_vec();
        match key.open_in_place(nonce_from_counter(number), &record_ad(seq, number), &mut sealed) {
            Ok(n) => {
                sealed.truncate(n);
                out.push((number, sealed));
            }
            Err(_) => problems.push(format!("{display}: record {number} failed authentication (altered)")),
        }
        at = end;
    }
    Ok((out, problems))
}

/// The length of the whole records of the file at `path` (read as the
/// newest file), or `None` when it has problems beyond a partial end.
fn whole_len(path: &Path, display: &str, seq: u64, keys: &[Key256]) -> Result<Option<u64>, StorageError> {
    let (records, problems) = read_file(path, display, seq, keys, true)?;
    if !problems.is_empty() {
        return Ok(None);
    }
    let mut head = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(StorageError::io("reading", path))?;
    let header_len = if &head == MAGIC_V1 {
        HEADER_FIELDS_LEN_V1 + 16
    } else {
        HEADER_LEN
    };
    Ok(Some(
        header_len as u64 + records.iter().map(|(_, p)| 16 + p.len() as u64 + 16).sum::<u64>(),
    ))
}

/// Checks the whole audit log of `dir` with `keys` as [`read`] does, one
/// file at a time, keeping only where the chain ends.
pub fn check(dir: &Path, keys: &[Key256]) -> Result<ChainEnd, StorageError> {
    let mut end = ChainEnd {
        next_number: 1,
        ..ChainEnd::default()
    };
    walk(dir, keys, &mut end.problems, |_, number, plain| {
        end.next_number = number + 1;
        end.last_hash = hex(&sha256(plain));
        end.records += 1;
    })?;
    Ok(end)
}

/// Reads and checks the whole audit log of `dir` with `keys` (each file
/// opens with one of them).
pub fn read(dir: &Path, keys: &[Key256]) -> Result<AuditLog, StorageError> {
    let mut log = AuditLog::default();
    let mut records = Vec::new();
    walk(dir, keys, &mut log.problems, |record, _, _| records.push(record))?;
    log.records = records;
    Ok(log)
}

/// Reads the audit log file by file, checking every record's
/// authentication, number and link to the one before, and hands each
/// record, its number and its plaintext to `each`; problems go to
/// `problems`.
fn walk(
    dir: &Path,
    keys: &[Key256],
    problems: &mut Vec<String>,
    mut each: impl FnMut(AuditRecord, u64, &[u8]),
) -> Result<(), StorageError> {
    let log_problems = problems;
    let mut expected_number = None;
    let mut prev_hash = String::new();
    let files = list_files(dir)?;
    let last = files.last().map(|(seq, _)| *seq);
    for (seq, path) in files {
        let display = format!("{AUDIT_DIR}/{}", file_name(seq));
        let (records, problems) = read_file(&path, &display, seq, keys, Some(seq) == last)?;
        log_problems.extend(problems);
        for (number, plain) in records {
            let record: AuditRecord = match serde_json::from_slice(&plain) {
                Ok(r) => r,
                Err(e) => {
                    log_problems.push(format!("{display}: record {number} is not a record: {e}"));
                    continue;
                }
            };
            if record.number != number {
                log_problems.push(format!(
                    "{display}: record {number} says it is number {} (altered)",
                    record.number
                ));
            }
            if let Some(expected) = expected_number
                && number != expected
            {
                log_problems.push(format!(
                    "{display}: records {expected} to {} are missing (removed); the hash chain breaks before record {number}",
                    number.saturating_sub(1)
                ));
            } else if expected_number.is_some() && record.prev != prev_hash {
                log_problems.push(format!(
                    "{display}: record {number} does not follow the record before it (hash chain broken: a record was edited or replaced)"
                ));
            }
            expected_number = Some(number + 1);
            prev_hash = hex(&sha256(&plain));
            each(record, number, &plain);
        }
    }
    Ok(())
}

/// Rewrites the audit log of `dir` with `edit` applied to its records,
/// each sealed correctly under `system`: what someone holding the keys
/// could do. For tests of [`read`]'s chain checks only.
pub(crate) fn rewrite_for_test(
    dir: &Path,
    system: &Key256,
    edit: impl FnOnce(&mut Vec<AuditRecord>),
) -> Result<(), StorageError> {
    let mut records = read(dir, std::slice::from_ref(system))?.records;
    edit(&mut records);
    for (_, path) in list_files(dir)? {
        std::fs::remove_file(&path).map_err(StorageError::io("removing", &path))?;
    }
    let file_id = FileId::new(1)?;
    let key = record_key(system, &file_id)?;
    let mut bytes = header(&header_key(system, &file_id)?, &file_id)?;
    for r in &records {
        let plain = serde_json::to_vec(r).map_err(|e| StorageError::Internal(e.to_string()))?;
        bytes.extend_from_slice(&seal_record(&key, 1, r.number, &plain)?);
    }
    let path = dir.join(AUDIT_DIR).join(file_name(1));
    sealdb_kms::replace_file_durably(&path, &bytes).map_err(StorageError::io("writing", &path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    /// Past its size target the log goes on in a new file that continues
    /// the hash chain; `check` reads the files one by one (never the whole
    /// log at once) and finds a file taken out of the middle; a writer
    /// opened again continues the chain.
    #[test]
    fn the_audit_log_rotates_into_chained_files_checked_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let keys = vec![Key256::random().unwrap()];
        let mut writer = AuditWriter::open(dir.path(), &keys).unwrap();
        writer.file_bytes_target = 2048;
        for i in 0..60 {
            writer
                .append(&AuditEvent::new("login failed", format!("user{i}"), "x".repeat(100)))
                .unwrap();
        }
        let files = list_files(dir.path()).unwrap();
        assert!(files.len() >= 3, "{} files", files.len());
        for (_, path) in &files {
            let len = std::fs::metadata(path).unwrap().len();
            assert!(len < 2048 + 1024, "{} is {len} bytes", path.display());
        }
        let end = check(dir.path(), &keys).unwrap();
        assert_eq!((end.records, end.next_number), (60, 61));
        assert!(end.problems.is_empty(), "{:?}", end.problems);
        drop(writer);

        let mut writer = AuditWriter::open(dir.path(), &keys).unwrap();
        writer.append(&AuditEvent::new("login", "admin", "")).unwrap();
        drop(writer);
        let end = check(dir.path(), &keys).unwrap();
        assert_eq!(end.records, 61);
        assert!(end.problems.is_empty(), "{:?}", end.problems);

        std::fs::remove_file(&files[1].1).unwrap();
        let end = check(dir.path(), &keys).unwrap();
        assert!(
            !end.problems.is_empty(),
            "a file taken out of the middle goes unnoticed"
        );
    }
}
