//! URIs of inputs and lakes: a local path, `file:///…` or `s3://bucket/prefix`, behind one object-store API.
//! Errors from storage are classified here: access denied or a missing bucket is permanent (exit 2), a missing
//! input is unreadable input (exit 3), anything else that failed after the store's own retries is transient
//! (exit 75). Messages name the object key; credentials never appear in them.

use crate::{Error, Result};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::runtime::Handle;

/// S3 settings from the contract's `storage`, overridden by CLI flags; the rest comes from the standard AWS
/// environment (credentials, web identity / IRSA, container credentials, `AWS_ENDPOINT_URL`).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// A root in some object store.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    /// Prefix of the root inside the store.
    pub prefix: Path,
    /// The URI of the root, for messages and reports (`file:///…` or `s3://…`).
    pub uri: String,
    /// For a local root, its directory.
    pub local_dir: Option<PathBuf>,
}

impl Location {
    /// The URI of an object of this store.
    pub fn uri_of(&self, key: &Path) -> String {
        match &self.local_dir {
            Some(_) => format!("{}/{}", self.uri.trim_end_matches('/'), key.as_ref()),
            None => {
                let bucket_uri = self.uri.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
                format!("{bucket_uri}/{}", key.as_ref())
            }
        }
    }
}

enum Parsed {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

fn parse_uri(uri: &str) -> Result<Parsed> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!("{uri:?} names no bucket")));
        }
        return Ok(Parsed::S3 { bucket: bucket.to_owned(), prefix: prefix.trim_matches('/').to_owned() });
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        return Ok(Parsed::Local(PathBuf::from(rest)));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(Error::Usage(format!(
            "{uri:?}: scheme {scheme}:// is not supported; use a path, file:// or s3://"
        )));
    }
    if uri.is_empty() {
        return Err(Error::Usage("an empty URI was given".into()));
    }
    Ok(Parsed::Local(PathBuf::from(uri)))
}

fn s3_store(bucket: &str, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(retry_config());
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    let endpoint = options.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(endpoint) = endpoint {
        builder = builder
            .with_endpoint(&endpoint)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let store = builder.build().map_err(|e| Error::Usage(format!("S3 bucket {bucket}: {e}")))?;
    Ok(Arc::new(store))
}

/// Throttling, 5xx and timeouts are retried with exponential backoff and jitter for up to
/// `SILVERLINE_IO_RETRY_SECONDS` (default 180) per request; after that the run ends with exit 75.
fn retry_config() -> object_store::RetryConfig {
    let seconds = std::env::var("SILVERLINE_IO_RETRY_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(180);
    object_store::RetryConfig {
        retry_timeout: std::time::Duration::from_secs(seconds),
        max_retries: 10,
        backoff: object_store::BackoffConfig::default(),
    }
}

/// Opens the lake root, creating a local directory if needed.
pub fn open_lake(uri: &str, options: &StoreOptions) -> Result<Location> {
    match parse_uri(uri)? {
        Parsed::Local(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Usage(format!("lake {}: cannot create the directory: {e}", dir.display())))?;
            let dir = dir.canonicalize().map_err(|e| Error::Usage(format!("lake {}: {e}", dir.display())))?;
            let store = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| Error::Usage(format!("lake {}: {e}", dir.display())))?;
            Ok(Location {
                store: Arc::new(store),
                prefix: Path::default(),
                uri: format!("file://{}", dir.display()),
                local_dir: Some(dir),
            })
        }
        Parsed::S3 { bucket, prefix } => Ok(Location {
            store: s3_store(&bucket, options)?,
            prefix: Path::from(prefix.as_str()),
            uri: format!("s3://{bucket}/{prefix}"),
            local_dir: None,
        }),
    }
}

/// How an input object is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Csv,
    CsvGzip,
    CsvZstd,
    /// A quarantine part file, replayed.
    Quarantine,
}

impl InputFormat {
    pub fn of(name: &str) -> Option<InputFormat> {
        if name.ends_with(".csv") {
            Some(InputFormat::Csv)
        } else if name.ends_with(".csv.gz") {
            Some(InputFormat::CsvGzip)
        } else if name.ends_with(".csv.zst") {
            Some(InputFormat::CsvZstd)
        } else if name.ends_with(".parquet") {
            Some(InputFormat::Quarantine)
        } else {
            None
        }
    }
}

