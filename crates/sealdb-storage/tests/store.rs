//! The storage engine against a real directory: durability across reopen,
//! atomic commits, checkpoints into encrypted segments, and detection of
//! damaged, missing, moved or older files. Each test opens the store the
//! way the server does and checks what a reader gets back.

#![allow(clippy::unwrap_used)] // helpers of a test file: a failed unwrap is a failed test
mod support;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use roaring::RoaringTreemap;
use sealdb_storage::{Encryption, StorageError, Store, StoreOptions, Transaction};
use support::provider;

fn open(dir: &Path) -> Result<Store, StorageError> {
    Store::open(dir, provider(dir), StoreOptions::default()).map(|(s, _)| s)
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("note", DataType::Utf8, true),
    ])
}

fn rows(ids: std::ops::Range<i64>, note: &str) -> RecordBatch {
    let notes: Vec<String> = ids.clone().map(|i| format!("{note}-{i}")).collect();
    RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(Int64Array::from_iter_values(ids)),
            Arc::new(StringArray::from(notes)),
        ],
    )
    .unwrap()
}

fn ids(store: &Store, table: &str) -> Vec<i64> {
    let t = store.table(table).unwrap();
    let mut out: Vec<i64> = store
        .read_table(&t)
        .unwrap()
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    out.sort();
    out
}

async fn insert(store: &Store, table: &str, batch: RecordBatch) {
    let t = store.table(table).unwrap();
    let mut tx = Transaction::new();
    tx.write(&t, store.options().lock_timeout)
        .await
        .unwrap()
        .insert(&batch)
        .unwrap();
    store.commit(tx).await.unwrap();
}

/// A store with table `public.t`: 50 rows in a segment, 10 in the log.
async fn with_segment_and_log() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store
        .create_table("public.t", schema(), Encryption::Aes256Gcm)
        .await
        .unwrap();
    insert(&store, "public.t", rows(0..50, "a")).await;
    store.checkpoint().await.unwrap();
    insert(&store, "public.t", rows(50..60, "b")).await;
    dir
}

fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test]
async fn committed_rows_survive_reopen_from_the_log_and_from_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        store
            .create_table("public.t", schema(), Encryption::Aes256Gcm)
            .await
            .unwrap();
        insert(&store, "public.t", rows(0..10, "a")).await;
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "public.t"), (0..10).collect::<Vec<_>>());
    store.checkpoint().await.unwrap();
    insert(&store, "public.t", rows(10..15, "b")).await;
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "public.t"), (0..15).collect::<Vec<_>>());
    assert_eq!(store.table("public.t").unwrap().snapshot().segments.len(), 1);
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_nothing_and_a_commit_applies_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let a = store
        .create_table("public.a", schema(), Encryption::Aes256Gcm)
        .await
        .unwrap();
    let b = store
        .create_table("public.b", schema(), Encryption::None)
        .await
        .unwrap();
    let timeout = store.options().lock_timeout;
    let mut tx = Transaction::new();
    tx.write(&a, timeout).await.unwrap().insert(&rows(0..3, "x")).unwrap();
    drop(tx);
    let mut tx = Transaction::new();
    tx.write(&a, timeout).await.unwrap().insert(&rows(0..3, "x")).unwrap();
    tx.write(&b, timeout).await.unwrap().insert(&rows(5..7, "y")).unwrap();
    store.commit(tx).await.unwrap();
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "public.a"), vec![0, 1, 2]);
    assert_eq!(ids(&store, "public.b"), vec![5, 6]);
}

#[tokio::test]
async fn deletes_and_truncates_are_durable_before_and_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let t = store
        .create_table("public.t", schema(), Encryption::Aes256Gcm)
        .await
        .unwrap();
    insert(&store, "public.t", rows(0..5, "a")).await;
    store.checkpoint().await.unwrap();
    let timeout = store.options().lock_timeout;
    let mut tx = Transaction::new();
    let mut del = RoaringTreemap::new();
    del.insert(1);
    del.insert(3);
    tx.write(&t, timeout).await.unwrap().delete(&del);
    store.commit(tx).await.unwrap();
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "public.t"), vec![0, 2, 4]);
    let t = store.table("public.t").unwrap();
    let mut tx = Transaction::new();
    tx.write(&t, timeout).await.unwrap().truncate();
    tx.write(&t, timeout)
        .await
        .unwrap()
        .insert(&rows(100..102, "z"))
        .unwrap();
    store.commit(tx).await.unwrap();
    store.checkpoint().await.unwrap();
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "public.t"), vec![100, 101]);
}

