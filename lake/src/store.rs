//! An opened lake root: the object-store client (S3 with endpoint, region, path-style, `If-Match` conditional
//! puts and the retry budget; or the local file system), the root's prefix and URI, and the lake's primitive
//! operations, each returning a classified [`StorageError`].
//!
//! Conditional writes, the base of the promotion pointer:
//! * [`Lake::put_if_absent`]: S3 `If-None-Match: *` (object_store `PutMode::Create`); locally a hard link that
//!   fails if the name exists.
//! * [`Lake::replace_if_unchanged`]: S3 `If-Match: <ETag>` (object_store `PutMode::Update`). object_store's
//!   local file system has no `PutMode::Update`, so a local lake does the same under an exclusive
//!   `flock` on a hidden sibling `.{name}.lock`: it compares the SHA-256 of the current bytes with the version
//!   that was read, writes a temporary sibling, fsyncs it and `rename`s it over the object (atomic for readers,
//!   who see the old bytes or the new ones), then fsyncs the directory. Writers that use this lock are
//!   serialized; any other change of the bytes is still detected by the digest.

use crate::error::{StorageError, StorageErrorKind};
use crate::uri::{LakeUri, RelativePaths};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientConfigKey, ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    UpdateVersion,
};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

/// S3 settings from the contract's `storage`, overridden by CLI flags; the rest comes from the standard AWS
/// environment (credentials, web identity / IRSA, container credentials, `AWS_ENDPOINT_URL`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct StoreOptions {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

impl StoreOptions {
    pub fn from_storage(storage: &silverline_crds::StorageSpec) -> StoreOptions {
        StoreOptions { endpoint: storage.endpoint.clone(), region: storage.region.clone() }
    }
}

/// How a local lake root is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    pub relative_paths: RelativePaths,
    /// Create a missing local directory (writers); otherwise a missing one is `NotFound` (readers).
    pub create_local: bool,
}

impl OpenOptions {
    /// The worker and the CLI: relative paths are fine, the directory is created.
    pub const WRITER: OpenOptions = OpenOptions { relative_paths: RelativePaths::Accept, create_local: true };
    /// The operator: absolute paths only, nothing is created.
    pub const READER: OpenOptions = OpenOptions { relative_paths: RelativePaths::Reject, create_local: false };
}

/// How long a store request is retried by default (`SILVERLINE_IO_RETRY_SECONDS`).
pub const DEFAULT_IO_RETRY_SECONDS: u64 = 180;

/// Throttling, 5xx and timeouts are retried with exponential backoff and jitter for up to
/// `SILVERLINE_IO_RETRY_SECONDS` (default [`DEFAULT_IO_RETRY_SECONDS`]) per request.
pub fn retry_config() -> object_store::RetryConfig {
    let seconds = std::env::var("SILVERLINE_IO_RETRY_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_IO_RETRY_SECONDS);
    object_store::RetryConfig {
        retry_timeout: std::time::Duration::from_secs(seconds),
        max_retries: 10,
        backoff: object_store::BackoffConfig::default(),
    }
}

/// The S3 client of one bucket: path-style when an endpoint is given (S3-compatible stores), conditional puts
/// by ETag, the retry budget above. Each request has the client's total timeout (`AWS_TIMEOUT`; object_store's
/// default is 30 s): for puts, listings and small reads, not for an input read as one long stream
/// ([`s3_stream_store`]).
pub fn s3_store(bucket: &str, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>, StorageError> {
    s3_client(bucket, options, AmazonS3Builder::from_env())
}

/// The same S3 client for objects read as one stream for as long as their reader takes (a run's input): no total
/// timeout on any of its requests, and instead a read timeout of [`INPUT_READ_TIMEOUT_ENV`] seconds (default
/// [`DEFAULT_INPUT_READ_TIMEOUT_SECONDS`]) — a response that delivers nothing for that long fails, and so does one
/// whose reader leaves it unread for that long (reqwest restarts the clock with each chunk handed over); either way
/// the reader may resume it where it stopped. With the total timeout, every GET that outlasted it broke and was
/// resumed, and once the retry budget — counted from the GET's start, `SILVERLINE_IO_RETRY_SECONDS` — was spent the
/// next break failed the run (exit 75, every retry alike): an input whose reading took longer than ~3.5 minutes
/// could not be processed at all. `AWS_TIMEOUT` and `AWS_READ_TIMEOUT` are the other clients' (the lake's) and not
/// taken here: the first limits whole requests, and reqwest applies the second from a request's start until its
/// answer begins, which for the lake includes sending each upload's body.
pub fn s3_stream_store(bucket: &str, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let vars = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let client = stream_client_options(vars).map_err(|e| StorageError::usage(format!("s3://{bucket}"), e))?;
    s3_client(bucket, options, AmazonS3Builder::from_env().with_client_options(client))
}

/// Seconds an input's stream may deliver nothing (or be left unread) before it breaks and is resumed.
pub const INPUT_READ_TIMEOUT_ENV: &str = "SILVERLINE_INPUT_READ_TIMEOUT_SECONDS";
/// [`INPUT_READ_TIMEOUT_ENV`] when unset.
pub const DEFAULT_INPUT_READ_TIMEOUT_SECONDS: u64 = 30;

/// The HTTP client options the `AWS_*` variables set (parsed as `AmazonS3Builder::from_env` parses them: proxy,
/// certificates, `AWS_ALLOW_HTTP`, the connect timeout, ...) but the two timeouts, for long streams: the total
/// timeout off, the read timeout from [`INPUT_READ_TIMEOUT_ENV`].
fn stream_client_options(vars: impl Iterator<Item = (String, String)>) -> Result<ClientOptions, String> {
    use object_store::aws::AmazonS3ConfigKey;
    let mut read = DEFAULT_INPUT_READ_TIMEOUT_SECONDS;
    let mut client = ClientOptions::new();
    for (name, value) in vars {
        if name == INPUT_READ_TIMEOUT_ENV {
            read = value.trim().parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                format!("{INPUT_READ_TIMEOUT_ENV}={value:?} is not a whole number of seconds above 0")
            })?;
            continue;
        }
        if !name.starts_with("AWS_") {
            continue;
        }
        let Ok(AmazonS3ConfigKey::Client(key)) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() else {
            continue;
        };
        match key {
            ClientConfigKey::Timeout | ClientConfigKey::ReadTimeout => {}
            key => client = client.with_config(key, value),
        }
    }
    Ok(client.with_timeout_disabled().with_read_timeout(std::time::Duration::from_secs(read)))
}

