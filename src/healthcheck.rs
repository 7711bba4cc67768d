//! `paygate healthcheck`: asks a running gateway's `/health` and exits 0 only on `200`. The
//! container image's HEALTHCHECK uses it, since the distroless runtime has no curl.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Longest a health check waits for an answer.
pub const HEALTHCHECK_TIMEOUT_MS: u64 = 2_000;

#[derive(clap::Args, Debug, Clone)]
pub struct HealthcheckArgs {
    /// Address of the gateway to check.
    #[arg(long, env = "PAYGATE_HEALTHCHECK_ADDR", default_value = "127.0.0.1:9999")]
    pub addr: String,
}

pub async fn run(args: HealthcheckArgs) -> Result<(), String> {
    let check = async {
        let stream = tokio::net::TcpStream::connect(&args.addr).await.map_err(|e| format!("connect {}: {e}", args.addr))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/health").header("host", &args.addr).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let status = send.send_request(req).await.map_err(|e| e.to_string())?.status();
        if status == hyper::StatusCode::OK { Ok(()) } else { Err(format!("gateway at {} is unhealthy: {status}", args.addr)) }
    };
    tokio::time::timeout(Duration::from_millis(HEALTHCHECK_TIMEOUT_MS), check)
        .await
        .map_err(|_| format!("gateway at {} did not answer within {HEALTHCHECK_TIMEOUT_MS} ms", args.addr))?
}
