//! HTTP plumbing shared by the gateway and the processor simulator: the accept loop with its
//! limits (connections, header, idle and body timeouts), body reading with a size cap, and
//! JSON response builders. No business rules.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::logs::LogLimiter;

pub type Body = Full<Bytes>;

/// Default for [`ServerLimits::max_connections`]: client connections served at once; the next
/// one gets a 503 at once.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Default for [`ServerLimits::header_timeout`].
pub const HEADER_TIMEOUT_MS: u64 = 10_000;
/// Default for [`ServerLimits::idle_timeout`].
pub const IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default for [`ServerLimits::body_timeout`].
pub const BODY_TIMEOUT_MS: u64 = 10_000;
/// Read buffer per connection, which bounds the request line plus headers.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long a shutting-down server lets open connections finish the request they are in.
pub const SHUTDOWN_GRACE_MS: u64 = 1_000;
/// Connections past the limit being answered 503 at once; past this many they are closed
/// without an answer, so a flood cannot use up file descriptors through the refusals.
pub const MAX_REFUSING: usize = 64;
/// Longest a refused connection is kept to deliver its 503 (and read what the client sent, so
/// that closing does not reset the answer away).
pub const REFUSE_LINGER_MS: u64 = 250;
/// First pause after a failed accept (EMFILE and friends); doubles up to the cap.
pub const ACCEPT_BACKOFF_MIN_MS: u64 = 5;
pub const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;
/// A failing accept, or refusals at the connection limit, are logged at most once per this.
pub const EDGE_LOG_EVERY_MS: u64 = 5_000;

/// What one server allows its clients, validated by the caller (all positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// From a connection's start, or the first byte of a later request, until its head is
    /// complete; past it the connection is closed (slow-loris clients).
    pub header_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// From a complete head until the whole body is read; past it `read_body` fails.
    pub body_timeout: Duration,
    /// Connections served at once; the next one is refused with a 503.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            header_timeout: Duration::from_millis(HEADER_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(IDLE_TIMEOUT_MS),
            body_timeout: Duration::from_millis(BODY_TIMEOUT_MS),
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves HTTP/1.1 on `listener` with the default [`ServerLimits`] until `shutdown` resolves.
pub async fn serve<F, Fut>(listener: TcpListener, handle: F, shutdown: impl Future<Output = ()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    serve_with_limits(listener, handle, shutdown, ServerLimits::default(), Arc::default()).await;
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves; then closes the listener, lets
/// every connection finish the request it is in (up to [`SHUTDOWN_GRACE_MS`]) and returns.
/// `open` counts the connections being served, for the metrics.
pub async fn serve_with_limits<F, Fut>(
    listener: TcpListener,
    handle: F,
    shutdown: impl Future<Output = ()>,
    limits: ServerLimits,
    open: Arc<std::sync::atomic::AtomicUsize>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut backoff = AcceptBackoff::default();
    let mut accept_log = LogLimiter::new(Duration::from_millis(EDGE_LOG_EVERY_MS));
    let mut full_log = LogLimiter::new(Duration::from_millis(EDGE_LOG_EVERY_MS));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    backoff.reset();
                    stream
                }
                Err(e) => {
                    // Out of descriptors or memory: retrying at once would spin. The pending
                    // connection stays in the kernel's queue until we can take it.
                    let pause = backoff.next_pause();
                    if let Some(suppressed) = accept_log.allow() {
                        tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, suppressed, "accept failed; backing off");
                    }
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Waiting for a permit here would leave the client hanging in the accept queue: past
        // the limit it gets an answer at once instead.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(suppressed) = full_log.allow() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    suppressed,
                    "connection limit reached; refusing new connections with 503"
                );
            }
            if let Ok(slot) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(slot);
                });
            }
            continue;
        };
        let (handle, stop_rx) = (handle.clone(), stop_rx.clone());
        let open = open.clone();
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            serve_connection(stream, handle, limits, stop_rx).await;
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(permit);
        });
    }
    // New clients get "connection refused" from here on instead of waiting in the queue.
    drop(listener);
    let _ = stop_tx.send(true);
    // Let connections see the signal and finish their in-flight exchange.
    let all = u32::try_from(limits.max_connections).expect("max_connections fits in u32 (validated)");
    let _ = tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), permits.acquire_many(all)).await;
}

/// Serves one connection until the client closes it, it outstays a timeout of `limits`, or
/// the server stops (then the request in progress is finished, within the grace period).
async fn serve_connection<F, Fut>(stream: TcpStream, handle: F, limits: ServerLimits, mut stop_rx: watch::Receiver<bool>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
    let svc = {
        let activity = activity.clone();
        service_fn(move |mut req: Request<Incoming>| {
            let busy = Busy::start(activity.clone());
            req.extensions_mut().insert(BodyDeadline(Instant::now() + limits.body_timeout));
            let fut = handle(req);
            async move {
                let resp = fut.await;
                drop(busy);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    // hyper's own header_read_timeout also runs while a keep-alive connection waits for its
    // next request (hyper 1.12), so it cannot be a short header timeout and a long idle timeout
    // at once; the watchdog below does both from what `Activity` records.
    let conn = http1::Builder::new().max_buf_size(MAX_HEADER_BYTES).serve_connection(io, svc);
    tokio::pin!(conn);
    let recheck = limits.header_timeout.min(limits.idle_timeout);
    let watchdog = tokio::time::sleep(recheck);
    tokio::pin!(watchdog);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            () = &mut watchdog => {
                let now = Instant::now();
                match activity.deadline(&limits) {
                    Some(deadline) if deadline <= now => {
                        tracing::debug!("closing a connection that outstayed its header or idle timeout");
                        return;
                    }
                    Some(deadline) => watchdog.as_mut().reset(deadline),
                    // A request is being handled: it is bounded by the body timeout and the
                    // handler's own limits; look again later.
                    None => watchdog.as_mut().reset(now + recheck),
                }
            }
            _ = stop_rx.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_millis(SHUTDOWN_GRACE_MS), conn).await;
                return;
            }
        }
    }
}

