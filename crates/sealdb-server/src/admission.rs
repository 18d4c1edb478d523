//! Who gets a connection slot, before and after authentication.
//!
//! A connection that has not authenticated yet costs the server a TLS
//! handshake and a task, and proves nothing: it gets a slot among
//! `max-unauthenticated-connections`, at most
//! `max-unauthenticated-per-address` of them from one address, and
//! `handshake-timeout-ms` to authenticate, after which it is closed. Past
//! either limit it is closed at once, before any TLS work. Once the client
//! has authenticated, its session takes one of `max-connections`, the last
//! `superuser-reserved-connections` of which only administrators may take
//! (PostgreSQL's `superuser_reserved_connections`): a flood of silent or
//! half-open connections can neither fill the sessions' slots nor keep an
//! administrator out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of unauthenticated connections.
#[derive(Debug)]
pub(crate) struct Doorway {
    slots: Arc<Semaphore>,
    per_address: usize,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// An unauthenticated connection's slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct DoorwaySlot {
    _permit: OwnedSemaphorePermit,
    address: IpAddr,
    by_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turned {
    /// Every unauthenticated slot is taken.
    Full,
    /// This address has its share of unauthenticated slots.
    AddressFull,
}

impl Doorway {
    pub(crate) fn new(slots: usize, per_address: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            per_address: per_address.max(1),
            by_address: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for a new connection from `address`, or why there is none.
    pub(crate) fn enter(&self, address: IpAddr) -> Result<DoorwaySlot, Turned> {
        let address = canonical(address);
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| Turned::Full)?;
        let mut counts = self.by_address.lock().map_err(|_| Turned::Full)?;
        let count = counts.entry(address).or_insert(0);
        if *count >= self.per_address {
            return Err(Turned::AddressFull);
        }
        *count += 1;
        Ok(DoorwaySlot {
            _permit: permit,
            address,
            by_address: self.by_address.clone(),
        })
    }
}

impl Drop for DoorwaySlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.by_address.lock()
            && let Some(count) = counts.get_mut(&self.address)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// An IPv4 client seen through an IPv6 socket is the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// Cancel requests each client address may send per second. A cancel
/// request carries a 32-bit secret (the protocol's), so guessing one takes
/// billions of tries: bounded here, a guess takes years.
pub(crate) const CANCELS_PER_SECOND_PER_ADDRESS: u32 = 20;

/// Counts cancel requests per address over one-second windows.
#[derive(Debug, Default)]
pub(crate) struct CancelBudget {
    windows: Mutex<HashMap<IpAddr, (std::time::Instant, u32)>>,
}

impl CancelBudget {
    /// Whether `address` may send one more cancel request now.
    pub(crate) fn take(&self, address: IpAddr) -> bool {
        let now = std::time::Instant::now();
        let Ok(mut windows) = self.windows.lock() else {
            return false;
        };
        if windows.len() > 10_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start).as_secs() < 1);
        }
        let (start, count) = windows.entry(canonical(address)).or_insert((now, 0));
        if now.duration_since(*start).as_secs() >= 1 {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= CANCELS_PER_SECOND_PER_ADDRESS
    }
}

/// Whether a newly authenticated session may start, given how many
/// sessions there are.
pub(crate) fn session_slot(
    sessions: usize,
    max_connections: usize,
    reserved: usize,
    superuser: bool,
) -> Result<(), String> {
    if sessions >= max_connections {
        return Err(format!(
            "sorry, too many clients already: max-connections = {max_connections} is reached; retry later or raise max-connections"
        ));
    }
    let reserved = reserved.min(max_connections.saturating_sub(1));
    if !superuser && sessions >= max_connections - reserved {
        return Err(format!(
            "remaining connection slots are reserved for administrators (superuser-reserved-connections = {reserved} of max-connections = {max_connections}); retry later or raise max-connections"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_its_share_and_slots_come_back() {
        let door = Doorway::new(3, 2);
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let first = door.enter(a).expect("first");
        let _second = door.enter(a).expect("second");
        assert_eq!(door.enter(a).err(), Some(Turned::AddressFull));
        let _third = door.enter(b).expect("another address");
        assert_eq!(door.enter(b).err(), Some(Turned::Full));
        drop(first);
        assert!(door.enter(a).is_ok(), "a slot given back is free again");
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("address");
        assert_eq!(canonical(mapped), a);
    }

    #[test]
    fn the_last_slots_are_for_administrators() {
        assert!(session_slot(0, 3, 1, false).is_ok());
        assert!(session_slot(1, 3, 1, false).is_ok());
        assert!(
            session_slot(2, 3, 1, false)
                .unwrap_err()
                .contains("reserved for administrators")
        );
        assert!(session_slot(2, 3, 1, true).is_ok());
        assert!(session_slot(3, 3, 1, true).unwrap_err().contains("too many clients"));
        // More reserved than there are slots leaves one for everyone.
        assert!(session_slot(0, 1, 5, false).is_ok());
    }
}
