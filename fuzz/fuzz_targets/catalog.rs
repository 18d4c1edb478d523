//! The catalog as the open of a data directory reads it. Raw bytes (a
//! damaged or forged file) give an error, never a panic; a body sealed as
//! the server seals it, whatever its JSON, is decoded (header, body, each
//! table's columns and deleted rows) or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealdb_storage::internal;

fuzz_target!(|data: &[u8]| {
    sealdb_fuzz::contain_dependency_panics();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = internal::read_catalog_bytes(rest);
        return;
    }
    let file = internal::catalog_bytes(u64::from(mode >> 1), rest).expect("sealing a body in memory");
    let _ = internal::read_catalog_bytes(&file);
});
