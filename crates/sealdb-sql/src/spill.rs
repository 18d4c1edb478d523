//! Encrypted spill files: what DataFusion writes to disk when a query
//! exceeds `memory-limit` (sorts, joins, aggregations) goes through
//! AES-256-GCM under a key that exists only in this process's memory.
//!
//! File layout (`DATA/tmp/spill-<pid>-<n>.seal`): a sequence of frames
//! `len: u32 LE | last: u8 | ciphertext | tag`, each sealing up to 256 KiB.
//! Frame `i` uses nonce `i` and associated data naming the file, the frame
//! and whether it is the last, so a reordered, cut or swapped frame, or a
//! file cut at a frame boundary, is detected. The key is derived per file
//! from a random process key that is never written anywhere: after the
//! process ends no one can read a spill file left behind, and start-up
//! removes them.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::spill_file::{SpillFile, SpillWriter, TempFileFactory};
use futures::Stream;
use sealdb_crypto::{AeadKey, Key256, TAG_LEN, derive_key, nonce_from_counter};

/// Plaintext bytes per frame.
const FRAME_BYTES: usize = 256 << 10;
/// Most bytes all spill files together may hold (DataFusion's default for
/// its own temporary files, which a custom file factory must enforce).
const SPILL_BYTES_MAX: u64 = 100 << 30;
/// The directory under the data directory.
pub const SPILL_DIR: &str = "tmp";

/// Why a spill file could not be written or read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpillError {
    /// Reading or writing the file failed.
    #[error("spill file {file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not authenticate: it was changed while the query ran.
    #[error("spill file {file} failed its integrity check ({detail}); the query was stopped")]
    Integrity {
        /// The file.
        file: String,
        /// What was wrong.
        detail: String,
    },
    /// A cryptographic primitive failed.
    #[error("spill file encryption failed: {0}")]
    Crypto(#[from] sealdb_crypto::CryptoError),
}

