//! Segment files: immutable Parquet files, one data key each.
//!
//! An encrypted segment uses Parquet modular encryption (AES-GCM, encrypted
//! footer) under a fresh data key, wrapped by the table key version in the
//! catalog. The AAD prefix, which is not stored in the file, names the
//! table, the segment and the key version, so a file copied over from
//! another table or put in another segment's place fails authentication.
//! An unencrypted segment is checked against the SHA-256 the catalog holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, Encoding, Type as PhysicalType};
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::properties::WriterProperties;
use sealdb_crypto::{AeadKey, Key256, sha256, unwrap_key, wrap_key};

use crate::catalog::SegmentMeta;
use crate::{ROWID_COLUMN, StorageError};

/// Where table files live inside the data directory.
pub const TABLES_DIR: &str = "tables";
/// Rows per Parquet row group: the unit filters prune.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// A segment in use. When it is replaced (compaction) or its table dropped,
/// it is marked obsolete and its file is removed once the last query that
/// may read it lets go.
#[derive(Debug)]
pub struct Segment {
    /// What the catalog holds.
    pub meta: SegmentMeta,
    /// Absolute path.
    pub path: PathBuf,
    /// Path relative to the data directory, for messages.
    pub display: String,
    obsolete: AtomicBool,
}

impl Segment {
    /// Reads the whole file and checks it against the catalog's length and
    /// SHA-256: names a damaged or replaced file when a read failed without
    /// saying which file it was reading. Blocking.
    pub fn check_on_disk(&self) -> Result<(), StorageError> {
        check_plain(&self.path, &self.display, &self.meta)
    }

    pub(crate) fn new(dir: &Path, table_id: u64, meta: SegmentMeta) -> Self {
        let display = segment_display(table_id, meta.id);
        Self {
            path: dir.join(&display),
            display,
            meta,
            obsolete: AtomicBool::new(false),
        }
    }

