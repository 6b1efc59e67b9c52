//! Storage errors, classified once by what went wrong rather than by where: the worker turns the kind into an
//! exit code, the operator into a requeue policy, the promoter into retry-or-refuse. The object store's own
//! error stays attached as the `source`; messages name the object, never a credential.

use std::fmt;

/// What kind of failure a storage call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageErrorKind {
    /// No object under the key.
    NotFound,
    /// Credentials refused, or the bucket does not exist: permanent until someone changes the setup.
    AccessDenied,
    /// A create-only write met an existing object.
    AlreadyExists,
    /// A conditional replace met an object that changed since it was read.
    Precondition,
    /// Throttling, 5xx, timeouts, connection failures after the client's own retries: worth a later retry.
    Transient,
    /// A URI or setting that cannot work (unsupported scheme, no bucket, bad endpoint).
    Usage,
}

impl StorageErrorKind {
    /// A stable, low-cardinality name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageErrorKind::NotFound => "not_found",
            StorageErrorKind::AccessDenied => "access_denied",
            StorageErrorKind::AlreadyExists => "already_exists",
            StorageErrorKind::Precondition => "precondition",
            StorageErrorKind::Transient => "transient_io",
            StorageErrorKind::Usage => "usage",
        }
    }
}

impl fmt::Display for StorageErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed storage call: its kind, the URI of the object (or root) it concerned, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct StorageError {
    pub kind: StorageErrorKind,
    /// The object's URI (`file:///…` or `s3://bucket/key`).
    pub uri: String,
    /// What happened, in words, for the message (the `source` carries the store's own error).
    pub detail: String,
    #[source]
    pub source: Option<Source>,
    /// What was being done, when the object alone does not say it: a copy names both keys (`copying SRC to
    /// DST`), since the store's answer does not always say which of the two it is about.
    pub action: Option<String>,
}

impl StorageError {
    pub fn new(kind: StorageErrorKind, uri: impl Into<String>, detail: impl Into<String>) -> StorageError {
        StorageError { kind, uri: uri.into(), detail: detail.into(), source: None, action: None }
    }

    pub fn with_source(mut self, source: impl Into<Source>) -> StorageError {
        self.source = Some(source.into());
        self
    }

    pub fn usage(uri: impl Into<String>, detail: impl Into<String>) -> StorageError {
        StorageError::new(StorageErrorKind::Usage, uri, detail)
    }

    /// The same error, said to have happened while doing `action` (e.g. `copying SRC to DST`).
    pub fn during(mut self, action: impl Into<String>) -> StorageError {
        self.action = Some(action.into());
        self
    }

    fn describe(&self) -> String {
        let (uri, detail) = (&self.uri, &self.detail);
        if let Some(action) = &self.action {
            // The action names the objects; only a missing one is known for sure (its key is `uri`).
            return match self.kind {
                StorageErrorKind::NotFound => format!("{action}: {uri}: no such object"),
                StorageErrorKind::AccessDenied => format!("{action}: access was refused: {detail}"),
                StorageErrorKind::Transient => format!("{action}: transient I/O failure: {detail}"),
                StorageErrorKind::AlreadyExists => format!("{action}: {uri} already exists"),
                StorageErrorKind::Precondition => format!("{action}: {uri} changed since it was read: {detail}"),
                StorageErrorKind::Usage => format!("{action}: {detail}"),
            };
        }
        match self.kind {
            StorageErrorKind::AccessDenied => format!("access to {uri} was refused: {detail}"),
            StorageErrorKind::Transient => format!("transient I/O failure at {uri}: {detail}"),
            StorageErrorKind::NotFound => format!("{uri}: no such object"),
            StorageErrorKind::AlreadyExists => format!("{uri} already exists"),
            StorageErrorKind::Precondition => format!("{uri} changed since it was read: {detail}"),
            StorageErrorKind::Usage => format!("{uri}: {detail}"),
        }
    }