fn df(e: SpillError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Makes encrypted spill files in one directory.
pub struct SealSpillFactory {
    dir: PathBuf,
    process_key: Key256,
    next: AtomicU64,
    /// Bytes held by live spill files.
    used: Arc<AtomicU64>,
}

impl fmt::Debug for SealSpillFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealSpillFactory")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SealSpillFactory {
    /// A factory writing into `dir`, which is created (mode 0700) and
    /// emptied of spill files a previous process left.
    pub fn new(dir: &Path) -> std::result::Result<Self, SpillError> {
        let io = |source| SpillError::Io {
            file: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("spill-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            process_key: Key256::random()?,
            next: AtomicU64::new(1),
            used: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A disk manager that spills through this factory.
    pub fn disk_manager(self: Arc<Self>) -> DiskManagerBuilder {
        DiskManagerBuilder::default()
            .with_mode(DiskManagerMode::Directories(vec![self.dir.clone()]))
            .with_temp_file_factory(self)
    }
}

impl TempFileFactory for SealSpillFactory {
    fn create_temp_file(&self, _description: &str) -> Result<Arc<dyn SpillFile>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("spill-{}-{n}.seal", std::process::id());
        let key = derive_key(&self.process_key, name.as_bytes()).map_err(|e| df(e.into()))?;
        Ok(Arc::new(SealSpillFile {
            path: self.dir.join(&name),
            name,
            key: Arc::new(AeadKey::new(&key)),
            size: Arc::new(AtomicU64::new(0)),
            used: self.used.clone(),
            writer_opened: AtomicBool::new(false),
            finished: Arc::new(AtomicBool::new(false)),
        }))
    }
}

/// One encrypted spill file; removed when the last reference goes.
struct SealSpillFile {
    path: PathBuf,
    name: String,
    key: Arc<AeadKey>,
    size: Arc<AtomicU64>,
    /// The factory's total.
    used: Arc<AtomicU64>,
    writer_opened: AtomicBool,
    /// The writer sealed its last frame: a reader must find it.
    finished: Arc<AtomicBool>,
}

impl Drop for SealSpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.used
            .fetch_sub(self.size.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

fn frame_aad(name: &str, index: u64, last: bool) -> Vec<u8> {
    format!(
        "sealdb spill {name} frame {index} {}",
        if last { "last" } else { "more" }
    )
    .into_bytes()
}

impl SpillFile for SealSpillFile {
    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn size(&self) -> Option<u64> {
        Some(self.size.load(Ordering::Relaxed))
    }

    fn read_stream(&self) -> Result<Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>> {
        let file = std::fs::File::open(&self.path).map_err(|source| {
            df(SpillError::Io {
                file: self.name.clone(),
                source,
            })
        })?;
        let reader = FrameReader {
            file: std::io::BufReader::with_capacity(FRAME_BYTES + 64, file),
            name: self.name.clone(),
            key: self.key.clone(),
            index: 0,
            done: false,
            writer_finished: self.finished.clone(),
        };
        Ok(Box::pin(futures::stream::iter(reader)))
    }

    fn open_writer(&self) -> Result<Box<dyn SpillWriter>> {
        if self.writer_opened.swap(true, Ordering::AcqRel) {
            return Err(DataFusionError::Internal(format!(
                "spill file {} was opened for writing twice",
                self.name
            )));
        }
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&self.path)
            .map_err(|source| {
                df(SpillError::Io {
                    file: self.name.clone(),
                    source,
                })
            })?;
        Ok(Box::new(FrameWriter {
            file,
            name: self.name.clone(),
            key: self.key.clone(),
            size: self.size.clone(),
            used: self.used.clone(),
            buffer: Vec::with_capacity(FRAME_BYTES),
            index: 0,
            finished: false,
            shared_finished: self.finished.clone(),
        }))
    }
}

/// Seals whole frames as plaintext accumulates; `finish` seals the last.
struct FrameWriter {
    file: std::fs::File,
    name: String,
    key: Arc<AeadKey>,
    size: Arc<AtomicU64>,
    used: Arc<AtomicU64>,
    buffer: Vec<u8>,
    index: u64,
    finished: bool,
    shared_finished: Arc<AtomicBool>,
}

impl FrameWriter {
    fn seal_frame(&mut self, last: bool) -> std::io::Result<()> {
        let take = self.buffer.len().min(FRAME_BYTES);
        let plain = take;
        // One buffer, one write: a reader of a file still being written
        // sees whole frames or nothing of the next one.
        let mut frame = Vec::with_capacity(5 + plain + TAG_LEN);
        let len = u32::try_from(plain + TAG_LEN).map_err(std::io::Error::other)?;
        frame.extend_from_slice(&len.to_le_bytes());
        frame.push(u8::from(last));
        frame.extend(self.buffer.drain(..take));
        let tag = self
            .key
            .seal_in_place(
                nonce_from_counter(self.index),
                &frame_aad(&self.name, self.index, last),
                &mut frame[5..],
            )
            .map_err(std::io::Error::other)?;
        frame.extend_from_slice(&tag);
        let bytes = frame.len() as u64;
        if self.used.fetch_add(bytes, Ordering::Relaxed) + bytes > SPILL_BYTES_MAX {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "spill files would exceed {} GiB; raise memory-limit or make the query need less",
                SPILL_BYTES_MAX >> 30
            )));
        }
        self.file.write_all(&frame)?;
        self.size.fetch_add(bytes, Ordering::Relaxed);
        self.index += 1;
        if last {
            self.shared_finished.store(true, Ordering::Release);
        }
        Ok(())
    }
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.finished {
            return Err(std::io::Error::other("spill file already finished"));
        }
        self.buffer.extend_from_slice(buf);
        while self.buffer.len() > FRAME_BYTES {
            self.seal_frame(false)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Readers of a file still being written (DataFusion's spill pool)
        // read up to the last flush: what is buffered becomes a frame.
        if !self.buffer.is_empty() && !self.finished {
            self.seal_frame(false)?;
        }
        self.file.flush()
    }
}

impl SpillWriter for FrameWriter {
    fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.seal_frame(true).map_err(|source| {
            df(SpillError::Io {
                file: self.name.clone(),
                source,
            })
        })
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            let _ = self.seal_frame(true);
        }
    }
}