    /// Remove the file when the last reference is dropped.
    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }

    /// Whether it was merged away or its table dropped: readers must not
    /// keep anything of it beyond the queries already running.
    pub fn is_obsolete(&self) -> bool {
        self.obsolete.load(Ordering::Acquire)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `tables/<table>/<segment>.parquet`.
pub fn segment_display(table_id: u64, segment_id: u64) -> String {
    format!("{TABLES_DIR}/{table_id}/{segment_id:016x}.parquet")
}

/// The AAD prefix binding a segment's ciphertext to its place.
pub fn segment_aad(table_id: u64, segment_id: u64, key_version: u32) -> Vec<u8> {
    format!("sealdb segment t{table_id} s{segment_id} k{key_version}").into_bytes()
}

fn dek_aad(table_id: u64, segment_id: u64, key_version: u32) -> Vec<u8> {
    format!("sealdb segment key t{table_id} s{segment_id} k{key_version}").into_bytes()
}

/// Writes `batches` (with row ids) as segment `segment_id` of `table_id`,
/// durably. `table_key` is the current table key version, `None` for an
/// unencrypted table.
pub(crate) fn write(
    dir: &Path,
    table_id: u64,
    segment_id: u64,
    batches: &[RecordBatch],
    table_key: Option<(u32, &Key256)>,
) -> Result<SegmentMeta, StorageError> {
    let display = segment_display(table_id, segment_id);
    let (key_version, wrapped_key, dek) = match table_key {
        Some((version, tk)) => {
            let dek = Key256::random()?;
            let wrapped = wrap_key(&AeadKey::new(tk), &dek, &dek_aad(table_id, segment_id, version))?;
            (version, Some(wrapped), Some((version, dek)))
        }
        None => (0, None, None),
    };
    let (buf, rows, min_rowid, max_rowid) = encode(table_id, segment_id, batches, dek.as_ref().map(|(v, k)| (*v, k)))?;
    let path = dir.join(&display);
    let parent = path
        .parent()
        .ok_or_else(|| StorageError::Internal("segment path has no parent".into()))?;
    std::fs::create_dir_all(parent).map_err(StorageError::io("creating", parent))?;
    sealdb_kms::replace_file_durably(&path, &buf).map_err(StorageError::io("writing", &path))?;
    Ok(SegmentMeta {
        id: segment_id,
        rows,
        bytes: buf.len() as u64,
        key_version,
        wrapped_key,
        sha256: sha256(&buf).to_vec(),
        min_rowid,
        max_rowid,
    })
}

/// The bytes of segment `segment_id` of `table_id` holding `batches`,
/// encrypted under `data_key` (with its table-key version) when given;
/// with the row count and the row-id range.
pub(crate) fn encode(
    table_id: u64,
    segment_id: u64,
    batches: &[RecordBatch],
    data_key: Option<(u32, &Key256)>,
) -> Result<(Vec<u8>, u64, u64, u64), StorageError> {
    let display = segment_display(table_id, segment_id);
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| StorageError::Internal("a segment needs rows".into()))?;
    let mut props = writer_properties(&schema).map_err(|e| format_error(&display, e))?;
    if let Some((version, dek)) = data_key {
        let encryption = FileEncryptionProperties::builder(dek.expose().to_vec())
            .with_aad_prefix(segment_aad(table_id, segment_id, version))
            .with_aad_prefix_storage(false)
            .build()
            .map_err(|e| format_error(&display, e))?;
        props = props.with_file_encryption_properties(encryption);
    }
    let mut buf = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut buf, schema, Some(props.build())).map_err(|e| format_error(&display, e))?;
    let mut rows = 0u64;
    let (mut min_rowid, mut max_rowid) = (u64::MAX, 0u64);
    for batch in batches {
        rows += batch.num_rows() as u64;
        if let Some((lo, hi)) = rowid_range(batch) {
            min_rowid = min_rowid.min(lo);
            max_rowid = max_rowid.max(hi);
        }
        writer.write(batch).map_err(|e| format_error(&display, e))?;
    }
    writer.close().map_err(|e| format_error(&display, e))?;
    Ok((buf, rows, if rows == 0 { 0 } else { min_rowid }, max_rowid))
}

/// Parquet writer settings for a segment of `schema`: LZ4, row groups of
/// [`ROW_GROUP_ROWS`], dictionaries for text and binary columns, and
/// `DELTA_BINARY_PACKED` without a dictionary for integer columns (integers,
/// dates, timestamps, decimals up to 18 digits, the row id), which stores
/// each value in the bits its neighbours' differences need and decodes
/// faster than a dictionary. On TPC-H `lineitem` the price column takes half
/// the bytes of Parquet's default, row ids almost none, and Q6 runs about
/// 25% faster (`cargo bench -p sealdb --bench tpch`, see `docs/storage.md`).
fn writer_properties(
    schema: &arrow::datatypes::Schema,
) -> Result<parquet::file::properties::WriterPropertiesBuilder, parquet::errors::ParquetError> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    let columns = parquet::arrow::ArrowSchemaConverter::new().convert(schema)?;
    for column in columns.columns() {
        if matches!(column.physical_type(), PhysicalType::INT32 | PhysicalType::INT64) {
            let path = column.path().clone();
            props = props
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
    }
    Ok(props)
}

/// Unwraps a segment's data key with its table key version.
pub fn unwrap_data_key(table_id: u64, meta: &SegmentMeta, table_key: &Key256) -> Result<Key256, StorageError> {
    let wrapped = meta.wrapped_key.as_deref().ok_or_else(|| {
        StorageError::integrity(
            segment_display(table_id, meta.id),
            "the catalog holds no data key for it",
        )
    })?;
    unwrap_key(
        &AeadKey::new(table_key),
        wrapped,
        &dek_aad(table_id, meta.id, meta.key_version),
    )
    .map_err(|_| {
        StorageError::integrity(
            segment_display(table_id, meta.id),
            "its data key failed authentication under the table key",
        )
    })
}

