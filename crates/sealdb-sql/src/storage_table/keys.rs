//! Segment keys: the encryption factory and file readers DataFusion's Parquet scan uses, and the cache of decrypted footers.

use super::*;

// ---------------------------------------------------------------------------
// Segment keys.

/// Gives DataFusion's Parquet reader the decryption properties of each
/// segment file. One per engine, shared by every [`SealTable`]: a scan
/// registers the segments it reads, and the reader asks by object-store
/// path when it opens each file.
#[derive(Debug)]
pub struct SegmentKeys {
    /// By object-store path.
    files: Mutex<HashMap<String, SegmentRef>>,
    /// Decrypted footers (and page indexes) of segments read before, by
    /// object-store path. DataFusion's own metadata cache leaves encrypted
    /// files out, so without this every query would read and decrypt every
    /// footer again. Segments are immutable; an entry goes when its segment
    /// is obsolete (merged, dropped) or gone.
    metadata: Arc<Mutex<FooterCache>>,
    /// Reads local files for the Parquet reader.
    readers: DefaultParquetFileReaderFactory,
}

impl Default for SegmentKeys {
    fn default() -> Self {
        Self {
            files: Mutex::default(),
            metadata: Arc::default(),
            readers: DefaultParquetFileReaderFactory::new(Arc::new(LocalFileSystem::new())),
        }
    }
}

/// Most footers kept: each holds the row-group and page statistics of one
/// segment (tens to hundreds of KiB).
const FOOTER_CACHE_ENTRIES: usize = 4096;

/// Decrypted footers by object-store path.
type FooterCache = HashMap<String, Footer>;

/// A segment's decrypted footer, and the statistics the planner reads from
/// it (row counts, sizes, min/max and null counts of each column), made the
/// first time a scan asks.
struct Footer {
    segment: Weak<Segment>,
    metadata: Arc<ParquetMetaData>,
    statistics: Option<Arc<Statistics>>,
}

impl fmt::Debug for Footer {
    // Not the metadata: it holds the file's decryptor.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Footer")
            .field("row_groups", &self.metadata.num_row_groups())
            .field("statistics", &self.statistics.is_some())
            .finish_non_exhaustive()
    }
}

/// A segment being read, and its table; weak so that the registry keeps
/// neither alive (the scans do).
type SegmentRef = (Weak<Table>, Weak<Segment>);

impl SegmentKeys {
    /// A new, empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records that `segment` of `table` is about to be read; returns its
    /// object-store path. Entries of segments no longer alive are pruned.
    pub(super) fn register(&self, table: &Arc<Table>, segment: &Arc<Segment>) -> Result<ObjectPath> {
        let location = object_path(&segment.path)?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let key = location.as_ref().to_owned();
        if !files.contains_key(&key) {
            files.retain(|_, (_, s)| s.strong_count() > 0);
        }
        files.insert(key, (Arc::downgrade(table), Arc::downgrade(segment)));
        Ok(location)
    }