/// Opens frames in order; fails on any change, a missing last frame or
/// bytes after it.
struct FrameReader {
    file: std::io::BufReader<std::fs::File>,
    name: String,
    key: Arc<AeadKey>,
    index: u64,
    done: bool,
    /// Until the writer seals its last frame, the end of the file is the
    /// end of what was flushed so far.
    writer_finished: Arc<AtomicBool>,
}

impl FrameReader {
    fn integrity(&mut self, detail: &str) -> Option<Result<Bytes>> {
        self.done = true;
        Some(Err(df(SpillError::Integrity {
            file: self.name.clone(),
            detail: detail.to_owned(),
        })))
    }
}

impl Iterator for FrameReader {
    type Item = Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut len = [0u8; 4];
        match self.file.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if !self.writer_finished.load(Ordering::Acquire) {
                    self.done = true;
                    return None;
                }
                return self.integrity("it ends before its last frame");
            }
            Err(source) => {
                self.done = true;
                return Some(Err(df(SpillError::Io {
                    file: self.name.clone(),
                    source,
                })));
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if !(TAG_LEN..=FRAME_BYTES + TAG_LEN).contains(&len) {
            return self.integrity("a frame length is out of range");
        }
        let mut last = [0u8; 1];
        let mut frame = vec![0u8; len];
        if self.file.read_exact(&mut last).is_err() || self.file.read_exact(&mut frame).is_err() {
            return self.integrity("a frame is cut short");
        }
        let is_last = last[0] != 0;
        let nonce = nonce_from_counter(self.index);
        let Ok(plain) = self
            .key
            .open_in_place(nonce, &frame_aad(&self.name, self.index, is_last), &mut frame)
        else {
            return self.integrity("a frame does not authenticate");
        };
        self.index += 1;
        if is_last {
            self.done = true;
            let mut rest = [0u8; 1];
            if !matches!(self.file.read(&mut rest), Ok(0)) {
                return self.integrity("bytes follow its last frame");
            }
        }
        frame.truncate(plain);
        Some(Ok(Bytes::from(frame)))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn write(factory: &SealSpillFactory, data: &[u8]) -> Arc<dyn SpillFile> {
        let file = factory.create_temp_file("test").unwrap();
        let mut w = file.open_writer().unwrap();
        for chunk in data.chunks(10_000) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap();
        file
    }

    async fn read(file: &Arc<dyn SpillFile>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = file.read_stream()?;
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_file_being_written_reads_up_to_its_last_flush() {
        let dir = tempfile::tempdir().unwrap();
        let factory = SealSpillFactory::new(dir.path()).unwrap();
        let file = factory.create_temp_file("pool").unwrap();
        let mut w = file.open_writer().unwrap();
        w.write_all(b"first batch").unwrap();
        w.flush().unwrap();
        assert_eq!(read(&file).await.unwrap(), b"first batch");
        w.write_all(b", second").unwrap();
        w.finish().unwrap();
        assert_eq!(read(&file).await.unwrap(), b"first batch, second");
    }

    #[tokio::test]
    async fn spill_files_round_trip_hold_no_plaintext_and_detect_changes() {
        let dir = tempfile::tempdir().unwrap();
        let factory = SealSpillFactory::new(dir.path()).unwrap();
        let data: Vec<u8> = b"MARKER-spill-".iter().copied().cycle().take(700_000).collect();
        let file = write(&factory, &data);
        assert_eq!(read(&file).await.unwrap(), data);
        let path = file.path().unwrap().to_path_buf();
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(13).any(|w| w == b"MARKER-spill-"));

        // A flipped byte, a dropped last frame, extra bytes: each refused.
        let mut flipped = raw.clone();
        flipped[raw.len() / 2] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(read(&file).await.unwrap_err().to_string().contains("integrity"));
        let first_len = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        std::fs::write(&path, &raw[..5 + first_len]).unwrap();
        assert!(read(&file).await.unwrap_err().to_string().contains("last frame"));
        let mut longer = raw.clone();
        longer.extend_from_slice(b"x");
        std::fs::write(&path, &longer).unwrap();
        assert!(read(&file).await.unwrap_err().to_string().contains("follow"));
        drop(file);
        assert!(!path.exists(), "a spill file is removed when dropped");
    }
}
