//! TPC-H LINEITEM through the real server, side by side in one run:
//!
//! - COPY bulk-load throughput into an encrypted table over the same load
//!   into a table created `WITH (encryption = 'none')`;
//! - TPC-H Q1 and Q6 on the encrypted table over the same queries on the
//!   `none` table (after a CHECKPOINT, so both read Parquet segments);
//! - the same Q1 and Q6 through psql against PostgreSQL 15 on this machine
//!   (when `postgres`/`initdb` are installed), as a speed-up of sealdb.
//!
//! Data comes from the `tpchgen` crate. Every figure is a ratio of medians
//! measured in this run; absolute times are printed for context only.
//!
//! `cargo bench -p sealdb --bench tpch` (scale factor 1; set
//! `SEALDB_BENCH_SF=0.1` for a quick run, `SEALDB_BENCH_ROUNDS` for more
//! query rounds).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::TestServer;
use tpchgen::generators::LineItemGenerator;

const COLUMNS: &str = "l_orderkey BIGINT NOT NULL, l_partkey BIGINT NOT NULL, l_suppkey BIGINT NOT NULL, \
    l_linenumber INT NOT NULL, l_quantity DECIMAL(15,2) NOT NULL, l_extendedprice DECIMAL(15,2) NOT NULL, \
    l_discount DECIMAL(15,2) NOT NULL, l_tax DECIMAL(15,2) NOT NULL, l_returnflag TEXT NOT NULL, \
    l_linestatus TEXT NOT NULL, l_shipdate DATE NOT NULL, l_commitdate DATE NOT NULL, \
    l_receiptdate DATE NOT NULL, l_shipinstruct TEXT NOT NULL, l_shipmode TEXT NOT NULL, l_comment TEXT NOT NULL";

const Q1: &str = "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base_price, \
    sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price, \
    sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge, avg(l_quantity) AS avg_qty, \
    avg(l_extendedprice) AS avg_price, avg(l_discount) AS avg_disc, count(*) AS count_order \
    FROM TABLE WHERE l_shipdate <= DATE '1998-12-01' - INTERVAL '90' DAY \
    GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus";

const Q6: &str = "SELECT sum(l_extendedprice * l_discount) AS revenue FROM TABLE \
    WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' \
    AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// LINEITEM as `|`-separated text (PostgreSQL COPY text format).
fn generate(sf: f64, path: &Path) -> (u64, u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("data file"));
    let mut rows = 0;
    for item in LineItemGenerator::new(sf, 1, 1).iter() {
        let line = item.to_string();
        out.write_all(line.trim_end_matches('|').as_bytes()).expect("write");
        out.write_all(b"\n").expect("write");
        rows += 1;
    }
    out.flush().expect("flush");
    (rows, std::fs::metadata(path).expect("size").len())
}

/// Runs `sql` (or a `\copy` meta-command) through psql; the wall time,
/// connection set-up included (negligible against a bulk load).
fn timed_psql(conninfo: &str, sql: &str) -> Duration {
    let start = Instant::now();
    run_psql(conninfo, &[sql]);
    start.elapsed()
}

/// Runs a query through psql and returns the time psql's `\timing`
/// reports for it: the server's work and the result transfer, without the
/// connection set-up (TLS and authentication for sealdb, neither for the
/// local PostgreSQL).
fn query_time(conninfo: &str, sql: &str) -> Duration {
    let out = run_psql(conninfo, &["\\timing on", sql]);
    let ms = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Time: "))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no timing in psql's output:\n{out}"));
    Duration::from_secs_f64(ms / 1000.0)
}

fn run_psql(conninfo: &str, commands: &[&str]) -> String {
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo).args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]);
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let out = cmd.stderr(Stdio::piped()).output().expect("psql");
    assert!(
        out.status.success(),
        "psql failed on {commands:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A PostgreSQL 15 cluster in a temporary directory, run as `nobody`
/// (PostgreSQL refuses root), stopped on drop.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    as_root: bool,
}

