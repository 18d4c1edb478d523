//! The write-ahead log: encrypted frames, group commit, recovery.
//!
//! A log file is `log/<seq, 16 hex digits>.wal`:
//!
//! ```text
//! header  magic "SEALWAL1" 8 | format u32 (2) | seq u64 | first_lsn u64 | catalog generation u64 | salt 16 | tag 16
//!         (tag: AES-256-GCM over nothing, key HKDF(system key, "log header" salt), nonce seq,
//!         associated data: the 52 bytes before it)
//! frame   len u32 | !len u32 | lsn u64 | flags u8 | kind u8 | table u64 | key version u32 | ciphertext len | tag 16
//!         key: HKDF(table key version, "log <seq> " salt) or HKDF(system key, "log <seq> " salt) for table 0
//!         nonce: lsn; associated data: seq and the 22 bytes from lsn to key version
//! ```
//!
//! The salt is 16 random bytes drawn when the file is begun. Sequence
//! numbers and lsns are recomputed from the files at every start, so a
//! data directory restored from a copy numbers its new files and frames
//! as the original went on to number its own: without the salt, the same
//! keys and nonces would seal different bytes, which with AES-GCM gives up
//! the keystream and the authentication key. Format 1 (no salt, keys
//! derived from the sequence number alone) is still read, never written.
//!
//! `len` is the ciphertext length and is stored twice, inverted the second
//! time, so a damaged length is reported instead of being read as the torn
//! end of the log. The frames of one commit are written together; the last
//! carries the END flag, and recovery applies only commits whose END frame
//! is present. Every file is written under keys derived for it, and a new
//! file is started after every recovery, every catalog change and every
//! write failure, so no (key, nonce) pair is ever used twice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use sealdb_crypto::{AeadKey, Key256, TAG_LEN, derive_key, nonce_from_counter};
use tokio::sync::oneshot;

use crate::StorageError;
use crate::salt::{FileSalt, SALT_LEN, salted_info};

/// The log directory inside the data directory.
pub const LOG_DIR: &str = "log";
const MAGIC: &[u8; 8] = b"SEALWAL1";
/// The log format this build writes and the newest it reads.
pub const LOG_FORMAT: u32 = 2;
/// Header fields of format 1, without a salt.
const HEADER_FIELDS_LEN_V1: usize = 8 + 4 + 8 + 8 + 8;
const HEADER_FIELDS_LEN: usize = HEADER_FIELDS_LEN_V1 + SALT_LEN;
const HEADER_LEN: usize = HEADER_FIELDS_LEN + TAG_LEN;

/// What a log file's keys are derived from besides the base key: its
/// sequence number, and its salt (none in a format-1 file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    seq: u64,
    salt: Option<FileSalt>,
}

impl FileId {
    /// A new file `seq` with a fresh random salt.
    fn new(seq: u64) -> Result<Self, StorageError> {
        Ok(Self {
            seq,
            salt: Some(FileSalt::random()?),
        })
    }

    /// File `seq` with a fixed salt, for benchmarks of sealing.
    pub(crate) fn for_benchmarks(seq: u64) -> Self {
        Self {
            seq,
            salt: Some(FileSalt([0x5a; SALT_LEN])),
        }
    }

    /// `label`, then the sequence number, then the salt: the HKDF info.
    fn info(&self, label: &str) -> Vec<u8> {
        salted_info(&format!("{label} {}", self.seq), self.salt.as_ref())
    }
}
const FRAME_PREFIX_LEN: usize = 8;
const FRAME_AD_LEN: usize = 8 + 1 + 1 + 8 + 4;
/// Largest frame payload (256 MiB): a length above it is damage.
pub const FRAME_PAYLOAD_MAX: usize = 256 << 20;
/// A log file is closed and a new one begun past this size.
const FILE_BYTES_TARGET: u64 = 64 << 20;
/// Commits gathered into one write and one fsync.
const GROUP_COMMITS_MAX: usize = 1024;

