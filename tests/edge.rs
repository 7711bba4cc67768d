//! The server's edge over real loopback sockets: clients that send half a request head, sit
//! idle on a keep-alive connection or never finish a body are closed within their timeouts,
//! and connections past the limit get a fast 503 instead of waiting in the accept queue.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{gateway_config, start_gateway, start_pair};
use paygate::config::GatewayConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something the server should do within a few hundred ms; only a
/// bound so that a broken server fails the test instead of hanging it.
const PATIENCE_MS: u64 = 5_000;

/// The tight limits these tests run the gateway with.
const HEADER_TIMEOUT_MS: u64 = 300;
const IDLE_TIMEOUT_MS: u64 = 300;
const BODY_TIMEOUT_MS: u64 = 300;

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

fn with_timeouts(mut c: GatewayConfig, header_ms: u64, idle_ms: u64, body_ms: u64) -> GatewayConfig {
    c.header_timeout = Duration::from_millis(header_ms);
    c.idle_timeout = Duration::from_millis(idle_ms);
    c.body_timeout = Duration::from_millis(body_ms);
    c
}

fn with_max_connections(mut c: GatewayConfig, n: usize) -> GatewayConfig {
    c.max_connections = n;
    c
}

/// Status and body of one response read from `stream` (Content-Length framed); `None` when the
/// server closed the connection (or reset it) before a whole response came.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return Some((status, String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string()));
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(PATIENCE_MS), read)
        .await
        .expect("server neither answered nor closed within the patience bound")
}

/// True when the server closes `stream` (EOF or reset) within the patience bound.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(PATIENCE_MS), stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("server sent bytes on a connection it should have closed"),
        Err(_) => false,
    }
}

async fn get_health(stream: &mut TcpStream) -> Option<(u16, String)> {
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: paygate\r\n\r\n").await.ok()?;
    read_response(stream).await
}

#[tokio::test]
async fn half_sent_request_heads_are_closed_within_the_header_timeout_while_health_answers() {
    let (a, b) = start_pair().await;
    let config = with_timeouts(gateway_config(&[("default", &a), ("fallback", &b)]), HEADER_TIMEOUT_MS, 60_000, 10_000);
    let gw = start_gateway(config).await;
    let addr = addr_of(&gw.url);
    const SLOW_CLIENTS: usize = 300;
    let mut slow = Vec::with_capacity(SLOW_CLIENTS);
    for _ in 0..SLOW_CLIENTS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /payments HTTP/1.1\r\nHost: paygate\r\nContent-Ty").await.unwrap();
        slow.push(s);
    }
    // The stalled heads hold no one else up: a fresh connection is answered meanwhile.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    let (status, body) = get_health(&mut fresh).await.expect("/health answered");
    assert_eq!(status, 200, "{body}");
    let waits: Vec<_> = slow.into_iter().map(|mut s| tokio::spawn(async move { closed_by_server(&mut s).await })).collect();
    let mut still_open = 0;
    for w in waits {
        still_open += usize::from(!w.await.unwrap());
    }
    assert_eq!(still_open, 0, "connections with a half-sent head still open {PATIENCE_MS} ms later");
    gw.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (a, b) = start_pair().await;
    let config = with_timeouts(gateway_config(&[("default", &a), ("fallback", &b)]), 10_000, IDLE_TIMEOUT_MS, 10_000);
    let gw = start_gateway(config).await;
    let mut s = TcpStream::connect(addr_of(&gw.url)).await.unwrap();
    let (status, _) = get_health(&mut s).await.expect("first request answered");
    assert_eq!(status, 200);
    assert!(closed_by_server(&mut s).await, "idle keep-alive connection still open {PATIENCE_MS} ms later");
    gw.stop().await;
}

#[tokio::test]
async fn keep_alive_connection_waiting_longer_than_the_header_timeout_is_kept_until_idle_timeout() {
    let (a, b) = start_pair().await;
    let config = with_timeouts(gateway_config(&[("default", &a), ("fallback", &b)]), HEADER_TIMEOUT_MS, 60_000, 10_000);
    let gw = start_gateway(config).await;
    let mut s = TcpStream::connect(addr_of(&gw.url)).await.unwrap();
    assert_eq!(get_health(&mut s).await.expect("first request answered").0, 200);
    // Waiting between requests is governed by the idle timeout, not the header timeout.
    tokio::time::sleep(Duration::from_millis(3 * HEADER_TIMEOUT_MS)).await;
    assert_eq!(get_health(&mut s).await.expect("second request on the same connection answered").0, 200);
    gw.stop().await;
}

#[tokio::test]
async fn body_that_never_finishes_gets_an_error_answer_within_the_body_timeout() {
    let (a, b) = start_pair().await;
    let config = with_timeouts(gateway_config(&[("default", &a), ("fallback", &b)]), 10_000, 60_000, BODY_TIMEOUT_MS);
    let gw = start_gateway(config).await;
    let mut s = TcpStream::connect(addr_of(&gw.url)).await.unwrap();
    s.write_all(
        b"POST /payments HTTP/1.1\r\nHost: paygate\r\nContent-Type: application/json\r\nContent-Length: 80\r\n\r\n{\"correlationId\":",
    )
    .await
    .unwrap();
    let (status, body) = read_response(&mut s).await.expect("an answer before the close");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(matches!((status, v["error"].as_str()), (408, Some("body_timeout"))), "{status} {body}");
    assert!(v["message"].is_string(), "{body}");
    assert!(closed_by_server(&mut s).await, "connection with an unfinished body still open");
    gw.stop().await;
}

#[tokio::test]
async fn connections_past_the_limit_get_a_fast_503_and_the_first_stay_open() {
    const LIMIT: usize = 5;
    let (a, b) = start_pair().await;
    let config = with_max_connections(gateway_config(&[("default", &a), ("fallback", &b)]), LIMIT);
    let gw = start_gateway(config).await;
    let addr = addr_of(&gw.url);
    let mut first = Vec::new();
    for _ in 0..LIMIT {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(get_health(&mut s).await.expect("within the limit: answered").0, 200);
        first.push(s);
    }
    for n in LIMIT + 1..=20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Refused: a 503 with the error JSON, or a plain close; never a wait.
        if let Some((status, body)) = get_health(&mut s).await {
            assert_eq!(status, 503, "connection {n}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "too_many_connections", "{body}");
            assert!(closed_by_server(&mut s).await, "connection {n} refused but left open");
        }
    }
    for s in &mut first {
        assert_eq!(get_health(s).await.expect("a connection within the limit still served").0, 200);
    }
    drop(first);
    common::eventually(Duration::from_millis(PATIENCE_MS), "a new connection served once the first ones closed", || async {
        let Ok(mut s) = TcpStream::connect(addr).await else { return false };
        get_health(&mut s).await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    gw.stop().await;
}
