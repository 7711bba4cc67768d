//! Durability: the journal on real files (and on a faulty file backend), recovery from torn
//! tails and refusal of damaged history, snapshots, and a gateway that loses nothing across
//! restarts and refuses to acknowledge what it cannot make durable.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use paygate::domain::{Cents, CorrelationId, UtcMillis};
use paygate::journal::file::list;
use paygate::journal::{FaultSwitch, FileOptions, Journal, Record};
use paygate::ledger::persist::{self, Wait};
use paygate::ledger::{Event, State};

const NAMES: [&str; 2] = ["default", "fallback"];

fn names() -> Vec<String> {
    NAMES.map(String::from).to_vec()
}

/// A deterministic mix of events: accepted, sent, processed, rejected and re-sent payments.
fn events(n: u128) -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = CorrelationId(i + 1);
        out.push(Event::Accepted { id, cents: Cents::new(1_000 + i as u64).unwrap(), accepted_at: UtcMillis(1_000 + i as i64) });
        if i % 4 == 0 {
            continue;
        }
        out.push(Event::Intent { id, processor: 0, requested_at: UtcMillis(2_000 + i as i64) });
        if i % 4 == 1 {
            out.push(Event::Processed { id, processor: 0, requested_at: UtcMillis(2_000 + i as i64) });
        } else if i % 4 == 2 {
            out.push(Event::Rejected { id, processor: 0 });
            out.push(Event::Intent { id, processor: 1, requested_at: UtcMillis(3_000 + i as i64) });
            out.push(Event::Processed { id, processor: 1, requested_at: UtcMillis(3_000 + i as i64) });
        }
    }
    out
}

fn model(events: &[Event]) -> State {
    let mut s = State::new(&NAMES);
    for e in events {
        s.apply(e).unwrap();
    }
    s
}

fn options(dir: &Path, segment_max_bytes: u64, faults: Option<Arc<FaultSwitch>>) -> FileOptions {
    FileOptions {
        dir: dir.to_path_buf(),
        fsync: true,
        segment_max_bytes,
        prealloc_bytes: paygate::journal::PREALLOC_BYTES,
        faults,
        rotated: None,
        dir_lock: Arc::new(Mutex::new(())),
        segment_header: Vec::new(),
        metrics: None,
    }
}

/// Writes `events` through the real journal writer, waiting for each group to be durable.
fn write_journal(opts: FileOptions, next_seq: u64, events: &[Event]) {
    let mut journal: Journal<Event, Wait> = Journal::open(opts, next_seq).unwrap();
    let (tx, rx) = mpsc::channel();
    for e in events {
        journal.submit(Some(*e), Wait(tx.clone()));
    }
    for _ in events {
        rx.recv().unwrap().unwrap();
    }
}

fn only_segment(dir: &Path) -> std::path::PathBuf {
    let l = list(dir).unwrap();
    assert_eq!(l.segments.len(), 1);
    l.segments[0].1.clone()
}

/// Bytes the framed records of `events` take in a segment.
fn framed_len(events: &[Event]) -> usize {
    events
        .iter()
        .map(|e| {
            let mut payload = Vec::new();
            paygate::ledger::codec::encode(e, &mut payload);
            paygate::journal::frame::HEADER_BYTES + payload.len()
        })
        .sum()
}

/// Writes `events` with processors' answers held back (`submit_lazy`) the way the ledger
/// does, the rest submitted and waited for; `flush` sends what is still held at the end.
fn write_with_lazy_answers(dir: &Path, events: &[Event], flush: bool) {
    let mut journal: Journal<Event, Wait> = Journal::open(options(dir, u64::MAX, None), 0).unwrap();
    let (tx, rx) = mpsc::channel();
    let mut waiting = 0;
    for e in events {
        if !e.needs_sync() {
            journal.submit_lazy(*e);
        } else {
            journal.submit(Some(*e), Wait(tx.clone()));
            waiting += 1;
        }
    }
    if flush {
        journal.flush_lazy();
        assert!(!journal.has_lazy());
        // A barrier: done once everything sent before it is on disk.
        journal.submit(None, Wait(tx.clone()));
        waiting += 1;
    }
    for _ in 0..waiting {
        rx.recv().unwrap().unwrap();
    }
}

