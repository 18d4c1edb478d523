//! `kill -9` at random moments of a mixed workload, many times (the crash
//! soak): writers insert and delete rows while an operator runs
//! checkpoints, compactions, REKEYs and key rotations; after each kill the
//! data directory verifies, and after each restart every acknowledged row
//! is there, every acknowledged delete has happened, and nothing else is
//! (only the one operation each writer had in flight may have landed or
//! not).
//!
//! Writers are psycopg clients (`tests/py/crash_writer.py`) that print each
//! operation before sending it and again once acknowledged. The number of
//! kills is `SEALDB_SOAK_KILLS` (10 in the test suite;
//! `scripts/reliability.sh crash 100` runs the long soak).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{TestServer, psql, py_dir, venv_python};

const WRITERS: u64 = 3;

/// Kills in one run of the soak.
fn kills() -> u64 {
    std::env::var("SEALDB_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// A pseudo-random number from the clock (no rand crate needed).
fn jitter(max_ms: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos).wrapping_mul(2_654_435_761) % max_ms
}

/// What one writer's output says: rows certainly present, rows certainly
/// absent, and rows of the operation in flight (either way).
#[derive(Default)]
struct Expect {
    present: BTreeSet<(i64, i64)>,
    absent: BTreeSet<(i64, i64)>,
    either: BTreeSet<(i64, i64)>,
}

fn read_writer(out: &str, expect: &mut Expect) {
    let mut in_flight: Option<(String, Vec<(i64, i64)>)> = None;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (phase, op, nums) = match words.as_slice() {
            [phase, op, nums @ ..] if *phase == "try" || *phase == "ack" => (*phase, op.to_string(), nums),
            _ => continue,
        };
        let nums: Vec<i64> = nums.iter().filter_map(|n| n.parse().ok()).collect();
        let Some((writer, ids)) = nums.split_first() else {
            continue;
        };
        let rows: Vec<(i64, i64)> = ids.iter().map(|i| (*writer, *i)).collect();
        if phase == "try" {
            in_flight = Some((op, rows));
            continue;
        }
        in_flight = None;
        for row in rows {
            if op == "ins" {
                expect.present.insert(row);
            } else {
                expect.present.remove(&row);
                expect.absent.insert(row);
            }
        }
    }
    if let Some((_, rows)) = in_flight {
        for row in rows {
            expect.present.remove(&row);
            expect.either.insert(row);
        }
    }
}

/// What the operator runs between the writers' statements.
const MAINTENANCE: [&str; 6] = [
    "CHECKPOINT",
    "VACUUM crash",
    "ALTER TABLE crash REKEY",
    "ALTER TABLE crash ROTATE KEY",
    "ALTER SYSTEM ROTATE MASTER KEY",
    "ALTER SYSTEM REKEY",
];

static NEXT_MAINTENANCE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether psql's failure is the server going away (the kill), not an
/// error the server sent.
fn connection_lost(out: &support::Psql) -> bool {
    !out.stderr.contains("ERROR:")
}

/// Runs maintenance statements in turn, at random moments, until `stop`; returns how many of
/// each the server acknowledged. A statement the server answers with an
/// error fails the soak.
fn operator(conninfo: String, stop: Arc<AtomicBool>) -> BTreeMap<&'static str, u64> {
    let mut acked = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(30 + jitter(150)));
        // In turn across the rounds, so each one runs however few the
        // rounds leave time for on a loaded machine.
        let turn = NEXT_MAINTENANCE.fetch_add(1, Ordering::Relaxed);
        let statement = MAINTENANCE[turn % MAINTENANCE.len()];
        let out = psql(&conninfo, statement);
        if out.ok {
            *acked.entry(statement).or_insert(0) += 1;
        } else {
            assert!(
                connection_lost(&out),
                "{statement} failed while the server ran: {}",
                out.stderr
            );
            break;
        }
    }
    acked
}

