//! A disk that fills up under the real server: the writer gets SQLSTATE
//! 53100 with a message that names the cause, reads keep working, nothing
//! acknowledged is lost (also across `kill -9`), and writes and checkpoints
//! succeed again once space returns. Runs on a small tmpfs mounted by the
//! test (needs root, like the CI machine); unmounted when done.

mod support;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use std::path::Path;
use std::time::Duration;

use support::{TestServer, psql, sealdb_verify};
use tmpfs::{Tmpfs, is_root};

/// One statement through psql (SQLSTATEs in its errors): whether it
/// succeeded, and all it printed.
fn verbose(conninfo: &str, sql: &str) -> (bool, String) {
    let out = psql(conninfo, sql);
    let text = format!("{}{}", out.stdout, out.stderr);
    (out.ok && !text.contains("ERROR"), text)
}

/// A server whose data directory is on a fresh tmpfs of its own, with an
/// empty table `t (id, pad)`.
fn server_on_tmpfs(label: &str) -> (Tmpfs, TestServer) {
    let fs = Tmpfs::mount("64m", label);
    let dir = tempfile::Builder::new()
        .prefix("sealdb")
        .tempdir_in(&fs.0)
        .expect("tempdir on the tmpfs");
    let server = TestServer::start_in(dir, &[]);
    psql(
        &server.admin(),
        "CREATE TABLE t (id BIGINT NOT NULL, pad TEXT NOT NULL)",
    )
    .expect_ok();
    (fs, server)
}

fn count(conninfo: &str) -> u64 {
    psql(conninfo, "SELECT count(*) FROM t")
        .expect_ok()
        .trim()
        .parse()
        .expect("a count")
}

/// Rows `first..first+n` with 1 KiB of padding each: about 1 MiB a statement.
fn insert(first: u64, n: u64) -> String {
    format!(
        "INSERT INTO t SELECT i, repeat(md5(i::text), 32) FROM generate_series({first}, {}) AS s(i)",
        first + n - 1
    )
}

/// Writes `path` until the disk has no byte left.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.write_all(&[0u8; 512]);
    let _ = file.write_all(&[0u8; 1]);
    let _ = file.sync_all();
}

#[test]
fn a_full_disk_fails_writes_with_53100_keeps_reads_and_acknowledged_rows_and_recovers_when_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let (fs, server) = server_on_tmpfs("full-disk");
    let admin = server.admin();

    // Leave about 6 MiB: a filler file takes the rest of the disk.
    let filler = fs.0.join("filler");
    let room = 6u64 << 20;
    let fill = fs.available().saturating_sub(room);
    std::fs::write(&filler, vec![0u8; usize::try_from(fill).expect("fits")]).expect("filler");

    let mut acknowledged = 0u64;
    let mut failure = None;
    for _ in 0..64 {
        let (ok, text) = verbose(&admin, &insert(acknowledged + 1, 1000));
        if ok {
            acknowledged += 1000;
        } else {
            failure = Some(text);
            break;
        }
    }
    let failure = failure.expect("the disk filled up");
    assert!(
        failure.contains("53100") && failure.contains("disk is full"),
        "the writer is told the disk is full (53100) and what to do:\n{failure}"
    );
    assert!(acknowledged > 0, "some writes fitted before the disk filled");
    assert_eq!(
        count(&admin),
        acknowledged,
        "reads keep working and show what was acknowledged"
    );

    // A checkpoint on the full disk fails clearly and loses nothing.
    let (ok, text) = verbose(&admin, "CHECKPOINT");
    if !ok {
        assert!(text.contains("53100") && text.contains("disk is full"), "{text}");
    }
    assert_eq!(count(&admin), acknowledged);

    // Space returns: writes and checkpoints work again, without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let (ok, text) = verbose(&admin, &insert(acknowledged + 1, 1000));
    assert!(ok, "a write after space returned: {text}");
    acknowledged += 1000;
    let (ok, text) = verbose(&admin, "CHECKPOINT");
    assert!(ok, "a checkpoint after space returned: {text}");
    assert_eq!(count(&admin), acknowledged);
    let distinct = psql(&admin, "SELECT count(DISTINCT id), min(id), max(id) FROM t").expect_ok();
    assert_eq!(distinct.trim(), format!("{acknowledged}|1|{acknowledged}"));

    // kill -9, restart: exactly the acknowledged rows, and every file sound.
    let dir = server.crash();
    let data = dir.path().join("data");
    let server = TestServer::start_in(dir, &[]);
    assert_eq!(count(&server.admin()), acknowledged);
    let dir = server.stop();
    let (ok, report) = sealdb_verify(&data, &[]);
    assert!(ok, "sealdb verify after the full disk:\n{report}");
    drop(dir);
    std::thread::sleep(Duration::from_millis(50));
}

