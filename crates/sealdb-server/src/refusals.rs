//! Failed logins in the audit log, bounded.
//!
//! Every refused login used to be a record, fsynced, with a user name of
//! up to 10 KB: a client that never authenticates could grow the audit
//! log, and the disk, without bound. Now the first refusal from an address
//! in each interval (`audit-failed-login-interval`) is written at once;
//! the others from that address in the same interval are counted and
//! written as one record with their count when the interval ends. Names
//! in records are cut to [`NAME_MAX`] characters. At most
//! [`ADDRESSES_MAX`] addresses are followed at a time; refusals from
//! others are counted together.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Characters of a client-chosen name kept in an audit record.
pub(crate) const NAME_MAX: usize = 64;
/// Addresses whose refusals are counted apart.
const ADDRESSES_MAX: usize = 10_000;
/// Distinct user names listed in an aggregated record.
const NAMES_LISTED: usize = 8;

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Write it now: the first from its address in this interval.
    Write,
    /// Counted; written with the others when the interval ends.
    Counted,
}

/// Refusals counted per address over an interval.
#[derive(Debug)]
pub(crate) struct RefusalLedger {
    interval: Duration,
    windows: Mutex<HashMap<Option<IpAddr>, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    counted: u64,
    users: BTreeSet<String>,
    last_reason: String,
}

/// One aggregated record to write.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Aggregate {
    /// The address, or `None` for the addresses past [`ADDRESSES_MAX`].
    pub(crate) address: Option<IpAddr>,
    /// Refusals counted and not written.
    pub(crate) count: u64,
    /// Some of the user names they asked for.
    pub(crate) users: Vec<String>,
    /// The reason of the last one.
    pub(crate) last_reason: String,
}

impl RefusalLedger {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Notes a refusal of `user` from `address`.
    pub(crate) fn note(&self, address: IpAddr, user: &str, reason: &str) -> Refusal {
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return Refusal::Counted;
        };
        let key = if windows.contains_key(&Some(address)) || windows.len() < ADDRESSES_MAX {
            Some(address)
        } else {
            None
        };
        match windows.get_mut(&key) {
            Some(window) => {
                window.counted += 1;
                if window.users.len() < NAMES_LISTED {
                    window.users.insert(truncated(user));
                }
                window.last_reason = truncated_to(reason, 4 * NAME_MAX);
                Refusal::Counted
            }
            None => {
                windows.insert(
                    key,
                    Window {
                        started: now,
                        counted: 0,
                        users: BTreeSet::new(),
                        last_reason: String::new(),
                    },
                );
                Refusal::Write
            }
        }
    }

    /// The windows whose interval has ended, as records to write (those
    /// that counted nothing are only closed).
    pub(crate) fn ended(&self) -> Vec<Aggregate> {
        let now = Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        windows.retain(|address, window| {
            if now.duration_since(window.started) < self.interval {
                return true;
            }
            if window.counted > 0 {
                out.push(Aggregate {
                    address: *address,
                    count: window.counted,
                    users: std::mem::take(&mut window.users).into_iter().collect(),
                    last_reason: std::mem::take(&mut window.last_reason),
                });
            }
            false
        });
        out
    }

    /// How often [`Self::ended`] should be asked.
    pub(crate) fn tick(&self) -> Duration {
        (self.interval / 4).max(Duration::from_millis(100))
    }
}

/// `name` cut to [`NAME_MAX`] characters, saying how long it was.
pub(crate) fn truncated(name: &str) -> String {
    truncated_to(name, NAME_MAX)
}

fn truncated_to(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}... ({} bytes)", text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_of_an_interval_is_written_and_the_rest_counted_into_one_record() {
        let ledger = RefusalLedger::new(Duration::from_millis(50));
        let a: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(ledger.note(a, "x", "no"), Refusal::Write);
        for i in 0..100 {
            assert_eq!(ledger.note(a, &format!("user{i}"), "no"), Refusal::Counted);
        }
        assert_eq!(ledger.note([10, 0, 0, 2].into(), "y", "no"), Refusal::Write);
        assert!(ledger.ended().is_empty(), "the interval has not ended");
        std::thread::sleep(Duration::from_millis(60));
        let ended = ledger.ended();
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].count, 100);
        assert_eq!(ended[0].users.len(), NAMES_LISTED);
        assert_eq!(ledger.note(a, "x", "no"), Refusal::Write, "a new interval");
    }

    #[test]
    fn long_names_are_cut() {
        let long = "n".repeat(10_000);
        let cut = truncated(&long);
        assert!(cut.len() < 100, "{cut}");
        assert!(cut.ends_with("(10000 bytes)"));
        assert_eq!(truncated("alice"), "alice");
    }
}