/// Flags of a frame.
const FLAG_END: u8 = 1;

/// What a frame records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Rows (Arrow IPC stream, with row ids).
    Insert = 1,
    /// Row ids deleted (roaring bitmap).
    Delete = 2,
    /// Every row id below a bound deleted.
    Truncate = 3,
    /// The log continues in file `seq` (u64): written last before a new
    /// file is begun, so that a deleted newer file is detected.
    Next = 4,
    /// Segment files a transaction wrote before it committed (its rows
    /// past `transaction-spill-bytes`): their catalog entries, as JSON.
    Segments = 5,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Insert),
            2 => Some(Self::Delete),
            3 => Some(Self::Truncate),
            4 => Some(Self::Next),
            5 => Some(Self::Segments),
            _ => None,
        }
    }
}

/// The key a frame is sealed under.
#[derive(Debug, Clone)]
pub enum FrameKey {
    /// The system key (unencrypted tables' log records).
    System,
    /// A table key version.
    Table {
        /// Its version.
        version: u32,
        /// The key.
        key: Arc<Key256>,
    },
}

/// A frame to append.
#[derive(Debug)]
pub struct FrameSpec {
    /// The table.
    pub table_id: u64,
    /// What it records.
    pub kind: FrameKind,
    /// Its key.
    pub key: FrameKey,
    /// Plaintext payload.
    pub payload: Vec<u8>,
}

/// A frame read back.
#[derive(Debug)]
pub struct Frame {
    /// Its log sequence number.
    pub lsn: u64,
    /// The table.
    pub table_id: u64,
    /// What it records.
    pub kind: FrameKind,
    /// Plaintext payload.
    pub payload: Vec<u8>,
}

type CommitReply = oneshot::Sender<Result<u64, StorageError>>;

enum Request {
    Commit {
        frames: Vec<FrameSpec>,
        reply: oneshot::Sender<Result<u64, StorageError>>,
    },
    Rotate {
        catalog_generation: u64,
        /// A new system key for the new file and those after it.
        system: Option<Key256>,
        reply: oneshot::Sender<Result<Rotated, StorageError>>,
    },
}

/// What a rotation reports.
#[derive(Debug, Clone, Copy)]
pub struct Rotated {
    /// Every lsn at or below this is in older files.
    pub boundary_lsn: u64,
    /// The new file's sequence number.
    pub seq: u64,
}

/// The handle commits go through; the file is owned by a writer thread.
#[derive(Debug, Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Request>,
}

impl LogWriter {
    /// Starts the writer thread with a new file `seq` whose first lsn is
    /// `next_lsn` (or the one after, when `previous`, the newest file, gets
    /// a link frame to it).
    pub fn start(
        dir: &Path,
        system: &Key256,
        seq: u64,
        next_lsn: u64,
        catalog_generation: u64,
        previous: Option<(u64, &Path)>,
    ) -> Result<Self, StorageError> {
        let mut state = WriterState {
            dir: dir.join(LOG_DIR),
            system: system.clone(),
            file_id: FileId::new(seq)?,
            seq,
            next_lsn,
            catalog_generation,
            file: None,
            written: 0,
            keys: HashMap::new(),
            must_rotate: false,
            closed: None,
        };
        if let Some((previous_seq, path)) = previous {
            state.adopt(previous_seq, path)?;
        }
        match state.open_file(seq) {
            Ok(()) => {}
            // A full disk must not keep the store from opening for reads: the
            // first commit after space returns starts the file.
            Err(e) if e.is_disk_full() => {
                tracing::warn!("{e}; commits fail until space returns");
                state.must_rotate = true;
            }
            Err(e) => return Err(e),
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sealdb-log".into())
            .spawn(move || state.run(rx))
            .map_err(|e| StorageError::Internal(format!("cannot start the log writer thread: {e}")))?;
        Ok(Self { tx })
    }

    /// Appends the frames of one commit; returns when they are durable.
    pub async fn commit(&self, frames: Vec<FrameSpec>) -> Result<u64, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Commit { frames, reply })
            .map_err(|_| StorageError::LogClosed("the log writer has stopped".into()))?;
        rx.await
            .map_err(|_| StorageError::LogClosed("the log writer has stopped".into()))?
    }

    /// Starts a new file whose header names `catalog_generation`.
    pub async fn rotate(&self, catalog_generation: u64) -> Result<Rotated, StorageError> {
        self.rotate_with(catalog_generation, None).await
    }

    /// As [`Self::rotate`]; with `system`, the new file and every later
    /// one are under that system key (`ALTER SYSTEM REKEY`).
    pub async fn rotate_with(&self, catalog_generation: u64, system: Option<Key256>) -> Result<Rotated, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Rotate {
                catalog_generation,
                system,
                reply,
            })
            .map_err(|_| StorageError::LogClosed("the log writer has stopped".into()))?;
        rx.await
            .map_err(|_| StorageError::LogClosed("the log writer has stopped".into()))?
    }
}

