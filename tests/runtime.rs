//! `--runtime current-thread`: a real `paygate serve` process on tokio's single-threaded
//! scheduler takes payments, forwards each to a processor, keeps books that match the
//! processor's, says how many workers it runs, and stops cleanly on SIGTERM.

mod common;

use std::time::Duration;

use common::procs::{self, Proc, TempDir};
use common::{Http, eventually, totals_of};
use hyper::StatusCode;
use paygate::domain::CorrelationId;

const PAYMENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_thread_runtime_forwards_every_payment_and_stops_cleanly() {
    let dir = TempDir::new("runtime");
    let (default, fallback) = (procs::start_sim(&dir.0, "0.05", "default"), procs::start_sim(&dir.0, "0.15", "fallback"));
    let args = procs::gateway_args(&dir.0.join("data"), &default, &fallback, &["--runtime", "current-thread"]);
    let log = dir.0.join("gateway.log");
    let mut gateway = Proc::start(&args, "paygate listening on", &log);
    let http = Http::default();
    let ids: Vec<_> = (0..PAYMENTS).map(|_| CorrelationId::random()).collect();
    for &id in &ids {
        assert_eq!(http.pay(&gateway.url, id, "19.90").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(30), "every payment processed", || async {
        let g = http.gateway_summary(&gateway.url, "").await;
        totals_of(&g, "default").0 + totals_of(&g, "fallback").0 == PAYMENTS as u64
    })
    .await;
    let g = http.gateway_summary(&gateway.url, "").await;
    assert_eq!(totals_of(&g, "default"), http.sim_totals_at(&default.url, "").await);
    assert_eq!(totals_of(&g, "fallback"), http.sim_totals_at(&fallback.url, "").await);

    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(30)).expect("the gateway exits after SIGTERM");
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("runtime=CurrentThread") && text.contains("worker_threads=1"), "the start-up line names one worker:\n{text}");
}

/// `--runtime auto` (the default) picks `current_thread` on two CPUs or fewer, the
/// work-stealing pool above that or when `--worker-threads` is given; the start-up line says
/// which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_runtime_follows_the_cpus_the_process_may_use() {
    let dir = TempDir::new("runtime-auto");
    let (default, fallback) = (procs::start_sim(&dir.0, "0.05", "default"), procs::start_sim(&dir.0, "0.15", "fallback"));
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let cases: [(&[&str], &str); 2] = [
        (&[], if cpus <= 2 { "runtime=CurrentThread" } else { "runtime=MultiThread" }),
        (&["--worker-threads", "2"], "runtime=MultiThread"),
    ];
    for (i, (extra, want)) in cases.into_iter().enumerate() {
        let args = procs::gateway_args(&dir.0.join(format!("data-{i}")), &default, &fallback, extra);
        let log = dir.0.join(format!("gateway-{i}.log"));
        let gateway = Proc::start(&args, "paygate listening on", &log);
        let serving = || std::fs::read_to_string(&log).unwrap().contains("paygate serving");
        eventually(Duration::from_secs(20), "the start-up line", || std::future::ready(serving())).await;
        drop(gateway);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(want), "{extra:?} on {cpus} CPUs: expected {want}:\n{text}");
    }
}
