//! The run's input: a CSV object, or every supported object under a prefix (local path, `file:///…` or
//! `s3://bucket/prefix`), read through the lake crate's URI rules and S3 client. Storage errors are classified by
//! `silverline_lake::StorageError`; here a missing input becomes unreadable input (exit 3).

use crate::{Error, Result};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use silverline_lake::StorageErrorKind::Transient;
use silverline_lake::store::s3_stream_store;
use silverline_lake::{LakeUri, RelativePaths, StorageError, StoreOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::runtime::Handle;

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
    /// By the name's extension, in any case (`.CSV` too).
    pub fn of(name: &str) -> Option<InputFormat> {
        let name = name.to_ascii_lowercase();
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

/// Where an input's bytes are, and the version of them its listing saw: every read of the input (its header, its
/// records; one read for a run's only input, see `run::OpenedFirst`) is of that version, or fails. (A GET streams one version of an object, so a read that starts with the
/// listed ETag reads that version to its end.)
#[derive(Debug, Clone)]
enum Source {
    /// A local file with its modification time at listing (its size is the input's).
    Local { path: PathBuf, modified: Option<std::time::SystemTime> },
    /// An object, read only while its ETag is still the one listed (none when the store gave none).
    Remote { store: Arc<dyn ObjectStore>, key: Path, e_tag: Option<String>, prefetched: Prefetched },
}

/// The GET that found a single-object input when it was resolved — it tells all a HEAD would — kept for the first
/// read of the object, which then needs no request of its own: one round trip fewer before a run's first row.
#[derive(Clone, Default)]
struct Prefetched(Arc<std::sync::Mutex<Option<object_store::GetResult>>>);

impl Prefetched {
    fn new(got: object_store::GetResult) -> Prefetched {
        Prefetched(Arc::new(std::sync::Mutex::new(Some(got))))
    }

    fn take(&self) -> Option<object_store::GetResult> {
        self.0.lock().ok().and_then(|mut got| got.take())
    }
}

impl std::fmt::Debug for Prefetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.0.lock().is_ok_and(|got| got.is_some());
        f.debug_tuple("Prefetched").field(&kept).finish()
    }
}

