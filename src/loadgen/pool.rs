//! The load generator's connection pool: a fixed number of keep-alive HTTP/1.1 connections to
//! one gateway, each carrying one exchange at a time.
//!
//! A request first takes a permit (at most `connections` exchanges run at once; tokio's
//! semaphore is FIFO, so the request scheduled earliest gets the next free connection), then a
//! connection from the idle stack, reconnecting when there is none or when the idle one has
//! died. A connection goes back to the idle stack only after a complete exchange, response
//! body included: anything less leaves HTTP/1.1 framing in an unknown state, so such a
//! connection is closed instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Why one exchange got no HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
    #[error("HTTP exchange: {0}")]
    Http(#[from] hyper::Error),
}

/// One live connection. Dropping it closes the socket: the task that drives it is aborted, so
/// a connection abandoned mid-exchange (timeout) never lingers with a half-read response.
struct Conn {
    send: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A bounded set of keep-alive connections to one address.
pub struct Pool {
    addr: SocketAddr,
    /// Connections (and exchanges in flight) at most.
    size: usize,
    /// One permit per connection: bounds the exchanges in flight.
    permits: Arc<Semaphore>,
    /// Connections between exchanges, most recently used on top (its socket buffers and the
    /// server's state for it are the warmest). Never more entries than permits. A std mutex:
    /// held for one push or pop, never across an await.
    idle: Mutex<Vec<Conn>>,
    /// Connections opened, prefill included: a rising count means the server closes them.
    connects: AtomicU64,
}

impl Pool {
    /// A pool of `size` connections to `addr`, none opened yet.
    pub fn new(addr: SocketAddr, size: usize) -> Arc<Pool> {
        assert!(size > 0, "a pool needs at least one connection");
        Arc::new(Pool {
            addr,
            size,
            permits: Arc::new(Semaphore::new(size)),
            idle: Mutex::new(Vec::with_capacity(size)),
            connects: AtomicU64::new(0),
        })
    }

    /// Opens every connection now, so that the first scheduled requests do not pay for TCP and
    /// HTTP handshakes, and so that an unreachable gateway is one clear error before any load.
    pub async fn prefill(self: &Arc<Self>) -> Result<(), ExchangeError> {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..self.size {
            let pool = Arc::clone(self);
            opening.spawn(async move { pool.connect().await });
        }
        while let Some(opened) = opening.join_next().await {
            let conn = opened.expect("connect task never panics")?;
            self.idle.lock().expect("idle stack poisoned").push(conn);
        }
        Ok(())
    }

    /// Waits for a free connection slot (FIFO among waiters).
    pub async fn checkout(self: &Arc<Self>) -> Lease {
        let permit = Arc::clone(&self.permits).acquire_owned().await.expect("pool semaphore never closed");
        let conn = self.idle.lock().expect("idle stack poisoned").pop();
        Lease { pool: Arc::clone(self), conn, _permit: permit }
    }

    /// Connections opened so far.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    async fn connect(&self) -> Result<Conn, ExchangeError> {
        let addr = self.addr;
        let stream = TcpStream::connect(addr).await.map_err(|source| ExchangeError::Connect { addr, source })?;
        // Requests are small single writes; Nagle would hold them back waiting for an ACK.
        stream.set_nodelay(true).map_err(|source| ExchangeError::Connect { addr, source })?;
        let (send, connection) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|source| ExchangeError::Handshake { addr, source })?;
        let driver = tokio::spawn(async move {
            // The connection's own error reaches the exchange that was using it.
            let _ = connection.await;
        });
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(Conn { send, driver })
    }
}

/// The right to run one exchange, with the connection to run it on (if one was idle).
pub struct Lease {
    pool: Arc<Pool>,
    /// Present only while it is known to be between exchanges; returned to the pool on drop.
    conn: Option<Conn>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Sends `req` and reads the whole response; returns its status.
    ///
    /// An idle connection the server has closed is replaced once, transparently: the request
    /// had not left, so nothing can have happened twice. Any failure after the request may have
    /// left is the caller's error to count, never retried here.
    pub async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<StatusCode, ExchangeError> {
        let mut req = req;
        loop {
            let (mut conn, reused) = match self.conn.take() {
                Some(conn) => (conn, true),
                None => (self.pool.connect().await?, false),
            };
            if let Err(e) = conn.send.ready().await {
                if reused {
                    continue;
                }
                return Err(e.into());
            }
            match conn.send.try_send_request(req).await {
                Ok(response) => {
                    let status = response.status();
                    let mut body = response.into_body();
                    while let Some(frame) = body.frame().await {
                        frame?;
                    }
                    self.conn = Some(conn);
                    return Ok(status);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().expect("idle stack poisoned").push(conn);
        }
    }
}