#[test]
fn acknowledged_rows_survive_repeated_kill_9_of_a_mixed_workload_and_nothing_else_appears() {
    let python = venv_python();
    let mut server = TestServer::start(&[]);
    psql(
        &server.admin(),
        "CREATE TABLE crash (writer BIGINT NOT NULL, i BIGINT NOT NULL, pad TEXT)",
    )
    .expect_ok();
    let mut expect = Expect::default();
    let mut total_acked = 0usize;
    let mut maintenance: BTreeMap<&str, u64> = BTreeMap::new();
    let kills = kills();
    let started = std::time::Instant::now();
    for round in 0..kills {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let writer = round as i64 * 10 + w as i64;
                Command::new(&python)
                    .arg(py_dir().join("crash_writer.py"))
                    .arg(server.port.to_string())
                    .arg(server.certs())
                    .arg(writer.to_string())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("writer")
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let op = {
            let (conninfo, stop) = (server.admin(), stop.clone());
            std::thread::spawn(move || operator(conninfo, stop))
        };
        // Let them work for a random while, then kill -9.
        std::thread::sleep(Duration::from_millis(500 + jitter(1500)));
        let dir = server.crash();
        stop.store(true, Ordering::Relaxed);
        match op.join() {
            Ok(acked) => {
                for (statement, n) in acked {
                    *maintenance.entry(statement).or_insert(0) += n;
                }
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
        for child in writers {
            let out = child.wait_with_output().expect("writer output");
            let text = String::from_utf8_lossy(&out.stdout);
            total_acked += text.lines().filter(|l| l.starts_with("ack")).count();
            read_writer(&text, &mut expect);
        }
        // The directory a kill left verifies as it is, before any recovery.
        let (ok, report) = support::sealdb_verify(&dir.path().join("data"), &[]);
        assert!(
            ok,
            "kill {round}: sealdb verify of the killed server's directory: {report}"
        );
        server = TestServer::start_in(dir, &[]);
        let rows = psql(&server.admin(), "SELECT writer, i FROM crash").expect_ok();
        let found: BTreeSet<(i64, i64)> = rows
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(w, i)| (w.parse().expect("writer"), i.parse().expect("i")))
            .collect();
        let lost: Vec<_> = expect.present.difference(&found).collect();
        assert!(lost.is_empty(), "kill {round}: acknowledged rows lost: {lost:?}");
        let resurrected: Vec<_> = expect.absent.intersection(&found).collect();
        assert!(
            resurrected.is_empty(),
            "kill {round}: deleted rows back: {resurrected:?}"
        );
        let unknown: Vec<_> = found
            .iter()
            .filter(|r| !expect.present.contains(r) && !expect.either.contains(r))
            .collect();
        assert!(unknown.is_empty(), "kill {round}: rows nobody wrote: {unknown:?}");
        // What the in-flight operation did is settled now.
        for row in std::mem::take(&mut expect.either) {
            if found.contains(&row) {
                expect.present.insert(row);
            } else {
                expect.absent.insert(row);
            }
        }
    }
    let dir = server.stop();
    let (ok, report) = support::sealdb_verify(&dir.path().join("data"), &[]);
    assert!(ok, "sealdb verify after the soak: {report}");
    let summary = maintenance
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "crash soak: {kills} kill -9, {total_acked} acknowledged write operations checked, {} rows present at the end, 0 lost; maintenance acknowledged: {summary}; {:.0} s",
        expect.present.len(),
        started.elapsed().as_secs_f64()
    );
    // Progress between kills (a few operations each, more on an idle machine).
    assert!(
        total_acked as u64 > 5 * kills,
        "the workload acknowledged only {total_acked} operations"
    );
    for statement in [
        "CHECKPOINT",
        "ALTER TABLE crash REKEY",
        "ALTER SYSTEM ROTATE MASTER KEY",
    ] {
        assert!(
            maintenance.get(statement).copied().unwrap_or(0) > 0,
            "the soak never ran {statement}: {summary}"
        );
    }
}

/// A server whose process ends at `point` (`SEALDB_CRASH_AT`, debug builds),
/// as `kill -9` would end it there.
fn start_crashing_at(point: &str) -> TestServer {
    start_crashing_with(point, &[])
}

