//! The statements sealdb parses itself (users, grants, keys, session and
//! transaction control), on any text a client sends: a statement, `None`
//! (left to DataFusion) or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealdb_statements::internal::fuzz_statements(data));
