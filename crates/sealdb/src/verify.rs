//! `sealdb verify`: authenticate every file of a stopped server's data directory.

use anyhow::{Result, bail};
use sealdb_config::Settings;

use crate::Common;

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    settings: Settings,
}

pub(crate) fn run(args: VerifyArgs) -> Result<()> {
    let (settings, data) = crate::start::resolve_settings(&args.common, &args.settings)?;
    let data = crate::start::absolute(&data)?;
    if !data.join(sealdb_storage::CATALOG_FILE).exists() {
        bail!(
            "{} holds no sealdb catalog: is --data the data directory of a sealdb server?",
            data.display()
        );
    }
    let keystore = data.join(crate::keys::KEYSTORE_DIR).join(sealdb_kms::KEYSTORE_FILE);
    if (settings.key_provider.is_none() || settings.key_provider.as_deref() == Some("local")) && !keystore.exists() {
        bail!(
            "{} is missing: the master key is gone, so nothing can be verified; restore it from a backup",
            keystore.display()
        );
    }
    let provider = crate::keys::provider(&settings, &data)?;
    let tables = crate::keys::TableProviders::new(crate::keys::ProviderOpener {
        common: args.common.clone(),
        flags: args.settings.clone(),
        data: data.clone(),
    });
    let report = sealdb_storage::verify_with(&data, provider.as_ref(), Some(&tables));
    for file in &report.checked {
        println!("ok      {file}");
    }
    for note in &report.notes {
        println!("note    {note}");
    }
    for problem in &report.problems {
        println!("FAILED  {problem}");
    }
    if report.is_sound() {
        println!("{} files authenticated; no problem found", report.checked.len());
        Ok(())
    } else {
        bail!(
            "{} problem(s) found in {}; restore the named files from a backup",
            report.problems.len(),
            data.display()
        )
    }
}
