//! What a KMIP master key costs, against a real PyKMIP server started here
//! (run `./scripts/setup-test-env.sh` first for its virtual environment):
//!
//! - key-server calls per statement in steady state (goal: zero);
//! - key-server calls when opening a data directory with 10 and 1,000
//!   tables whose keys are wrapped by the key ring under a KMIP master key
//!   (goal: the same for both), and with tables that have keys of their
//!   own on the key server (one call per table key version);
//! - master-key rotation with 1,000 tables, KMIP and local side by side.
//!
//! `cargo bench -p sealdb-storage --bench kmip` (set `SEALDB_BENCH_TABLES`
//! for another table count). Times are medians of a few runs on a noisy
//! machine: compare the ratios.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a bench binary: a failed unwrap is a failed run

#[path = "../../sealdb/tests/support/kmip.rs"]
mod kmip_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use sealdb_crypto::PassphraseKdf;
use sealdb_kms::{KeyProvider, KmipMode, KmipProvider, LocalKeystore};
use sealdb_storage::{Encryption, Store, StoreOptions, TableKeyProvider, Transaction};

fn schema() -> Schema {
    Schema::new(vec![Field::new("n", DataType::Int64, false)])
}

fn kmip_provider(certs: &Path, host: &str, instance: &str) -> Arc<dyn KeyProvider> {
    let config = sealdb_kmip::KmipClientConfig {
        timeout: Duration::from_secs(30),
        ..kmip_support::client_config(certs, "client", vec![host.to_owned()])
    };
    Arc::new(KmipProvider::new("hsm", config, KmipMode::Wrap, &format!("sealdb-bench/{instance}")).unwrap())
}

fn local_provider(dir: &Path) -> Arc<dyn KeyProvider> {
    let kdf = PassphraseKdf {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
    Arc::new(LocalKeystore::open_with_kdf(&dir.join("keystore"), None, kdf).unwrap())
}

/// Creates `tables` tables (keys of their own on the provider when `own`).
async fn fill(store: &Store, tables: usize, own: bool) {
    for i in 0..tables {
        let kp = own.then(|| TableKeyProvider {
            provider: "kmip:hsm".into(),
            namespace: "bench".into(),
        });
        store
            .create_table_with_keys(&format!("t{i}"), schema(), Encryption::Aes256Gcm, kp, false)
            .await
            .unwrap();
    }
}

/// Opens `dir` again: (provider calls, time).
fn reopen(dir: &Path, provider: Arc<dyn KeyProvider>) -> (u64, Duration) {
    let started = Instant::now();
    let (store, report) = Store::open(dir, provider, StoreOptions::default()).unwrap();
    let took = started.elapsed();
    drop(store);
    (report.provider_calls, took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let many: usize = std::env::var("SEALDB_BENCH_TABLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let certs = kmip_support::certs(work.path());
    let kmip = kmip_support::KmipServer::start(work.path(), &certs);
    println!("PyKMIP on {}; {many} tables for the large cases", kmip.host());

    // Steady state: commits and reads make no key-server call.
    let dir = work.path().join("steady");
    let provider = kmip_provider(&certs, &kmip.host(), "steady");
    let (store, _) = Store::open(&dir, provider.clone(), StoreOptions::default()).unwrap();
    runtime.block_on(async {
        fill(&store, 4, false).await;
        let before = provider.call_count();
        let statements = 400;
        for i in 0..statements {
            let t = store.table(&format!("t{}", i % 4)).unwrap();
            let batch = RecordBatch::try_new(
                Arc::new(schema()),
                vec![Arc::new(Int64Array::from(vec![i as i64]))],
            )
            .unwrap();
            let mut tx = Transaction::new();
            tx.write(&t, Duration::from_secs(5)).await.unwrap().insert(&batch).unwrap();
            store.commit(tx).await.unwrap();
            store.read_table(&t).unwrap();
            if i % 100 == 99 {
                store.checkpoint().await.unwrap();
            }
        }
        let calls = provider.call_count() - before;
        println!(
            "steady state: {} key-server calls for {statements} commits, {statements} reads and 4 checkpoints ({:.3} per statement)",
            calls,
            calls as f64 / (2 * statements) as f64
        );
    });
    drop(store);

    // Start-up: tables with keys wrapped by the key ring.
    for (label, tables, own) in [
        ("ring-wrapped table keys", 10, false),
        ("ring-wrapped table keys", many, false),
        ("table keys of their own on the key server", 10, true),
        ("table keys of their own on the key server", 100, true),
    ] {
        let dir = work.path().join(format!("open-{tables}-{own}"));
        let provider = kmip_provider(&certs, &kmip.host(), &format!("open-{tables}-{own}"));
        let (store, _) = Store::open(&dir, provider.clone(), StoreOptions::default()).unwrap();
        runtime.block_on(fill(&store, tables, own));
        drop(store);
        let runs: Vec<(u64, Duration)> = (0..3).map(|_| reopen(&dir, provider.clone())).collect();
        println!(
            "open with {tables:>5} tables, {label}: {} key-server calls, {:?} (median of 3)",
            runs[0].0,
            median(runs.iter().map(|r| r.1).collect())
        );
    }

    // Master-key rotation with many tables, KMIP and local.
    for kind in ["kmip", "local"] {
        let dir = work.path().join(format!("rotate-{kind}"));
        let provider = match kind {
            "kmip" => kmip_provider(&certs, &kmip.host(), "rotate"),
            _ => local_provider(&dir),
        };
        let (store, _) = Store::open(&dir, provider.clone(), StoreOptions::default()).unwrap();
        runtime.block_on(fill(&store, many, false));
        let mut times = Vec::new();
        let before = provider.call_count();
        for _ in 0..5 {
            let started = Instant::now();
            runtime.block_on(store.rotate_master_key()).unwrap();
            times.push(started.elapsed());
        }
        println!(
            "rotate master key, {kind:>5}, {many} tables: {:?} (median of 5), {} provider calls each",
            median(times),
            (provider.call_count() - before) / 5
        );
    }
}