/// Parquet decryption properties for an encrypted segment.
pub fn decryption_properties(
    table_id: u64,
    meta: &SegmentMeta,
    data_key: &Key256,
) -> Result<Arc<FileDecryptionProperties>, StorageError> {
    FileDecryptionProperties::builder(data_key.expose().to_vec())
        .with_aad_prefix(segment_aad(table_id, meta.id, meta.key_version))
        .build()
        .map_err(|e| format_error(&segment_display(table_id, meta.id), e))
}

/// Checks an unencrypted segment's bytes against the catalog's SHA-256.
pub fn check_plain(path: &Path, display: &str, meta: &SegmentMeta) -> Result<(), StorageError> {
    check_digest(&read_whole(path, display)?, display, meta)
}

fn check_digest(bytes: &[u8], display: &str, meta: &SegmentMeta) -> Result<(), StorageError> {
    if bytes.len() as u64 != meta.bytes {
        return Err(StorageError::integrity(
            display,
            format!(
                "{} bytes, the catalog says {} (truncated or replaced)",
                bytes.len(),
                meta.bytes
            ),
        ));
    }
    if sha256(bytes).as_slice() != meta.sha256.as_slice() {
        return Err(StorageError::integrity(
            display,
            "its SHA-256 does not match the catalog",
        ));
    }
    Ok(())
}

/// Reads every row of a segment, authenticating it all.
pub(crate) fn read_all(
    path: &Path,
    display: &str,
    table_id: u64,
    meta: &SegmentMeta,
    data_key: Option<&Key256>,
) -> Result<Vec<RecordBatch>, StorageError> {
    // The whole file against the catalog's SHA-256 first: Parquet readers
    // skip some bytes (duplicated column metadata, padding) that modular
    // encryption therefore never authenticates.
    let bytes = read_whole(path, display)?;
    let batches = StorageError::contain(display, || decode(bytes, display, table_id, meta, data_key))?;
    check_rows(batches, display, meta)
}

/// [`read_all`] on a segment's bytes already read, without the row count
/// check: the decoder of segment files (fuzzed by
/// `fuzz/fuzz_targets/segment.rs`).
pub(crate) fn decode(
    bytes: Vec<u8>,
    display: &str,
    table_id: u64,
    meta: &SegmentMeta,
    data_key: Option<&Key256>,
) -> Result<Vec<RecordBatch>, StorageError> {
    check_digest(&bytes, display, meta)?;
    let magic: &[u8] = if data_key.is_some() { b"PARE" } else { b"PAR1" };
    if bytes.len() < 8 || &bytes[..4] != magic || &bytes[bytes.len() - 4..] != magic {
        return Err(StorageError::integrity(
            display,
            "it does not begin and end with the expected Parquet magic",
        ));
    }
    let mut options = ArrowReaderOptions::new();
    if let Some(key) = data_key {
        options = options.with_file_decryption_properties(decryption_properties(table_id, meta, key)?);
    }
    let integrity = |e: parquet::errors::ParquetError| StorageError::integrity(display, e.to_string());
    let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes::Bytes::from(bytes), options)
        .map_err(integrity)?
        .build()
        .map_err(integrity)?;
    let mut out = Vec::new();
    for batch in reader {
        out.push(batch.map_err(|e| StorageError::integrity(display, e.to_string()))?);
    }
    Ok(out)
}

/// Checks that `batches`, read from a segment, hold the catalog's row count.
fn check_rows(out: Vec<RecordBatch>, display: &str, meta: &SegmentMeta) -> Result<Vec<RecordBatch>, StorageError> {
    let rows: u64 = out.iter().map(|b| b.num_rows() as u64).sum();
    if rows != meta.rows {
        return Err(StorageError::integrity(
            display,
            format!("{rows} rows, the catalog says {}", meta.rows),
        ));
    }
    Ok(out)
}

