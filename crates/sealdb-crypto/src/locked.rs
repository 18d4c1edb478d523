//! Key memory locked into RAM, where the system allows it.
//!
//! Every [`crate::Key256`] keeps its bytes in a heap allocation of its own
//! (so that moving a key copies a pointer, not the secret), and the pages
//! under that allocation are locked with `mlock`, so that the kernel never
//! writes them to swap. A locked page stays locked for the life of the
//! process: pages are shared with other allocations, so unlocking one when
//! its key is dropped could unlock another key's bytes on the same page.
//! Small allocations come from few pages, so the locked set stays small.
//!
//! When the system refuses (`ulimit -l` too low, no `CAP_IPC_LOCK`), keys
//! still work, unlocked, and [`status`] says why, once, for the server's
//! log and `sys.security_status`.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// What locking key memory achieved so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockStatus {
    /// Every page that held a key is locked (`pages` of them).
    Locked {
        /// Pages locked.
        pages: usize,
    },
    /// The system refused to lock a page: keys are no longer locked.
    Refused {
        /// The system's reason, and the fix.
        reason: String,
    },
}

struct Pages {
    locked: BTreeSet<usize>,
    refused: Option<String>,
}

static PAGES: Mutex<Pages> = Mutex::new(Pages {
    locked: BTreeSet::new(),
    refused: None,
});

fn pages() -> std::sync::MutexGuard<'static, Pages> {
    // The set stays whole across a panic elsewhere: take it as it is.
    PAGES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locks the pages under `bytes` (a key's allocation) if they are not yet.
pub(crate) fn lock(bytes: &[u8]) {
    let size = region::page::size();
    let start = bytes.as_ptr() as usize / size;
    let end = (bytes.as_ptr() as usize + bytes.len().max(1) - 1) / size;
    let mut pages = pages();
    if pages.refused.is_some() {
        return;
    }
    for page in start..=end {
        if pages.locked.contains(&page) {
            continue;
        }
        match region::lock((page * size) as *const u8, size) {
            Ok(guard) => {
                // Never unlocked: see the module's documentation.
                std::mem::forget(guard);
                pages.locked.insert(page);
            }
            Err(e) => {
                pages.refused = Some(format!(
                    "mlock refused ({e}): raise the locked-memory limit (ulimit -l, or LimitMEMLOCK= in a systemd unit) or grant CAP_IPC_LOCK"
                ));
                return;
            }
        }
    }
}

/// Whether key memory is locked.
pub fn status() -> LockStatus {
    let pages = pages();
    match &pages.refused {
        Some(reason) => LockStatus::Refused { reason: reason.clone() },
        None => LockStatus::Locked {
            pages: pages.locked.len(),
        },
    }
}
