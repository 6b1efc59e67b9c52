//! The operator's client of the Kubernetes API: kube's, with a bound on how long a request waits for its answer.
//!
//! kube's client sets no read timeout (it would break long-lived streams) and leaves the bound to the server: the
//! apiserver answers every request but a watch within its `--request-timeout` (60 s by default). A request whose
//! answer never comes — sent on a connection the network dropped without a word (a load balancer's idle cut, an
//! apiserver restarted mid-request) — would wait forever, and with it the reconcile that sent it: the controller
//! never reconciles that object again while the reconcile is in flight, so its run would stay where it was until
//! the operator restarts. Here every request is given up after a bound, and fails like any other transient API
//! error (retried with backoff, on a new connection).
//!
//! The bound covers the wait for the response's head, not its body: a watch's head comes at once and its stream
//! is then guarded by kube-runtime's idle timeout.

use futures::future::BoxFuture;
use kube::client::ClientBuilder;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{BoxError, Layer, Service};

/// A request that got no answer within the bound.
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes API server did not answer within {}s", .limit.as_secs_f64())]
pub struct NoAnswer {
    pub limit: Duration,
}

/// A client from the environment (in-cluster, or `KUBECONFIG`), each request bounded by `timeout`.
pub async fn client(timeout: Duration) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    client_from(config, timeout)
}

/// A client of `config`, each request bounded by `timeout`.
pub fn client_from(config: kube::Config, timeout: Duration) -> Result<kube::Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?;
    Ok(builder.with_layer(&AnswerWithin(timeout)).build())
}

/// The layer that bounds each request of the service it wraps.
#[derive(Clone, Copy)]
struct AnswerWithin(Duration);

impl<S> Layer<S> for AnswerWithin {
    type Service = Bounded<S>;

    fn layer(&self, inner: S) -> Bounded<S> {
        Bounded { inner, limit: self.0 }
    }
}

#[derive(Clone)]
struct Bounded<S> {
    inner: S,
    limit: Duration,
}

impl<S, R> Service<R> for Bounded<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let (answer, limit) = (self.inner.call(request), self.limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(Box::new(NoAnswer { limit }) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::AsyncReadExt;

    /// A server on loopback that takes connections and reads requests but never answers: what a client sees of
    /// an apiserver behind a connection the network dropped.
    async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind on loopback");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                held.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                }));
            }
        });
        (addr, task)
    }

    fn config_of(addr: std::net::SocketAddr) -> kube::Config {
        let url = format!("http://{addr}").parse().expect("url");
        kube::Config::new(url)
    }

    #[tokio::test]
    async fn a_request_that_gets_no_answer_fails_after_the_bound_saying_so() {
        let (addr, server) = silent_server().await;
        let client = client_from(config_of(addr), Duration::from_millis(300)).expect("client");
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(20), client.apiserver_version()).await;
        let error = outcome.expect("the request ends by itself, not by the test's own limit").expect_err("no answer");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(10), "{waited:?}");
        let kube::Error::Service(source) = &error else { panic!("a service error: {error:?}") };
        let no_answer = source.downcast_ref::<NoAnswer>().unwrap_or_else(|| panic!("NoAnswer: {source:?}"));
        assert_eq!(no_answer.limit, Duration::from_millis(300));
        assert_eq!(error.to_string(), "ServiceError: the Kubernetes API server did not answer within 0.3s");
        server.abort();
    }

    #[tokio::test]
    async fn kubes_own_client_would_wait_for_that_answer_forever() {
        // Why the bound exists: the same request through kube's default client is still waiting when the test
        // stops looking (a check that this module's bound, not a default of kube's, ends the request above).
        let (addr, server) = silent_server().await;
        let client = kube::Client::try_from(config_of(addr)).expect("client");
        let waited = tokio::time::timeout(Duration::from_secs(2), client.apiserver_version()).await;
        assert!(waited.is_err(), "kube's own client got an outcome: {waited:?}");
        server.abort();
    }

    #[tokio::test]
    async fn an_answer_within_the_bound_is_the_servers() {
        // A server that answers: the bound changes nothing (a 404 stays the apiserver's 404).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind on loopback");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nothing here","reason":"NotFound","code":404}"#;
                let head = format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
            }
        });
        let client = client_from(config_of(addr), Duration::from_secs(10)).expect("client");
        let error = client.apiserver_version().await.expect_err("a 404");
        let kube::Error::Api(status) = &error else { panic!("the server's own answer: {error:?}") };
        assert_eq!((status.code, status.message.as_str()), (404, "nothing here"));
        server.abort();
    }
}
