//! A forward HTTP proxy on loopback, as an egress proxy of a cluster would be: it takes requests in absolute form
//! (`GET http://host:port/path`), connects to that host — on loopback only, anything else is refused — and relays
//! the connection both ways. It counts the connections it relayed and the hosts they went to.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Stopped when dropped.
pub struct ForwardProxy {
    pub addr: SocketAddr,
    relayed: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ForwardProxy {
    pub async fn start() -> ForwardProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy on loopback");
        let addr = listener.local_addr().expect("the proxy's address");
        let relayed = Arc::new(Mutex::new(Vec::new()));
        let seen = relayed.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, seen.clone()));
            }
        });
        ForwardProxy { addr, relayed, task }
    }

    /// The upstream `host:port` of each connection relayed so far.
    pub fn relayed(&self) -> Vec<String> {
        self.relayed.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(mut client: TcpStream, relayed: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let target = line.split_whitespace().nth(1).unwrap_or_default();
    let authority = target.strip_prefix("http://").and_then(|rest| rest.split('/').next()).unwrap_or_default();
    let loopback = authority.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
    if !loopback {
        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(authority).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
        return;
    };
    if let Ok(mut r) = relayed.lock() {
        r.push(authority.to_owned());
    }
    if upstream.write_all(&head).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}