struct WriterState {
    dir: PathBuf,
    system: Key256,
    /// The current file's sequence number and salt.
    file_id: FileId,
    seq: u64,
    next_lsn: u64,
    catalog_generation: u64,
    file: Option<File>,
    written: u64,
    keys: HashMap<(u64, u32), AeadKey>,
    must_rotate: bool,
    closed: Option<String>,
}

impl WriterState {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < GROUP_COMMITS_MAX {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut commits = Vec::new();
            for request in batch {
                match request {
                    Request::Commit { frames, reply } => commits.push((frames, reply)),
                    Request::Rotate {
                        catalog_generation,
                        system,
                        reply,
                    } => {
                        self.write_group(std::mem::take(&mut commits));
                        self.catalog_generation = self.catalog_generation.max(catalog_generation);
                        let _ = reply.send(self.rotate(system));
                    }
                }
            }
            self.write_group(commits);
        }
    }

    fn rotate(&mut self, system: Option<Key256>) -> Result<Rotated, StorageError> {
        if let Some(reason) = &self.closed {
            return Err(StorageError::LogClosed(reason.clone()));
        }
        self.open_file_under(self.next_seq(), system)?;
        Ok(Rotated {
            boundary_lsn: self.next_lsn - 1,
            seq: self.seq,
        })
    }

    fn write_group(&mut self, commits: Vec<(Vec<FrameSpec>, CommitReply)>) {
        if commits.is_empty() {
            return;
        }
        if let Some(reason) = &self.closed {
            for (_, reply) in commits {
                let _ = reply.send(Err(StorageError::LogClosed(reason.clone())));
            }
            return;
        }
        if self.must_rotate || self.written >= FILE_BYTES_TARGET {
            let rotated = self.open_file(self.next_seq());
            if let Err(e) = rotated {
                // Each writer gets the OS error (a full disk stays 53100).
                let (code, text) = match &e {
                    StorageError::Io { source, .. } => (source.raw_os_error(), source.to_string()),
                    other => (None, other.to_string()),
                };
                for (_, reply) in commits {
                    let _ = reply.send(Err(StorageError::Io {
                        op: "starting a log file in",
                        path: self.dir.clone(),
                        source: code.map_or_else(
                            || std::io::Error::other(text.clone()),
                            std::io::Error::from_raw_os_error,
                        ),
                    }));
                }
                // The message keeps the OS error, and the next commit tries again.
                return;
            }
        }
        let start_lsn = self.next_lsn;
        let mut buf = Vec::new();
        let mut results = Vec::with_capacity(commits.len());
        for (frames, _) in &commits {
            let mut last = 0;
            let count = frames.len();
            let mut failed = None;
            for (i, frame) in frames.iter().enumerate() {
                let lsn = self.next_lsn;
                match self.encode_frame(&mut buf, lsn, frame, i + 1 == count) {
                    Ok(()) => {
                        self.next_lsn += 1;
                        last = lsn;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            results.push(match failed {
                Some(e) => Err(e),
                None => Ok(last),
            });
        }
        if results.iter().any(|r| r.is_err()) {
            // An encoding failure is a bug; refuse the whole group rather than
            // write half of it.
            self.next_lsn = start_lsn;
            for ((_, reply), r) in commits.into_iter().zip(results) {
                let _ = reply.send(r.and(Err(StorageError::Internal("a commit in the same group failed".into()))));
            }
            return;
        }
        let path = self.path(self.seq);
        let outcome = match self.file.as_mut() {
            Some(file) => file.write_all(&buf).and_then(|()| file.sync_data()),
            None => Err(std::io::Error::other("no open log file")),
        };
        match outcome {
            Ok(()) => {
                self.written += buf.len() as u64;
                for ((_, reply), r) in commits.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                // Undo the partial write, skip to a new file (fresh keys) and
                // report; the next commit may succeed once space returns.
                let undone = self
                    .file
                    .as_mut()
                    .map(|f| f.set_len(self.written).and_then(|()| f.sync_data()));
                self.next_lsn = start_lsn;
                self.must_rotate = true;
                if !matches!(undone, Some(Ok(()))) {
                    self.closed = Some(format!(
                        "{e} while writing {}, and the partial write could not be undone",
                        path.display()
                    ));
                }
                let kind = e.kind();
                let raw = e.raw_os_error();
                for (_, reply) in commits {
                    let source = match raw {
                        Some(code) => std::io::Error::from_raw_os_error(code),
                        None => std::io::Error::new(kind, e.to_string()),
                    };
                    let _ = reply.send(Err(StorageError::Io {
                        op: "writing",
                        path: path.clone(),
                        source,
                    }));
                }
            }
        }
    }

    fn encode_frame(&mut self, buf: &mut Vec<u8>, lsn: u64, frame: &FrameSpec, end: bool) -> Result<(), StorageError> {
        seal_frame(&mut self.keys, &self.system, self.file_id, buf, lsn, frame, end)
    }

    /// The number of the next file to start: the current one's successor,
    /// or the current number itself when its file could not be created
    /// (a full disk at start).
    fn next_seq(&self) -> u64 {
        if self.file.is_some() { self.seq + 1 } else { self.seq }
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(log_file_name(seq))
    }

    fn open_file(&mut self, seq: u64) -> Result<(), StorageError> {
        self.open_file_under(seq, None)
    }

    /// Begins file `seq`, under `system` when given (the old file's link
    /// frame stays under the old key).
    fn open_file_under(&mut self, seq: u64, system: Option<Key256>) -> Result<(), StorageError> {
        let file_id = FileId::new(seq)?;
        let header_key = header_key(system.as_ref().unwrap_or(&self.system), &file_id)?;
        std::fs::create_dir_all(&self.dir).map_err(StorageError::io("creating", &self.dir))?;
        let path = self.path(seq);
        // With an old file, its last frame (lsn `next_lsn`) links it to this one.
        let linking = self.file.is_some();
        let first_lsn = if linking { self.next_lsn + 1 } else { self.next_lsn };
        let header = encode_header(&header_key, file_id, first_lsn, self.catalog_generation)?;
        let mut options = OpenOptions::new();
        // Append mode: after a failed write is cut back with set_len, the next
        // write lands at the new end, not at the old cursor.
        options.append(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let created = options.open(&path).and_then(|mut f| {
            f.write_all(&header)?;
            f.sync_all()?;
            Ok(f)
        });
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(StorageError::io("creating", &path)(e));
            }
        };
        sealdb_kms::fsync_dir(&self.dir).map_err(StorageError::io("syncing", &self.dir))?;
        if linking {
            let frame = link_frame(&self.system, self.file_id, self.next_lsn, seq)?;
            let old_path = self.path(self.seq);
            let written = self.written;
            let linked = match self.file.as_mut() {
                Some(old) => old.write_all(&frame).and_then(|()| old.sync_data()),
                None => Ok(()),
            };
            if let Err(e) = linked {
                if let Some(old) = self.file.as_mut() {
                    let _ = old.set_len(written);
                }
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(StorageError::io("writing", old_path)(e));
            }
        }
        self.file = Some(file);
        if let Some(system) = system {
            self.system = system;
        }
        self.file_id = file_id;
        self.seq = seq;
        self.next_lsn = first_lsn;
        self.written = HEADER_LEN as u64;
        self.keys.clear();
        self.must_rotate = false;
        Ok(())
    }

    /// Continues an existing file (the newest one recovery read), so that
    /// the next file begun is linked from it.
    fn adopt(&mut self, seq: u64, path: &Path) -> Result<(), StorageError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(StorageError::io("opening", path))?;
        let mut head = vec![0u8; HEADER_LEN];
        let read = file.read(&mut head).map_err(StorageError::io("reading", path))?;
        let display = path.display().to_string();
        let (_, file_id, _) = header_fields(&head[..read], &display)?;
        if file_id.seq != seq {
            return Err(StorageError::integrity(
                &display,
                format!("holds sequence {}, not {seq}", file_id.seq),
            ));
        }
        self.written = file.metadata().map_err(StorageError::io("reading", path))?.len();
        self.file = Some(file);
        self.file_id = file_id;
        self.seq = seq;
        Ok(())
    }
}