fn s3_client(
    bucket: &str,
    options: &StoreOptions,
    builder: AmazonS3Builder,
) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let mut builder =
        builder.with_bucket_name(bucket).with_conditional_put(S3ConditionalPut::ETagMatch).with_retry(retry_config());
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
    // Whatever set them (the contract, a flag, or AWS_REGION / AWS_DEFAULT_REGION from the environment), the
    // client builds host names from the region and URLs from the bucket: one that could name another host is
    // refused before any request, or a web-identity token would go to `sts.{region}.amazonaws.com` of someone's
    // choosing.
    if let Some(region) = builder.get_config_value(&object_store::aws::AmazonS3ConfigKey::Region)
        && let Err(e) = silverline_crds::names::check_region(&region)
    {
        return Err(StorageError::usage(format!("s3://{bucket}"), e.to_string()));
    }
    if let Err(e) = silverline_crds::names::check_bucket(bucket) {
        return Err(StorageError::usage(format!("s3://{bucket}"), e.to_string()));
    }
    if metadata_disabled(std::env::var(METADATA_DISABLED).ok().as_deref()) && needs_instance_metadata(&builder) {
        return Err(StorageError::usage(
            format!("s3://{bucket}"),
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, web identity \
             (AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, as IRSA sets) or container credentials; the \
             instance-metadata fallback is off because AWS_EC2_METADATA_DISABLED=true",
        ));
    }
    let store = builder.build().map_err(|e| {
        StorageError::usage(format!("s3://{bucket}"), format!("cannot configure the S3 client: {e}")).with_source(e)
    })?;
    Ok(Arc::new(store))
}

/// The AWS SDKs' switch for the instance-metadata credential fallback (`http://169.254.169.254`). object_store has
/// no such switch, so it is honoured here: with it set, a client that would fall back is refused with a clear
/// error instead of calling (or hanging on) an address that is wrong outside a cloud instance.
pub const METADATA_DISABLED: &str = "AWS_EC2_METADATA_DISABLED";

fn metadata_disabled(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true") || v.trim() == "1")
}

/// Whether the client would take its credentials from the instance-metadata endpoint: object_store's last resort,
/// after static keys, web identity and container credentials (in that order), unless requests go unsigned.
fn needs_instance_metadata(builder: &AmazonS3Builder) -> bool {
    use object_store::aws::AmazonS3ConfigKey as Key;
    let set = |key: Key| builder.get_config_value(&key).is_some_and(|v| !v.is_empty());
    let unsigned = builder.get_config_value(&Key::SkipSignature).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    !(unsigned
        || set(Key::AccessKeyId)
        || set(Key::SecretAccessKey)
        || (set(Key::WebIdentityTokenFile) && set(Key::RoleArn))
        || set(Key::ContainerCredentialsRelativeUri)
        || (set(Key::ContainerCredentialsFullUri) && set(Key::ContainerAuthorizationTokenFile)))
}