    /// Forgets the cached footers (and with them the decryptors holding
    /// data keys) of segments merged away or of dropped tables.
    pub(crate) fn forget_obsolete(&self) {
        Self::prune_metadata(&mut self.metadata.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Drops cached footers of segments that are obsolete or gone.
    fn prune_metadata(metadata: &mut FooterCache) {
        metadata.retain(|_, footer| footer.segment.upgrade().is_some_and(|s| !s.is_obsolete()));
    }

    /// The planner's statistics of a registered segment, from its footer
    /// (read, decrypted and cached here the first time). `None` when the
    /// footer cannot be read: the scan then reports why.
    pub(super) async fn statistics(
        &self,
        location: &ObjectPath,
        bytes: u64,
        schema: &SchemaRef,
    ) -> Option<Arc<Statistics>> {
        let key = location.as_ref().to_owned();
        let cached = {
            let metadata = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
            metadata.get(&key).map(|f| (f.metadata.clone(), f.statistics.clone()))
        };
        let footer = match cached {
            Some((_, Some(statistics))) => return Some(statistics),
            Some((footer, None)) => footer,
            None => {
                // As the scan will read it: decrypted, with its page index.
                let properties = self
                    .get_file_decryption_properties(&Default::default(), location)
                    .await
                    .ok()?;
                let mut options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
                if let Some(properties) = properties {
                    options = options.with_file_decryption_properties(properties);
                }
                let mut file = PartitionedFile::new(key.clone(), bytes);
                file.object_meta.location = location.clone();
                let mut reader = self
                    .create_reader(0, file, None, &ExecutionPlanMetricsSet::new())
                    .ok()?;
                reader.get_metadata(Some(&options)).await.ok()?
            }
        };
        let statistics = Arc::new(DFParquetMetadata::statistics_from_parquet_metadata(&footer, schema).ok()?);
        let mut metadata = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = metadata.get_mut(&key) {
            entry.statistics = Some(statistics.clone());
        }
        Some(statistics)
    }

    fn lookup(&self, location: &ObjectPath) -> Result<(Arc<Table>, Arc<Segment>)> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .get(location.as_ref())
            .and_then(|(t, s)| Some((t.upgrade()?, s.upgrade()?)))
            .ok_or_else(|| StorageTableError::UnknownSegment(location.to_string()).into())
    }
}

#[async_trait]
impl EncryptionFactory for SegmentKeys {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &SchemaRef,
        file_path: &ObjectPath,
    ) -> Result<Option<Arc<FileEncryptionProperties>>> {
        Err(DataFusionError::NotImplemented(format!(
            "{file_path}: segments are written by the storage engine only"
        )))
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        file_path: &ObjectPath,
    ) -> Result<Option<Arc<FileDecryptionProperties>>> {
        let (table, segment) = self.lookup(file_path)?;
        // Stats the file and, the first time, hashes a plaintext one.
        tokio::task::spawn_blocking(move || table.open_segment(&segment))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(storage)
    }
}

impl ParquetFileReaderFactory for SegmentKeys {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let key = partitioned_file.object_meta.location.as_ref().to_owned();
        let segment = {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.get(&key).map(|(_, s)| s.clone())
        };
        let inner = self
            .readers
            .create_reader(partition_index, partitioned_file, metadata_size_hint, metrics)?;
        Ok(Box::new(CachingReader {
            inner,
            key,
            segment,
            metadata: self.metadata.clone(),
        }))
    }
}

/// A segment reader that takes the footer from [`SegmentKeys`]' cache.
struct CachingReader {
    inner: Box<dyn AsyncFileReader + Send>,
    key: String,
    segment: Option<Weak<Segment>>,
    metadata: Arc<Mutex<FooterCache>>,
}

impl AsyncFileReader for CachingReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(&mut self, ranges: Vec<std::ops::Range<u64>>) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        let cached = {
            let metadata = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
            metadata.get(&self.key).map(|footer| footer.metadata.clone())
        };
        async move {
            if let Some(m) = cached {
                return Ok(m);
            }
            let fetched = self.inner.get_metadata(options).await?;
            if let Some(segment) = &self.segment {
                // Pruned on a miss only, not on every open of a cached file;
                // DROP TABLE prunes at once (`forget_obsolete`).
                let mut metadata = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
                SegmentKeys::prune_metadata(&mut metadata);
                if segment.upgrade().is_some_and(|s| !s.is_obsolete()) {
                    if metadata.len() >= FOOTER_CACHE_ENTRIES {
                        // Bounded: a burst of new segments starts it afresh.
                        metadata.clear();
                    }
                    metadata.insert(
                        self.key.clone(),
                        Footer {
                            segment: segment.clone(),
                            metadata: fetched.clone(),
                            statistics: None,
                        },
                    );
                }
            }
            Ok(fetched)
        }
        .boxed()
    }
}

/// The object-store path of a file for `ObjectStoreUrl::local_filesystem()`.
fn object_path(path: &Path) -> Result<ObjectPath> {
    let bad = || StorageTableError::BadPath(path.display().to_string());
    let absolute = std::path::absolute(path).map_err(|_| bad())?;
    Ok(ObjectPath::from_absolute_path(absolute).map_err(|_| bad())?)
}
