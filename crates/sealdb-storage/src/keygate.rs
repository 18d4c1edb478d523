//! The key gate: whether statements may use the keys held in memory.
//!
//! Unwrapped keys stay in memory while the server runs, so a master key
//! revoked, destroyed or made unreachable on the key server would otherwise
//! go unnoticed until the next start. [`crate::Store::refresh_master_key`]
//! re-reads the master key's state every key-cache period and sets the gate:
//!
//! - Active: open.
//! - Deactivated or Compromised: open, and the store rotates to a new
//!   master-key version, so new data never goes under the retired one.
//! - Destroyed: closed for good; reads and writes of stored tables fail
//!   with an error naming the table, the key and its state.
//! - Unreachable: open while the last good check is younger than the grace
//!   period, closed after it, and open again once a key server answers.
//!
//! System views (`sys.*`) do not pass the gate: an operator can always see
//! why it is closed.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::StorageError;

/// Why the gate is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The key: `master key ID in PROVIDER`, or a table's own key.
    pub key: String,
    /// `destroyed`, or `unreachable` when the key server could not be asked
    /// within the grace period.
    pub state: String,
    /// What was found, and the fix.
    pub detail: String,
}

/// [`Closed::state`] of a destroyed key: the gate stays closed for good.
const DESTROYED: &str = "destroyed";
/// [`Closed::state`] when no key server confirmed the key within the grace.
pub(crate) const UNREACHABLE: &str = "unreachable";

impl Closed {
    /// Whether the key is destroyed (rather than unconfirmed).
    pub fn is_destroyed(&self) -> bool {
        self.state == DESTROYED
    }
}

#[derive(Debug)]
struct GateState {
    closed: Option<Closed>,
    /// When the key provider last confirmed the master key usable.
    last_confirmed: Instant,
    /// The first failed check of the current outage.
    outage_since: Option<Instant>,
}

/// Whether stored data may be read and written with the keys in memory.
#[derive(Debug)]
pub struct KeyGate {
    state: RwLock<GateState>,
}

impl Default for KeyGate {
    fn default() -> Self {
        Self {
            state: RwLock::new(GateState {
                closed: None,
                last_confirmed: Instant::now(),
                outage_since: None,
            }),
        }
    }
}

/// What a refresh of the master key's state found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The key is active; `recovered` when this ends an outage or a closed gate.
    Active {
        /// Whether the gate was closed or the key server unreachable before.
        recovered: bool,
    },
    /// The key was deactivated or compromised on the key server; the store
    /// moved to a new master-key version.
    Rotated {
        /// The retired key.
        from: String,
        /// Its state.
        state: String,
        /// The new key.
        to: String,
    },
    /// The key was deactivated or compromised, and the rotation to a new
    /// version failed (it is retried at the next refresh).
    RotationFailed {
        /// The retired key.
        from: String,
        /// Why.
        error: String,
    },
    /// The key is destroyed: the gate is closed.
    Destroyed {
        /// The key.
        key: String,
    },
    /// The key server could not be reached.
    Unreachable {
        /// Why.
        error: String,
        /// How long since the key was last confirmed.
        since: Duration,
        /// Whether the gate is still open (within the grace period).
        serving: bool,
    },
}

impl KeyGate {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, GateState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, GateState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a statement may use table `table`'s keys.
    pub fn check(&self, table: &str) -> Result<(), StorageError> {
        match &self.read().closed {
            None => Ok(()),
            Some(closed) => Err(StorageError::KeyUnavailable {
                table: table.to_owned(),
                key: closed.key.clone(),
                state: closed.state.clone(),
                detail: closed.detail.clone(),
            }),
        }
    }

    /// Why the gate is closed, if it is.
    pub fn closed(&self) -> Option<Closed> {
        self.read().closed.clone()
    }

    /// Since when the key server has not answered, if it has not.
    pub fn outage(&self) -> Option<Duration> {
        self.read().outage_since.map(|t| t.elapsed())
    }

    /// The key was confirmed usable now; returns whether this ends an
    /// outage or opens a closed gate (a destroyed key never comes back, so
    /// that gate stays closed).
    pub(crate) fn confirmed(&self) -> bool {
        let mut state = self.write();
        let destroyed = state.closed.as_ref().is_some_and(Closed::is_destroyed);
        if destroyed {
            return false;
        }
        let recovered = state.closed.is_some() || state.outage_since.is_some();
        state.closed = None;
        state.outage_since = None;
        state.last_confirmed = Instant::now();
        recovered
    }

    /// The key is destroyed: close for good.
    pub(crate) fn destroyed(&self, key: String) {
        let mut state = self.write();
        state.outage_since = None;
        state.closed = Some(Closed {
            key,
            state: DESTROYED.into(),
            detail: "its data cannot be read or written any more (crypto-shredded); restore the key on the key server if it was destroyed by mistake, then restart sealdb".into(),
        });
    }

    /// The key server could not be asked: keep serving within `grace` of
    /// the last confirmation, close after it. Returns (time since the last
    /// confirmation, whether the gate is open).
    pub(crate) fn unreachable(&self, key: String, error: &str, grace: Duration) -> (Duration, bool) {
        let mut state = self.write();
        if state.closed.as_ref().is_some_and(Closed::is_destroyed) {
            return (state.last_confirmed.elapsed(), false);
        }
        state.outage_since.get_or_insert_with(Instant::now);
        let since = state.last_confirmed.elapsed();
        if since > grace {
            state.closed = Some(Closed {
                key,
                state: UNREACHABLE.into(),
                detail: format!(
                    "no key server has confirmed it for {} s, longer than key-cache-grace-ms ({} ms), so sealdb stopped using the keys it holds ({error}); it resumes by itself when a key server answers",
                    since.as_secs(),
                    grace.as_millis()
                ),
            });
        }
        (since, state.closed.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_served_within_the_grace_period_then_closed_then_recovered() {
        let gate = KeyGate::default();
        assert!(gate.check("t").is_ok());
        let (_, open) = gate.unreachable(
            "master key 1 in kmip:g".into(),
            "connection refused",
            Duration::from_secs(60),
        );
        assert!(open, "within the grace period the gate stays open");
        assert!(gate.check("t").is_ok());
        assert!(gate.outage().is_some());
        let (_, open) = gate.unreachable("master key 1 in kmip:g".into(), "connection refused", Duration::ZERO);
        assert!(!open, "after the grace period the gate closes");
        let err = gate.check("orders").unwrap_err().to_string();
        assert!(
            err.contains("\"orders\"") && err.contains("master key 1 in kmip:g") && err.contains("unreachable"),
            "{err}"
        );
        assert!(
            err.contains("connection refused") && err.contains("resumes by itself"),
            "{err}"
        );
        assert!(gate.confirmed(), "a confirmation ends the outage");
        assert!(gate.check("t").is_ok());
        assert!(gate.outage().is_none());
        assert!(!gate.confirmed(), "nothing to recover from any more");
    }

    #[test]
    fn a_destroyed_key_closes_the_gate_for_good() {
        let gate = KeyGate::default();
        gate.destroyed("master key 7 in local".into());
        let err = gate.check("t").unwrap_err().to_string();
        assert!(
            err.contains("\"t\"") && err.contains("master key 7 in local") && err.contains("destroyed"),
            "{err}"
        );
        assert!(!gate.confirmed());
        assert!(gate.check("t").is_err());
        let (_, open) = gate.unreachable("master key 7 in local".into(), "down", Duration::from_secs(60));
        assert!(!open);
        assert!(gate.check("t").unwrap_err().to_string().contains("destroyed"));
    }
}
