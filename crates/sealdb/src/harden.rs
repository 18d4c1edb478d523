//! What the process does to itself before it touches a key: no core dumps
//! (a core file would hold every key and row in memory, in the clear), and
//! not dumpable, so that another process of the same user can neither
//! attach a debugger nor read its memory through `/proc`.

/// What [`harden`] achieved, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hardening {
    /// The core-file size limit is 0, soft and hard.
    pub(crate) core_dumps_off: bool,
    /// The process is not dumpable (Linux `PR_SET_DUMPABLE` 0).
    pub(crate) not_dumpable: bool,
    /// Why a step did not take, if one did not.
    pub(crate) problems: Vec<String>,
}

/// Disables core dumps and marks the process not dumpable. A step the
/// system refuses is reported, not fatal: the server still starts and says so.
pub(crate) fn harden() -> Hardening {
    let mut problems = Vec::new();
    let zero = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    let core_dumps_off = match rustix::process::setrlimit(rustix::process::Resource::Core, zero) {
        Ok(()) => true,
        Err(e) => {
            problems.push(format!("cannot set the core-file size limit to 0: {e}"));
            false
        }
    };
    let not_dumpable = match rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        Ok(()) => true,
        Err(e) => {
            problems.push(format!("cannot mark the process not dumpable: {e}"));
            false
        }
    };
    Hardening {
        core_dumps_off,
        not_dumpable,
        problems,
    }
}
