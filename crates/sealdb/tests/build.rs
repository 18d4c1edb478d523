//! What the build pulls in, through `cargo tree` on this workspace:
//! DataFusion's default features stay off (no crate asks for them back:
//! they add compression codecs sealdb never uses to every build), its
//! `recursive_protection` is on (deeply nested SQL is an error, not a
//! stack overflow: `sql.rs`), and one pgwire is built, not two.

use std::process::Command;

fn cargo_tree(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--workspace", "--offline", "--edges", "normal,features"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn datafusion_builds_without_its_default_features_and_with_recursion_protection() {
    let tree = cargo_tree(&["--invert", "datafusion"]);
    assert!(
        !tree.contains("datafusion feature \"default\""),
        "a crate turns DataFusion's default features back on:\n{tree}"
    );
    for feature in ["recursive_protection", "parquet_encryption", "sql"] {
        assert!(
            tree.contains(&format!("datafusion feature \"{feature}\"")),
            "DataFusion's {feature} feature is off:\n{tree}"
        );
    }
}

#[test]
fn one_pgwire_is_built() {
    let tree = cargo_tree(&["--prefix", "none"]);
    let mut versions: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.strip_prefix("pgwire v"))
        .map(|rest| rest.split_whitespace().next().unwrap_or(rest))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 1, "pgwire versions built: {versions:?}");
}