/// Lists the input: a single object, or every supported object under a prefix, in lexicographic order.
pub fn resolve_inputs(uri: &str, options: &StoreOptions, handle: &Handle) -> Result<Vec<InputObject>> {
    let unreadable = |message: String| Error::UnreadableInput { source_uri: uri.to_owned(), message };
    let parsed = LakeUri::parse(uri, RelativePaths::Accept).map_err(|e| Error::Usage(e.to_string()))?;
    let mut inputs = match parsed {
        LakeUri::Local(path) => {
            if std::fs::metadata(&path).is_ok_and(|m| special(&m)) {
                return Err(unreadable(NOT_REGULAR.into()));
            }
            let path = path.canonicalize().map_err(|e| unreadable(format!("{e}")))?;
            let mut files = Vec::new();
            collect_local(&path, &mut files).map_err(|e| unreadable(format!("cannot list: {e}")))?;
            let single = !path.is_dir();
            files
                .into_iter()
                .filter_map(|(file, meta)| {
                    let name = file.file_name()?.to_string_lossy().into_owned();
                    let format = InputFormat::of(&name).or(if single { Some(InputFormat::Csv) } else { None })?;
                    Some(InputObject {
                        uri: format!("file://{}", file.display()),
                        format,
                        size: meta.len(),
                        source: Source::Local { path: file, modified: meta.modified().ok() },
                    })
                })
                .collect::<Vec<_>>()
        }
        LakeUri::S3 { bucket, prefix } => {
            // Inputs are read as one stream each, for as long as the run takes: no total timeout per request.
            let store = s3_stream_store(&bucket, options)?;
            let key = Path::from(prefix.as_str());
            // A GET rather than a HEAD: for an object it is the run's first read of it as well (see `Prefetched`).
            let found = if prefix.is_empty() {
                None
            } else {
                match handle.block_on(store.get(&key)) {
                    Ok(got) => Some(got),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => return Err(storage_error(e, uri)),
                }
            };
            let list = || -> Result<Vec<(object_store::ObjectMeta, Prefetched)>> {
                let metas = handle.block_on(store.list(Some(&key)).try_collect::<Vec<_>>());
                Ok(metas.map_err(|e| storage_error(e, uri))?.into_iter().map(|m| (m, Prefetched::default())).collect())
            };
            let metas = match found {
                // An empty object with objects under it is a folder's marker (what s3fs and the console create;
                // SeaweedFS answers a HEAD of it with 404 but a GET with the empty object): the folder is the input.
                Some(got) if got.meta.size == 0 => match list()? {
                    listed if listed.is_empty() => vec![(got.meta.clone(), Prefetched::new(got))],
                    listed => listed,
                },
                Some(got) => vec![(got.meta.clone(), Prefetched::new(got))],
                None => list()?,
            };
            let only = metas.len() == 1 && metas[0].0.location == key;
            metas
                .into_iter()
                .filter_map(|(m, prefetched)| {
                    let format =
                        InputFormat::of(m.location.as_ref()).or(if only { Some(InputFormat::Csv) } else { None })?;
                    Some(InputObject {
                        uri: format!("s3://{bucket}/{}", m.location),
                        format,
                        size: m.size,
                        source: Source::Remote { store: store.clone(), key: m.location, e_tag: m.e_tag, prefetched },
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

/// Why a FIFO, a socket or a device is not taken as input: every input's header is read before the run starts and
/// all but a run's only input are read again from the start (the checksum is of the whole object), and a file is
/// checked for change by its size and time, so a stream that can be read once would hang, lose data or be refused.
const NOT_REGULAR: &str = "not a regular file (a pipe, a socket or a device): the worker reads each input's header \
                           before the run and may read it again from the start, so give it a file — e.g. copy the \
                           stream to one first";

fn special(meta: &std::fs::Metadata) -> bool {
    !meta.is_file() && !meta.is_dir()
}

fn collect_local(path: &std::path::Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if special(&meta) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {NOT_REGULAR}", path.display())));
    }
    if !meta.is_dir() {
        out.push((path.to_path_buf(), meta));
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
        let n = self.inner.read(buf).map_err(StoreRead::wrap)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if let Some(p) = &self.progress {
            p.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// An I/O error of the object's own bytes (file or store), marked as such on its way through a decompressor, so
/// that it is told apart from the decompressor's errors: those mean undecodable input, whatever their kind.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct StoreRead(#[source] io::Error);

impl StoreRead {
    /// Keeps the kind, which readers above act on (`Interrupted` is retried).
    fn wrap(err: io::Error) -> io::Error {
        io::Error::new(err.kind(), StoreRead(err))
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
        let changed = |what: &str| changed(&self.uri, what);
        let raw: Box<dyn Read + Send> = match &self.source {
            Source::Local { path, modified } => {
                let unreadable =
                    |e: io::Error| Error::UnreadableInput { source_uri: self.uri.clone(), message: e.to_string() };
                let file = std::fs::File::open(path).map_err(unreadable)?;
                let now = file.metadata().map_err(unreadable)?;
                if now.len() != self.size || now.modified().ok() != *modified {
                    return Err(changed("the file was modified"));
                }
                Box::new(file)
            }
            Source::Remote { store, key, e_tag, prefetched } => {
                let got = match prefetched.take() {
                    Some(got) => got,
                    None => handle.block_on(store.get(key)).map_err(|e| storage_error(e, &self.uri))?,
                };
                // Compared here rather than sent as If-Match: some stores and proxies answer weak or re-quoted
                // ETags, which a literal If-Match would refuse every time.
                if let (Some(listed), Some(read)) = (e_tag, &got.meta.e_tag)
                    && bare_e_tag(listed) != bare_e_tag(read)
                {
                    return Err(changed("the object was replaced"));
                }
                let stream = Resumable {
                    store: store.clone(),
                    key: key.clone(),
                    uri: self.uri.clone(),
                    e_tag: got.meta.e_tag.clone(),
                    size: got.meta.size,
                    offset: 0,
                    failures: 0,
                    body: got.into_stream(),
                }
                .into_stream();
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

/// The input changed after its listing: read again later, the input is whole and of one version — worth a retry
/// (exit 75), never a mix of two.
fn changed(uri: &str, what: &str) -> Error {
    Error::Transient {
        key: uri.to_owned(),
        message: format!("the input changed while the run read it ({what} since it was listed)"),
    }
}

/// How many times in a row a remote input's stream is opened again where it broke, without a byte read in
/// between, before the run gives up on it (exit 75).
const RESUMES_WITHOUT_PROGRESS: u32 = 3;

/// A remote input's bytes as one stream that outlives a broken connection. object_store resumes a broken GET
/// body itself, but within a retry budget counted from the GET's start (`SILVERLINE_IO_RETRY_SECONDS`), so a
/// stream that broke later than that — any input read for longer — failed the run. Here a body that fails with a
/// transient error is followed by a new GET of the rest (the range from the next byte to the end), if the object
/// is still the version that was read (its ETag; without one it is not resumed; one replaced, cut short or
/// deleted since is "the input changed", exit 75), after a pause that doubles with each failure in a row; the
/// bytes already read stay read, so the checksum and the rows go on where they were. Once every byte is
/// delivered the stream ends without reading the body again: a break (or the read timeout of a reader that paused
/// after the last byte) then costs nothing.
struct Resumable {
    store: Arc<dyn ObjectStore>,
    key: Path,
    uri: String,
    e_tag: Option<String>,
    size: u64,
    /// Bytes delivered so far.
    offset: u64,
    /// Resumptions since the last byte delivered.
    failures: u32,
    body: BoxStream<'static, object_store::Result<Bytes>>,
}

impl Resumable {
    fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        futures::stream::try_unfold(self, |mut this| async move {
            loop {
                if this.offset >= this.size {
                    return Ok(None);
                }
                match this.body.next().await {
                    None => return Ok(None),
                    Some(Ok(bytes)) => {
                        this.offset += bytes.len() as u64;
                        if !bytes.is_empty() {
                            this.failures = 0;
                        }
                        return Ok(Some((bytes, this)));
                    }
                    Some(Err(broke)) => this.resume(broke).await.map_err(io::Error::other)?,
                }
            }
        })
        .boxed()
    }

    /// Opens the rest of the object where the body broke, or says why not (the body's own error when it is not
    /// worth another try).
    async fn resume(&mut self, broke: object_store::Error) -> Result<()> {
        let error = storage_error(broke, &self.uri);
        let Some(e_tag) = self.e_tag.clone() else {
            return Err(error);
        };
        if !worth_resuming(&error, self.offset, self.size, self.failures) {
            // object_store, resuming within its budget, found the object gone or cut short (a 404 or 416 from its
            // own GET of the rest): the input changed, not an unreadable input.
            let transient = matches!(&error, Error::Storage(StorageError { kind: Transient, .. }));
            if !transient && self.offset < self.size && replaced(self.store.clone(), self.key.clone(), &e_tag).await {
                return Err(changed(&self.uri, "the object was replaced or deleted"));
            }
            return Err(error);
        }
        self.failures += 1;
        crate::log::input_resumed(&self.uri, self.offset, self.size, self.failures, &error);
        tokio::time::sleep(std::time::Duration::from_millis(250 << self.failures)).await;
        let rest = self.offset..self.size;
        let options = GetOptions { range: Some(GetRange::Bounded(rest.clone())), ..GetOptions::default() };
        let got = match self.store.get_opts(&self.key, options).await {
            Ok(got) => got,
            Err(e) => {
                // A range no longer there (416) or an object gone: the object changed since it was read, which a
                // retry of the run handles, rather than an unreadable input. (object_store retried the GET itself
                // within its budget: any other failure is the run's.)
                let gone = matches!(e, object_store::Error::NotFound { .. });
                let error = storage_error(e, &self.uri);
                if gone || replaced(self.store.clone(), self.key.clone(), &e_tag).await {
                    return Err(changed(&self.uri, "the object was replaced or deleted"));
                }
                return Err(error);
            }
        };
        if got.meta.e_tag.as_deref().map(bare_e_tag) != Some(bare_e_tag(&e_tag)) {
            return Err(changed(&self.uri, "the object was replaced"));
        }
        if got.range != rest {
            return Err(Error::Transient {
                key: self.uri.clone(),
                message: format!("asked the store for bytes {rest:?} to read on, it answered bytes {:?}", got.range),
            });
        }
        self.body = got.into_stream();
        Ok(())
    }
}

/// Whether the object at `key` is gone or another version than `e_tag` (a store error says neither).
async fn replaced(store: Arc<dyn ObjectStore>, key: Path, e_tag: &str) -> bool {
    match store.head(&key).await {
        Ok(meta) => meta.e_tag.as_deref().map(bare_e_tag) != Some(bare_e_tag(e_tag)),
        Err(object_store::Error::NotFound { .. }) => true,
        Err(_) => false,
    }
}

/// Whether a stream that broke with `error` after `offset` of `size` bytes, `failures` times in a row already, is
/// worth opening again: only for a transient error (a dropped connection, a timeout, a 5xx), with bytes left.
fn worth_resuming(error: &Error, offset: u64, size: u64, failures: u32) -> bool {
    matches!(error, Error::Storage(StorageError { kind: Transient, .. }))
        && offset < size
        && failures < RESUMES_WITHOUT_PROGRESS
}

/// An ETag without its weak marker and quotes (`W/"abc"` and `"abc"` are `abc`).
fn bare_e_tag(e_tag: &str) -> &str {
    e_tag.trim_start_matches("W/").trim_matches('"')
}

/// Classifies a storage error at `key` (the object's URI).
pub fn storage_error(err: object_store::Error, key: &str) -> Error {
    Error::Storage(StorageError::from_store(err, key))
}

/// Classifies a read error in the middle of an input stream: an error of the stored bytes by its kind (the
/// store's own classification when it has one), any other — the decompressor's — as unreadable input.
pub fn read_error(err: io::Error, uri: &str) -> Error {
    let unreadable = |message: String| Error::UnreadableInput { source_uri: uri.to_owned(), message };
    if !err.get_ref().is_some_and(|e| e.is::<StoreRead>()) {
        return unreadable(err.to_string());
    }
    let Some(StoreRead(err)) = err.into_inner().and_then(|e| e.downcast::<StoreRead>().ok()).map(|e| *e) else {
        return Error::internal(uri, "an input error vanished");
    };
    if err.get_ref().is_some_and(|e| e.is::<Error>()) {
        let inner = err.into_inner().and_then(|e| e.downcast::<Error>().ok());
        return match inner.map(|e| *e) {
            Some(transient @ (Error::Transient { .. } | Error::Storage(StorageError { kind: Transient, .. }))) => {
                transient
            }
            Some(other) => unreadable(other.to_string()),
            None => Error::internal(uri, "an input error vanished"),
        };
    }
    match err.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            unreadable(err.to_string())
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
        assert_eq!(InputFormat::of("EXPORT.CSV"), Some(InputFormat::Csv), "upper case is not skipped in a folder");
        assert_eq!(InputFormat::of("Export.Csv.Gz"), Some(InputFormat::CsvGzip));
    }

    #[test]
    fn read_errors_are_transient_only_when_the_stored_bytes_failed() {
        let uri = "file:///in.csv.zst";
        let decoder = io::Error::other("Destination buffer is too small");
        assert_eq!(read_error(decoder, uri).exit_code(), crate::ExitCode::SchemaDrift);
        let corrupt = io::Error::new(io::ErrorKind::InvalidData, "Data corruption detected");
        assert_eq!(read_error(corrupt, uri).exit_code(), crate::ExitCode::SchemaDrift);
        let store = StoreRead::wrap(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(read_error(store, uri).exit_code(), crate::ExitCode::Transient);
        let truncated = StoreRead::wrap(io::Error::new(io::ErrorKind::UnexpectedEof, "short"));
        assert_eq!(read_error(truncated, uri).exit_code(), crate::ExitCode::SchemaDrift);
    }

    #[test]
    fn a_local_input_changed_after_its_listing_is_not_read_but_retried()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let handle = tokio::runtime::Builder::new_current_thread().build()?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("feed.csv");
        std::fs::write(&path, "a,b\n1,2\n")?;
        let listed = |uri: &str| resolve_inputs(uri, &StoreOptions::default(), handle.handle());
        let uri = path.display().to_string();
        let unchanged = listed(&uri)?;
        assert!(unchanged[0].open(handle.handle(), None).is_ok());
        // Rewritten with other rows (another size), or the same size at another time: both are refused.
        let grown = listed(&uri)?;
        std::fs::write(&path, "a,b\n1,2\n3,4\n")?;
        let same_size = listed(&uri)?;
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))?;
        for input in [grown, same_size] {
            let err = input[0].open(handle.handle(), None).err().ok_or("a changed input was opened")?;
            assert_eq!(err.exit_code(), crate::ExitCode::Transient, "{err}");
            assert!(err.to_string().contains("the input changed while the run read it"), "{err}");
            assert!(err.to_string().contains(&uri), "{err}");
        }
        Ok(())
    }

    /// The worker's own kind of runtime: the input is read through `Handle::block_on`, which drives no timer (the
    /// pause before reading on) on a current-thread runtime.
    fn worker_like_runtime() -> io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()
    }

    /// An object in a real (in-memory) store, and the first GET of it breaking after `after` bytes the way a
    /// dropped connection does.
    fn broken_read(
        data: &Bytes,
        after: usize,
        handle: &Handle,
    ) -> std::result::Result<(Arc<dyn ObjectStore>, Resumable), Box<dyn std::error::Error>> {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let key = Path::from("bronze/feed.csv");
        handle.block_on(store.put(&key, data.clone().into()))?;
        let got = handle.block_on(store.get(&key))?;
        let dropped = object_store::Error::Generic { store: "S3", source: "connection reset by peer".into() };
        let body = futures::stream::iter([Ok(data.slice(..after)), Err(dropped)]).boxed();
        let read = Resumable {
            store: store.clone(),
            key,
            uri: "s3://b/bronze/feed.csv".into(),
            e_tag: got.meta.e_tag.clone(),
            size: got.meta.size,
            offset: 0,
            failures: 0,
            body,
        };
        Ok((store, read))
    }

    fn read_all(read: Resumable, handle: &Handle) -> io::Result<Vec<u8>> {
        let chunks: Vec<Bytes> = handle.block_on(read.into_stream().try_collect())?;
        Ok(chunks.concat())
    }

    #[test]
    fn a_broken_input_stream_is_read_on_where_it_broke() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let runtime = worker_like_runtime()?;
        let data = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let (_, read) = broken_read(&data, 100_000, runtime.handle())?;
        assert_eq!(read_all(read, runtime.handle())?, data.to_vec(), "the bytes before and after the break, once each");
        // A break after the last byte (or a reader's pause there, which the read timeout breaks): the stream ends.
        let (_, read) = broken_read(&data, data.len(), runtime.handle())?;
        assert_eq!(read_all(read, runtime.handle())?, data.to_vec());
        Ok(())
    }

    #[test]
    fn an_input_replaced_or_gone_when_its_stream_broke_is_not_read_on()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let runtime = worker_like_runtime()?;
        let data = Bytes::from_static(b"a,b\n1,2\n3,4\n");
        // Replaced by one as long, by a shorter one (the rest's range is not there), or deleted: the input changed,
        // a retry reads it again.
        for replacement in [Some(&b"a,b\n9,9\n3,4\n"[..]), Some(&b"a,b\n"[..]), None] {
            let (store, read) = broken_read(&data, 6, runtime.handle())?;
            match replacement {
                Some(bytes) => {
                    runtime.block_on(store.put(&read.key, Bytes::copy_from_slice(bytes).into())).map(drop)?
                }
                None => runtime.block_on(store.delete(&read.key))?,
            }
            let err = read_all(read, runtime.handle()).expect_err("a changed object was read on");
            let err = read_error(StoreRead::wrap(err), "s3://b/bronze/feed.csv");
            assert_eq!(err.exit_code(), crate::ExitCode::Transient, "{replacement:?}: {err}");
            assert!(err.to_string().contains("the input changed while the run read it"), "{err}");
            assert!(err.to_string().contains("s3://b/bronze/feed.csv"), "{err}");
        }

        // Without an ETag the version read on could be another: the break is the error.
        let (_, mut read) = broken_read(&data, 6, runtime.handle())?;
        read.e_tag = None;
        let err = read_all(read, runtime.handle()).expect_err("read on without an ETag");
        assert!(err.to_string().contains("connection reset by peer"), "{err}");
        Ok(())
    }

    #[test]
    fn only_a_transient_break_with_bytes_left_is_resumed_and_not_forever() {
        let uri = "s3://b/feed.csv";
        let transient = storage_error(object_store::Error::Generic { store: "S3", source: "reset".into() }, uri);
        let gone = storage_error(object_store::Error::NotFound { path: "feed.csv".into(), source: "404".into() }, uri);
        assert!(worth_resuming(&transient, 10, 100, 0));
        assert!(worth_resuming(&transient, 10, 100, RESUMES_WITHOUT_PROGRESS - 1));
        assert!(!worth_resuming(&transient, 10, 100, RESUMES_WITHOUT_PROGRESS), "given up after failures in a row");
        assert!(!worth_resuming(&transient, 100, 100, 0), "nothing left to read");
        assert!(!worth_resuming(&gone, 10, 100, 0));
    }

    #[test]
    fn etags_compare_without_their_weak_marker_and_quotes() {
        assert_eq!(bare_e_tag("W/\"abc\""), "abc");
        assert_eq!(bare_e_tag("\"abc\""), bare_e_tag("abc"));
        assert_ne!(bare_e_tag("\"abc\""), bare_e_tag("\"abd\""));
    }

    #[test]
    fn unsupported_schemes_are_usage_errors() {
        let handle = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let err = resolve_inputs("gs://b/x", &StoreOptions::default(), handle.handle()).expect_err("refused");
        assert_eq!(err.exit_code(), crate::ExitCode::Usage, "{err}");
    }
}