/// The same with more `sealdb start` arguments.
fn start_crashing_with(point: &str, args: &[&str]) -> TestServer {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("sealdb-crashing");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport SEALDB_CRASH_AT='{point}'\nexec '{}' \"$@\"\n",
            support::sealdb_bin()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    TestServer::start_with_binary(dir, &wrapper, args)
}

/// A crash after a transaction wrote rows to a spill file but before it
/// committed leaves nothing (the file is removed at the next start); a
/// crash after the commit reached the log but before the checkpoint that
/// publishes its files in the catalog leaves the whole transaction, and
/// later files never take the names of the ones the log published.
#[test]
fn a_crash_around_a_spilling_commit_keeps_it_whole_or_not_at_all() {
    let args = ["--transaction-spill-bytes", "64KB"];
    let insert = |from: u64| {
        format!(
            "INSERT INTO t SELECT value FROM generate_series({from}, {})",
            from + 29_999
        )
    };
    for (point, kept) in [("spill:after-write", 0u64), ("spill:after-commit", 30_000)] {
        let server = start_crashing_with(point, &args);
        let admin = server.admin();
        psql(&admin, "CREATE TABLE t (n BIGINT NOT NULL)").expect_ok();
        let out = psql(&admin, &insert(1));
        assert!(!out.ok, "{point}: the server ended in the middle of the insert");
        let dir = server
            .exited()
            .unwrap_or_else(|| panic!("{point}: the server is still running"));
        let server = TestServer::start_in(dir, &args);
        let admin = server.admin();
        assert_eq!(
            psql(&admin, "SELECT count(*), count(DISTINCT n) FROM t").expect_ok(),
            format!("{kept}|{kept}\n"),
            "{point}"
        );
        // More spilled commits, a checkpoint and a restart: nothing of the
        // replayed files is overwritten or lost.
        psql(&admin, &insert(100_001)).expect_ok();
        psql(&admin, &insert(200_001)).expect_ok();
        psql(&admin, "CHECKPOINT").expect_ok();
        let dir = server.stop();
        let (ok, report) = support::sealdb_verify(&dir.path().join("data"), &[]);
        assert!(ok, "{point}: {report}");
        let server = TestServer::start_in(dir, &args);
        assert_eq!(
            psql(&server.admin(), "SELECT count(*), count(DISTINCT n) FROM t").expect_ok(),
            format!("{0}|{0}\n", kept + 60_000),
            "{point}"
        );
    }
}

/// A crash in the middle of `ALTER SYSTEM ROTATE MASTER KEY` or `ALTER
/// TABLE ROTATE KEY`, before and after the catalog names the new key:
/// after the restart every acknowledged row reads, new writes work, the
/// data directory verifies, and the key is the old one or the new one.
#[test]
fn a_crash_during_a_key_rotation_leaves_the_old_or_the_new_key_and_every_row() {
    for (point, statement) in [
        ("master-key-rotation:before-catalog", "ALTER SYSTEM ROTATE MASTER KEY"),
        ("master-key-rotation:after-catalog", "ALTER SYSTEM ROTATE MASTER KEY"),
        ("table-key-rotation:before-catalog", "ALTER TABLE t ROTATE KEY"),
        ("table-key-rotation:after-catalog", "ALTER TABLE t ROTATE KEY"),
    ] {
        let server = start_crashing_at(point);
        let admin = server.admin();
        psql(&admin, "CREATE TABLE t (n BIGINT NOT NULL)").expect_ok();
        psql(&admin, "INSERT INTO t SELECT value FROM generate_series(1, 100)").expect_ok();
        psql(&admin, "CHECKPOINT").expect_ok();
        psql(&admin, "INSERT INTO t VALUES (101)").expect_ok();
        let master = psql(&admin, "SELECT key_id FROM sys.encryption_keys WHERE scope = 'master'").expect_ok();
        let out = psql(&admin, statement);
        assert!(!out.ok, "{point}: the server ended in the middle of {statement}");
        let dir = server
            .exited()
            .unwrap_or_else(|| panic!("{point}: the server is still running"));
        let server = TestServer::start_in(dir, &[]);
        let admin = server.admin();
        assert_eq!(
            psql(&admin, "SELECT count(*), sum(n) FROM t").expect_ok(),
            "101|5151\n",
            "{point}"
        );
        psql(&admin, "INSERT INTO t VALUES (102)").expect_ok();
        let versions = psql(
            &admin,
            "SELECT max(version) FROM sys.encryption_keys WHERE scope = 'table public.t'",
        )
        .expect_ok();
        let now = psql(&admin, "SELECT key_id FROM sys.encryption_keys WHERE scope = 'master'").expect_ok();
        match point {
            "table-key-rotation:before-catalog" => assert_eq!(versions, "1\n", "{point}: the old version"),
            "table-key-rotation:after-catalog" => assert_eq!(versions, "2\n", "{point}: the new version"),
            "master-key-rotation:after-catalog" => assert_ne!(now, master, "{point}: the new master key"),
            _ => {}
        }
        let dir = server.stop();
        let (ok, report) = support::sealdb_verify(&dir.path().join("data"), &[]);
        assert!(ok, "{point}: {report}");
    }
}

