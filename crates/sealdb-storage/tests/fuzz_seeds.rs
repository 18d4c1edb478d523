//! The seed inputs of the storage fuzz targets (`fuzz/fuzz_targets/`
//! `log_file`, `catalog`, `segment`): made from what a real store writes,
//! each one decodes as it should; and the seeds committed under
//! `fuzz/corpus/` still do, so a format change that leaves them stale (and
//! the fuzzer stuck at the first check) fails here.
//!
//! `SEALDB_WRITE_FUZZ_SEEDS=1 cargo test -p sealdb-storage --test fuzz_seeds`
//! writes them anew.

#![allow(clippy::unwrap_used)] // helpers of a test file: a failed unwrap is a failed test
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use roaring::RoaringTreemap;
use sealdb_storage::internal::{self, Decoded, FrameKind};
use sealdb_storage::{Encryption, Store, StoreOptions, Transaction};

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("note", DataType::Utf8, true),
    ])
}

/// Rows as stored: the columns, then the row ids.
fn stored_rows(ids: std::ops::Range<i64>) -> RecordBatch {
    let notes: Vec<Option<String>> = ids.clone().map(|i| (i % 3 != 0).then(|| format!("note {i}"))).collect();
    RecordBatch::try_new(
        sealdb_storage::stored_schema(&schema()),
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(StringArray::from(notes)),
            Arc::new(UInt64Array::from_iter_values(ids.map(|i| i as u64))),
        ],
    )
    .unwrap()
}

fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema()).unwrap();
    writer.write(batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    out
}

/// A catalog body as a real store writes it: two tables, one encrypted,
/// with segments and rows still in the log.
async fn real_catalog_json() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let provider = support::provider(dir.path());
    let (store, _) = Store::open(dir.path(), provider.clone(), StoreOptions::default()).unwrap();
    for (name, encryption) in [
        ("public.sealed", Encryption::Aes256Gcm),
        ("public.plain", Encryption::None),
    ] {
        store.create_table(name, schema(), encryption).await.unwrap();
        let t = store.table(name).unwrap();
        let batch = RecordBatch::try_new(Arc::new(schema()), stored_rows(0..40).columns()[..2].to_vec()).unwrap();
        let mut tx = Transaction::new();
        tx.write(&t, store.options().lock_timeout)
            .await
            .unwrap()
            .insert(&batch)
            .unwrap();
        store.commit(tx).await.unwrap();
    }
    store.checkpoint().await.unwrap();
    drop(store);
    let json = internal::catalog_body_json(dir.path(), provider.as_ref()).unwrap();
    // The generation the seed's mode byte gives.
    let mut body: serde_json::Value = serde_json::from_slice(&json).unwrap();
    body["generation"] = serde_json::json!(5);
    serde_json::to_vec(&body).unwrap()
}

/// Every seed: (target, name, bytes, what its decoder must make of it).
async fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>, Decoded)> {
    let rows = stored_rows(0..50);
    let mut deleted = RoaringTreemap::new();
    deleted.insert_range(3..9);
    let mut bitmap = Vec::new();
    deleted.serialize_into(&mut bitmap).unwrap();
    let frames = vec![
        (FrameKind::Insert, 1, 1, ipc(&rows)),
        (FrameKind::Insert, 2, 0, ipc(&stored_rows(50..53))),
        (FrameKind::Delete, 1, 1, bitmap),
        (FrameKind::Truncate, 2, 0, 2u64.to_le_bytes().to_vec()),
    ];
    let log = Decoded { items: 4, rows: 53 };
    // The log target's structured mode: [kind][table][version][len LE16] payload.
    let mut structured = vec![1 | (9 << 1)];
    for (kind, table, version, payload) in &frames {
        structured.push(match kind {
            FrameKind::Insert => 0,
            FrameKind::Delete => 1,
            _ => 2,
        });
        structured.push(*table as u8);
        structured.push(*version as u8);
        structured.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        structured.extend_from_slice(payload);
    }
    let raw_log = [&[0u8][..], &internal::log_bytes(9, &frames).unwrap()].concat();

    let json = real_catalog_json().await;
    let catalog = Decoded { items: 2, rows: 80 };
    let raw_catalog = [&[0u8][..], &internal::catalog_bytes(5, &json).unwrap()].concat();
    let sealed_body = [&[1 | (5 << 1)][..], &json].concat();

    let segment = Decoded { items: 1, rows: 50 };
    let plain_segment = [
        &[0u8][..],
        &internal::segment_bytes(std::slice::from_ref(&rows), false).unwrap(),
    ]
    .concat();
    let sealed_segment = [&[1u8][..], &internal::segment_bytes(&[rows], true).unwrap()].concat();
    vec![
        ("log_file", "seed-raw", raw_log, log),
        ("log_file", "seed-frames", structured, log),
        ("catalog", "seed-raw", raw_catalog, catalog),
        ("catalog", "seed-body", sealed_body, catalog),
        ("segment", "seed-plain", plain_segment, segment),
        ("segment", "seed-encrypted", sealed_segment, segment),
    ]
}

