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
    verify_with(dir, provider, None)
}

/// As [`verify`], with `providers` to open the keys of tables that have
/// keys of their own on a key server of another provider than the master
/// key's.
pub fn verify_with(
    dir: &Path,
    provider: &dyn KeyProvider,
    providers: Option<&dyn sealdb_kms::ProviderResolver>,
) -> VerifyReport {
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
    'tables: for table in &body.tables {
        for k in &table.keys {
            let aad = table_key_aad(table.id, k.version);
            let unwrapped = match (&k.kek, &table.key_provider) {
                (Some(kek), Some(kp)) => {
                    // Unwrapped by the table's own key on its key server.
                    let own = if kp.provider == provider.name() {
                        Ok(None)
                    } else {
                        match providers {
                            Some(p) => p.provider(&kp.provider).map(Some),
                            None => Err(sealdb_kms::KmsError::Config(format!(
                                "key provider {} is not available to verify",
                                kp.provider
                            ))),
                        }
                    };
                    let opened = own.and_then(|own| {
                        let p: &dyn KeyProvider = match &own {
                            Some(p) => p.as_ref(),
                            None => provider,
                        };
                        p.unwrap(&sealdb_kms::MasterKeyId(kek.clone()), &k.wrapped, &aad)
                    });
                    match opened {
                        Ok(key) => Ok(key),
                        Err(sealdb_kms::KmsError::Destroyed { .. } | sealdb_kms::KmsError::UnknownMasterKey { .. }) => {
                            report.notes.push(format!(
                                "table {}: its key {kek} is not on {} (destroyed there: its data is shredded); its files are not checked",
                                table.name, kp.provider
                            ));
                            continue 'tables;
                        }
                        Err(e) => Err(StorageError::TableKey {
                            table: table.name.clone(),
                            detail: format!("key-encryption key {kek} in {}: {e}", kp.provider),
                        }),
                    }
                }
                _ => unwrap_key(&ring, &k.wrapped, &aad).map_err(|_| {
                    StorageError::integrity(
                        CATALOG_FILE,
                        format!("table key {} version {} failed authentication", table.name, k.version),
                    )
                }),
            };
            match unwrapped {
                Ok(key) => {
                    keys.insert((table.id, k.version), Arc::new(key));
                }
                Err(e) => report.problems.push(e),
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
            check_segment(dir, table, meta, &keys, &mut report);
        }
    }
    let key_of = |table_id: u64, version: u32| keys.get(&(table_id, version)).cloned();
    let systems = match crate::store::system_keys(&ring, &system, &body) {
        Ok(k) => k,
        Err(e) => {
            report.problems.push(e);
            return report;
        }
    };
    match crate::audit::check(dir, &systems) {
        Ok(chain) => {
            for p in chain.problems {
                report
                    .problems
                    .push(StorageError::integrity(crate::audit::AUDIT_DIR, p));
            }
            if chain.records > 0 {
                report.checked.push(format!(
                    "{} ({} records, hash chain intact)",
                    crate::audit::AUDIT_DIR,
                    chain.records
                ));
            }
        }
        Err(e) => report.problems.push(e),
    }
    match scan_log(dir, &body, &systems, &key_of) {
        Ok(scan) => {
            for f in &scan.files {
                if f.contents.torn_tail {
                    report.notes.push(format!(
                        "{} ends in a partial frame: the server stopped during a write that was never acknowledged; the next start discards it",
                        f.display
                    ));
                }
                report.checked.push(f.display.clone());
                // Segment files a commit published whose checkpoint had not
                // finished: the log is their only record.
                for frame in f.contents.commits.iter().flatten() {
                    if frame.kind != crate::wal::FrameKind::Segments || frame.lsn <= body.checkpoint_lsn {
                        continue;
                    }
                    let Some(table) = body.tables.iter().find(|t| t.id == frame.table_id) else {
                        continue;
                    };
                    match crate::store::decode_payload(frame) {
                        Ok(crate::store::Payload::Segments(metas)) => {
                            for meta in &metas {
                                check_segment(dir, table, meta, &keys, &mut report);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => report.problems.push(e),
                    }
                }
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

/// Reads and authenticates one segment file of `table` into `report`.
fn check_segment(
    dir: &Path,
    table: &crate::catalog::TableMeta,
    meta: &crate::catalog::SegmentMeta,
    keys: &BTreeMap<(u64, u32), Arc<Key256>>,
    report: &mut VerifyReport,
) {
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
    let outcome = data_key.and_then(|k| segment::read_all(&s.path, &s.display, table.id, meta, k.as_ref()).map(|_| ()));
    match outcome {
        Ok(()) => report.checked.push(s.display.clone()),
        Err(e) => report.problems.push(e),
    }
}