#[tokio::test]
async fn a_marker_appears_in_no_file_after_log_and_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "MARKER-7f3a9c";
    let store = open(dir.path()).unwrap();
    store
        .create_table("public.t", schema(), Encryption::Aes256Gcm)
        .await
        .unwrap();
    insert(&store, "public.t", rows(0..100, marker)).await;
    let check = |when: &str| {
        for f in all_files(dir.path()) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{when}: marker found in {}",
                f.display()
            );
        }
    };
    check("after commit");
    store.checkpoint().await.unwrap();
    check("after checkpoint");
}

#[tokio::test]
async fn dropping_a_table_makes_a_copy_of_its_files_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store
        .create_table("public.t", schema(), Encryption::Aes256Gcm)
        .await
        .unwrap();
    insert(&store, "public.t", rows(0..10, "secret")).await;
    store.checkpoint().await.unwrap();
    let t = store.table("public.t").unwrap();
    let segment = t.snapshot().segments[0].clone();
    let copy = std::fs::read(&segment.path).unwrap();
    let path = segment.path.clone();
    drop(segment);
    drop(t);
    store.drop_table("public.t").await.unwrap();
    drop(store);
    assert!(!path.exists(), "the file is removed");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &copy).unwrap();
    let store = open(dir.path()).unwrap();
    assert!(store.table("public.t").is_none());
    assert!(!path.exists(), "an unlisted file put back is removed at open");
    // And the catalog holds no key that could open it.
    let catalog = std::fs::read(dir.path().join("catalog")).unwrap();
    assert!(catalog.len() < 4096);
}

#[tokio::test]
async fn a_flipped_byte_in_any_file_is_reported_with_the_file_name() {
    let dir = with_segment_and_log().await;
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), pristine.path());
    let files: Vec<_> = all_files(pristine.path())
        .into_iter()
        // The lock file is empty: it holds nothing to damage.
        .filter(|p| !p.starts_with(pristine.path().join("keystore")) && *p != pristine.path().join("lock"))
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let rel = file.strip_prefix(pristine.path()).unwrap().to_path_buf();
        let len = std::fs::metadata(&file).unwrap().len() as usize;
        for at in [0, len / 2, len - 1] {
            let work = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), work.path());
            let target = work.path().join(&rel);
            let mut bytes = std::fs::read(&target).unwrap();
            bytes[at] ^= 0x01;
            std::fs::write(&target, &bytes).unwrap();
            let outcome = open(work.path()).and_then(|s| {
                let t = s.table("public.t").unwrap();
                s.read_table(&t).map(|_| ())
            });
            let err = outcome.expect_err(&format!("flip at {at} of {} undetected", rel.display()));
            let name = rel.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                err.to_string().contains(&name),
                "flip at {at} of {}: {err}",
                rel.display()
            );
        }
    }
}

#[tokio::test]
async fn an_older_catalog_put_back_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store
        .create_table("public.t", schema(), Encryption::Aes256Gcm)
        .await
        .unwrap();
    let old = std::fs::read(dir.path().join("catalog")).unwrap();
    store
        .create_table("public.u", schema(), Encryption::Aes256Gcm)
        .await
        .unwrap();
    insert(&store, "public.u", rows(0..3, "x")).await;
    drop(store);
    std::fs::write(dir.path().join("catalog"), &old).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("older copy of the catalog"), "{err}");
}

#[tokio::test]
async fn a_deleted_log_file_or_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        store
            .create_table("public.t", schema(), Encryption::Aes256Gcm)
            .await
            .unwrap();
        insert(&store, "public.t", rows(0..5, "a")).await;
        store.checkpoint().await.unwrap();
        insert(&store, "public.t", rows(5..6, "a")).await;
    }
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), pristine.path());
    for sub in ["log", "tables"] {
        let work = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), work.path());
        let victim = all_files(&work.path().join(sub))
            .into_iter()
            .find(|p| std::fs::metadata(p).unwrap().len() > 52)
            .unwrap();
        std::fs::remove_file(&victim).unwrap();
        let err = open(work.path()).unwrap_err();
        let name = victim.file_name().unwrap().to_string_lossy().into_owned();
        assert!(err.to_string().contains(&name), "{sub}: {err}");
    }
}

