//! The config file parser: any text is a config or an error that names
//! the file, never a panic; a config that parses renders back to TOML that
//! parses to the same keys, and merges with flags.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sealdb_config::{Settings, parse_byte_size, parse_duration};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_byte_size("memory-limit", text);
    let _ = parse_duration("key-rotation-period", text);
    let Ok(settings) = Settings::from_toml(text, Path::new("fuzz.toml")) else {
        return;
    };
    let rendered = settings.to_toml().expect("a parsed config renders");
    let again = Settings::from_toml(&rendered, Path::new("rendered.toml")).expect("a rendered config parses");
    assert_eq!(again.to_toml().expect("renders"), rendered, "rendering is not stable");
    let _ = Settings::default().merged_over(&settings);
});
