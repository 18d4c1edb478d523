//! Shared by the fuzz targets.

use std::sync::Once;

/// sealdb runs the decoders of other crates (Arrow IPC, Parquet, roaring)
/// inside `catch_unwind`, so that a panic of theirs on malformed bytes is
/// an integrity error, not a crashed server. libFuzzer's panic hook aborts
/// on every panic, before any unwinding; this hook lets a panic raised in
/// a dependency's source unwind to sealdb's containment and aborts (a
/// crash the fuzzer records) on every other panic: one in sealdb's own
/// code, or one sealdb failed to contain (libfuzzer-sys aborts on those).
pub fn contain_dependency_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_dependency = info
                .location()
                .is_some_and(|l| l.file().contains("/.cargo/registry/") || l.file().contains("/.cargo/git/"));
            if !in_dependency {
                previous(info);
                std::process::abort();
            }
        }));
    });
}
