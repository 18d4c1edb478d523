//! The storage decoders of untrusted bytes, run on bytes in memory as the
//! fuzz targets in `fuzz/` run them, and the encoders that make their seed
//! inputs. Every input is sealed under [`FUZZ_KEY`], a constant that
//! protects nothing, so a fuzzer can reach past authentication into what
//! each decoder does with bytes that someone holding the keys wrote.

use std::sync::Arc;

use arrow::array::RecordBatch;
use sealdb_crypto::Key256;

use crate::StorageError;
use crate::catalog::{self, CATALOG_FORMAT, CatalogHeader};
use crate::store::{self, Payload};
use crate::wal::{self, FrameKey, FrameKind, FrameSpec};

/// The `log_file` fuzz target. The first byte's low bit chooses: raw
/// bytes read as recovery reads a log file, or frames built from the rest
/// (`[kind][table][version][length, 2 bytes LE]` then the payload, at most
/// [`FUZZ_LOG_FRAMES`]) sealed as the log writer seals them, which must
/// authenticate and read back one for one.
pub fn fuzz_log_file(data: &[u8]) -> Result<Decoded, StorageError> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok(Decoded::default());
    };
    if mode & 1 == 0 {
        return read_log_bytes(rest);
    }
    let mut frames = Vec::new();
    let mut at = rest;
    while at.len() >= 5 && frames.len() < FUZZ_LOG_FRAMES {
        let kind = match at[0] % 3 {
            0 => FrameKind::Insert,
            1 => FrameKind::Delete,
            _ => FrameKind::Truncate,
        };
        let len = usize::from(u16::from_le_bytes([at[3], at[4]])).min(at.len() - 5);
        frames.push((kind, u64::from(at[1]), u32::from(at[2] % 3), at[5..5 + len].to_vec()));
        at = &at[5 + len..];
    }
    if frames.is_empty() {
        return Ok(Decoded::default());
    }
    let bytes = log_bytes(u64::from(mode >> 1), &frames)?;
    let read = log_frame_count(&bytes).expect("a log the writer sealed reads back");
    assert_eq!(read, frames.len(), "frames lost or invented");
    read_log_bytes(&bytes)
}

/// The most frames the `log_file` target builds from one input.
pub const FUZZ_LOG_FRAMES: usize = 16;

/// The `catalog` fuzz target. The first byte's low bit chooses: raw bytes
/// read as a catalog file, or the rest sealed as the body of a catalog of
/// generation `first byte >> 1`.
pub fn fuzz_catalog(data: &[u8]) -> Result<Decoded, StorageError> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok(Decoded::default());
    };
    if mode & 1 == 0 {
        return read_catalog_bytes(rest);
    }
    let file = catalog_bytes(u64::from(mode >> 1), rest).expect("sealing a body in memory");
    read_catalog_bytes(&file)
}

/// The `segment` fuzz target: the rest read as a segment file, encrypted
/// when the first byte's low bit is set.
pub fn fuzz_segment(data: &[u8]) -> Result<Decoded, StorageError> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok(Decoded::default());
    };
    read_segment_bytes(rest.to_vec(), mode & 1 == 1)
}

/// The system, table and data key of every fuzz input: not a secret.
pub const FUZZ_KEY: [u8; 32] = *b"sealdb fuzz key: protects nothin";

/// The table id and segment id segment inputs are bound to.
pub const FUZZ_TABLE: u64 = 7;
/// See [`FUZZ_TABLE`].
pub const FUZZ_SEGMENT: u64 = 11;

/// What a decoder made of its input: counts, for a target's invariants.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Frames, tables or batches read.
    pub items: usize,
    /// Rows among them.
    pub rows: u64,
}

fn key() -> Result<Key256, StorageError> {
    Ok(Key256::from_slice(&FUZZ_KEY)?)
}

/// One frame of a log input: what it records, the table, the table-key
/// version it is sealed under (0: the system key), the plaintext payload.
pub type LogFrame = (FrameKind, u64, u32, Vec<u8>);

/// A log file (sequence 1, first lsn `first_lsn`) holding `frames` as one
/// commit, as the log writer writes it.
pub fn log_bytes(first_lsn: u64, frames: &[LogFrame]) -> Result<Vec<u8>, StorageError> {
    let key = Arc::new(key()?);
    let specs: Vec<FrameSpec> = frames
        .iter()
        .map(|(kind, table_id, version, payload)| FrameSpec {
            table_id: *table_id,
            kind: *kind,
            key: if *version == 0 {
                FrameKey::System
            } else {
                FrameKey::Table {
                    version: *version,
                    key: key.clone(),
                }
            },
            payload: payload.clone(),
        })
        .collect();
    wal::file_bytes(&key, 1, first_lsn, &specs)
}