/// A crash at several points of a REKEY, of `SET (encryption = ...)` and of
/// `ALTER SYSTEM REKEY`: after the restart every acknowledged row reads,
/// the job resumes by itself and finishes, and the directory verifies.
#[test]
fn a_crash_during_a_rekey_resumes_the_job_and_loses_nothing() {
    for (point, statement) in [
        ("rekey:after-step", "ALTER TABLE t REKEY"),
        ("rekey:before-finish", "ALTER TABLE t REKEY"),
        ("rekey:after-finish", "ALTER TABLE t REKEY"),
        (
            "set-encryption:after-catalog",
            "ALTER TABLE t SET (encryption = 'none')",
        ),
        ("system-rekey:before-catalog", "ALTER SYSTEM REKEY"),
        ("system-rekey:after-catalog", "ALTER SYSTEM REKEY"),
        ("system-rekey:after-checkpoint", "ALTER SYSTEM REKEY"),
    ] {
        let server = start_crashing_at(point);
        let admin = server.admin();
        psql(&admin, "CREATE TABLE t (n BIGINT NOT NULL)").expect_ok();
        // Three segments under version 1, rows in the log, then version 2.
        for batch in 0..3 {
            psql(
                &admin,
                &format!(
                    "INSERT INTO t SELECT value FROM generate_series({}, {})",
                    batch * 100 + 1,
                    batch * 100 + 100
                ),
            )
            .expect_ok();
            psql(&admin, "CHECKPOINT").expect_ok();
        }
        psql(&admin, "ALTER TABLE t ROTATE KEY").expect_ok();
        psql(&admin, "INSERT INTO t VALUES (301)").expect_ok();
        // The statement either fails (the crash is in it) or returns before
        // the background job reaches the point.
        let _ = psql(&admin, statement);
        let dir = server
            .exited()
            .unwrap_or_else(|| panic!("{point}: the server is still running"));
        let server = TestServer::start_in(dir, &[]);
        let admin = server.admin();
        assert_eq!(
            psql(&admin, "SELECT count(*), sum(n) FROM t").expect_ok(),
            "301|45451\n",
            "{point}"
        );
        if point.starts_with("rekey") || point.starts_with("set-encryption") {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let state = psql(&admin, "SELECT state FROM sys.jobs WHERE job_id = 1").expect_ok();
                if state == "done\n" {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{point}: the job did not resume: {state}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            assert_eq!(
                psql(&admin, "SELECT current_key_share FROM sys.tables").expect_ok(),
                "1.0\n",
                "{point}: every file is current"
            );
        }
        if point.starts_with("system-rekey") {
            // Finished, or cleanly run again.
            psql(&admin, "ALTER SYSTEM REKEY").expect_ok();
        }
        psql(&admin, "INSERT INTO t VALUES (302)").expect_ok();
        let dir = server.stop();
        let (ok, report) = support::sealdb_verify(&dir.path().join("data"), &[]);
        assert!(ok, "{point}: {report}");
        let server = TestServer::start_in(dir, &[]);
        assert_eq!(
            psql(&server.admin(), "SELECT count(*) FROM t").expect_ok(),
            "302\n",
            "{point}"
        );
    }
}
