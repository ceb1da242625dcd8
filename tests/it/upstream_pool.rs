//! The guard's own keep-alive pool to the cart: connections are reused across
//! requests, and one the cart closed while it sat idle costs no failed request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// A raw HTTP/1.1 cart that counts the connections that carried a request (the
/// guard's health probe also connects, but sends nothing). With
/// `close_after_answer` it closes each connection right after its first answer,
/// without announcing it (as a cart with a short keep-alive timeout does).
struct CountingCart {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingCart {
    async fn start(close_after_answer: bool) -> CountingCart {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer_heads(stream, close_after_answer, count.clone()));
            }
        });
        CountingCart { addr, accepted, task }
    }
}

impl Drop for CountingCart {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers every request head (GETs, no bodies) with a 2-byte body.
async fn answer_heads(mut stream: TcpStream, close_after_answer: bool, used: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut first = true;
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if std::mem::take(&mut first) {
                used.fetch_add(1, Ordering::SeqCst);
            }
            if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                return;
            }
            if close_after_answer {
                return;
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

async fn guard_to(cart: &CountingCart) -> TestGuard {
    TestGuard::start_with(GuardOptions { upstream_url: Some(format!("http://{}", cart.addr)), ..Default::default() })
        .await
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let cart = CountingCart::start(false).await;
    let g = guard_to(&cart).await;
    for i in 0..5 {
        let r = client_from("127.0.0.2").get(g.addr(), &format!("/shop/{i}")).send().await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(cart.accepted.load(Ordering::SeqCst), 1, "one pooled connection carries every request");
}

#[tokio::test]
async fn connection_closed_by_the_upstream_while_idle_is_replaced_without_an_error() {
    let cart = CountingCart::start(true).await;
    let g = guard_to(&cart).await;
    for i in 0..5 {
        let r = client_from("127.0.0.2").get(g.addr(), &format!("/shop/{i}")).send().await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        // Immediately, and after the close has surely arrived: both must work.
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(cart.accepted.load(Ordering::SeqCst), 5, "a closed connection is never reused");
}