    /// Classifies an object-store error at `uri`. The typed variants decide; for `Generic` errors, where
    /// object_store passes the S3 error response through as text, its HTTP status and S3 error *code* (stable
    /// protocol tokens, not prose) do: refused credentials and a missing bucket are access errors, a 4xx or
    /// 501 the store would answer again is a usage error (a wrong region or setting: exit 2, not retried), and
    /// only throttling, timeouts, 5xx and failed connections are transient. The message keeps the store's code
    /// and message, never its whole response (see `Answer`).
    pub fn from_store(err: object_store::Error, uri: &str) -> StorageError {
        use object_store::Error as E;
        // What the store answered, when its error response is in the text: the message says it.
        let denied = |err: &E| match store_answer(&err.to_string()) {
            Some(answer) => format!("access denied by the object store ({answer})"),
            None => "access denied by the object store".to_owned(),
        };
        let (kind, detail) = match &err {
            E::NotFound { .. } => (StorageErrorKind::NotFound, "no such object".to_owned()),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => (StorageErrorKind::AccessDenied, denied(&err)),
            E::AlreadyExists { .. } => (StorageErrorKind::AlreadyExists, "already exists".to_owned()),
            E::Precondition { .. } => (StorageErrorKind::Precondition, "the object changed".to_owned()),
            E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::InvalidPath { .. }
            | E::UnknownConfigurationKey { .. } => (StorageErrorKind::Usage, err.to_string()),
            other if permission_denied_in_chain(other) => {
                (StorageErrorKind::AccessDenied, format!("permission denied: {other}"))
            }
            other => {
                let text = other.to_string();
                let answer = Answer::of(&text);
                match (answer.code.as_deref(), answer.status) {
                    _ if text.contains("NoSuchBucket") => {
                        (StorageErrorKind::AccessDenied, "the bucket does not exist".to_owned())
                    }
                    (Some(code), _) if REFUSED_CREDENTIALS.contains(&code) => {
                        (StorageErrorKind::AccessDenied, denied(other))
                    }
                    _ if text.contains("AccessDenied") || answer.status == Some(403) => {
                        (StorageErrorKind::AccessDenied, denied(other))
                    }
                    (Some(code), _) if RETRYABLE_CODES.contains(&code) => (StorageErrorKind::Transient, answer.detail),
                    // A request the store will refuse however often it is sent (a wrong region or setting, a
                    // conditional write the store does not implement): someone must change the setup.
                    (_, Some(status)) if (400..500).contains(&status) && status != 408 && status != 429 => {
                        (StorageErrorKind::Usage, answer.detail)
                    }
                    (_, Some(501)) => (StorageErrorKind::Usage, answer.detail),
                    _ if text.contains("incorrectly configured region") => (StorageErrorKind::Usage, answer.detail),
                    _ => (StorageErrorKind::Transient, answer.detail),
                }
            }
        };
        StorageError { kind, uri: uri.to_owned(), detail, source: Some(Box::new(err)), action: None }
    }

    /// Classifies a local file-system error at `uri` (used by the local conditional writes).
    pub fn from_io(err: std::io::Error, uri: &str) -> StorageError {
        use std::io::ErrorKind as K;
        let kind = match err.kind() {
            K::NotFound => StorageErrorKind::NotFound,
            K::PermissionDenied | K::ReadOnlyFilesystem => StorageErrorKind::AccessDenied,
            K::AlreadyExists => StorageErrorKind::AlreadyExists,
            _ => StorageErrorKind::Transient,
        };
        StorageError { kind, uri: uri.to_owned(), detail: err.to_string(), source: Some(Box::new(err)), action: None }
    }

    pub fn is(&self, kind: StorageErrorKind) -> bool {
        self.kind == kind
    }
}

/// S3 error codes that refuse the credentials themselves (with `AccessDenied` and HTTP 403).
const REFUSED_CREDENTIALS: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "AccountProblem",
    "AllAccessDisabled",
];

/// S3 (and STS) error codes worth a later retry whatever their HTTP status, most of them 400: a request cut off
/// or damaged in transit, throttling, a web-identity exchange that failed on the way, and credentials that expired
/// (a new attempt reads them again: rotated keys in a Secret, a refreshed token).
const RETRYABLE_CODES: &[&str] = &[
    "RequestTimeout",
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "IncompleteBody",
    "BadDigest",
    "XAmzContentSHA256Mismatch",
    "IDPCommunicationError",
    "ExpiredToken",
    "TokenRefreshRequired",
];

