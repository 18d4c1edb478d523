//! `sealdb verify`: open and authenticate every file of a data directory
//! (server stopped), reporting each problem found; nothing is changed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sealdb_crypto::{Key256, unwrap_key};
use sealdb_kms::KeyProvider;

use crate::StorageError;
use crate::catalog::CATALOG_FILE;
use crate::segment::{self, Segment};
use crate::store::{open_catalog, scan_log, table_key_aad};

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Files authenticated in full.
    pub checked: Vec<String>,
    /// Problems, each naming its file.
    pub problems: Vec<StorageError>,
    /// Remarks that are not damage (a torn tail left by a crash).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether everything is sound.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Authenticates the catalog, every segment of every table (every page,
/// with its data key) and the whole log of the data directory `dir`.
pub fn verify(dir: &Path, provider: &dyn KeyProvider) -> VerifyReport {
    let mut report = VerifyReport::default();
    let (_, body, (_, ring, _), system) = match open_catalog(&dir.join(CATALOG_FILE), provider) {
        Ok(opened) => opened,
        Err(e) => {
            report.problems.push(e);
            return report;
        }
    };
    report.checked.push(CATALOG_FILE.into());
    let mut keys: BTreeMap<(u64, u32), Arc<Key256>> = BTreeMap::new();
    for table in &body.tables {
        for k in &table.keys {
            match unwrap_key(&ring, &k.wrapped, &table_key_aad(table.id, k.version)) {
                Ok(key) => {
                    keys.insert((table.id, k.version), Arc::new(key));
                }
                Err(_) => report.problems.push(StorageError::integrity(
                    CATALOG_FILE,
                    format!("table key {} version {} failed authentication", table.name, k.version),
                )),
            }
        }
        if table.unpublished {
            // A `CREATE TABLE AS` a crash interrupted: the next start drops
            // it (and may already have removed its files).
            report.notes.push(format!(
                "table {} is from an unfinished CREATE TABLE AS; the next start drops it",
                table.name
            ));
            continue;
        }
        for meta in &table.segments {
            let s = Segment::new(dir, table.id, meta.clone());
            let data_key = match meta.key_version {
                0 => Ok(None),
                v => match keys.get(&(table.id, v)) {
                    Some(tk) => segment::unwrap_data_key(table.id, meta, tk).map(Some),
                    None => Err(StorageError::KeyDestroyed {
                        key: format!("table key {} version {v}", table.name),
                        detail: format!("{} cannot be read", s.display),
                    }),
                },
            };
            let outcome =
                data_key.and_then(|k| segment::read_all(&s.path, &s.display, table.id, meta, k.as_ref()).map(|_| ()));
            match outcome {
                Ok(()) => report.checked.push(s.display.clone()),
                Err(e) => report.problems.push(e),
            }
        }
    }
    let key_of = |table_id: u64, version: u32| keys.get(&(table_id, version)).cloned();
    match scan_log(dir, &body, &system, &key_of) {
        Ok(scan) => {
            for f in &scan.files {
                if f.contents.torn_tail {
                    report.notes.push(format!(
                        "{} ends in a partial frame: the server stopped during a write that was never acknowledged; the next start discards it",
                        f.display
                    ));
                }
                report.checked.push(f.display.clone());
            }
            for (seq, _) in &scan.obsolete {
                report.notes.push(format!(
                    "{}/{} is older than the catalog needs; the next start removes it",
                    crate::LOG_DIR,
                    crate::wal::log_file_name(*seq)
                ));
            }
        }
        Err(e) => report.problems.push(e),
    }
    report
}