#[test]
fn held_back_answers_reach_the_disk_in_order_with_the_next_record_or_a_flush() {
    // Ends with an answer (i = 38 is rejected, re-sent and processed), so that without the
    // flush the last one stays held.
    let evs = events(39);
    assert!(matches!(evs.last(), Some(Event::Processed { .. })));
    for flush in [true, false] {
        let dir = temp_dir("lazy");
        write_with_lazy_answers(&dir, &evs, flush);
        let recovered = persist::recover(&dir, &names()).unwrap().state;
        // Every held answer rode with the next record, in order; only those after the last
        // one need the flush.
        let last_synced = evs.iter().rposition(Record::needs_sync).unwrap();
        let on_disk = if flush { &evs[..] } else { &evs[..=last_synced] };
        assert!(recovered == model(on_disk), "flush {flush}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn answers_still_held_when_the_process_dies_are_lost_and_their_payments_stay_sent() {
    let id = CorrelationId(7);
    let evs = [
        Event::Accepted { id, cents: Cents::new(1_990).unwrap(), accepted_at: UtcMillis(1_000) },
        Event::Intent { id, processor: 0, requested_at: UtcMillis(1_000) },
        Event::Processed { id, processor: 0, requested_at: UtcMillis(1_000) },
    ];
    let dir = temp_dir("lazy-lost");
    // A process crash: the journal goes away with the answer still held, so the writer never
    // sees it.
    write_with_lazy_answers(&dir, &evs, false);
    let recovered = persist::recover(&dir, &names()).unwrap();
    assert!(recovered.state == model(&evs[..2]));
    // The payment is sent with its outcome unknown: the next start resolves it on processor 0.
    assert!(matches!(recovered.state.get(id).unwrap().status, paygate::ledger::Status::Sent { processor: 0, .. }));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn held_answers_go_on_their_own_past_the_limit_and_a_repair_drops_them() {
    let dir = temp_dir("lazy-limit");
    let mut journal: Journal<Event, Wait> = Journal::open(options(&dir, u64::MAX, None), 0).unwrap();
    let answer = |i: u128| Event::Processed { id: CorrelationId(i + 1), processor: 0, requested_at: UtcMillis(1) };
    for i in 0..paygate::journal::MAX_LAZY as u128 - 1 {
        journal.submit_lazy(answer(i));
    }
    assert!(journal.has_lazy());
    // The limit sends them all in one message.
    journal.submit_lazy(answer(u128::MAX - 1));
    assert!(!journal.has_lazy());
    // Held when the owner repairs the journal: they belong to the state it rebuilds from disk.
    journal.submit_lazy(answer(0));
    journal.repair().blocking_recv().unwrap().unwrap();
    assert!(!journal.has_lazy());
    drop(journal);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failed_sync_makes_the_repair_cut_the_unsynced_answers_before_it() {
    let dir = temp_dir("eio");
    let faults = Arc::new(FaultSwitch::default());
    let mut journal: Journal<Event, Wait> = Journal::open(options(&dir, u64::MAX, Some(faults.clone())), 0).unwrap();
    let (tx, rx) = mpsc::channel();
    let accepted = |i: u128| Event::Accepted { id: CorrelationId(i), cents: Cents::new(1_000).unwrap(), accepted_at: UtcMillis(1_000) };
    let (first, second, third) = (CorrelationId(1), CorrelationId(2), CorrelationId(3));
    journal.submit_two(accepted(1), Event::Intent { id: first, processor: 0, requested_at: UtcMillis(1_000) }, Wait(tx.clone()));
    rx.recv().unwrap().unwrap();
    // The processor's answer is written in a commit of its own, without a sync.
    journal.submit(Some(Event::Processed { id: first, processor: 0, requested_at: UtcMillis(1_000) }), Wait(tx.clone()));
    rx.recv().unwrap().unwrap();
    // The next sync fails (EIO): the answer's writeback may have failed with it.
    faults.set_syncs_failing(true);
    journal.submit(Some(accepted(2)), Wait(tx.clone()));
    assert!(rx.recv().unwrap().is_err(), "a failed sync acknowledges nothing");
    faults.set_syncs_failing(false);
    journal.repair().blocking_recv().unwrap().unwrap();
    journal.submit(Some(accepted(3)), Wait(tx.clone()));
    rx.recv().unwrap().unwrap();
    // The repair cut the segment back to the last good sync: the answer is gone (the payment
    // is resolved again on its processor) and no record follows a possible hole.
    let state = persist::reload(&dir, &names(), &Mutex::new(())).unwrap();
    assert!(matches!(state.get(first).unwrap().status, paygate::ledger::Status::Sent { processor: 0, .. }));
    assert!(state.get(second).is_none());
    assert!(state.get(third).is_some());
    drop(journal);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_processors_answer_the_ledger_holds_back_reaches_the_disk_without_further_traffic() {
    use paygate::ledger::{Ledger, LedgerLimits, Settled, Status, Work};
    let dir = temp_dir("lazy-ledger");
    let journal = Journal::open(options(&dir, u64::MAX, None), 0).unwrap();
    let (queue, _work) = paygate::dispatch::WorkQueue::new(None);
    let restore: paygate::ledger::Restore = Arc::new(|| Err("not needed".into()));
    let mut state = State::new(&NAMES);
    let history = paygate::history::History::open(&dir, &mut state).unwrap();
    let limits = LedgerLimits { pending_max: 10, hot_max: 10, hot_window: std::time::Duration::from_secs(60) };
    let (ledger, _task) = Ledger::spawn(state, journal, queue, limits, restore, None, None, history.history, history.filter);
    let id = CorrelationId(42);
    ledger.accept(id, Cents::new(1_990).unwrap()).await.unwrap().unwrap();
    let p = ledger.get(id).await.unwrap().unwrap().unwrap();
    let work = Work { id, cents: p.cents, accepted_at: p.accepted_at, ticket: p.ticket, generation: 0, pinned: None, fresh: false };
    let requested_at = UtcMillis(p.accepted_at.0 + 1);
    ledger.intent(work, 0, requested_at).await.unwrap();
    ledger.settle(Work { pinned: Some((0, requested_at)), ..work }, Settled::Processed { requested_at }).await;
    // Nothing else is submitted: the ledger's own deadline must send the held answer. Read
    // the way a running gateway does (`reload`: touches no file, as the writer is alive); a
    // read that catches a write half done simply tries again.
    let dir_lock = Mutex::new(());
    eventually(Duration::from_secs(10), "the held-back answer on disk", || async {
        let state = persist::reload(&dir, &names(), &dir_lock).ok();
        matches!(state.and_then(|s| s.get(id).map(|p| p.status)), Some(Status::Processed { processor: 0, .. }))
    })
    .await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncation_anywhere_inside_the_last_record_keeps_exactly_the_records_before_it() {
    let evs = events(12);
    let dir = temp_dir("torn");
    write_journal(options(&dir, u64::MAX, None), 0, &evs);
    let segment = only_segment(&dir);
    let full = std::fs::read(&segment).unwrap();
    let data_end = framed_len(&evs);
    assert!(full.len() > data_end, "the writer preallocates zeros after the records");
    assert!(full[data_end..].iter().all(|&b| b == 0));
    let last_start = framed_len(&evs[..evs.len() - 1]);
    let (before, all) = (model(&evs[..evs.len() - 1]), model(&evs));
    // An interrupted write leaves a prefix of the last record, followed by nothing (an
    // appended segment) or by the preallocated zeros.
    for padded in [false, true] {
        for cut in last_start..data_end {
            let mut bytes = full[..cut].to_vec();
            if padded {
                bytes.resize(full.len(), 0);
            }
            std::fs::write(&segment, &bytes).unwrap();
            let r = persist::recover(&dir, &names()).unwrap();
            // A record whose missing end was all zeros reads back whole from the padding.
            let whole = padded && full[cut..data_end].iter().all(|&b| b == 0);
            assert!(r.state == *if whole { &all } else { &before }, "cut at {cut}, padded {padded}");
            // A torn record is cut from the file; zeros after complete records are padding and stay.
            let want = if padded && (cut == last_start || whole) { full.len() } else { last_start };
            assert_eq!(std::fs::metadata(&segment).unwrap().len(), want as u64, "cut at {cut}, padded {padded}");
            // Recovery names a fresh segment but creates none; the next cut sees one segment.
            assert_eq!(r.next_seq, 1);
        }
    }
    std::fs::write(&segment, &full).unwrap();
    assert!(persist::recover(&dir, &names()).unwrap().state == model(&evs));
    std::fs::write(&segment, &full[..data_end]).unwrap();
    assert!(persist::recover(&dir, &names()).unwrap().state == model(&evs));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_flipped_byte_in_an_early_record_stops_recovery_naming_file_and_offset() {
    let evs = events(12);
    let dir = temp_dir("corrupt");
    write_journal(options(&dir, u64::MAX, None), 0, &evs);
    let segment = only_segment(&dir);
    let full = std::fs::read(&segment).unwrap();
    let mut first = Vec::new();
    paygate::ledger::codec::encode(&evs[0], &mut first);
    let second_record = paygate::journal::frame::HEADER_BYTES + first.len();
    // Every byte of the second record: header (length, its check, CRC) and payload.
    for i in second_record..second_record + 20 {
        let mut damaged = full.clone();
        damaged[i] ^= 0x10;
        std::fs::write(&segment, &damaged).unwrap();
        let err = persist::recover(&dir, &names()).err().unwrap_or_else(|| panic!("flip at {i} was not detected")).to_string();
        assert!(err.contains(&segment.display().to_string()), "{err}");
        assert!(err.contains(&format!("offset {second_record}")), "flip at {i}: {err}");
        assert_eq!(std::fs::read(&segment).unwrap(), damaged, "a damaged journal is left untouched");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn snapshot_then_replay_equals_full_replay() {
    let evs = events(400);
    let (half_a, half_b) = evs.split_at(evs.len() / 2);
    // Full replay: one big segment.
    let full_dir = temp_dir("full");
    write_journal(options(&full_dir, u64::MAX, None), 0, &evs);
    let full = persist::recover(&full_dir, &names()).unwrap().state;
    assert!(full == model(&evs));
    // Snapshot of the first half, then the second half in later segments.
    let snap_dir = temp_dir("snap");
    write_journal(options(&snap_dir, u64::MAX, None), 0, half_a);
    let first = persist::recover(&snap_dir, &names()).unwrap();
    persist::write_snapshot(&snap_dir, first.next_seq, &first.state).unwrap();
    for (_, seg) in list(&snap_dir).unwrap().segments {
        std::fs::remove_file(seg).unwrap();
    }
    write_journal(options(&snap_dir, 512, None), first.next_seq, half_b);
    let l = list(&snap_dir).unwrap();
    assert_eq!(l.snapshots.len(), 1);
    assert!(l.segments.len() > 1, "small segments rotate");
    let restored = persist::recover(&snap_dir, &names()).unwrap();
    assert!(restored.state == full, "snapshot + replay differs from full replay");
    assert_eq!(restored.replayed as usize, half_b.len());
    std::fs::remove_dir_all(full_dir).unwrap();
    std::fs::remove_dir_all(snap_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_payments_survive_a_restart_and_compaction_keeps_them() {
    let (default, fallback) = start_pair().await;
    let sims = [("default", &default), ("fallback", &fallback)];
    let mut config = gateway_config(&sims);
    // Tiny segments: the compactor folds them into snapshots during the run.
    config.segment_max_bytes = 2_048;
    let http = Http::default();
    let gw = start_gateway(config.clone()).await;
    let ids: Vec<_> = (0..300).map(|_| CorrelationId::random()).collect();
    for id in &ids {
        assert_eq!(http.pay(&gw.url, *id, "7.25").await, StatusCode::ACCEPTED);
    }
    eventually(Duration::from_secs(20), "processed", || async { default.sim.payment_count() == 300 }).await;
    gw.stop_keeping_data().await;
    let l = list(&config.data_dir).unwrap();
    assert!(!l.snapshots.is_empty(), "compaction wrote a snapshot: {l:?}");
    let gw = start_gateway(config.clone()).await;
    assert_eq!(totals_of(&http.gateway_summary(&gw.url, "").await, "default"), (300, 300 * 725));
    for id in &ids {
        let v = http.get_json(&format!("{}/payments/{id}", gw.url), &[]).await;
        assert_eq!(v["status"], "processed");
    }
    // Idempotency survives the restart too.
    assert_eq!(http.pay(&gw.url, ids[0], "7.25").await, StatusCode::ACCEPTED);
    assert_eq!(http.pay(&gw.url, ids[0], "7.26").await, StatusCode::CONFLICT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(default.sim.payment_requests(), 300);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_payments_stay_purged_after_a_restart() {
    let (default, fallback) = start_pair().await;
    let config = gateway_config(&[("default", &default), ("fallback", &fallback)]);
    let http = Http::default();
    let gw = start_gateway(config.clone()).await;
    let before = CorrelationId::random();
    assert_eq!(http.pay(&gw.url, before, "1.00").await, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(10), "processed", || async { default.sim.payment_count() == 1 }).await;
    let (status, _) = http.send(Method::POST, &format!("{}/purge-payments", gw.url), &[("X-Admin-Token", ADMIN_TOKEN)], "").await;
    assert_eq!(status, StatusCode::OK);
    let after = CorrelationId::random();
    assert_eq!(http.pay(&gw.url, after, "2.00").await, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(10), "processed", || async { default.sim.payment_count() == 2 }).await;
    gw.stop_keeping_data().await;
    let gw = start_gateway(config).await;
    assert_eq!(http.get(&format!("{}/payments/{before}", gw.url)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(http.get(&format!("{}/payments/{after}", gw.url)).await.0, StatusCode::OK);
    assert_eq!(totals_of(&http.gateway_summary(&gw.url, "").await, "default"), (1, 200));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_gets_503_never_202_and_the_gateway_recovers_when_it_heals() {
    let (default, fallback) = start_pair().await;
    let mut config = gateway_config(&[("default", &default), ("fallback", &fallback)]);
    let faults = Arc::new(FaultSwitch::default());
    config.faults = Some(faults.clone());
    let http = Http::default();
    let gw = start_gateway(config.clone()).await;
    let good = CorrelationId::random();
    assert_eq!(http.pay(&gw.url, good, "4.00").await, StatusCode::ACCEPTED);

    faults.set(true);
    let refused: Vec<_> = (0..20).map(|_| CorrelationId::random()).collect();
    for id in &refused {
        let (status, body) =
            http.send(Method::POST, &format!("{}/payments", gw.url), &[], format!(r#"{{"correlationId":"{id}","amount":9.99}}"#)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("journal_unavailable"));
    }
    assert_eq!(http.get(&format!("{}/health", gw.url)).await.0, StatusCode::SERVICE_UNAVAILABLE);

    faults.set(false);
    eventually(Duration::from_secs(10), "healthy again", || async { http.get(&format!("{}/health", gw.url)).await.0 == StatusCode::OK })
        .await;
    let later = CorrelationId::random();
    assert_eq!(http.pay(&gw.url, later, "5.00").await, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(10), "processed", || async { default.sim.payment_count() == 2 }).await;
    for id in &refused {
        assert_eq!(http.get(&format!("{}/payments/{id}", gw.url)).await.0, StatusCode::NOT_FOUND, "a refused payment exists");
    }
    gw.stop_keeping_data().await;
    // What the disk holds is exactly what was acknowledged.
    let r = persist::recover(&config.data_dir, &names()).unwrap();
    assert_eq!(r.state.len(), 2);
    assert!(r.state.get(good).is_some() && r.state.get(later).is_some());
    std::fs::remove_dir_all(&config.data_dir).unwrap();
}
