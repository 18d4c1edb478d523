//! REKEY through the real server, side by side in one run, on TPC-H
//! LINEITEM (from the `tpchgen` crate):
//!
//! - REKEY throughput over the load of the same data: bytes on disk per
//!   second rewritten by `ALTER TABLE lineitem REKEY` (no throttle) over
//!   bytes on disk per second written by `COPY` + `CHECKPOINT`;
//! - query throughput (TPC-H Q6 through one psql session) while REKEYs run
//!   one after another at the default throttle, over the same with the
//!   server otherwise idle, in alternating windows.
//!
//! Every figure is a ratio of figures measured in this run; absolute
//! numbers are printed for context only.
//!
//! `cargo bench -p sealdb --bench rekey` (scale factor 0.2; set
//! `SEALDB_BENCH_SF`, and `SEALDB_BENCH_WINDOW_SECS` for the query windows).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{LongSession, TestServer, psql};
use tpchgen::generators::LineItemGenerator;

const COLUMNS: &str = "l_orderkey BIGINT NOT NULL, l_partkey BIGINT NOT NULL, l_suppkey BIGINT NOT NULL, \
    l_linenumber INT NOT NULL, l_quantity DECIMAL(15,2) NOT NULL, l_extendedprice DECIMAL(15,2) NOT NULL, \
    l_discount DECIMAL(15,2) NOT NULL, l_tax DECIMAL(15,2) NOT NULL, l_returnflag TEXT NOT NULL, \
    l_linestatus TEXT NOT NULL, l_shipdate DATE NOT NULL, l_commitdate DATE NOT NULL, \
    l_receiptdate DATE NOT NULL, l_shipinstruct TEXT NOT NULL, l_shipmode TEXT NOT NULL, l_comment TEXT NOT NULL";

const Q6: &str = "SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem \
    WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' \
    AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn generate(sf: f64, path: &Path) -> u64 {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("data file"));
    let mut rows = 0;
    for item in LineItemGenerator::new(sf, 1, 1).iter() {
        let line = item.to_string();
        out.write_all(line.trim_end_matches('|').as_bytes()).expect("write");
        out.write_all(b"\n").expect("write");
        rows += 1;
    }
    out.flush().expect("flush");
    rows
}

/// Loads `data` into a new table `name` (COPY, then CHECKPOINT): the time.
fn load(admin: &str, name: &str, data: &Path) -> Duration {
    psql(admin, &format!("CREATE TABLE {name} ({COLUMNS})")).expect_ok();
    let start = Instant::now();
    let copy = format!("\\copy {name} FROM '{}' WITH (DELIMITER '|')", data.display());
    psql(admin, &copy).expect_ok();
    psql(admin, "CHECKPOINT").expect_ok();
    start.elapsed()
}

fn bytes_on_disk(admin: &str, name: &str) -> u64 {
    psql(
        admin,
        &format!("SELECT bytes_on_disk FROM sys.tables WHERE table_name = 'public.{name}'"),
    )
    .expect_ok()
    .trim()
    .parse()
    .expect("bytes")
}

/// ROTATE KEY, then REKEY, waiting until its job is done: the time of the
/// REKEY, to within `poll`.
fn rekey(admin: &str, name: &str, poll: Duration) -> Duration {
    psql(admin, &format!("ALTER TABLE {name} ROTATE KEY")).expect_ok();
    let start = Instant::now();
    psql(admin, &format!("ALTER TABLE {name} REKEY")).expect_ok();
    loop {
        let running = psql(
            admin,
            &format!("SELECT count(*) FROM sys.jobs WHERE table_name = 'public.{name}' AND state = 'running'"),
        )
        .expect_ok();
        if running == "0\n" {
            return start.elapsed();
        }
        std::thread::sleep(poll);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Q6 through one session for `window`: queries per second.
fn q6_rate(session: &mut LongSession, window: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < window {
        let answer = session.query(Q6);
        assert!(!answer.contains("ERROR"), "{answer}");
        n += 1;
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn main() {
    let sf: f64 = env_or("SEALDB_BENCH_SF", 0.2);
    let window = Duration::from_secs(env_or("SEALDB_BENCH_WINDOW_SECS", 8));
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("lineitem.tbl");
    let rows = generate(sf, &data);
    println!("LINEITEM at scale factor {sf}: {rows} rows");

    // 1. REKEY throughput over the load (no throttle).
    let server = TestServer::start(&["--rekey-max-bytes-per-sec", "0"]);
    let admin = server.admin();
    let mut loads = Vec::new();
    let mut rekeys = Vec::new();
    for round in 0..2 {
        let name = format!("lineitem{round}");
        let took = load(&admin, &name, &data);
        let bytes = bytes_on_disk(&admin, &name) as f64;
        loads.push(bytes / took.as_secs_f64());
        println!(
            "  load  {name}: {:.2} s, {:.1} MB on disk",
            took.as_secs_f64(),
            bytes / 1e6
        );
        for _ in 0..2 {
            let took = rekey(&admin, &name, Duration::from_millis(10));
            rekeys.push(bytes / took.as_secs_f64());
            println!("  rekey {name}: {:.2} s", took.as_secs_f64());
        }
    }
    drop(server);

    // 2. Q6 throughput while REKEYs run at the default throttle.
    let server = TestServer::start(&[]);
    let admin = server.admin();
    load(&admin, "lineitem", &data);
    let mut session = LongSession::open(&admin);
    q6_rate(&mut session, Duration::from_secs(2)); // warm up
    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let rate = q6_rate(&mut session, window);
        println!("  Q6 idle: {rate:.1} queries/s");
        idle.push(rate);
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, conn) = (stop.clone(), admin.clone());
        let rekeying = std::thread::spawn(move || {
            let mut n = 0;
            while !flag.load(Ordering::Acquire) {
                // Each poll is a TLS connection: not so often that polling
                // itself weighs on the queries measured meanwhile.
                rekey(&conn, "lineitem", Duration::from_millis(250));
                n += 1;
            }
            n
        });
        let rate = q6_rate(&mut session, window);
        stop.store(true, Ordering::Release);
        let n = rekeying.join().expect("rekey thread");
        println!("  Q6 during REKEY: {rate:.1} queries/s ({n} REKEYs ran)");
        busy.push(rate);
    }
    let rekey_rate = median(rekeys);
    let load_rate = median(loads);
    println!("ratios (medians of this run)");
    println!(
        "  REKEY throughput / COPY+CHECKPOINT throughput: {:.3}   (goal >= 0.7; {:.1} MB/s vs {:.1} MB/s of bytes on disk)",
        rekey_rate / load_rate,
        rekey_rate / 1e6,
        load_rate / 1e6
    );
    println!(
        "  Q6 throughput during REKEY (default throttle) / idle: {:.3}   (goal >= 0.8; {:.1} vs {:.1} queries/s)",
        median(busy.clone()) / median(idle.clone()),
        median(busy),
        median(idle)
    );
}