impl Postgres {
    fn start() -> Option<Self> {
        let initdb = which("initdb")?;
        let pg_ctl = which("pg_ctl")?;
        let dir = tempfile::tempdir().ok()?;
        let as_root = Command::new("id").arg("-u").output().ok()?.stdout.starts_with(b"0");
        let data = dir.path().join("pg");
        let run = |program: &Path, args: &[&str]| -> bool {
            let mut cmd = if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "nobody", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            };
            cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
            cmd.status().map(|s| s.success()).unwrap_or(false)
        };
        if as_root {
            let _ = Command::new("chown").arg("nobody").arg(dir.path()).status();
        }
        let data_s = data.to_string_lossy().into_owned();
        if !run(&initdb, &["-D", &data_s, "-U", "bench", "--auth=trust", "--no-sync"]) {
            return None;
        }
        let port = support::free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c shared_buffers=2GB -c max_parallel_workers_per_gather=2 -c unix_socket_directories=''"
        );
        let log = dir.path().join("pg.log").to_string_lossy().into_owned();
        if !run(&pg_ctl, &["-D", &data_s, "-o", &options, "-l", &log, "-w", "start"]) {
            return None;
        }
        Some(Self { dir, port, as_root })
    }

    fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=bench dbname=postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(pg_ctl) = which("pg_ctl") {
            let data = self.dir.path().join("pg");
            let mut cmd = if self.as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "nobody", "--"]).arg(pg_ctl);
                c
            } else {
                Command::new(pg_ctl)
            };
            let _ = cmd
                .arg("-D")
                .arg(data)
                .args(["-m", "fast", "stop"])
                .stdout(Stdio::null())
                .status();
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let out = Command::new("which").arg(program).output().ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn main() {
    let sf: f64 = env_or("SEALDB_BENCH_SF", 1.0);
    let rounds: usize = env_or("SEALDB_BENCH_ROUNDS", 5);
    let work = tempfile::tempdir().expect("tempdir");
    let data_file = work.path().join("lineitem.tbl");
    let (rows, bytes) = generate(sf, &data_file);
    let data_s = data_file.to_string_lossy().into_owned();
    println!(
        "TPC-H SF {sf}: lineitem {rows} rows, {:.0} MB of text",
        bytes as f64 / 1e6
    );

    let server = TestServer::start(&[]);
    let admin = server.admin();
    let copy = |table: &str| format!("\\copy {table} FROM '{data_s}' WITH (DELIMITER '|')");

    // COPY: two rounds, alternating which table goes first.
    let mut load = std::collections::BTreeMap::<&str, Vec<Duration>>::new();
    for round in 0..2 {
        let order: [&str; 2] = if round % 2 == 0 {
            ["enc", "none"]
        } else {
            ["none", "enc"]
        };
        for kind in order {
            let table = if round == 0 {
                format!("lineitem_{kind}")
            } else {
                format!("scratch_{kind}")
            };
            let encryption = if kind == "enc" { "aes-256-gcm" } else { "none" };
            timed_psql(
                &admin,
                &format!("CREATE TABLE {table} ({COLUMNS}) WITH (encryption = '{encryption}')"),
            );
            let took = timed_psql(&admin, &copy(&table));
            println!("  COPY into {table}: {:.2} s", secs(took));
            load.entry(kind).or_default().push(took);
        }
    }
    timed_psql(&admin, "DROP TABLE scratch_enc");
    timed_psql(&admin, "DROP TABLE scratch_none");
    let start = Instant::now();
    timed_psql(&admin, "CHECKPOINT");
    println!(
        "  CHECKPOINT (both tables into segments): {:.2} s",
        secs(start.elapsed())
    );

    // Q1, Q6: warm once, then alternate.
    let mut times = std::collections::BTreeMap::<(&str, &str), Vec<Duration>>::new();
    for (qname, q) in [("Q1", Q1), ("Q6", Q6)] {
        for kind in ["enc", "none"] {
            query_time(&admin, &q.replace("TABLE", &format!("lineitem_{kind}")));
        }
        for round in 0..rounds {
            let order: [&str; 2] = if round % 2 == 0 {
                ["enc", "none"]
            } else {
                ["none", "enc"]
            };
            for kind in order {
                let took = query_time(&admin, &q.replace("TABLE", &format!("lineitem_{kind}")));
                times.entry((qname, kind)).or_default().push(took);
            }
        }
    }

    println!();
    println!("ratios (higher is better for sealdb-encrypted; medians of this run)");
    let enc_load = median(load["enc"].clone());
    let none_load = median(load["none"].clone());
    println!(
        "  COPY throughput, encrypted / none: {:.3}   (goal >= 0.90; {:.2} s vs {:.2} s, {:.0} MB/s encrypted)",
        secs(none_load) / secs(enc_load),
        secs(enc_load),
        secs(none_load),
        bytes as f64 / 1e6 / secs(enc_load)
    );
    for q in ["Q1", "Q6"] {
        let e = median(times[&(q, "enc")].clone());
        let n = median(times[&(q, "none")].clone());
        println!(
            "  {q} throughput, encrypted / none: {:.3}   (goal >= 0.95; {:.3} s vs {:.3} s)",
            secs(n) / secs(e),
            secs(e),
            secs(n)
        );
    }

    match Postgres::start() {
        None => println!("  PostgreSQL comparison skipped: initdb/pg_ctl not found or the cluster did not start"),
        Some(pg) => {
            let conn = pg.conninfo();
            timed_psql(&conn, &format!("CREATE TABLE lineitem ({COLUMNS})"));
            let took = timed_psql(&conn, &copy("lineitem"));
            println!("  PostgreSQL 15 COPY: {:.2} s", secs(took));
            timed_psql(&conn, "VACUUM ANALYZE lineitem");
            for (qname, q) in [("Q1", Q1), ("Q6", Q6)] {
                let pg_q = q.replace("TABLE", "lineitem");
                let ours = q.replace("TABLE", "lineitem_enc");
                query_time(&conn, &pg_q);
                let mut pg_times = Vec::new();
                let mut our_times = Vec::new();
                for _ in 0..rounds.min(3) {
                    pg_times.push(query_time(&conn, &pg_q));
                    our_times.push(query_time(&admin, &ours));
                }
                let (p, o) = (median(pg_times), median(our_times));
                println!(
                    "  {qname} sealdb (encrypted) speed-up over PostgreSQL 15: {:.2}x   (goal >= 5x; {:.3} s vs {:.3} s)",
                    secs(p) / secs(o),
                    secs(o),
                    secs(p)
                );
            }
        }
    }
}