/// Frames of complete commits in a log file, read and authenticated as
/// recovery reads them, their payloads not decoded.
pub fn log_frame_count(bytes: &[u8]) -> Result<usize, StorageError> {
    let contents = parse_log(bytes)?;
    Ok(contents.commits.iter().map(Vec::len).sum())
}

fn parse_log(bytes: &[u8]) -> Result<wal::LogFileContents, StorageError> {
    let key = key()?;
    let table_key = Arc::new(key.clone());
    wal::parse_log_file(bytes, "fuzz.wal", std::slice::from_ref(&key), &|_, _| {
        Some(table_key.clone())
    })
}

/// Reads `bytes` as recovery reads a log file, then decodes the payload of
/// every frame of a complete commit as recovery applies it.
pub fn read_log_bytes(bytes: &[u8]) -> Result<Decoded, StorageError> {
    let contents = parse_log(bytes)?;
    let mut out = Decoded::default();
    for frame in contents.commits.iter().flatten() {
        out.items += 1;
        if let Payload::Rows(batches) = store::decode_payload(frame)? {
            out.rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        }
    }
    Ok(out)
}

/// A catalog file of `generation` whose body is `plain` (the body's JSON).
pub fn catalog_bytes(generation: u64, plain: &[u8]) -> Result<Vec<u8>, StorageError> {
    let header = CatalogHeader {
        format: CATALOG_FORMAT,
        generation,
        provider: "local".into(),
        master_id: "fuzz".into(),
        wrapped_ring: vec![0; 60],
        wrapped_system: vec![0; 60],
    };
    catalog::encode_file(&header, plain, &catalog::body_key(&key()?)?)
}

/// Reads `bytes` as the open of a data directory reads its catalog: the
/// header, the body, then what is decoded of each table before its files
/// are opened (columns, deleted rows).
pub fn read_catalog_bytes(bytes: &[u8]) -> Result<Decoded, StorageError> {
    let (header, header_len) = catalog::parse_header(bytes)?;
    let body = catalog::open_body(bytes, header_len, &catalog::body_key(&key()?)?)?;
    if body.generation != header.generation {
        return Err(StorageError::integrity(
            catalog::CATALOG_FILE,
            "header and body generations differ",
        ));
    }
    let mut out = Decoded::default();
    for table in &body.tables {
        let _ = crate::table::stored_schema(&table.schema);
        store::deleted_rows(table)?;
        out.items += 1;
        out.rows += table.segments.iter().map(|s| s.rows).sum::<u64>();
    }
    Ok(out)
}

/// Segment [`FUZZ_SEGMENT`] of table [`FUZZ_TABLE`] holding `batches`,
/// encrypted (table-key version 1, data key [`FUZZ_KEY`]) or not.
pub fn segment_bytes(batches: &[RecordBatch], encrypted: bool) -> Result<Vec<u8>, StorageError> {
    let key = key()?;
    let (bytes, ..) = crate::segment::encode(FUZZ_TABLE, FUZZ_SEGMENT, batches, encrypted.then_some((1, &key)))?;
    Ok(bytes)
}

/// Reads `bytes` as a query or `verify` reads a segment file whose length
/// and SHA-256 the catalog holds (they are made to match here, so that the
/// Parquet decoder is reached).
pub fn read_segment_bytes(bytes: Vec<u8>, encrypted: bool) -> Result<Decoded, StorageError> {
    let key = key()?;
    let meta = crate::SegmentMeta {
        id: FUZZ_SEGMENT,
        rows: 0,
        bytes: bytes.len() as u64,
        key_version: u32::from(encrypted),
        wrapped_key: None,
        sha256: sealdb_crypto::sha256(&bytes).to_vec(),
        min_rowid: 0,
        max_rowid: 0,
    };
    let display = crate::segment::segment_display(FUZZ_TABLE, FUZZ_SEGMENT);
    let batches = StorageError::contain(&display, || {
        crate::segment::decode(bytes, &display, FUZZ_TABLE, &meta, encrypted.then_some(&key))
    })?;
    Ok(Decoded {
        items: batches.len(),
        rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
    })
}