#[tokio::test]
async fn a_torn_last_frame_is_discarded_and_earlier_commits_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        store
            .create_table("public.t", schema(), Encryption::Aes256Gcm)
            .await
            .unwrap();
        insert(&store, "public.t", rows(0..5, "a")).await;
        insert(&store, "public.t", rows(5..10, "b")).await;
    }
    let log = all_files(&dir.path().join("log"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&log).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(len - 7).unwrap();
    let (store, report) = Store::open(dir.path(), provider(dir.path()), StoreOptions::default()).unwrap();
    assert!(report.torn_tail.is_some());
    assert_eq!(ids(&store, "public.t"), (0..5).collect::<Vec<_>>());
}

#[tokio::test]
async fn opening_calls_the_key_provider_a_fixed_number_of_times_whatever_the_table_count() {
    let mut calls = Vec::new();
    for tables in [1, 40] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path()).unwrap();
            for i in 0..tables {
                store
                    .create_table(&format!("public.t{i}"), schema(), Encryption::Aes256Gcm)
                    .await
                    .unwrap();
            }
        }
        let (_, report) = Store::open(dir.path(), provider(dir.path()), StoreOptions::default()).unwrap();
        calls.push(report.provider_calls);
    }
    assert_eq!(calls[0], calls[1]);
    assert!(calls[0] <= 2, "{calls:?}");
}

#[tokio::test]
async fn a_newer_format_is_refused_with_the_version() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()).unwrap());
    let path = dir.path().join("catalog");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = 7;
    std::fs::write(&path, &bytes).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("format version 7"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    for f in all_files(from) {
        let rel = f.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

#[tokio::test]
async fn verify_reports_every_damaged_file_and_passes_a_sound_directory() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        store
            .create_table("public.a", schema(), Encryption::Aes256Gcm)
            .await
            .unwrap();
        store
            .create_table("public.b", schema(), Encryption::None)
            .await
            .unwrap();
        insert(&store, "public.a", rows(0..20, "a")).await;
        insert(&store, "public.b", rows(0..20, "b")).await;
        store.checkpoint().await.unwrap();
        insert(&store, "public.a", rows(20..25, "a")).await;
    }
    let sound = sealdb_storage::verify(dir.path(), provider(dir.path()).as_ref());
    assert!(sound.is_sound(), "{:?}", sound.problems);
    assert!(sound.checked.len() >= 4, "{:?}", sound.checked);
    let segments: Vec<_> = all_files(&dir.path().join("tables"));
    assert_eq!(segments.len(), 2);
    for s in &segments {
        let mut bytes = std::fs::read(s).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        std::fs::write(s, &bytes).unwrap();
    }
    let damaged = sealdb_storage::verify(dir.path(), provider(dir.path()).as_ref());
    assert_eq!(damaged.problems.len(), 2, "{:?}", damaged.problems);
    for s in &segments {
        let name = s.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            damaged.problems.iter().any(|p| p.to_string().contains(&name)),
            "{name}: {:?}",
            damaged.problems
        );
    }
}

