//! Key-server chaos, in a test binary of its own so that no other test
//! competes with its timeline (see the test's documentation). Long tier:
//! `./scripts/reliability.sh kmip [SECONDS]` runs it; the test suite does
//! not, as its deterministic parts are tests of their own (`kmip.rs`: an
//! outage of every host, failover, the grace period, recovery;
//! `sealdb-kmip`'s `pykmip.rs`: failover of a kept connection that stops
//! answering).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "support/kmip_sealdb.rs"]
mod kmip_sealdb;
#[path = "support/kmip.rs"]
mod kmip_support;
mod support;

use kmip_sealdb::{config_with, sealdb, wait_for};
use kmip_support::{KmipServer, Relay, certs};
use support::{TestServer, psql};

/// What the chaos test did to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostFate {
    Up,
    Killed,
    Blocked,
}

/// One statement of the chaos workload: when it ran, and how it ended.
struct Ran {
    start: std::time::Instant,
    end: std::time::Instant,
    rotation: bool,
    error: Option<String>,
}

/// Key-server chaos: two PyKMIP hosts of one cluster are killed, restarted,
/// blocked (a relay in front of each drops their packets: connections
/// hang until the client's timeout) and unblocked at random moments for
/// `SEALDB_CHAOS_SECONDS` (default 60), one host at a time, with one
/// outage of both hosts longer than the grace period forced in the
/// middle, while a writer inserts rows and rotates the master key. Then,
/// from the timeline of which hosts were up:
/// - no statement fails while a host is up or the key cache is within its
///   grace period (with margins for the cache's refresh and the client's
///   timeout);
/// - once both hosts have been gone past the grace period, every insert
///   fails closed with the clear error, and service comes back by itself
///   when a host does;
/// - every acknowledged row is there once, no refused row is, and the data
///   directory verifies.
#[test]
#[ignore = "long tier: ./scripts/reliability.sh kmip"]
fn random_kills_restarts_and_blocks_of_two_key_servers_never_fail_a_statement_while_one_answers() {
    use std::time::{Duration, Instant};
    const CACHE: Duration = Duration::from_millis(300);
    const GRACE: Duration = Duration::from_millis(8000);
    const TIMEOUT: Duration = Duration::from_millis(3000); // --timeout-ms of `config_with`
    // How late the gate can close or reopen after the fact: a refresh
    // period plus a timed-out try of each host, and a second of slack.
    const LATE: Duration = CACHE
        .saturating_add(TIMEOUT)
        .saturating_add(TIMEOUT)
        .saturating_add(Duration::from_secs(1));
    let seconds: u64 = std::env::var("SEALDB_CHAOS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);

    let keys = tempfile::tempdir().unwrap();
    let certs = certs(keys.path());
    let first = KmipServer::start(keys.path(), &certs);
    let second = first.peer();
    let relays = [Relay::to(first.port), Relay::to(second.port)];
    let cfg = config_with(
        keys.path(),
        &certs,
        &[relays[0].host(), relays[1].host()],
        "wrap",
        &["--key-cache-ms", "300", "--key-cache-grace-ms", "8000"],
    );
    let server = TestServer::start(&["--config", &cfg]);
    let admin = server.admin();
    psql(&admin, "CREATE TABLE t (id BIGINT NOT NULL)").expect_ok();

    // The writer: inserts numbered rows, and rotates the master key now and then.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (admin, stop) = (admin.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ran = Vec::new();
            let mut acked = Vec::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let rotation = n.is_multiple_of(25);
                let sql = if rotation {
                    "ALTER SYSTEM ROTATE MASTER KEY".to_owned()
                } else {
                    format!("INSERT INTO t VALUES ({n})")
                };
                let start = Instant::now();
                let out = psql(&admin, &sql);
                let end = Instant::now();
                if out.ok && !rotation {
                    acked.push(n);
                }
                ran.push(Ran {
                    start,
                    end,
                    rotation,
                    error: (!out.ok).then(|| out.stderr.clone()),
                });
                std::thread::sleep(Duration::from_millis(50));
            }
            (ran, acked)
        })
    };

    // The chaos: (when, how many hosts answer from then on).
    let begin = Instant::now();
    let mut hosts = [first, second];
    let mut fate = [HostFate::Up, HostFate::Up];
    let mut timeline: Vec<(Instant, usize)> = vec![(begin, 2)];
    let mut faults = 0u32;
    let mut events: Vec<String> = Vec::new();
    let mut note = |what: String| events.push(format!("{:.1} s {what}", begin.elapsed().as_secs_f64()));
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut random = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let total = Duration::from_secs(seconds);
    let forced_at = total * 2 / 5;
    let mut forced = false;
    let up = |fate: &[HostFate; 2]| fate.iter().filter(|f| **f == HostFate::Up).count();
    while begin.elapsed() < total {
        if !forced && begin.elapsed() >= forced_at {
            // Both hosts gone, one killed and one blocked, past the grace period.
            forced = true;
            for (h, how) in [(0, HostFate::Killed), (1, HostFate::Blocked)] {
                if fate[h] != HostFate::Up {
                    continue;
                }
                timeline.push((Instant::now(), up(&fate) - 1));
                if how == HostFate::Killed {
                    hosts[h].kill();
                } else {
                    relays[h].block();
                }
                note(format!("host {h} {how:?} (forced)"));
                fate[h] = how;
                faults += 1;
            }
            std::thread::sleep(GRACE + LATE + Duration::from_secs(4));
        } else {
            std::thread::sleep(Duration::from_millis(800 + random(2500)));
        }
        // Outside the forced outage one host stays up: taking a host down
        // while the other is down brings the other back instead.
        let mut h = random(2) as usize;
        if fate[h] == HostFate::Up && fate[1 - h] != HostFate::Up {
            h = 1 - h;
        }
        match fate[h] {
            HostFate::Up => {
                timeline.push((Instant::now(), up(&fate) - 1));
                if random(2) == 0 {
                    hosts[h].kill();
                    fate[h] = HostFate::Killed;
                } else {
                    relays[h].block();
                    fate[h] = HostFate::Blocked;
                }
                note(format!("host {h} {:?}", fate[h]));
                faults += 1;
            }
            HostFate::Killed => {
                hosts[h].restart();
                fate[h] = HostFate::Up;
                note(format!("host {h} restarted"));
                timeline.push((Instant::now(), up(&fate)));
            }
            HostFate::Blocked => {
                relays[h].unblock();
                fate[h] = HostFate::Up;
                note(format!("host {h} unblocked"));
                timeline.push((Instant::now(), up(&fate)));
            }
        }
    }
    // Everything back, and time for the server to notice.
    for h in 0..2 {
        match fate[h] {
            HostFate::Up => {}
            HostFate::Killed => hosts[h].restart(),
            HostFate::Blocked => relays[h].unblock(),
        }
    }
    timeline.push((Instant::now(), 2));
    std::thread::sleep(LATE);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ran, acked) = writer.join().unwrap();
    let end = Instant::now();

    // The outages of both hosts, and around each the window where the gate
    // may be closed (`maybe`) and where it must be (`surely`).
    let mut outages = Vec::new();
    let mut down_since = None;
    for (at, n) in &timeline {
        match (n, down_since) {
            (0, None) => down_since = Some(*at),
            (n, Some(d)) if *n > 0 => {
                outages.push((d, *at));
                down_since = None;
            }
            _ => {}
        }
    }
    if let Some(d) = down_since {
        outages.push((d, end));
    }
    let up_at = |t: Instant| {
        timeline
            .iter()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, n)| *n)
            .unwrap_or(2)
    };
    let overlaps = |a: Instant, b: Instant, from: Instant, to: Instant| a < to && b > from;
    let mut checked = 0;
    let mut required = 0;
    let mut failed_closed = 0;
    let mut problems = Vec::new();
    let mut surely_windows = 0;
    for (d, r) in &outages {
        if *r > *d + GRACE + LATE + Duration::from_secs(1) {
            surely_windows += 1;
        }
    }
    for s in &ran {
        let maybe_closed = outages.iter().any(|(d, r)| {
            // The last confirmation can be older than the outage by a
            // request timed out on a kept connection to a host that stopped
            // answering, and a connect to the next host: two timeouts.
            let from = *d + GRACE.saturating_sub(LATE);
            *r > from && overlaps(s.start, s.end, from, *r + LATE)
        });
        let surely_closed = outages.iter().any(|(d, r)| s.start >= *d + GRACE + LATE && s.end <= *r);
        // A rotation needs a host for the whole statement, not only the
        // cache; and one whose host fails under it may fail (clearly): its
        // Create is never sent twice, so it does not move to another host.
        let host_throughout = !timeline
            .iter()
            .any(|(at, _)| *at + Duration::from_millis(500) > s.start && *at < s.end + Duration::from_millis(500))
            && up_at(s.start) > 0;
        let must_succeed = !maybe_closed && (!s.rotation || host_throughout);
        checked += 1;
        required += usize::from(must_succeed);
        match (&s.error, must_succeed, surely_closed && !s.rotation) {
            (Some(e), true, _) => problems.push(format!(
                "failed at {:.1} s while a host answered or within the grace period: {e}",
                s.start.duration_since(begin).as_secs_f64()
            )),
            (None, _, true) => problems.push(format!(
                "an insert at {:.1} s succeeded past the grace period of an outage of both hosts",
                s.start.duration_since(begin).as_secs_f64()
            )),
            (Some(e), false, _) if !s.rotation => {
                failed_closed += 1;
                if !(e.contains("is unreachable") && e.contains("resumes by itself")) {
                    problems.push(format!("an insert refused without the clear error: {e}"));
                }
            }
            (Some(e), false, _) => {
                if !e.to_lowercase().contains("kmip") && !e.contains("key server") {
                    problems.push(format!("a rotation failed without naming the key server: {e}"));
                }
            }
            (None, _, _) => {}
        }
    }
    eprintln!(
        "key-server chaos: {seconds} s, {faults} faults injected ({} host events), {} outages of both hosts ({surely_windows} past the grace period), {checked} statements checked ({required} of them while a host answered or within the grace period, none failed), {failed_closed} refused as the gate was closed, {} rows acknowledged",
        timeline.len(),
        outages.len(),
        acked.len()
    );
    assert!(
        problems.is_empty(),
        "{}\nhost events: {}\nserver log:\n{}",
        problems.join("\n"),
        events.join("; "),
        server.stderr()
    );
    assert!(
        surely_windows >= 1,
        "no outage lasted past the grace period: the test proved nothing about failing closed"
    );
    assert!(
        failed_closed >= 1,
        "no insert was refused in the outage past the grace period"
    );
    assert!(
        required * 3 >= checked,
        "most statements fell in the margins: {required} of {checked}"
    );
    // Service is back by itself, and every acknowledged row is there once.
    assert!(
        wait_for(Duration::from_secs(30), || psql(&admin, "INSERT INTO t VALUES (0)").ok),
        "not resumed:\n{}",
        server.stderr()
    );
    let rows = psql(&admin, "SELECT id FROM t WHERE id > 0 ORDER BY id").expect_ok();
    let found: Vec<u64> = rows.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(found, acked, "exactly the acknowledged rows");
    let dir = server.stop();
    let (ok, report) = sealdb(&["verify", "--config", &cfg], Some(&dir.path().join("data")));
    assert!(ok, "sealdb verify: {report}");
}
