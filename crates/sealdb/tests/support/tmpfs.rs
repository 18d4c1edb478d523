//! A small tmpfs mounted for a test (needs root, like the CI machine) and
//! unmounted when dropped. Shared by the disk-full tests of `sealdb` and
//! `sealdb-storage`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// A tmpfs of `size` at a mount point of its own (`label` tells apart
    /// the tests of one binary, which run in parallel).
    pub fn mount(size: &str, label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sealdb-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Self(dir)
    }

    /// Bytes still free on it.
    pub fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.0)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the available bytes")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Whether the test runs as root (mounting needs it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