/// What the first open of a segment by this process checks: it exists with
/// the catalog's length; an unencrypted one matches the catalog's SHA-256;
/// an encrypted one ends in the encrypted-footer magic (a plaintext file
/// read with decryption properties would otherwise be accepted as it is).
pub(crate) fn check_first_open(path: &Path, display: &str, meta: &SegmentMeta) -> Result<(), StorageError> {
    if meta.key_version == 0 {
        return check_plain(path, display, meta);
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| read_error(path, display, e))?;
    let len = file.metadata().map_err(StorageError::io("reading", path))?.len();
    if len != meta.bytes {
        return Err(StorageError::integrity(
            display,
            format!("{len} bytes, the catalog says {} (truncated or replaced)", meta.bytes),
        ));
    }
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::End(-4))
        .and_then(|_| file.read_exact(&mut magic))
        .map_err(StorageError::io("reading", path))?;
    if &magic != b"PARE" {
        return Err(StorageError::integrity(
            display,
            "it is not an encrypted segment (a plaintext file was put in its place)",
        ));
    }
    Ok(())
}

/// The error for a listed segment that is gone.
pub(crate) fn missing(display: &str) -> StorageError {
    StorageError::Missing {
        file: display.into(),
        detail: "the catalog lists it as holding table rows; restore it from a backup".into(),
    }
}

fn read_error(path: &Path, display: &str, e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        missing(display)
    } else {
        StorageError::io("reading", path)(e)
    }
}

fn read_whole(path: &Path, display: &str) -> Result<Vec<u8>, StorageError> {
    std::fs::read(path).map_err(|e| read_error(path, display, e))
}

fn rowid_range(batch: &RecordBatch) -> Option<(u64, u64)> {
    let col = batch.column_by_name(ROWID_COLUMN)?;
    let ids = col.as_any().downcast_ref::<arrow::array::UInt64Array>()?;
    let lo = arrow::compute::min(ids)?;
    let hi = arrow::compute::max(ids)?;
    Some((lo, hi))
}

fn format_error(display: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Format {
        context: format!("segment {display}"),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use std::sync::Arc;

    use arrow::array::{Date32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use crate::ROWID_COLUMN;

    /// Integer columns are delta-encoded without a dictionary, text keeps
    /// its dictionary, and sequential row ids take almost no space.
    #[test]
    fn integer_columns_are_delta_encoded_and_text_keeps_its_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let n = 100_000u64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, false),
            Field::new("day", DataType::Date32, false),
            Field::new("mode", DataType::Utf8, false),
            Field::new(ROWID_COLUMN, DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(
                    (0..n as i64).map(|i| (i * 7919) % 1_000_003),
                )),
                Arc::new(Date32Array::from_iter_values((0..n as i32).map(|i| 9000 + i % 2500))),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["AIR", "RAIL", "SHIP"][(i % 3) as usize]),
                )),
                Arc::new(UInt64Array::from_iter_values(1..=n)),
            ],
        )
        .unwrap();
        let meta = super::write(dir.path(), 7, 1, &[batch], None).unwrap();
        let file = std::fs::File::open(dir.path().join(super::segment_display(7, 1))).unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        let group = reader.metadata().row_group(0);
        let encodings = |i: usize| group.column(i).encodings().collect::<Vec<_>>();
        for (i, name) in [(0, "price"), (1, "day"), (3, ROWID_COLUMN)] {
            assert!(
                encodings(i).contains(&Encoding::DELTA_BINARY_PACKED),
                "{name}: {:?}",
                encodings(i)
            );
            assert!(
                !encodings(i).contains(&Encoding::RLE_DICTIONARY),
                "{name}: {:?}",
                encodings(i)
            );
        }
        assert!(encodings(2).contains(&Encoding::RLE_DICTIONARY), "{:?}", encodings(2));
        let rowid_bytes = group.column(3).compressed_size();
        assert!(rowid_bytes < 4096, "{n} sequential row ids took {rowid_bytes} bytes");
        assert_eq!(meta.rows, n);
    }
}
