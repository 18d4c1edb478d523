//! The wire-protocol paths sealdb owns, through a real server running in
//! this process (`sealdb_server::internal::fuzz_wire` says how an input
//! reaches it): SSL negotiation, the startup message, the TLS policy,
//! certificate and SCRAM authentication, `max-connections` and the first
//! messages of a session. A panic in sealdb's code is a finding (the hook
//! aborts); one in a dependency's (pgwire's decoders) must unwind to the
//! connection's containment, which ends that connection only.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        sealdb_fuzz::contain_dependency_panics();
        // libFuzzer's main, unlike Rust's, leaves SIGPIPE at its default
        // (end the process): a write to a connection the server has just
        // closed would end the run, a finding of nothing.
        // SAFETY: setting a signal's disposition to SIG_IGN installs no
        // handler, so no code runs in signal context; it happens once,
        // before the server's threads start.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        // The server starts before the first input, so that its start
        // (seconds in an unoptimized build) does not count against -timeout.
        sealdb_server::internal::start_wire_server();
    },
    |data: &[u8]| sealdb_server::internal::fuzz_wire(data)
);