/// One object to read.
#[derive(Debug, Clone)]
pub struct InputObject {
    pub uri: String,
    pub format: InputFormat,
    pub size: u64,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Local(PathBuf),
    Remote { store: Arc<dyn ObjectStore>, key: Path },
}

/// Lists the input: a single object, or every supported object under a prefix, in lexicographic order.
pub fn resolve_inputs(uri: &str, options: &StoreOptions, handle: &Handle) -> Result<Vec<InputObject>> {
    let unreadable = |message: String| Error::UnreadableInput { source_uri: uri.to_owned(), message };
    let mut inputs = match parse_uri(uri)? {
        Parsed::Local(path) => {
            let path = path.canonicalize().map_err(|e| unreadable(format!("{e}")))?;
            let mut files = Vec::new();
            collect_local(&path, &mut files).map_err(|e| unreadable(format!("cannot list: {e}")))?;
            let single = !path.is_dir();
            files
                .into_iter()
                .filter_map(|(file, size)| {
                    let name = file.file_name()?.to_string_lossy().into_owned();
                    let format = InputFormat::of(&name).or(if single { Some(InputFormat::Csv) } else { None })?;
                    Some(InputObject {
                        uri: format!("file://{}", file.display()),
                        format,
                        size,
                        source: Source::Local(file),
                    })
                })
                .collect::<Vec<_>>()
        }
        Parsed::S3 { bucket, prefix } => {
            let store = s3_store(&bucket, options)?;
            let key = Path::from(prefix.as_str());
            let found = match handle.block_on(store.head(&key)) {
                Ok(meta) if !prefix.is_empty() => Some(meta),
                Ok(_) | Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(storage_error(e, uri)),
            };
            let only = found.is_some();
            let metas = match found {
                Some(meta) => vec![meta],
                None => handle
                    .block_on(store.list(Some(&key)).try_collect::<Vec<_>>())
                    .map_err(|e| storage_error(e, uri))?,
            };
            metas
                .into_iter()
                .filter_map(|m| {
                    let format =
                        InputFormat::of(m.location.as_ref()).or(if only { Some(InputFormat::Csv) } else { None })?;
                    Some(InputObject {
                        uri: format!("s3://{bucket}/{}", m.location),
                        format,
                        size: m.size,
                        source: Source::Remote { store: store.clone(), key: m.location },
                    })
                })
                .collect()
        }
    };
    inputs.sort_by(|a, b| a.uri.cmp(&b.uri));
    if inputs.is_empty() {
        return Err(unreadable("no .csv, .csv.gz, .csv.zst or quarantine .parquet objects found".into()));
    }
    let replay = inputs.iter().filter(|i| i.format == InputFormat::Quarantine).count();
    if replay != 0 && replay != inputs.len() {
        return Err(unreadable("mixes CSV and quarantine Parquet objects; give one kind per run".into()));
    }
    Ok(inputs)
}

fn collect_local(path: &std::path::Path, out: &mut Vec<(PathBuf, u64)>) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        out.push((path.to_path_buf(), meta.len()));
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        // Hidden and in-progress files are not input.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        collect_local(&entry.path(), out)?;
    }
    Ok(())
}

/// Counts and checksums the bytes as they are read (before decompression).
pub struct MeteredReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    pub bytes: u64,
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if let Some(p) = &self.progress {
            p.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// The checksum of what was read, once the reader is done.
#[derive(Debug, Clone)]
pub struct Checksum {
    pub sha256: String,
    pub bytes: u64,
}

/// A decoded byte stream of one input, with the checksum of the raw object.
pub struct OpenInput {
    pub reader: Box<dyn BufRead + Send>,
    pub checksum: Arc<std::sync::Mutex<Option<Checksum>>>,
}

struct ChecksumOnEof<R> {
    inner: MeteredReader<R>,
    out: Arc<std::sync::Mutex<Option<Checksum>>>,
    done: bool,
}

impl<R: Read> Read for ChecksumOnEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            let hasher = std::mem::take(&mut self.inner.hasher);
            let sum = Checksum { sha256: hex::encode(hasher.finalize()), bytes: self.inner.bytes };
            if let Ok(mut slot) = self.out.lock() {
                *slot = Some(sum);
            }
        }
        Ok(n)
    }
}