/// The link frame: the last of a file, naming the next file. Sealed under a
/// key used for this one frame only.
fn link_frame(system: &Key256, file: FileId, lsn: u64, next_seq: u64) -> Result<Vec<u8>, StorageError> {
    let mut buf = Vec::with_capacity(FRAME_PREFIX_LEN + FRAME_AD_LEN + 8 + TAG_LEN);
    let header = FrameHeader {
        lsn,
        flags: FLAG_END,
        kind: FrameKind::Next as u8,
        table_id: 0,
        version: 0,
    };
    append_frame(
        &mut buf,
        &link_key(system, &file)?,
        file.seq,
        &header,
        &next_seq.to_le_bytes(),
    )?;
    Ok(buf)
}

/// The authenticated fields of a frame.
struct FrameHeader {
    lsn: u64,
    flags: u8,
    kind: u8,
    table_id: u64,
    version: u32,
}

/// Appends a frame of log file `seq`, sealed under `key`, in the layout of
/// the module docs: the one place that writes it.
fn append_frame(
    buf: &mut Vec<u8>,
    key: &AeadKey,
    seq: u64,
    header: &FrameHeader,
    payload: &[u8],
) -> Result<(), StorageError> {
    let len = payload.len() as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&(!len).to_le_bytes());
    let ad_at = buf.len();
    buf.extend_from_slice(&header.lsn.to_le_bytes());
    buf.push(header.flags);
    buf.push(header.kind);
    buf.extend_from_slice(&header.table_id.to_le_bytes());
    buf.extend_from_slice(&header.version.to_le_bytes());
    let ad = frame_ad(seq, &buf[ad_at..]);
    let body_at = buf.len();
    buf.extend_from_slice(payload);
    let tag = key.seal_in_place(nonce_from_counter(header.lsn), &ad, &mut buf[body_at..])?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// Opens a frame's sealed payload (ciphertext and tag); `fields` are its