/// Marks "no time recorded" in [`Activity`]'s millisecond fields.
const NONE_MS: u64 = u64::MAX;

/// What a connection's watchdog needs to know, recorded by the socket wrapper ([`Watched`])
/// and the service ([`Busy`]) with atomics, so the hot path takes no lock.
struct Activity {
    born: Instant,
    /// Requests handed to the handler and not answered yet.
    in_flight: AtomicU32,
    /// When (ms after `born`) the first byte of the next request head came; `NONE_MS` while
    /// waiting for one. A new connection counts as having started its head at once.
    head_started_ms: AtomicU64,
    /// When (ms after `born`) the last answer was produced.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: Instant::now(),
            in_flight: AtomicU32::new(0),
            head_started_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Bytes arrived: between requests, they start the next head and its timeout.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_started_ms.load(Ordering::Relaxed) == NONE_MS {
            let _ = self.head_started_ms.compare_exchange(NONE_MS, self.now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// When the connection must be closed if nothing changes, or `None` while a request is
    /// being handled.
    fn deadline(&self, limits: &ServerLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let ms = |v: u64| self.born + Duration::from_millis(v);
        match self.head_started_ms.load(Ordering::Relaxed) {
            NONE_MS => Some(ms(self.idle_since_ms.load(Ordering::Relaxed)) + limits.idle_timeout),
            started => Some(ms(started) + limits.header_timeout),
        }
    }
}

/// Held while a request is in the handler; its drop starts the idle time.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Busy {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_started_ms.store(NONE_MS, Ordering::Relaxed);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client socket, telling [`Activity`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The answer to a connection past the limit, in the standard error shape.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 83\r\n\r\n\
{\"error\":\"too_many_connections\",\"message\":\"too many open connections; retry later\"}";

/// Answers 503 and closes, without reading the request: the server is at its connection limit.
async fn refuse(mut stream: TcpStream) {
    let answer = async {
        stream.write_all(TOO_MANY_CONNECTIONS).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes: closing with unread bytes would send a
        // reset, which can destroy the answer before the client reads it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_millis(REFUSE_LINGER_MS), answer).await;
}

/// Exponential pause between failed accepts, reset by a successful one.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    fn next_pause(&mut self) -> Duration {
        let ms = ACCEPT_BACKOFF_MIN_MS.saturating_mul(1 << self.failures.min(16)).min(ACCEPT_BACKOFF_MAX_MS);
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(ms)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// When the body of a request must have arrived; set by the server on each request.
#[derive(Clone, Copy, Debug)]
struct BodyDeadline(Instant);

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body could not be read: {0}")]
    Io(String),
    #[error("request body did not arrive within the body timeout")]
    TimedOut,
}

/// Reads the whole body, refusing more than `limit` bytes (checked against Content-Length
/// first, so an oversized upload is refused before it is read) and giving up at the body
/// deadline the server set for this request ([`ServerLimits::body_timeout`] after its head).
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let deadline = match req.extensions().get::<BodyDeadline>() {
        Some(d) => d.0,
        None => Instant::now() + Duration::from_millis(BODY_TIMEOUT_MS),
    };
    match tokio::time::timeout_at(deadline, Limited::new(req.into_body(), limit).collect()).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(BodyError::TooLarge(limit)),
        Ok(Err(e)) => Err(BodyError::Io(e.to_string())),
    }
}

/// A response with a JSON body.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A response with no body.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// Adds `Retry-After: secs`.
pub fn with_retry_after(mut resp: Response<Body>, secs: u64) -> Response<Body> {
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Appends `s` as a JSON string literal, escaped.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// The value of `name` in a URL query string, percent-decoded (`+` is a space, as in forms).
/// `None` when absent; malformed escapes are kept literally and fail later validation.
pub fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    let raw = query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_complete_503_with_the_error_json() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "too_many_connections");
    }

    #[test]
    fn accept_backoff_doubles_to_its_cap_and_resets() {
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| b.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1_000, 1_000]);
        b.reset();
        assert_eq!(b.next_pause(), Duration::from_millis(ACCEPT_BACKOFF_MIN_MS));
    }

    #[test]
    fn query_params_are_percent_decoded() {
        let q = "from=2025-07-15T12%3A34%3A56.000Z&to=2025-07-15T12:34:57%2B00:00&x";
        assert_eq!(query_param(q, "from").unwrap(), b"2025-07-15T12:34:56.000Z");
        assert_eq!(query_param(q, "to").unwrap(), b"2025-07-15T12:34:57+00:00");
        assert_eq!(query_param(q, "x").unwrap(), b"");
        assert_eq!(query_param(q, "y"), None);
        assert_eq!(query_param("a=%4", "a").unwrap(), b"%4");
        assert_eq!(query_param("a=%41", "a").unwrap(), b"A");
    }
}
