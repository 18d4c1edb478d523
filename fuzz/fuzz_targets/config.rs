//! The config file parser: any text is a config or an error that names
//! the file, never a panic; a config that parses renders back to TOML that
//! parses to the same keys, and merges with flags.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sealdb_config::internal::fuzz_config(data));