#[test]
fn a_server_restarted_on_a_full_disk_serves_reads_and_recovers_when_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let (fs, server) = server_on_tmpfs("full-at-start");
    let admin = server.admin();
    psql(&admin, &insert(1, 2000)).expect_ok();
    // Crash with the rows only in the log, then take every free byte.
    let dir = server.crash();
    let filler = fs.0.join("filler");
    fill_up(&filler);

    let server = TestServer::try_start_in(dir, &[])
        .unwrap_or_else(|e| panic!("a full disk must not keep the server from starting: {e}"));
    let admin = server.admin();
    assert_eq!(count(&admin), 2000, "reads work on a full disk");
    let (ok, text) = verbose(&admin, &insert(2001, 1000));
    assert!(!ok && text.contains("53100"), "writes fail clearly: {text}");

    std::fs::remove_file(&filler).expect("remove filler");
    let (ok, text) = verbose(&admin, &insert(2001, 1000));
    assert!(ok, "a write after space returned: {text}");
    assert_eq!(count(&admin), 3000);
}

/// Every file under `dir` with its length and contents, to show that a
/// refused start changed nothing.
fn contents(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = support::files_under(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).expect("readable");
            (f, bytes)
        })
        .collect();
    files.sort();
    files
}

fn remount(fs: &Tmpfs, mode: &str) {
    let status = std::process::Command::new("mount")
        .args(["-o", &format!("remount,{mode}")])
        .arg(&fs.0)
        .status()
        .expect("mount");
    assert!(status.success(), "remount {mode}");
}

#[test]
fn a_read_only_data_directory_is_refused_at_start_with_a_clear_error_and_verifies_as_it_is() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let (fs, server) = server_on_tmpfs("read-only");
    psql(&server.admin(), &insert(1, 100)).expect_ok();
    let dir = server.stop();
    let data = dir.path().join("data");
    let before = contents(&data);
    remount(&fs, "ro");

    let mut cmd = std::process::Command::new(support::sealdb_bin());
    cmd.arg("start")
        .arg("--data")
        .arg(&data)
        .arg("--port")
        .arg(support::free_port().to_string())
        .env("SEALDB_LOG", "info");
    let out = support::run_with_timeout(cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "sealdb started on a read-only data directory:\n{text}"
    );
    assert!(
        text.contains(&data.display().to_string()) && text.contains("read-only"),
        "the error names the directory and the cause:\n{text}"
    );
    assert!(
        text.contains("read-write") || text.contains("writable"),
        "the error says what to do:\n{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    // A read-only copy still verifies: `sealdb verify` writes nothing.
    let (ok, report) = sealdb_verify(&data, &[]);
    assert!(ok, "sealdb verify on the read-only directory:\n{report}");

    remount(&fs, "rw");
    assert!(
        contents(&data) == before,
        "the refused start changed the data directory"
    );
    let server = TestServer::start_in(dir, &[]);
    assert_eq!(
        count(&server.admin()),
        100,
        "every row is there once it is writable again"
    );
}