#[tokio::test]
async fn compaction_merges_small_segments_drops_deleted_rows_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let t = store.create_table("t", schema(), Encryption::Aes256Gcm).await.unwrap();
    for round in 0..6 {
        insert(&store, "t", rows(round * 10..round * 10 + 10, "r")).await;
        store.checkpoint().await.unwrap();
    }
    assert_eq!(t.snapshot().segments.len(), 6);
    assert!(store.wants_compaction());
    // Delete a few rows (their ids are the row ids: one row per id, in order).
    let mut del = RoaringTreemap::new();
    for id in [3u64, 17, 42, 43] {
        del.insert(id);
    }
    let mut tx = Transaction::new();
    tx.write(&t, store.options().lock_timeout).await.unwrap().delete(&del);
    store.commit(tx).await.unwrap();
    let expected: Vec<i64> = (0..60).filter(|i| ![3, 17, 42, 43].contains(i)).collect();
    assert_eq!(ids(&store, "t"), expected);

    assert_eq!(store.compact().await.unwrap(), 6);
    assert!(!store.wants_compaction());
    let data = t.snapshot();
    assert_eq!(data.segments.len(), 1);
    assert_eq!(data.segments[0].meta.rows, 56, "deleted rows are left out");
    assert!(data.deleted.is_empty(), "the ids of rows left out are forgotten");
    drop(data);
    assert_eq!(ids(&store, "t"), expected);
    let parquet = |dir: &Path| {
        all_files(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count()
    };
    assert_eq!(parquet(dir.path()), 1, "merged files are removed");
    drop(t);
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "t"), expected);
    drop(store);
    let report = sealdb_storage::verify(dir.path(), provider(dir.path()).as_ref());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn a_truncated_file_is_reported_with_the_file_name() {
    let dir = with_segment_and_log().await;
    // Reopened once more: the log then has an older file and a newest one.
    drop(open(dir.path()).unwrap());
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), pristine.path());
    let mut logs: Vec<_> = all_files(&pristine.path().join("log"));
    logs.sort();
    let newest_log = logs.last().cloned().unwrap();
    let files: Vec<_> = all_files(pristine.path())
        .into_iter()
        // The lock file is empty: it holds nothing to damage.
        .filter(|p| !p.starts_with(pristine.path().join("keystore")) && *p != pristine.path().join("lock"))
        .collect();
    for file in files {
        let rel = file.strip_prefix(pristine.path()).unwrap().to_path_buf();
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        let len = std::fs::metadata(&file).unwrap().len();
        for keep in [len / 2, len - 1] {
            let work = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), work.path());
            let target = work.path().join(&rel);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .unwrap()
                .set_len(keep)
                .unwrap();
            let outcome =
                Store::open(work.path(), provider(work.path()), StoreOptions::default()).and_then(|(s, r)| {
                    let t = s.table("public.t").unwrap();
                    s.read_table(&t).map(|_| r)
                });
            match outcome {
                Err(e) => assert!(e.to_string().contains(&name), "{}: {e}", rel.display()),
                // Cutting the newest log file looks like a crash in the
                // middle of a write: recovery says so, naming the file.
                Ok(report) if file == newest_log => {
                    let torn = report.torn_tail.unwrap_or_default();
                    assert!(
                        torn.contains(&name),
                        "{} cut to {keep} bytes was accepted silently",
                        rel.display()
                    );
                }
                Ok(_) => panic!("{} cut to {keep} bytes was not detected", rel.display()),
            }
        }
    }
}

#[tokio::test]
async fn master_key_rotation_rewraps_only_the_ring_and_the_old_version_can_be_destroyed() {
    let dir = with_segment_and_log().await;
    let keystore = provider(dir.path());
    let (store, _) = Store::open(dir.path(), keystore.clone(), StoreOptions::default()).unwrap();
    let files_before: Vec<_> = all_files(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    let calls = keystore.call_count();
    let (old, new) = store.rotate_master_key().await.unwrap();
    assert_ne!(old, new);
    assert!(
        keystore.call_count() - calls <= 3,
        "rotation calls the provider a fixed number of times"
    );
    assert_eq!(store.master_key().await.0, new);
    insert(&store, "public.t", rows(60..70, "c")).await;
    store.checkpoint().await.unwrap();
    // No data file was rewritten.
    for f in &files_before {
        assert!(f.exists(), "{} was rewritten", f.display());
    }
    drop(store);
    // The old version is retired; destroying it loses nothing.
    let states = keystore.list().unwrap();
    assert!(
        states
            .iter()
            .any(|k| k.id == old && k.state == sealdb_kms::KeyState::Deactivated),
        "{states:?}"
    );
    keystore.destroy(&old).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "public.t"), (0..70).collect::<Vec<_>>());
    assert_eq!(store.master_key().await.0, new);
}

