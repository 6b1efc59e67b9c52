//! The run's input: a CSV object, or every supported object under a prefix (local path, `file:///…` or
//! `s3://bucket/prefix`), read through the lake crate's URI rules and S3 client. Storage errors are classified by
//! `silverline_lake::StorageError`; here a missing input becomes unreadable input (exit 3).

use crate::{Error, Result};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use silverline_lake::StorageErrorKind::Transient;
use silverline_lake::store::s3_store;
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
    Remote { store: Arc<dyn ObjectStore>, key: Path, e_tag: Option<String> },
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
                        source: Source::Remote { store: store.clone(), key: m.location, e_tag: m.e_tag },
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
        // Read again later, the input is whole and of one version: worth a retry (exit 75), never a mix of two.
        let changed = |what: &str| Error::Transient {
            key: self.uri.clone(),
            message: format!("the input changed while the run read it ({what} since it was listed)"),
        };
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
            Source::Remote { store, key, e_tag } => {
                let got = handle.block_on(store.get(key)).map_err(|e| storage_error(e, &self.uri))?;
                // Compared here rather than sent as If-Match: some stores and proxies answer weak or re-quoted
                // ETags, which a literal If-Match would refuse every time.
                if let (Some(listed), Some(read)) = (e_tag, &got.meta.e_tag)
                    && bare_e_tag(listed) != bare_e_tag(read)
                {
                    return Err(changed("the object was replaced"));
                }
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
