//! No secret in the clear: a stopped test server's log and every file of its
//! data directory are scanned for the known test passwords
//! (`tests/known-secrets.txt`), for any PEM private key and the bodies of
//! the private keys the server holds, and for the master keys of an
//! unsealed local keystore (raw, hex and base64). The key files themselves
//! (`*.key`, `*.p12`, the keystore) are not scanned but must be mode 0600.
//!
//! `TestServer`'s drop runs [`scan`] and fails the test on a finding; with
//! `SEALDB_SECRETS_REPORT` set (by `scripts/test.sh`), each scan appends a
//! line to that file, so that the suite can say how much it looked at.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;

/// The known test secrets.
pub fn known_secrets() -> Vec<String> {
    include_str!("../known-secrets.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

struct Needle {
    what: String,
    bytes: Vec<u8>,
}

/// Whether `path` is a key file: its content is secret by design, and it
/// must be readable by its owner only.
fn is_key_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".key") || name.ends_with(".p12") || name.ends_with(".pfx") || name == "master.keys"
}

/// The base64 lines of a PEM private key after its first (which is the
/// same ASN.1 prefix for every key of a kind), and its DER.
fn pem_needles(name: &str, pem: &str, out: &mut Vec<Needle>) {
    let body: Vec<&str> = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    for (i, line) in body.iter().enumerate().skip(1) {
        if line.len() >= 16 {
            out.push(Needle {
                what: format!("line {} of private key {name}", i + 1),
                bytes: line.as_bytes().to_vec(),
            });
        }
    }
    if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body.concat()) {
        out.push(Needle {
            what: format!("private key {name} (DER)"),
            bytes: der,
        });
    }
}

/// The master keys of an unsealed local keystore (protection byte 0).
fn keystore_needles(path: &Path, out: &mut Vec<Needle>) {
    const HEADER: usize = 8 + 4 + 1 + 12 + 16;
    const ENTRY: usize = 4 + 1 + 8 + 32;
    let Ok(bytes) = std::fs::read(path) else { return };
    if bytes.len() < HEADER + 4 || &bytes[..8] != b"SEALKEYS" || bytes[12] != 0 {
        return;
    }
    let count = u32::from_le_bytes([bytes[HEADER], bytes[HEADER + 1], bytes[HEADER + 2], bytes[HEADER + 3]]) as usize;
    for k in 0..count {
        let at = HEADER + 4 + k * ENTRY + 13;
        let Some(key) = bytes.get(at..at + 32) else { break };
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        out.push(Needle {
            what: format!("master key {k} (raw)"),
            bytes: key.to_vec(),
        });
        out.push(Needle {
            what: format!("master key {k} (hex)"),
            bytes: hex.into_bytes(),
        });
        out.push(Needle {
            what: format!("master key {k} (base64)"),
            bytes: base64::engine::general_purpose::STANDARD.encode(key).into_bytes(),
        });
    }
}

/// What a scan found, and how much it read.
#[derive(Debug, Default)]
pub struct Scan {
    pub findings: Vec<String>,
    pub files: usize,
    pub bytes: u64,
}

/// Scans the data directory `data` and the server's `log`.
pub fn scan(data: &Path, log: &str) -> Scan {
    let mut scan = Scan::default();
    let files = if data.is_dir() {
        super::files_under(data)
    } else {
        Vec::new()
    };
    let mut needles: Vec<Needle> = known_secrets()
        .into_iter()
        .map(|s| Needle {
            what: format!("the test password {s:?}"),
            bytes: s.into_bytes(),
        })
        .collect();
    needles.push(Needle {
        what: "a PEM private key".into(),
        bytes: b"PRIVATE KEY-----".to_vec(),
    });
    for f in files.iter().filter(|f| is_key_file(f)) {
        let name = f.strip_prefix(data).unwrap_or(f).display().to_string();
        if let Ok(text) = std::fs::read_to_string(f)
            && text.contains("PRIVATE KEY")
        {
            pem_needles(&name, &text, &mut needles);
        }
        if f.file_name().and_then(|n| n.to_str()) == Some("master.keys") {
            keystore_needles(f, &mut needles);
        }
    }
    let finders: Vec<(String, memchr::memmem::Finder<'_>)> = needles
        .iter()
        .map(|n| (n.what.clone(), memchr::memmem::Finder::new(&n.bytes)))
        .collect();
    for f in &files {
        let name = f.strip_prefix(data).unwrap_or(f).display().to_string();
        if is_key_file(f) {
            if let Ok(meta) = std::fs::metadata(f) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    scan.findings
                        .push(format!("{name}: key file of mode {mode:o}, not 0600"));
                }
            }
            continue;
        }
        let Ok(bytes) = std::fs::read(f) else { continue };
        scan.files += 1;
        scan.bytes += bytes.len() as u64;
        for (what, finder) in &finders {
            if finder.find(&bytes).is_some() {
                scan.findings.push(format!("{name} contains {what}"));
            }
        }
    }
    for (what, finder) in &finders {
        if finder.find(log.as_bytes()).is_some() {
            scan.findings.push(format!("the server log contains {what}"));
        }
    }
    scan.bytes += log.len() as u64;
    scan
}

/// Appends what `scan` found to `SEALDB_SECRETS_REPORT`, if it is set.
pub fn record(data: &Path, scan: &Scan) {
    let Some(report) = std::env::var_os("SEALDB_SECRETS_REPORT") else {
        return;
    };
    let line = if scan.findings.is_empty() {
        format!("clean {} files {} bytes {}\n", scan.files, scan.bytes, data.display())
    } else {
        format!(
            "FOUND {} in {}: {}\n",
            scan.findings.len(),
            data.display(),
            scan.findings.join("; ")
        )
    };
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(report) {
        let _ = f.write_all(line.as_bytes());
    }
}
