//! The catalog as the open of a data directory reads it. Raw bytes (a
//! damaged or forged file) give an error, never a panic; a body sealed as
//! the server seals it, whatever its JSON, is decoded (header, body, each
//! table's columns and deleted rows) or refused, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sealdb_fuzz::contain_dependency_panics();
    let _ = sealdb_storage::internal::fuzz_catalog(data);
});