/// What a store's error text says, without its response body: the HTTP status, the S3 error code, and a detail
/// for messages made of the text before the response ("Error performing PUT … in 12ms - ") and the store's
/// code and message. A response body is never quoted whole: an S3 error response may echo what the request
/// carried (`InvalidToken` and `ExpiredToken` answer with the session token itself), and messages go to logs,
/// the run's termination message and the resource's status.
struct Answer {
    status: Option<u16>,
    code: Option<String>,
    detail: String,
}

impl Answer {
    fn of(text: &str) -> Answer {
        const STATUS: &str = "Server returned non-2xx status code: ";
        const RESPONSE: &str = "Server returned error response: ";
        let status_at = text.find(STATUS);
        let status = status_at.and_then(|at| text[at + STATUS.len()..].get(..3)?.parse().ok());
        let code = s3_element(text, "Code").map(str::to_owned);
        let Some(at) = status_at.or_else(|| text.find(RESPONSE)) else {
            return Answer { status, code, detail: text.to_owned() };
        };
        let mut detail = format!("{}the store answered", &text[..at]);
        if let Some(status) = status {
            detail.push_str(&format!(" HTTP {status}"));
        }
        if let Some(answer) = store_answer(text) {
            detail.push_str(&format!(" ({answer})"));
        }
        Answer { status, code, detail }
    }
}

/// The text of element `name` of an S3 error response quoted in `text`, if any.
fn s3_element<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{name}>"))?;
    Some(text[start..end].trim()).filter(|value| !value.is_empty())
}

/// The S3 error code and message of an error response quoted in a store's error text (`<Code>…</Code>` and
/// `<Message>…</Message>`, as S3-compatible stores answer), e.g. `InvalidAccessKeyId: The AWS Access Key Id you
/// provided does not exist in our records.` — what the store said, without the rest of the response.
fn store_answer(text: &str) -> Option<String> {
    match (s3_element(text, "Code"), s3_element(text, "Message")) {
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (code, message) => code.or(message).map(str::to_owned),
    }
}

