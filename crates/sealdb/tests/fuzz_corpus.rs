//! Every fuzz target's committed inputs, replayed as an ordinary test:
//! the corpus (`fuzz/corpus/TARGET`) and the inputs that once crashed a
//! decoder (`fuzz/regressions/TARGET`) go through the target's own entry
//! point (each target in `fuzz/` is a one-line wrapper over it), without
//! a sanitizer build or cargo-fuzz. Coverage-guided fuzzing itself is the
//! long tier (`scripts/fuzz.sh`).
//!
//! What must hold is what the fuzzer checks: no panic in sealdb's own
//! code, whether it reaches the test or is swallowed by a containment
//! (`catch_unwind` around a dependency's decoder or a connection); a
//! dependency's panic that sealdb contains is allowed, as under libFuzzer.
//! The targets are read from the fuzz crates' manifests, so a new target
//! without a replay here fails.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Panics raised outside a dependency's source, with where they were.
static OWN_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The targets the fuzz crates declare (`[[bin]] name = "..."`).
fn declared_targets() -> Vec<String> {
    let mut names = Vec::new();
    for manifest in ["Cargo.toml", "wire/Cargo.toml"] {
        let text = std::fs::read_to_string(fuzz_dir().join(manifest)).unwrap();
        let mut in_bin = false;
        for line in text.lines() {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if let (true, Some(name)) = (in_bin, line.strip_prefix("name = \"")) {
                names.push(name.trim_end_matches('"').to_owned());
            }
        }
    }
    names.sort();
    names
}

/// Runs one input through `target`'s entry point.
fn replay(target: &str, input: &[u8]) {
    match target {
        "kmip_ttlv" => sealdb_kmip::internal::fuzz_ttlv(input),
        "kmip_response" => sealdb_kmip::internal::fuzz_response(input),
        "config" => sealdb_config::internal::fuzz_config(input),
        "cert_user_map" => sealdb_pki::internal::fuzz_cert_user_map(input),
        "statements" => sealdb_statements::internal::fuzz_statements(input),
        "log_file" => drop(sealdb_storage::internal::fuzz_log_file(input)),
        "catalog" => drop(sealdb_storage::internal::fuzz_catalog(input)),
        "segment" => drop(sealdb_storage::internal::fuzz_segment(input)),
        "wire" => sealdb_server::internal::fuzz_wire(input),
        other => panic!("fuzz target {other} has no replay in {}", file!()),
    }
}

/// The committed inputs of `target`, corpus first.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(fuzz_dir().join(kind).join(target))
            .into_iter()
            .flatten()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_file())
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// Records every panic raised in sealdb's code (or the standard library
/// on its behalf), whichever thread raised it, then reports it as usual.
fn watch_own_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_dependency = info
            .location()
            .is_some_and(|l| l.file().contains("/.cargo/registry/") || l.file().contains("/.cargo/git/"));
        if !in_dependency {
            let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
            OWN_PANICS.lock().unwrap().push(format!("{info} (thread {thread})"));
        }
        previous(info);
    }));
}

#[test]
fn every_committed_fuzz_input_replays_through_its_target_without_a_panic_in_sealdb() {
    watch_own_panics();
    let targets = declared_targets();
    assert!(
        targets.len() >= 9,
        "fuzz targets missing from the manifests: {targets:?}"
    );
    let mut replayed = Vec::new();
    for target in &targets {
        let files = inputs(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} has no committed input");
        for file in &files {
            let input = std::fs::read(file).unwrap();
            replay(target, &input);
            let own = OWN_PANICS.lock().unwrap();
            assert!(own.is_empty(), "{}: panicked in sealdb's code: {own:?}", file.display());
        }
        replayed.push(format!("{target} {}", files.len()));
    }
    println!("replayed: {}", replayed.join(", "));
}