#[tokio::test]
async fn a_refresh_rotates_away_from_a_deactivated_master_key_and_closes_the_gate_on_a_destroyed_one() {
    use sealdb_storage::RefreshOutcome;
    let dir = with_segment_and_log().await;
    let keystore = provider(dir.path());
    let (store, _) = Store::open(dir.path(), keystore.clone(), StoreOptions::default()).unwrap();
    let grace = std::time::Duration::from_secs(60);
    assert_eq!(
        store.refresh_master_key(grace).await,
        RefreshOutcome::Active { recovered: false }
    );
    let (first, _) = store.master_key().await;
    keystore.deactivate(&first).unwrap();
    let RefreshOutcome::Rotated { from, state, to } = store.refresh_master_key(grace).await else {
        panic!("a deactivated master key is rotated away from");
    };
    assert_eq!((from.as_str(), state.as_str()), (first.0.as_str(), "deactivated"));
    assert_eq!(store.master_key().await.0.0, to);
    insert(&store, "public.t", rows(60..61, "d")).await;

    let (current, _) = store.master_key().await;
    keystore.destroy(&current).unwrap();
    assert!(matches!(
        store.refresh_master_key(grace).await,
        RefreshOutcome::Destroyed { .. }
    ));
    let err = store.key_gate().check("public.t").unwrap_err().to_string();
    assert!(
        err.contains("public.t") && err.contains(&current.0) && err.contains("destroyed"),
        "{err}"
    );
    let t = store.table("public.t").unwrap();
    let mut tx = Transaction::new();
    tx.write(&t, store.options().lock_timeout)
        .await
        .unwrap()
        .insert(&rows(100..101, "e"))
        .unwrap();
    let err = store.commit(tx).await.unwrap_err();
    assert!(matches!(err, StorageError::KeyUnavailable { .. }), "{err}");
    // Re-wrapping under a new master key would undo the shredding.
    let err = store.rotate_master_key().await.unwrap_err();
    assert!(err.to_string().contains("would undo the shredding"), "{err}");
}

#[tokio::test]
async fn a_second_process_cannot_open_a_data_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let e = open(dir.path()).unwrap_err();
    assert!(matches!(e, StorageError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("in use by another sealdb process"), "{e}");
    drop(store);
    open(dir.path()).unwrap();
}

/// Segments of `t` and the key version of each.
fn segment_versions(store: &Store, table: &str) -> Vec<u32> {
    let t = store.table(table).unwrap();
    t.snapshot().segments.iter().map(|s| s.meta.key_version).collect()
}

#[tokio::test]
async fn rekey_rewrites_every_file_under_the_current_version_and_destroys_the_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.create_table("t", schema(), Encryption::Aes256Gcm).await.unwrap();
    for round in 0..3 {
        insert(&store, "t", rows(round * 10..round * 10 + 10, "r")).await;
        store.checkpoint().await.unwrap();
        store.rotate_table_key("t").await.unwrap();
    }
    // Rows in the log under version 4, then deleted ones.
    insert(&store, "t", rows(30..40, "log")).await;
    let t = store.table("t").unwrap();
    let mut del = RoaringTreemap::new();
    del.insert(5);
    let mut tx = Transaction::new();
    tx.write(&t, store.options().lock_timeout).await.unwrap().delete(&del);
    store.commit(tx).await.unwrap();
    let expected: Vec<i64> = (0..40).filter(|i| *i != 5).collect();
    assert_eq!(segment_versions(&store, "t"), vec![1, 2, 3]);
    let share = |store: &Store| store.table_summaries()[0].current_key_share;
    assert_eq!(share(&store), 0.0);

    let job = store.rekey_table("t").await.unwrap();
    assert!(job.bytes_total > 0);
    let done = store.wait_for_job(job.id).await.unwrap();
    assert_eq!(done.state, sealdb_storage::JobState::Done, "{:?}", done.error);
    assert_eq!(done.bytes_done, done.bytes_total);
    assert_eq!(done.destroyed_versions, vec![1, 2, 3]);
    assert!(segment_versions(&store, "t").iter().all(|v| *v == 4));
    assert_eq!(share(&store), 1.0);
    assert_eq!(ids(&store, "t"), expected);
    let versions: Vec<u32> = store
        .key_records()
        .into_iter()
        .filter(|k| k.scope == "table t")
        .map(|k| k.version)
        .collect();
    assert_eq!(versions, vec![4], "older versions are destroyed");
    drop(t);
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "t"), expected);
    drop(store);
    let report = sealdb_storage::verify(dir.path(), provider(dir.path()).as_ref());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn set_encryption_stores_new_data_so_at_once_and_converts_old_data_through_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        provider(dir.path()),
        StoreOptions {
            rekey: sealdb_storage::RekeyOptions {
                max_bytes_per_sec: 0,
                keep_old_keys: true,
            },
            ..StoreOptions::default()
        },
    )
    .unwrap()
    .0;
    store.create_table("p", schema(), Encryption::None).await.unwrap();
    insert(&store, "p", rows(0..20, "plain")).await;
    store.checkpoint().await.unwrap();
    assert_eq!(segment_versions(&store, "p"), vec![0]);

    let job = store.set_table_encryption("p", Encryption::Aes256Gcm).await.unwrap();
    let done = store.wait_for_job(job.id).await.unwrap();
    assert_eq!(done.state, sealdb_storage::JobState::Done, "{:?}", done.error);
    assert_eq!(segment_versions(&store, "p"), vec![1]);
    insert(&store, "p", rows(20..30, "new")).await;
    store.checkpoint().await.unwrap();
    assert_eq!(segment_versions(&store, "p"), vec![1, 1], "new data is encrypted");
    let marker_free = |dir: &Path| {
        all_files(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .all(|p| !String::from_utf8_lossy(&std::fs::read(p).unwrap()).contains("plain-1"))
    };
    assert!(marker_free(dir.path()), "no segment holds the rows in the clear");

    store.rotate_table_key("p").await.unwrap();
    let job = store.rekey_table("p").await.unwrap();
    let done = store.wait_for_job(job.id).await.unwrap();
    assert!(done.destroyed_versions.is_empty(), "keep-old-keys keeps them");
    assert_eq!(store.key_records().iter().filter(|k| k.scope == "table p").count(), 2);

    let job = store.set_table_encryption("p", Encryption::None).await.unwrap();
    store.wait_for_job(job.id).await.unwrap();
    assert!(segment_versions(&store, "p").iter().all(|v| *v == 0));
    assert_eq!(ids(&store, "p"), (0..30).collect::<Vec<_>>());
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.table("p").unwrap().encryption(), Encryption::None);
    assert_eq!(ids(&store, "p"), (0..30).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_rekey_throttle_spreads_the_rewrite_over_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        provider(dir.path()),
        StoreOptions {
            rekey: sealdb_storage::RekeyOptions {
                max_bytes_per_sec: 1,
                keep_old_keys: false,
            },
            ..StoreOptions::default()
        },
    )
    .unwrap()
    .0;
    store.create_table("t", schema(), Encryption::Aes256Gcm).await.unwrap();
    for round in 0..2 {
        insert(&store, "t", rows(round * 10..round * 10 + 10, "r")).await;
        store.checkpoint().await.unwrap();
    }
    store.rotate_table_key("t").await.unwrap();
    let job = store.rekey_table("t").await.unwrap();
    // At one byte per second a step is one file, followed by a pause of
    // thousands of seconds: one file is rewritten, the other is not yet.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let now = store.jobs().into_iter().find(|j| j.id == job.id).unwrap();
    assert_eq!(now.state, sealdb_storage::JobState::Running);
    assert!(now.bytes_done > 0 && now.bytes_done < now.bytes_total, "{now:?}");
    let mut versions = segment_versions(&store, "t");
    versions.sort();
    assert_eq!(versions, vec![1, 2]);
    assert!(store.table_summaries()[0].current_key_share < 1.0);
}

