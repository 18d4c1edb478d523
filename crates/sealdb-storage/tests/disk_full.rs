//! A disk that fills up during writes: the writer gets a clear error, no
//! acknowledged row is lost, and commits succeed again once space returns.
//! Runs on a 4 MiB tmpfs mounted by the test (needs root, like the CI
//! machine); unmounted when done.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;
#[path = "../../sealdb/tests/support/tmpfs.rs"]
mod tmpfs;

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use sealdb_storage::{Encryption, Store, StoreOptions, Transaction};
use support::provider;
use tmpfs::{Tmpfs, is_root};

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("pad", DataType::Utf8, false),
    ])
}

fn rows(first: i64, n: i64) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(Int64Array::from_iter_values(first..first + n)),
            Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("{i:0>200}")))),
        ],
    )
    .unwrap()
}

fn count(store: &Store) -> usize {
    let t = store.table("public.t").unwrap();
    store.read_table(&t).unwrap().iter().map(|b| b.num_rows()).sum()
}

#[tokio::test]
async fn a_full_disk_fails_the_writer_clearly_loses_nothing_acknowledged_and_recovers_when_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let fs = Tmpfs::mount("4m", "store-full");
    let data = fs.0.join("data");
    // Leave little room: a filler file takes most of the disk.
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![0u8; 3 << 20]).unwrap();
    let store = Store::open(&data, provider(&data), StoreOptions::default()).unwrap().0;
    store
        .create_table("public.t", schema(), Encryption::Aes256Gcm)
        .await
        .unwrap();
    let table = store.table("public.t").unwrap();
    let timeout = store.options().lock_timeout;

    let mut acknowledged = 0i64;
    let mut failure = None;
    for _ in 0..10_000 {
        let mut tx = Transaction::new();
        tx.write(&table, timeout)
            .await
            .unwrap()
            .insert(&rows(acknowledged, 100))
            .unwrap();
        match store.commit(tx).await {
            Ok(()) => acknowledged += 100,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the 4 MiB disk filled up");
    assert!(failure.is_disk_full(), "{failure}");
    assert!(failure.to_string().contains("disk is full"), "{failure}");
    assert_eq!(
        count(&store) as i64,
        acknowledged,
        "what readers see is what was acknowledged"
    );

    // Space returns: the next commit succeeds, on a new log file.
    std::fs::remove_file(&filler).unwrap();
    let mut tx = Transaction::new();
    tx.write(&table, timeout)
        .await
        .unwrap()
        .insert(&rows(acknowledged, 100))
        .unwrap();
    store.commit(tx).await.expect("a commit after space returned");
    acknowledged += 100;
    assert_eq!(count(&store) as i64, acknowledged);
    drop(table);
    drop(store);
    // Whatever happened after the failure, a restart finds exactly the acknowledged rows.
    let reopened = Store::open(&data, provider(&data), StoreOptions::default());
    match reopened {
        Ok((store, _)) => assert_eq!(count(&store) as i64, acknowledged),
        Err(e) => panic!("reopen after a full disk failed: {e}"),
    }
}
