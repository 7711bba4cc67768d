//! The floor: a bare hyper server that does no work — `202` to every `POST /payments`, an
//! empty summary, `200` to the rest. perf.md measures paygate against it under the same load,
//! so that the load generator's own cost is visible and not mistaken for paygate's.
//!
//! `cargo run --release --example bare_hyper -- 127.0.0.1:9999`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EMPTY_SUMMARY: &[u8] = br#"{"default":{"totalRequests":0,"totalAmount":0.00},"fallback":{"totalRequests":0,"totalAmount":0.00}}"#;

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body): (StatusCode, &'static [u8]) = match (req.method(), req.uri().path()) {
        (&Method::POST, "/payments") => (StatusCode::ACCEPTED, b"{\"status\":\"accepted\"}"),
        (&Method::GET, "/payments-summary") => (StatusCode::OK, EMPTY_SUMMARY),
        _ => (StatusCode::OK, b"{}"),
    };
    // Read the body as paygate does, so both servers do the same socket work.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(resp)
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9999".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!("bare-hyper listening on {}", listener.local_addr().expect("local addr"));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(handle)).await;
        });
    }
}