#[tokio::test]
async fn system_rekey_rewrites_the_catalog_log_and_audit_log_under_new_keys() {
    let dir = with_segment_and_log().await;
    let store = open(dir.path()).unwrap();
    store.rotate_table_key("public.t").await.unwrap();
    let system_before: Vec<_> = store
        .key_records()
        .into_iter()
        .filter(|k| k.scope != "master")
        .map(|k| (k.scope, k.wrapped_sha256))
        .collect();
    let logs_before = sealdb_storage::internal::log_files(dir.path());
    store.rekey_system().await.unwrap();
    insert(&store, "public.t", rows(60..70, "after")).await;
    let system_after: Vec<_> = store
        .key_records()
        .into_iter()
        .filter(|k| k.scope != "master")
        .map(|k| (k.scope, k.wrapped_sha256))
        .collect();
    assert_eq!(system_before.len(), system_after.len());
    for (before, after) in system_before.iter().zip(&system_after) {
        assert_ne!(before.1, after.1, "{} is wrapped anew", before.0);
    }
    let logs_after = sealdb_storage::internal::log_files(dir.path());
    assert!(
        logs_after.iter().all(|f| !logs_before.contains(f)),
        "no log file from before is left: {logs_before:?} {logs_after:?}"
    );
    let audit = store.audit_log().unwrap();
    assert!(audit.problems.is_empty(), "{:?}", audit.problems);
    assert!(audit.records.iter().any(|r| r.event == "system rekey done"));
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "public.t"), (0..70).collect::<Vec<_>>());
    assert_eq!(store.audit_log().unwrap().records.len(), audit.records.len());
    drop(store);
    let report = sealdb_storage::verify(dir.path(), provider(dir.path()).as_ref());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn verify_finds_an_audit_record_removed_or_edited_even_by_someone_holding_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.create_table("a", schema(), Encryption::Aes256Gcm).await.unwrap();
    store.rotate_table_key("a").await.unwrap();
    store.rotate_master_key().await.unwrap();
    store.drop_table("a").await.unwrap();
    let records = store.audit_log().unwrap().records;
    let events: Vec<&str> = records.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "master key created",
            "table key created",
            "table key rotated",
            "master key rotated",
            "table keys destroyed",
            // The master key of the key ring before the drop.
            "key destroyed"
        ]
    );
    drop(store);
    let clean = sealdb_storage::verify(dir.path(), provider(dir.path()).as_ref());
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    assert!(
        clean.checked.iter().any(|c| c.contains("6 records, hash chain intact")),
        "{:?}",
        clean.checked
    );

    let damaged = |edit: fn(&mut Vec<sealdb_storage::AuditRecord>)| {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        sealdb_storage::internal::rewrite_audit_log(copy.path(), provider(copy.path()).as_ref(), edit).unwrap();
        let report = sealdb_storage::verify(copy.path(), provider(copy.path()).as_ref());
        report
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let removed = damaged(|r| {
        r.remove(2);
    });
    assert!(removed.contains("records 3 to 3 are missing"), "{removed}");
    let edited = damaged(|r| r[2].detail = "nothing happened".into());
    assert!(edited.contains("record 4 does not follow"), "{edited}");
    let renumbered = damaged(|r| {
        r.remove(2);
        for (i, rec) in r.iter_mut().enumerate() {
            rec.number = i as u64 + 1;
        }
    });
    assert!(renumbered.contains("record 3 does not follow"), "{renumbered}");
}

fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    all_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

/// A transaction past `spill_bytes` keeps its rows in encrypted segment
/// files of its own, not in memory: its own scans see them, a deletion of
/// them counts, a rollback removes the files, a commit publishes them (in
/// the catalog before it returns) and they survive reopening and verify.
#[tokio::test]
async fn a_large_transaction_spills_into_encrypted_files_that_its_commit_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let options = || StoreOptions {
        spill_bytes: 4096,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), provider(dir.path()), options()).unwrap().0;
    store.create_table("t", schema(), Encryption::Aes256Gcm).await.unwrap();
    let t = store.table("t").unwrap();

    // Rolled back: the files go with the transaction.
    let mut tx = Transaction::new();
    for round in 0..4 {
        let pending = tx.write(&t, store.options().lock_timeout).await.unwrap();
        pending
            .insert(&rows(round * 100..round * 100 + 100, "spilled"))
            .unwrap();
        store.spill(pending).await.unwrap();
    }
    let pending = tx.pending(t.id()).unwrap();
    let staged = pending.staged().len();
    assert!(staged >= 2, "400 rows are many times 4 KiB: {staged} files");
    assert!(pending.buffered_bytes() < 4096, "{}", pending.buffered_bytes());
    assert_eq!(parquet_files(dir.path()).len(), staged);
    for file in parquet_files(dir.path()) {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("spilled-1"),
            "a spill file holds rows in the clear"
        );
    }
    drop(tx);
    assert!(
        parquet_files(dir.path()).is_empty(),
        "a rollback removes what it spilled"
    );

    // Committed: spilled rows, rows in memory, and a deletion of a spilled row.
    let mut tx = Transaction::new();
    let pending = tx.write(&t, store.options().lock_timeout).await.unwrap();
    pending.insert(&rows(0..300, "spilled")).unwrap();
    store.spill(pending).await.unwrap();
    pending.insert(&rows(300..310, "kept")).unwrap();
    // Row ids go on from those the rolled-back transaction took.
    let first = pending.staged()[0].meta.min_rowid;
    let spilled_id = RoaringTreemap::from_iter([first + 5]);
    assert_eq!(pending.delete(&spilled_id), 1);
    store.commit(tx).await.unwrap();
    let expected: Vec<i64> = (0..310).filter(|i| *i != 5).collect();
    assert_eq!(ids(&store, "t"), expected);
    drop(store);
    let report = sealdb_storage::verify(dir.path(), provider(dir.path()).as_ref());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let store = Store::open(dir.path(), provider(dir.path()), options()).unwrap().0;
    assert_eq!(ids(&store, "t"), expected);
    insert(&store, "t", rows(310..320, "after")).await;
    store.checkpoint().await.unwrap();
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(ids(&store, "t").len(), expected.len() + 10);
}