/// The version of an object as read, for a later conditional replace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectVersion {
    /// S3: the ETag (and version id, where the bucket versions objects).
    ETag { e_tag: String, version: Option<String> },
    /// A local lake: the SHA-256 of the bytes.
    Sha256(String),
}

impl std::fmt::Display for ObjectVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectVersion::ETag { e_tag, .. } => write!(f, "etag {e_tag}"),
            ObjectVersion::Sha256(sha) => write!(f, "sha256 {sha}"),
        }
    }
}

/// A lake root in some object store.
#[derive(Debug, Clone)]
pub struct Lake {
    pub store: Arc<dyn ObjectStore>,
    /// Prefix of the root inside the store.
    pub prefix: Path,
    /// The URI of the root, for messages and reports (`file:///…` or `s3://…`).
    pub uri: String,
    /// For a local root, its directory (canonical).
    pub local_dir: Option<PathBuf>,
}

impl Lake {
    /// Opens a lake root.
    pub fn open(uri: &str, options: &StoreOptions, open: OpenOptions) -> Result<Lake, StorageError> {
        match LakeUri::parse(uri, open.relative_paths)? {
            LakeUri::Local(dir) => {
                if open.create_local {
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        StorageError::from_io(e, &dir.display().to_string())
                            .reclassify_as_usage("cannot create the directory")
                    })?;
                }
                let shown = dir.display().to_string();
                let dir = dir.canonicalize().map_err(|e| StorageError::from_io(e, &shown))?;
                // fsync: a write returns once its file and directory entry are on disk (multipart uploads once, at
                // completion), so a manifest, audit record or copy is durable before the pointer that names it.
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| StorageError::usage(&shown, "cannot open the directory").with_source(e))?
                    .with_fsync(true);
                Ok(Lake {
                    store: Arc::new(store),
                    prefix: Path::default(),
                    uri: format!("file://{}", dir.display()),
                    local_dir: Some(dir),
                })
            }
            LakeUri::S3 { bucket, prefix } => Ok(Lake {
                store: s3_store(&bucket, options)?,
                prefix: Path::from(prefix.as_str()),
                uri: format!("s3://{bucket}/{prefix}"),
                local_dir: None,
            }),
        }
    }

    /// The path of a lake-relative key (`silver/tx/_LATEST.json`) in the store.
    pub fn path(&self, relative: &str) -> Path {
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        parts.extend(relative.split('/').filter(|p| !p.is_empty()).map(str::to_owned));
        Path::from_iter(parts)
    }

    /// The lake-relative key of a store path, if it lies under the root.
    pub fn relative(&self, path: &Path) -> Option<String> {
        let mut parts = path.parts();
        for expected in self.prefix.parts() {
            if parts.next()? != expected {
                return None;
            }
        }
        Some(parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/"))
    }

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

    fn error(&self, err: object_store::Error, key: &Path) -> StorageError {
        StorageError::from_store(err, &self.uri_of(key))
    }

    /// The bytes of an object, or `None` when there is none.
    pub async fn get(&self, key: &Path) -> Result<Option<Bytes>, StorageError> {
        Ok(self.get_versioned(key).await?.map(|(bytes, _)| bytes))
    }

    /// The bytes of an object and its version, or `None` when there is none.
    pub async fn get_versioned(&self, key: &Path) -> Result<Option<(Bytes, ObjectVersion)>, StorageError> {
        let got = match self.store.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(e, key)),
        };
        let meta = got.meta.clone();
        let bytes = got.bytes().await.map_err(|e| self.error(e, key))?;
        let version = match (&self.local_dir, meta.e_tag) {
            (None, Some(e_tag)) => ObjectVersion::ETag { e_tag, version: meta.version },
            _ => ObjectVersion::Sha256(hex::encode(Sha256::digest(&bytes))),
        };
        Ok(Some((bytes, version)))
    }

    /// An object's metadata, or `None` when there is none.
    pub async fn head(&self, key: &Path) -> Result<Option<ObjectMeta>, StorageError> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e, key)),
        }
    }

    /// Writes an object, replacing any.
    pub async fn put(&self, key: &Path, body: Bytes) -> Result<(), StorageError> {
        self.store.put(key, PutPayload::from(body)).await.map(|_| ()).map_err(|e| self.error(e, key))
    }

    /// Writes an object only if none exists under the key (`AlreadyExists` otherwise).
    pub async fn put_if_absent(&self, key: &Path, body: Bytes) -> Result<(), StorageError> {
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        self.store.put_opts(key, PutPayload::from(body), options).await.map(|_| ()).map_err(|e| self.error(e, key))
    }

    /// Replaces an object only if it is still at `expected` (`Precondition` otherwise, also when it is gone).
    pub async fn replace_if_unchanged(
        &self,
        key: &Path,
        body: Bytes,
        expected: &ObjectVersion,
    ) -> Result<(), StorageError> {
        self.put_conditional(key, body, Some(expected)).await
    }

    /// Create-if-absent (`expected == None`) or replace-if-unchanged, the same way for every store. On a local
    /// lake both go through the lock described in the module's documentation.
    pub async fn put_conditional(
        &self,
        key: &Path,
        body: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<(), StorageError> {
        if let Some(dir) = &self.local_dir {
            let file = dir.join(key.as_ref());
            let uri = self.uri_of(key);
            let expected = expected.cloned();
            return tokio::task::spawn_blocking(move || local_put_conditional(&file, &body, expected.as_ref(), &uri))
                .await
                .map_err(|e| {
                    StorageError::new(StorageErrorKind::Transient, self.uri_of(key), "the writer panicked")
                        .with_source(e)
                })?;
        }
        let mode = match expected {
            None => PutMode::Create,
            Some(ObjectVersion::ETag { e_tag, version }) => {
                PutMode::Update(UpdateVersion { e_tag: Some(e_tag.clone()), version: version.clone() })
            }
            Some(ObjectVersion::Sha256(_)) => {
                return Err(StorageError::usage(self.uri_of(key), "a SHA-256 version cannot condition an S3 write"));
            }
        };
        let options = PutOptions { mode, ..PutOptions::default() };
        match self.store.put_opts(key, PutPayload::from(body), options).await {
            Ok(_) => Ok(()),
            // If-Match on a key that is gone answers 404: for the caller that is a change too.
            Err(object_store::Error::NotFound { .. }) if expected.is_some() => {
                Err(StorageError::new(StorageErrorKind::Precondition, self.uri_of(key), "the object is gone"))
            }
            Err(e) => Err(self.error(e, key)),
        }
    }

    /// A copy of an object: server-side on S3 (`CopyObject`). On a local lake the bytes are written anew into a
    /// hidden staging sibling (`.{name}.{pid}.{nanos}.tmp`: engines reading the folder skip dot files), fsynced and
    /// renamed into place, then the directory fsynced: a copy killed midway leaves no partial file under a visible
    /// name (object_store's own staging file, `{name}#1`, is hidden from its listing but not from pyarrow or
    /// Spark). Not object_store's local copy: that is a hard link, which would make the copy and its source one
    /// file — a write in place to either would change both, e.g. a run's history through its copy in `current/`.
    pub async fn copy(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        let (from_uri, to_uri) = (self.uri_of(from), self.uri_of(to));
        let action = format!("copying {from_uri} to {to_uri}");
        let Some(dir) = &self.local_dir else {
            // CopyObject answers NoSuchKey only for the source; any other failure may be about either key.
            return self.store.copy(from, to).await.map_err(|e| match e {
                object_store::Error::NotFound { .. } => StorageError::from_store(e, &from_uri).during(action),
                e => StorageError::from_store(e, &to_uri).during(action),
            });
        };
        let (source, target) = (dir.join(from.as_ref()), dir.join(to.as_ref()));
        let panicked = StorageError::new(StorageErrorKind::Transient, to_uri.clone(), "the copy panicked");
        let copied = tokio::task::spawn_blocking(move || {
            let mut source = std::fs::File::open(&source).map_err(|e| StorageError::from_io(e, &from_uri))?;
            write_staged(&target, |staging| {
                std::io::copy(&mut source, &mut std::fs::File::create(staging)?).map(|_| ())
            })
            .map_err(|e| StorageError::from_io(e, &to_uri))
        })
        .await
        .map_err(|e| panicked.with_source(e))?;
        copied.map_err(|e| e.during(action))
    }

    /// Staging files left under `prefix` of a local lake by writers that were killed (none on S3, where an
    /// object appears whole or not at all): object_store's `{name}#{digits}`, which its listing hides but engines
    /// reading the folder do not (this crate no longer writes them where they matter, so any is a leftover), and
    /// this crate's hidden `.{name}.{pid}.{nanos}.tmp` once older than [`STALE_STAGING`] (a younger one may be a
    /// write under way). Returns their keys (a local lake's root has no prefix: store path = lake-relative key).
    pub async fn local_staging_leftovers(&self, prefix: &Path) -> Result<Vec<String>, StorageError> {
        let Some(dir) = &self.local_dir else { return Ok(Vec::new()) };
        let (root, uri) = (dir.clone(), self.uri_of(prefix));
        let below = dir.join(prefix.as_ref());
        let found = tokio::task::spawn_blocking(move || staging_leftovers(&below, std::time::SystemTime::now()))
            .await
            .map_err(|e| {
                StorageError::new(StorageErrorKind::Transient, uri.clone(), "the listing panicked").with_source(e)
            })?
            .map_err(|e| StorageError::from_io(e, &uri))?;
        Ok(found
            .iter()
            .filter_map(|file| file.strip_prefix(&root).ok())
            .map(|relative| relative.to_string_lossy().into_owned())
            .collect())
    }

    /// Removes the staging leftovers of [`Lake::local_staging_leftovers`] with `std::fs` (object_store cannot
    /// name them); returns their keys.
    pub async fn remove_local_staging_leftovers(&self, prefix: &Path) -> Result<Vec<String>, StorageError> {
        let Some(dir) = &self.local_dir else { return Ok(Vec::new()) };
        let found = self.local_staging_leftovers(prefix).await?;
        for key in &found {
            match std::fs::remove_file(dir.join(key)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::from_io(e, &format!("{}/{key}", self.uri))),
            }
        }
        Ok(found)
    }

    /// Deletes an object; a missing one is fine.
    pub async fn delete(&self, key: &Path) -> Result<(), StorageError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(e, key)),
        }
    }

    /// Every object under a prefix (recursively), in no particular order.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, StorageError> {
        match self.store.list(Some(prefix)).try_collect::<Vec<_>>().await {
            Ok(found) => Ok(found),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(self.error(e, prefix)),
        }
    }

    /// The "directories" and objects directly under a prefix.
    pub async fn list_dir(&self, prefix: &Path) -> Result<(Vec<Path>, Vec<ObjectMeta>), StorageError> {
        match self.store.list_with_delimiter(Some(prefix)).await {
            Ok(found) => Ok((found.common_prefixes, found.objects)),
            Err(object_store::Error::NotFound { .. }) => Ok((Vec::new(), Vec::new())),
            Err(e) => Err(self.error(e, prefix)),
        }
    }
}

