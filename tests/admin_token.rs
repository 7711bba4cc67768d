//! The admin token against guessing: a real `paygate serve` process refuses wrong tokens with
//! 403, logs the refusals at most once per period with a count, and never writes a token it
//! was sent (or its own) to the log; the right token still purges.

mod common;

use common::Http;
use common::procs::{self, Proc, TempDir};
use hyper::{Method, StatusCode};

const TOKEN: &str = "s3cret#with-hash";
const GUESSES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_are_refused_and_logged_rate_limited_without_the_token() {
    let dir = TempDir::new("admin");
    let (default, fallback) = (procs::start_sim(&dir.0, "0.05", "default"), procs::start_sim(&dir.0, "0.15", "fallback"));
    // The token goes through a config file, where `#` inside a value is not a comment.
    let config = dir.0.join("paygate.conf");
    std::fs::write(&config, format!("admin-token = {TOKEN}   # the operator's note\n")).unwrap();
    let args = procs::gateway_args(&dir.0.join("data"), &default, &fallback, &["--config", config.to_str().unwrap()]);
    let log = dir.0.join("gateway.log");
    let gateway = Proc::start(&args, "paygate listening on", &log);
    let http = Http::default();
    let purge = |token: String| {
        let (http, url) = (http.clone(), format!("{}/purge-payments", gateway.url));
        async move { http.send(Method::POST, &url, &[("X-Admin-Token", &token)], "").await.0 }
    };
    for i in 0..GUESSES {
        assert_eq!(purge(format!("guess-{i:04}")).await, StatusCode::FORBIDDEN);
    }
    assert_eq!(purge("s3cret".to_string()).await, StatusCode::FORBIDDEN, "the part before `#` is not the token");
    assert_eq!(purge(TOKEN.to_string()).await, StatusCode::OK);
    drop(gateway);

    let text = std::fs::read_to_string(&log).unwrap();
    let refusals: Vec<&str> = text.lines().filter(|l| l.contains("admin request refused")).collect();
    assert_eq!(refusals.len(), 1, "refusals are logged once per period:\n{text}");
    assert!(!text.contains("guess-") && !text.contains("s3cret"), "a token reached the log:\n{text}");
}
