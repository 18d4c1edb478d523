//! The comparison harness, `bench/compare`, end to end at tiny scale
//! factors so that it cannot rot: it installs what it needs, loads TPC-H
//! into sealdb (encrypted and plain), PostgreSQL 15 over TLS and encrypted
//! DuckDB, runs the 22 queries on each with every result compared, then
//! with concurrent clients, measures new TLS connections per second and
//! `pgbench -S` against sealdb and PostgreSQL with the real pgbench, and
//! writes the report and its plots. The full run is `bench/compare --sf 1`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_comparison_harness_runs_end_to_end_at_tiny_scale_factors() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("REPORT.md");
    // `cargo test` builds the examples beside the test binaries.
    let examples = Path::new(support::sealdb_bin())
        .parent()
        .expect("the target directory")
        .join("examples");
    let (generator, datafusion) = (examples.join("tpch_tbl"), examples.join("datafusion_tpch"));
    for built in [&generator, &datafusion] {
        assert!(built.exists(), "{} is not built", built.display());
    }
    let mut cmd = Command::new(repo.join("bench/compare"));
    cmd.args([
        "--sf",
        "0.01",
        "0.02",
        "--rounds",
        "1",
        "--clients",
        "1",
        "4",
        "--clients-seconds",
        "2",
        "--oltp-seconds",
        "2",
        "--pgbench-scale",
        "1",
        "--out",
    ])
    .arg(&report)
    .env("SEALDB_BIN", support::sealdb_bin())
    .env("TPCH_TBL_BIN", &generator)
    .env("DATAFUSION_TPCH_BIN", &datafusion);
    let run = support::run_with_timeout(cmd, Duration::from_secs(1800));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "bench/compare failed:\n{printed}");
    let text = std::fs::read_to_string(&report).unwrap();
    for needle in [
        "## Scale factor 0.01",
        "## Scale factor 0.02",
        "| Q1 |",
        "| Q22 |",
        "PostgreSQL / sealdb",
        "![scaling.png](scaling.png)",
        "![clients.png](clients.png)",
        "new verified-TLS connections per second",
        "pgbench -S -M prepared, 4 client(s)",
        "| 4 | ",
        "sealdb plain over DataFusion alone on the same files",
    ] {
        assert!(text.contains(needle), "the report lacks {needle}:\n{text}");
    }
    assert!(!text.contains("MISMATCH"), "{text}");
    assert!(
        !text.contains("cannot run"),
        "every system runs all 22 queries:\n{text}"
    );
    for failure in ["failed", "Runs that failed"] {
        assert!(!text.contains(failure), "a run failed:\n{text}");
    }
    for png in ["queries-sf0.01.png", "queries-sf0.02.png", "scaling.png", "clients.png"] {
        let bytes = std::fs::read(out.path().join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
}