/// Whether an I/O error refusing permission lies anywhere in the error's source chain: the local store reports
/// it inside its `Generic` variant (e.g. "Unable to create dir"), and a permission problem is permanent on every store.
fn permission_denied_in_chain(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    let mut at = Some(err);
    while let Some(e) = at {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), K::PermissionDenied | K::ReadOnlyFilesystem)
        {
            return true;
        }
        at = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Unable to create dir {path}: {source}")]
    struct UnableToCreateDir {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_permission_error_anywhere_in_the_chain_is_access_denied() {
        use std::io::{Error as IoError, ErrorKind as K};
        let nested = |kind: K| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(UnableToCreateDir { path: "/lake/x".into(), source: IoError::from(kind) }),
        };
        assert_eq!(
            StorageError::from_store(nested(K::PermissionDenied), "file:///lake/x").kind,
            StorageErrorKind::AccessDenied
        );
        assert_eq!(
            StorageError::from_store(nested(K::ReadOnlyFilesystem), "file:///lake/x").kind,
            StorageErrorKind::AccessDenied
        );
        assert_eq!(
            StorageError::from_store(nested(K::Interrupted), "file:///lake/x").kind,
            StorageErrorKind::Transient
        );
    }

    #[test]
    fn typed_store_errors_are_classified_by_kind_and_keep_their_source() {
        let cases = [
            (object_store::Error::NotFound { path: "k".into(), source: "x".into() }, StorageErrorKind::NotFound),
            (
                object_store::Error::AlreadyExists { path: "k".into(), source: "x".into() },
                StorageErrorKind::AlreadyExists,
            ),
            (
                object_store::Error::Precondition { path: "k".into(), source: "x".into() },
                StorageErrorKind::Precondition,
            ),
            (
                object_store::Error::PermissionDenied { path: "k".into(), source: "x".into() },
                StorageErrorKind::AccessDenied,
            ),
            (
                object_store::Error::Generic { store: "S3", source: "connection reset".into() },
                StorageErrorKind::Transient,
            ),
            (
                object_store::Error::Generic { store: "S3", source: "Error code NoSuchBucket".into() },
                StorageErrorKind::AccessDenied,
            ),
        ];
        for (err, kind) in cases {
            let classified = StorageError::from_store(err, "s3://b/k");
            assert_eq!(classified.kind, kind, "{classified}");
            assert!(std::error::Error::source(&classified).is_some());
            assert!(classified.to_string().contains("s3://b/k"));
        }
    }

    #[test]
    fn an_access_denied_says_what_the_store_answered() {
        let response = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\
            <Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our \
            records.</Message><RequestId>1</RequestId></Error>";
        let err = object_store::Error::Generic { store: "S3", source: response.into() };
        let classified = StorageError::from_store(err, "s3://b/k");
        assert_eq!(classified.kind, StorageErrorKind::AccessDenied);
        assert_eq!(
            classified.to_string(),
            "access to s3://b/k was refused: access denied by the object store (InvalidAccessKeyId: The AWS Access \
             Key Id you provided does not exist in our records.)"
        );
        // A typed refusal quoting the response says it too; one without a response says what it can.
        let quoted = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        let typed = object_store::Error::PermissionDenied { path: "k".into(), source: quoted.into() };
        let classified = StorageError::from_store(typed, "s3://b/k");
        assert!(classified.to_string().ends_with("(AccessDenied: Access Denied)"), "{classified}");
        let bare = object_store::Error::Unauthenticated { path: "k".into(), source: "no token".into() };
        let classified = StorageError::from_store(bare, "s3://b/k");
        assert!(classified.to_string().ends_with("refused: access denied by the object store"), "{classified}");
        assert_eq!(store_answer("<Code></Code>"), None);
    }

    #[test]
    fn a_refusal_is_classified_by_status_and_code_and_never_quotes_the_response() {
        let generic = |text: String| object_store::Error::Generic { store: "S3", source: text.into() };
        let failed = |status: &str, code: &str| {
            format!(
                "Error performing PUT http://127.0.0.1:9000/b/k in 12ms - Server returned non-2xx status code: \
                 {status}: <?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>It failed.</Message>\
                 <Token-0>SESSIONTOKEN</Token-0><RequestId>1</RequestId></Error>"
            )
        };
        let cases = [
            (failed("400 Bad Request", "ExpiredToken"), StorageErrorKind::Transient),
            (failed("400 Bad Request", "IncompleteBody"), StorageErrorKind::Transient),
            (failed("400 Bad Request", "InvalidToken"), StorageErrorKind::AccessDenied),
            (failed("400 Bad Request", "AuthorizationHeaderMalformed"), StorageErrorKind::Usage),
            (failed("400 Bad Request", "RequestTimeout"), StorageErrorKind::Transient),
            (failed("501 Not Implemented", "NotImplemented"), StorageErrorKind::Usage),
            (failed("503 Service Unavailable", "SlowDown"), StorageErrorKind::Transient),
            (failed("500 Internal Server Error", "InternalError"), StorageErrorKind::Transient),
            (failed("429 Too Many Requests", "TooManyRequests"), StorageErrorKind::Transient),
            (
                "Error performing GET http://127.0.0.1:9000/b/k in 3ms - Received redirect without LOCATION, this \
                 normally indicates an incorrectly configured region"
                    .to_owned(),
                StorageErrorKind::Usage,
            ),
        ];
        for (text, kind) in cases {
            let classified = StorageError::from_store(generic(text.clone()), "s3://b/k");
            assert_eq!(classified.kind, kind, "{text}");
            let message = classified.to_string();
            assert!(!message.contains("SESSIONTOKEN") && !message.contains("<Error>"), "{message}");
        }
        let classified = StorageError::from_store(generic(failed("400 Bad Request", "InvalidArgument")), "s3://b/k");
        assert_eq!(
            classified.to_string(),
            "s3://b/k: Generic S3 error: Error performing PUT http://127.0.0.1:9000/b/k in 12ms - the store answered \
             HTTP 400 \
             (InvalidArgument: It failed.)"
        );
    }
}