/// 22 authenticated bytes from lsn to key version.
fn open_frame(key: &AeadKey, seq: u64, lsn: u64, fields: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let mut payload = sealed.to_vec();
    let len = key
        .open_in_place(nonce_from_counter(lsn), &frame_ad(seq, fields), &mut payload)
        .ok()?;
    payload.truncate(len);
    Some(payload)
}

fn frame_ad(seq: u64, fields: &[u8]) -> [u8; 8 + FRAME_AD_LEN] {
    let mut ad = [0u8; 8 + FRAME_AD_LEN];
    ad[..8].copy_from_slice(&seq.to_le_bytes());
    ad[8..].copy_from_slice(&fields[..FRAME_AD_LEN]);
    ad
}

fn link_key(system: &Key256, file: &FileId) -> Result<AeadKey, StorageError> {
    Ok(AeadKey::new(&derive_key(system, &file.info("log link"))?))
}

fn log_key(base: &Key256, file: &FileId) -> Result<AeadKey, StorageError> {
    Ok(AeadKey::new(&derive_key(base, &file.info("log"))?))
}

/// Appends one sealed frame of log file `seq` to `buf`. `keys` caches the
/// keys derived for that file.
pub(crate) fn seal_frame(
    keys: &mut HashMap<(u64, u32), AeadKey>,
    system: &Key256,
    file: FileId,
    buf: &mut Vec<u8>,
    lsn: u64,
    frame: &FrameSpec,
    end: bool,
) -> Result<(), StorageError> {
    if frame.payload.len() > FRAME_PAYLOAD_MAX {
        return Err(StorageError::Internal(format!(
            "a log record of {} bytes exceeds the limit of {FRAME_PAYLOAD_MAX}; split the statement",
            frame.payload.len()
        )));
    }
    let version = match &frame.key {
        FrameKey::System => 0,
        FrameKey::Table { version, .. } => *version,
    };
    let key_id = (if version == 0 { 0 } else { frame.table_id }, version);
    let key = match keys.entry(key_id) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(log_key(
            match &frame.key {
                FrameKey::System => system,
                FrameKey::Table { key, .. } => key,
            },
            &file,
        )?),
    };
    let header = FrameHeader {
        lsn,
        flags: if end { FLAG_END } else { 0 },
        kind: frame.kind as u8,
        table_id: frame.table_id,
        version,
    };
    append_frame(buf, key, file.seq, &header, &frame.payload)
}

