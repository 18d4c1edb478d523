//! The statements sealdb parses itself (users, grants, keys, session and
//! transaction control), on any text a client sends: a statement, `None`
//! (left to DataFusion) or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sealdb_statements::parse(sql);
});