/// What the target `target` makes of `input`, through its fuzz target's
/// own entry point.
fn decode(target: &str, input: &[u8]) -> Result<Decoded, sealdb_storage::StorageError> {
    match target {
        "log_file" => internal::fuzz_log_file(input),
        "catalog" => internal::fuzz_catalog(input),
        "segment" => internal::fuzz_segment(input),
        _ => unreachable!("{target}"),
    }
}

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[tokio::test]
async fn fuzz_seeds_made_from_a_real_store_decode_and_the_committed_ones_still_do() {
    let seeds = seeds().await;
    for (target, name, bytes, expected) in &seeds {
        assert_eq!(decode(target, bytes).unwrap(), *expected, "{target}/{name}");
        if std::env::var_os("SEALDB_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(corpus(target)).unwrap();
            std::fs::write(corpus(target).join(name), bytes).unwrap();
        }
    }
    for (target, name, _, expected) in &seeds {
        let path = corpus(target).join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; write the seeds with SEALDB_WRITE_FUZZ_SEEDS=1",
                path.display()
            )
        });
        assert_eq!(
            decode(target, &bytes).unwrap(),
            *expected,
            "committed {target}/{name} is stale"
        );
    }
}

#[test]
fn damaged_inputs_are_refused_by_every_storage_decoder() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (target, name, bytes, expected) in runtime.block_on(seeds()) {
        // A flipped bit in a sealed file fails authentication. (Plain
        // segments are checked against the catalog's SHA-256, which the
        // segment target recomputes to reach the Parquet decoder.)
        if name == "seed-raw" || name == "seed-encrypted" {
            let mut damaged = bytes.clone();
            let at = damaged.len() - 20;
            damaged[at] ^= 0x01;
            assert!(decode(target, &damaged).is_err(), "{target}/{name} damaged at {at}");
        }
        // Cut short: refused, or (a log's torn tail) fewer frames and rows.
        let half = decode(target, &bytes[..bytes.len() / 2]);
        assert!(
            half.as_ref().ok() != Some(&expected),
            "{target}/{name} cut in half: {half:?}"
        );
    }
}

/// Every input in `fuzz/regressions/TARGET` made a dependency's decoder
/// panic (Arrow IPC on a log frame's rows, the Arrow schema a Parquet
/// footer carries): each is now an integrity error naming the file.
#[test]
fn every_input_that_crashed_a_decoder_is_now_a_clean_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let mut seen = 0;
    for target in ["log_file", "catalog", "segment"] {
        for entry in std::fs::read_dir(root.join(target)).into_iter().flatten().flatten() {
            let bytes = std::fs::read(entry.path()).unwrap();
            let e = decode(target, &bytes).expect_err("a crash input decodes");
            assert!(
                matches!(e, sealdb_storage::StorageError::Integrity { .. }),
                "{}: {e}",
                entry.path().display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 2, "the regression inputs are gone: {seen}");
}