/// The header of log file `file`, authenticated under `key` (its header key).
fn encode_header(
    key: &AeadKey,
    file: FileId,
    first_lsn: u64,
    catalog_generation: u64,
) -> Result<Vec<u8>, StorageError> {
    let salt = file
        .salt
        .ok_or_else(|| StorageError::Internal("a log file is begun without a salt".into()))?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&LOG_FORMAT.to_le_bytes());
    header.extend_from_slice(&file.seq.to_le_bytes());
    header.extend_from_slice(&first_lsn.to_le_bytes());
    header.extend_from_slice(&catalog_generation.to_le_bytes());
    header.extend_from_slice(&salt.0);
    let tag = key.seal_in_place(nonce_from_counter(file.seq), &header, &mut [0u8; 0])?;
    header.extend_from_slice(&tag);
    Ok(header)
}

/// The format, the file id and the length of the authenticated fields of
/// a log file's header (its tag follows them), not yet authenticated.
fn header_fields(bytes: &[u8], display: &str) -> Result<(u32, FileId, usize), StorageError> {
    let bad = |d: &str| StorageError::integrity(display, d);
    if bytes.len() < HEADER_FIELDS_LEN_V1 + TAG_LEN || &bytes[..8] != MAGIC {
        return Err(bad("not a sealdb log file (bad magic or truncated header)"));
    }
    let format = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let seq = le_u64(&bytes[12..20]);
    match format {
        1 => Ok((format, FileId { seq, salt: None }, HEADER_FIELDS_LEN_V1)),
        LOG_FORMAT => {
            if bytes.len() < HEADER_LEN {
                return Err(bad("truncated header"));
            }
            let salt = FileSalt::read(&bytes[HEADER_FIELDS_LEN_V1..]).ok_or_else(|| bad("truncated header"))?;
            Ok((format, FileId { seq, salt: Some(salt) }, HEADER_FIELDS_LEN))
        }
        newer if newer > LOG_FORMAT => Err(StorageError::NewerFormat {
            file: display.into(),
            found: newer,
            supported: LOG_FORMAT,
        }),
        other => Err(bad(&format!("unknown log format {other}"))),
    }
}