impl InputObject {
    /// Opens the object as a decoded byte stream.
    pub fn open(&self, handle: &Handle, progress: Option<Arc<std::sync::atomic::AtomicU64>>) -> Result<OpenInput> {
        let raw: Box<dyn Read + Send> = match &self.source {
            Source::Local(path) => Box::new(
                std::fs::File::open(path)
                    .map_err(|e| Error::UnreadableInput { source_uri: self.uri.clone(), message: e.to_string() })?,
            ),
            Source::Remote { store, key } => {
                let got = handle.block_on(store.get(key)).map_err(|e| storage_error(e, &self.uri))?;
                let uri = self.uri.clone();
                let stream = got.into_stream().map_err(move |e| io::Error::other(storage_error(e, &uri)));
                let reader = tokio_util::io::StreamReader::new(stream);
                Box::new(tokio_util::io::SyncIoBridge::new_with_handle(reader, handle.clone()))
            }
        };
        let checksum = Arc::new(std::sync::Mutex::new(None));
        let metered = ChecksumOnEof {
            inner: MeteredReader { inner: raw, hasher: Default::default(), bytes: 0, progress },
            out: checksum.clone(),
            done: false,
        };
        const BUFFER: usize = 1 << 20;
        let reader: Box<dyn BufRead + Send> = match self.format {
            InputFormat::Csv | InputFormat::Quarantine => Box::new(BufReader::with_capacity(BUFFER, metered)),
            InputFormat::CsvGzip => Box::new(BufReader::with_capacity(
                BUFFER,
                flate2::read::MultiGzDecoder::new(BufReader::with_capacity(BUFFER, metered)),
            )),
            InputFormat::CsvZstd => {
                let decoder = zstd::Decoder::new(metered).map_err(|e| Error::UnreadableInput {
                    source_uri: self.uri.clone(),
                    message: format!("zstd: {e}"),
                })?;
                Box::new(BufReader::with_capacity(BUFFER, decoder))
            }
        };
        Ok(OpenInput { reader, checksum })
    }
}

/// Classifies a storage error at `key`.
pub fn storage_error(err: object_store::Error, key: &str) -> Error {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } => Error::UnreadableInput { source_uri: key.to_owned(), message: "no such object".into() },
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            Error::AccessDenied { key: key.to_owned(), message: "access denied by the object store".into() }
        }
        other => {
            let text = other.to_string();
            if text.contains("NoSuchBucket") {
                Error::AccessDenied { key: key.to_owned(), message: "the bucket does not exist".into() }
            } else if text.contains("AccessDenied") || text.contains("403 Forbidden") {
                Error::AccessDenied { key: key.to_owned(), message: "access denied by the object store".into() }
            } else {
                Error::Transient { key: key.to_owned(), message: text }
            }
        }
    }
}

/// Classifies a read error in the middle of an input stream.
pub fn read_error(err: io::Error, uri: &str) -> Error {
    if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        return match inner {
            Error::Transient { key, message } => Error::Transient { key: key.clone(), message: message.clone() },
            other => Error::UnreadableInput { source_uri: uri.to_owned(), message: other.to_string() },
        };
    }
    match err.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            Error::UnreadableInput { source_uri: uri.to_owned(), message: err.to_string() }
        }
        _ => Error::Transient { key: uri.to_owned(), message: err.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_object_name() {
        assert_eq!(InputFormat::of("a/b.csv"), Some(InputFormat::Csv));
        assert_eq!(InputFormat::of("b.csv.gz"), Some(InputFormat::CsvGzip));
        assert_eq!(InputFormat::of("b.csv.zst"), Some(InputFormat::CsvZstd));
        assert_eq!(InputFormat::of("part-00000.parquet"), Some(InputFormat::Quarantine));
        assert_eq!(InputFormat::of("notes.txt"), None);
    }

    #[test]
    fn unsupported_schemes_are_usage_errors() {
        assert!(matches!(parse_uri("gs://b/x"), Err(Error::Usage(_))));
        assert!(matches!(parse_uri("s3:///x"), Err(Error::Usage(_))));
        assert!(matches!(parse_uri("s3://b/p/"), Ok(Parsed::S3 { .. })));
    }
}