impl StorageError {
    fn reclassify_as_usage(mut self, detail: &str) -> StorageError {
        self.kind = StorageErrorKind::Usage;
        self.detail = format!("{detail}: {}", self.detail);
        self
    }
}

fn local_put_conditional(
    file: &std::path::Path,
    body: &[u8],
    expected: Option<&ObjectVersion>,
    uri: &str,
) -> Result<(), StorageError> {
    use std::io::Write;
    let io = |e: std::io::Error| StorageError::from_io(e, uri);
    let parent = file.parent().ok_or_else(|| StorageError::usage(uri, "the key has no directory"))?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    std::fs::create_dir_all(parent).map_err(io)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(parent.join(format!(".{name}.lock")))
        .map_err(io)?;
    lock.lock().map_err(io)?;
    let current = match std::fs::read(file) {
        Ok(bytes) => Some(hex::encode(Sha256::digest(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    match (expected, &current) {
        (None, None) => {}
        (None, Some(_)) => return Err(StorageError::new(StorageErrorKind::AlreadyExists, uri, "already exists")),
        (Some(ObjectVersion::Sha256(want)), Some(have)) if want == have => {}
        (Some(ObjectVersion::Sha256(want)), Some(have)) => {
            return Err(StorageError::new(
                StorageErrorKind::Precondition,
                uri,
                format!("its SHA-256 is {have}, expected {want}"),
            ));
        }
        (Some(_), None) => return Err(StorageError::new(StorageErrorKind::Precondition, uri, "the object is gone")),
        (Some(ObjectVersion::ETag { .. }), Some(_)) => {
            return Err(StorageError::usage(uri, "an ETag cannot condition a local write"));
        }
    }
    write_staged(file, |temp| std::fs::File::create(temp)?.write_all(body)).map_err(io)?;
    drop(lock);
    Ok(())
}

/// How old a hidden staging file (`.{name}.{pid}.{nanos}.tmp`) must be before a sweep takes it for a leftover
/// of a killed writer rather than a write under way.
pub const STALE_STAGING: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Writes `file` by `fill`ing a hidden staging sibling `.{name}.{pid}.{nanos}.tmp`, fsyncing it, renaming it
/// into place and fsyncing the directory: readers see the whole file or none, and engines reading the folder
/// skip the staging file (a dot file) if the writer is killed midway. The staging file is removed on failure.
fn write_staged(
    file: &std::path::Path,
    fill: impl FnOnce(&std::path::Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("the key has no {what}"));
    let parent = file.parent().ok_or_else(|| invalid("directory"))?;
    let name = file.file_name().ok_or_else(|| invalid("file name"))?.to_string_lossy();
    std::fs::create_dir_all(parent)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let temp = parent.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let written = (|| {
        fill(&temp)?;
        std::fs::File::options().write(true).open(&temp)?.sync_all()?;
        std::fs::rename(&temp, file)?;
        std::fs::File::open(parent)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Whether a file name is a writer's staging file: object_store's `{name}#{digits}`, or this crate's
/// `.{name}.{pid}.{nanos}.tmp` (`Some(true)` for the first kind, `Some(false)` for the second).
fn staging_kind(name: &str) -> Option<bool> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((_, suffix)) = name.rsplit_once('#')
        && digits(suffix)
    {
        return Some(true);
    }
    let ours = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).and_then(|n| {
        let mut parts = n.rsplitn(3, '.');
        let (nanos, pid, rest) = (parts.next()?, parts.next()?, parts.next()?);
        (digits(nanos) && digits(pid) && !rest.is_empty()).then_some(())
    });
    ours.map(|()| false)
}

/// The staging leftovers under `dir`, recursively (see [`Lake::local_staging_leftovers`]); a missing `dir` has
/// none.
fn staging_leftovers(dir: &std::path::Path, now: std::time::SystemTime) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            found.extend(staging_leftovers(&entry.path(), now)?);
            continue;
        }
        let stale = match staging_kind(&entry.file_name().to_string_lossy()) {
            None => false,
            Some(true) => true,
            Some(false) => {
                let modified = entry.metadata()?.modified()?;
                now.duration_since(modified).is_ok_and(|age| age >= STALE_STAGING)
            }
        };
        if stale {
            found.push(entry.path());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn instance_metadata_is_needed_only_without_any_other_credentials() {
        use object_store::aws::AmazonS3ConfigKey as Key;
        let bare = || AmazonS3Builder::new().with_bucket_name("b");
        assert!(needs_instance_metadata(&bare()));
        assert!(!needs_instance_metadata(&bare().with_access_key_id("k").with_secret_access_key("s")));
        assert!(!needs_instance_metadata(&bare().with_config(Key::SkipSignature, "true")));
        let irsa = bare().with_config(Key::WebIdentityTokenFile, "/var/run/token").with_config(Key::RoleArn, "arn");
        assert!(!needs_instance_metadata(&irsa));
        assert!(needs_instance_metadata(&bare().with_config(Key::WebIdentityTokenFile, "/var/run/token")));
        assert!(!needs_instance_metadata(&bare().with_config(Key::ContainerCredentialsRelativeUri, "/v2/creds")));
        let cases =
            [(Some("true"), true), (Some("TRUE"), true), (Some("1"), true), (Some("false"), false), (None, false)];
        for (value, disabled) in cases {
            assert_eq!(metadata_disabled(value), disabled, "{value:?}");
        }
    }

    #[test]
    fn a_stream_client_has_no_total_timeout_and_its_own_read_timeout() -> Result<(), String> {
        let options = |vars: &[(&str, &str)]| {
            stream_client_options(vars.iter().map(|(name, value)| (name.to_string(), value.to_string())))
        };
        let value = |client: &ClientOptions, key: ClientConfigKey| client.get_config_value(&key);
        let defaults = options(&[])?;
        assert_eq!(
            value(&ClientOptions::new(), ClientConfigKey::Timeout).as_deref(),
            Some("30s"),
            "the bounded default"
        );
        assert_eq!(value(&defaults, ClientConfigKey::Timeout), None);
        assert_eq!(value(&defaults, ClientConfigKey::ReadTimeout).as_deref(), Some("30s"));
        // The lake's two timeouts are not taken; the other client settings are kept.
        let set = options(&[
            ("AWS_TIMEOUT", "2s"),
            ("AWS_READ_TIMEOUT", "3s"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_PROXY_URL", "http://127.0.0.1:3128"),
            ("AWS_CONNECT_TIMEOUT", "4s"),
            ("TIMEOUT", "9s"),
        ])?;
        assert_eq!(value(&set, ClientConfigKey::Timeout), None);
        assert_eq!(value(&set, ClientConfigKey::ReadTimeout).as_deref(), Some("30s"));
        assert_eq!(value(&set, ClientConfigKey::AllowHttp).as_deref(), Some("true"));
        assert_eq!(value(&set, ClientConfigKey::ProxyUrl).as_deref(), Some("http://127.0.0.1:3128"));
        assert_eq!(value(&set, ClientConfigKey::ConnectTimeout).as_deref(), Some("4s"));
        let own = options(&[("AWS_READ_TIMEOUT", "3s"), (INPUT_READ_TIMEOUT_ENV, " 7 ")])?;
        assert_eq!(value(&own, ClientConfigKey::ReadTimeout).as_deref(), Some("7s"));
        for bad in ["0", "soon", "1.5", "-3"] {
            let err = options(&[(INPUT_READ_TIMEOUT_ENV, bad)]).expect_err(bad);
            assert!(err.contains(INPUT_READ_TIMEOUT_ENV) && err.contains(bad), "{err}");
        }
        Ok(())
    }

    #[test]
    fn a_region_or_bucket_that_could_name_another_host_is_refused_before_any_request() {
        let options = |region: &str| StoreOptions { region: Some(region.into()), ..StoreOptions::default() };
        let refused = s3_store("lake", &options("attacker.example/")).expect_err("refused");
        assert_eq!(refused.kind, StorageErrorKind::Usage);
        assert!(refused.to_string().contains("S3 region \"attacker.example/\""), "{refused}");
        let refused = s3_store("evil.example#", &options("eu-west-1")).expect_err("refused");
        assert!(refused.to_string().contains("S3 bucket"), "{refused}");
    }

    fn local(dir: &std::path::Path) -> Lake {
        Lake::open(dir.to_str().expect("utf-8"), &StoreOptions::default(), OpenOptions::WRITER).expect("open")
    }

    #[tokio::test]
    async fn a_local_replace_detects_a_change_since_the_read_and_create_detects_an_existing_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = local(dir.path());
        let key = lake.path("silver/tx/_LATEST.json");
        lake.put_conditional(&key, Bytes::from_static(b"v1"), None).await.expect("first create");
        let again = lake.put_conditional(&key, Bytes::from_static(b"v1"), None).await;
        assert_eq!(again.map_err(|e| e.kind), Err(StorageErrorKind::AlreadyExists));
        let (_, read) = lake.get_versioned(&key).await.expect("get").expect("exists");
        // Someone else moves it between our read and our write.
        let (_, theirs) = lake.get_versioned(&key).await.expect("get").expect("exists");
        lake.replace_if_unchanged(&key, Bytes::from_static(b"v2-theirs"), &theirs).await.expect("theirs");
        let ours = lake.replace_if_unchanged(&key, Bytes::from_static(b"v2-ours"), &read).await;
        assert_eq!(ours.map_err(|e| e.kind), Err(StorageErrorKind::Precondition));
        assert_eq!(lake.get(&key).await.expect("get").expect("exists"), Bytes::from_static(b"v2-theirs"));
        let (_, now) = lake.get_versioned(&key).await.expect("get").expect("exists");
        lake.replace_if_unchanged(&key, Bytes::from_static(b"v3"), &now).await.expect("replace on a fresh read");
        let gone = lake.replace_if_unchanged(&lake.path("silver/tx/none"), Bytes::new(), &now).await;
        assert_eq!(gone.map_err(|e| e.kind), Err(StorageErrorKind::Precondition));
    }

    #[tokio::test]
    async fn concurrent_local_replaces_from_one_read_let_exactly_one_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = local(dir.path());
        let key = lake.path("p/_LATEST.json");
        lake.put_conditional(&key, Bytes::from_static(b"0"), None).await.expect("create");
        let (_, read) = lake.get_versioned(&key).await.expect("get").expect("exists");
        let writers = (0..8).map(|i| {
            let (lake, key, read) = (lake.clone(), key.clone(), read.clone());
            tokio::spawn(
                async move { lake.replace_if_unchanged(&key, Bytes::from(format!("writer {i}")), &read).await },
            )
        });
        let results = futures::future::join_all(writers).await;
        let won = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
        assert_eq!(won, 1, "{results:?}");
    }

    #[test]
    fn a_local_lake_is_opened_with_fsync_on() {
        // Only the option can be checked here (a power loss cannot be): object_store's LocalFileSystem then fsyncs
        // each written file and its directory before a write returns.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = format!("{:?}", local(dir.path()).store);
        assert!(store.contains("fsync: true"), "{store}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_copy_shows_no_partial_file_under_a_visible_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = local(dir.path());
        let body = vec![7_u8; 48 << 20];
        let source = dir.path().join("silver/tx/run/part-00000.parquet");
        std::fs::create_dir_all(source.parent().expect("parent")).expect("mkdir");
        std::fs::write(&source, &body).expect("source");
        let target_dir = dir.path().join("silver/tx/current/year=2024/month=01");
        std::fs::create_dir_all(&target_dir).expect("mkdir");
        // What an engine listing the folder sees while the copy is under way: every name not hidden, with its size.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (done, target_dir) = (done.clone(), target_dir.clone());
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    for entry in std::fs::read_dir(&target_dir).expect("read_dir").flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if !name.starts_with('.') {
                            seen.insert((name, entry.metadata().map(|m| m.len()).unwrap_or(0)));
                        }
                    }
                }
                seen
            })
        };
        let copied = lake
            .copy(
                &lake.path("silver/tx/run/part-00000.parquet"),
                &lake.path("silver/tx/current/year=2024/month=01/r-part-00000.parquet"),
            )
            .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        copied.expect("copy");
        let seen = watcher.join().expect("watcher");
        let whole = BTreeSet::from([("r-part-00000.parquet".to_owned(), body.len() as u64)]);
        assert!(seen.is_subset(&whole), "visible during the copy: {seen:?}");
        let left: Vec<_> = std::fs::read_dir(&target_dir).expect("read_dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, ["r-part-00000.parquet"], "nothing but the copy is left");
        assert_eq!(std::fs::read(target_dir.join("r-part-00000.parquet")).expect("copy").len(), body.len());
    }

    #[tokio::test]
    async fn a_failed_copy_names_both_keys_and_which_one_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = local(dir.path());
        let (from, to) = (lake.path("silver/tx/run/part-00000.parquet"), lake.path("silver/tx/current/r-part.parquet"));
        let (from_uri, to_uri) = (lake.uri_of(&from), lake.uri_of(&to));
        let missing = lake.copy(&from, &to).await.expect_err("no source");
        assert_eq!((missing.kind, missing.uri.as_str()), (StorageErrorKind::NotFound, from_uri.as_str()));
        assert_eq!(missing.to_string(), format!("copying {from_uri} to {to_uri}: {from_uri}: no such object"));
        // The destination cannot be written: its directory is a file.
        std::fs::create_dir_all(dir.path().join("silver/tx/run")).expect("mkdir");
        std::fs::write(dir.path().join("silver/tx/run/part-00000.parquet"), "rows").expect("source");
        std::fs::write(dir.path().join("silver/tx/current"), "in the way").expect("file");
        let unwritable = lake.copy(&from, &to).await.expect_err("no directory");
        assert_eq!(unwritable.uri, to_uri);
        assert!(unwritable.to_string().starts_with(&format!("copying {from_uri} to {to_uri}: ")), "{unwritable}");
    }

    #[test]
    fn staging_files_are_told_apart_from_objects() {
        let cases = [
            ("part-00000.parquet#1", Some(true)),
            ("part-00000.parquet#12", Some(true)),
            (".part-00000.parquet.4242.1764000000000000000.tmp", Some(false)),
            (".________MANIFEST.json.1.2.tmp", Some(false)),
            ("part-00000.parquet", None),
            ("part#x", None),
            ("part#", None),
            (".part-00000.parquet.lock", None),
            (".part.x.2.tmp", None),
            ("_MANIFEST.json", None),
        ];
        for (name, kind) in cases {
            assert_eq!(staging_kind(name), kind, "{name}");
        }
    }

    #[tokio::test]
    async fn staging_leftovers_are_found_and_removed_but_a_young_hidden_one_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = local(dir.path());
        let month = dir.path().join("silver/tx/current/year=2024/month=01");
        std::fs::create_dir_all(&month).expect("mkdir");
        let old = std::time::SystemTime::now() - STALE_STAGING - std::time::Duration::from_secs(1);
        for (name, modified) in [
            ("r-part-00000.parquet", None),
            ("r-part-00001.parquet#1", None),
            (".r-part-00002.parquet.77.1.tmp", Some(old)),
            (".r-part-00003.parquet.77.2.tmp", None),
            (".r-part-00000.parquet.lock", Some(old)),
        ] {
            let file = std::fs::File::create(month.join(name)).expect("create");
            if let Some(modified) = modified {
                file.set_modified(modified).expect("set_modified");
            }
        }
        let prefix = lake.path("silver/tx/current");
        let mut removed = lake.remove_local_staging_leftovers(&prefix).await.expect("removed");
        removed.sort();
        assert_eq!(
            removed,
            [
                "silver/tx/current/year=2024/month=01/.r-part-00002.parquet.77.1.tmp",
                "silver/tx/current/year=2024/month=01/r-part-00001.parquet#1",
            ]
        );
        let mut left: Vec<_> = std::fs::read_dir(&month)
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(left, [".r-part-00000.parquet.lock", ".r-part-00003.parquet.77.2.tmp", "r-part-00000.parquet"]);
        assert!(lake.local_staging_leftovers(&prefix).await.expect("listed").is_empty());
    }

    #[test]
    fn relative_keys_round_trip_under_a_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lake = local(dir.path());
        lake.prefix = Path::from("root/lake");
        let path = lake.path("silver/tx/_LATEST.json");
        assert_eq!(path.as_ref(), "root/lake/silver/tx/_LATEST.json");
        assert_eq!(lake.relative(&path).as_deref(), Some("silver/tx/_LATEST.json"));
        assert_eq!(lake.relative(&Path::from("other/silver")), None);
    }
}