/// A whole log file `seq` in memory, as the writer would leave it with
/// `frames` as one commit: for tests and fuzzing.
pub(crate) fn file_bytes(
    system: &Key256,
    seq: u64,
    first_lsn: u64,
    frames: &[FrameSpec],
) -> Result<Vec<u8>, StorageError> {
    // A fixed salt: these bytes are compared across runs (fuzz seeds).
    let file = FileId::for_benchmarks(seq);
    let mut out = encode_header(&header_key(system, &file)?, file, first_lsn, 1)?;
    let mut keys = HashMap::new();
    for (i, frame) in frames.iter().enumerate() {
        let end = i + 1 == frames.len();
        seal_frame(&mut keys, system, file, &mut out, first_lsn + i as u64, frame, end)?;
    }
    Ok(out)
}

fn header_key(system: &Key256, file: &FileId) -> Result<AeadKey, StorageError> {
    Ok(AeadKey::new(&derive_key(
        system,
        &salted_info("log header", file.salt.as_ref()),
    )?))
}

/// `0000000000000007.wal`.
pub fn log_file_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// Log files present, by sequence number.
pub fn list_log_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let log_dir = dir.join(LOG_DIR);
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&log_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StorageError::io("listing", &log_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(StorageError::io("listing", &log_dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name.strip_suffix(".wal")
            && hex.len() == 16
            && let Ok(seq) = u64::from_str_radix(hex, 16)
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// One log file's header.
#[derive(Debug, Clone, Copy)]
pub struct LogHeader {
    /// Sequence number.
    pub seq: u64,
    /// Lsn of its first frame.
    pub first_lsn: u64,
    /// Catalog generation when it was begun.
    pub catalog_generation: u64,
}

/// What reading one file gave.
#[derive(Debug)]
pub struct LogFileContents {
    /// Its header.
    pub header: LogHeader,
    /// Complete commits, in order.
    pub commits: Vec<Vec<Frame>>,
    /// Lsn after the last complete frame.
    pub next_lsn: u64,
    /// Bytes of whole frames (a torn tail starts here).
    pub good_len: u64,
    /// Whether the file ended in a partial frame.
    pub torn_tail: bool,
    /// The file its last frame links to.
    pub continues: Option<u64>,
}

/// Reads and authenticates one log file. `table_key` gives the key of a
/// table version, or `None` when the table is gone (its frames are skipped
/// unread: their key was destroyed with the table).
pub fn read_log_file(
    path: &Path,
    display: &str,
    systems: &[Key256],
    table_key: &dyn Fn(u64, u32) -> Option<Arc<Key256>>,
) -> Result<LogFileContents, StorageError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(StorageError::io("reading", path))?;
    parse_log_file(&bytes, display, systems, table_key)
}

/// [`read_log_file`] on bytes already read: the decoder of untrusted log
/// bytes (fuzzed by `fuzz/fuzz_targets/log_file.rs`).
pub(crate) fn parse_log_file(
    bytes: &[u8],
    display: &str,
    systems: &[Key256],
    table_key: &dyn Fn(u64, u32) -> Option<Arc<Key256>>,
) -> Result<LogFileContents, StorageError> {
    let bad = |d: String| StorageError::integrity(display, d);
    let (_, file, fields_len) = header_fields(bytes, display)?;
    let seq = file.seq;
    let header = LogHeader {
        seq,
        first_lsn: le_u64(&bytes[20..28]),
        catalog_generation: le_u64(&bytes[28..36]),
    };
    // The system key now, or an earlier one an `ALTER SYSTEM REKEY` in
    // progress still keeps: the one that authenticates the header.
    let mut system = None;
    for candidate in systems {
        let mut tag = bytes[fields_len..fields_len + TAG_LEN].to_vec();
        if header_key(candidate, &file)?
            .open_in_place(nonce_from_counter(seq), &bytes[..fields_len], &mut tag)
            .is_ok()
        {
            system = Some(candidate);
            break;
        }
    }
    let system = system
        .ok_or_else(|| bad("the header failed authentication (altered, or from another data directory)".into()))?;
    let mut keys: HashMap<(u64, u32), AeadKey> = HashMap::new();
    let mut at = fields_len + TAG_LEN;
    let mut next_lsn = header.first_lsn;
    let mut commits = Vec::new();
    let mut open: Vec<Frame> = Vec::new();
    let mut torn_tail = false;
    let mut continues = None;
    while at < bytes.len() {
        if bytes.len() - at < FRAME_PREFIX_LEN + FRAME_AD_LEN {
            torn_tail = true;
            break;
        }
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let check = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        if check != !len || len as usize > FRAME_PAYLOAD_MAX {
            return Err(bad(format!("damaged frame length at byte {at}")));
        }
        let len = len as usize;
        let total = FRAME_PREFIX_LEN + FRAME_AD_LEN + len + TAG_LEN;
        if bytes.len() - at < total {
            torn_tail = true;
            break;
        }
        let ad_at = at + FRAME_PREFIX_LEN;
        let lsn = le_u64(&bytes[ad_at..ad_at + 8]);
        let flags = bytes[ad_at + 8];
        let kind = bytes[ad_at + 9];
        let table_id = le_u64(&bytes[ad_at + 10..ad_at + 18]);
        let version = u32::from_le_bytes([
            bytes[ad_at + 18],
            bytes[ad_at + 19],
            bytes[ad_at + 20],
            bytes[ad_at + 21],
        ]);
        if lsn != next_lsn {
            return Err(bad(format!(
                "frame at byte {at} has lsn {lsn}, expected {next_lsn} (frames missing or out of order)"
            )));
        }
        let body = ad_at + FRAME_AD_LEN;
        let fields = &bytes[ad_at..body];
        let sealed = &bytes[body..body + len + TAG_LEN];
        if kind == FrameKind::Next as u8 && table_id == 0 && version == 0 {
            let payload = open_frame(&link_key(system, &file)?, seq, lsn, fields, sealed)
                .filter(|p| p.len() == 8 && flags & FLAG_END != 0)
                .ok_or_else(|| bad(format!("the link frame lsn {lsn} at byte {at} failed authentication")))?;
            continues = Some(le_u64(&payload));
            next_lsn = next_lsn
                .checked_add(1)
                .ok_or_else(|| bad(format!("lsn overflows at byte {at}")))?;
            at += total;
            continue;
        }
        if continues.is_some() {
            return Err(bad(format!("frames follow the link to the next file at byte {at}")));
        }
        let key_id = (if version == 0 { 0 } else { table_id }, version);
        let key = match keys.entry(key_id) {
            std::collections::hash_map::Entry::Occupied(e) => Some(&*e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                // A table dropped since: its key is destroyed and its frames skipped unread.
                let base = if version == 0 {
                    Some(Arc::new(system.clone()))
                } else {
                    table_key(table_id, version)
                };
                match base {
                    Some(base) => Some(&*e.insert(log_key(&base, &file)?)),
                    None => None,
                }
            }
        };
        if let Some(key) = key {
            let payload = open_frame(key, seq, lsn, fields, sealed)
                .ok_or_else(|| bad(format!("frame lsn {lsn} at byte {at} failed authentication")))?;
            let kind =
                FrameKind::from_u8(kind).ok_or_else(|| bad(format!("frame lsn {lsn} has unknown kind {kind}")))?;
            open.push(Frame {
                lsn,
                table_id,
                kind,
                payload,
            });
        }
        if flags & FLAG_END != 0 {
            commits.push(std::mem::take(&mut open));
        }
        next_lsn = next_lsn
            .checked_add(1)
            .ok_or_else(|| bad(format!("lsn overflows at byte {at}")))?;
        at += total;
    }
    Ok(LogFileContents {
        header,
        commits,
        next_lsn,
        good_len: at as u64,
        torn_tail,
        continues,
    })
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}
