//! The on-disk history of settled payments (`paygate::history`), through its public API only:
//! the summary against a naive model while entries are pending in the writer, committed, handed
//! over twice, carried across a close and reopen and absorbed from a recovered state at open;
//! reads by id once confirmed; absorption skipping known ids; purge and resume; processor
//! numbering across restarts; import; instants and bounds at the ends of i64.

mod common;

use std::time::Duration;

use common::procs::TempDir;

use paygate::domain::money::MAX_CENTS;
use paygate::domain::{Cents, CorrelationId, UtcMillis};
use paygate::history::{self, Entry, History, Opened};
use paygate::ledger::summary::Totals;
use paygate::ledger::{Event, State};
use proptest::prelude::*;
use tokio::sync::oneshot;

const NAMES: [&str; 2] = ["default", "fallback"];
/// 2025-07-15T12:34:56.000Z, on a second boundary.
const T_REAL: i64 = 1_752_582_896_000;
/// Longest any single wait on the writer may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A history directory and the handle open on it, if any: closed (so the writer stops and the
/// file is released) before the directory is removed, however the test ends.
struct Store {
    history: Option<History>,
    dir: TempDir,
}

impl Store {
    fn new(tag: &str) -> Store {
        Store { history: None, dir: TempDir::new(tag) }
    }

    fn open(&mut self, state: &mut State) -> Opened {
        assert!(self.history.is_none(), "open twice");
        let opened = History::open(&self.dir.0, state).expect("history opens");
        self.history = Some(opened.history.clone());
        opened
    }

    fn close(&mut self) {
        if let Some(h) = self.history.take() {
            h.close();
        }
    }

    fn h(&self) -> &History {
        self.history.as_ref().expect("history is open")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn cents(c: u64) -> Cents {
    Cents::new(c).expect("valid amount")
}

fn entry(id: u128, requested_at: i64, processor: u8, amount: u64) -> Entry {
    Entry {
        id: CorrelationId(id),
        cents: cents(amount),
        accepted_at: UtcMillis(requested_at - 37),
        processor,
        requested_at: UtcMillis(requested_at),
        maybe_known: true,
    }
}

fn t(count: u64, cents: u128) -> Totals {
    Totals { count, cents }
}

/// A recovered state over [`NAMES`] in which every entry is processed, as the journal replays it.
fn processed_state<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> State {
    let mut state = State::new(&NAMES);
    for e in entries {
        apply_processed(&mut state, e);
    }
    state
}

fn apply_processed(state: &mut State, e: &Entry) {
    state.apply(&Event::Accepted { id: e.id, cents: e.cents, accepted_at: e.accepted_at }).unwrap();
    state.apply(&Event::Intent { id: e.id, processor: e.processor, requested_at: e.requested_at }).unwrap();
    state.apply(&Event::Processed { id: e.id, processor: e.processor, requested_at: e.requested_at }).unwrap();
}

/// Whether the id filter built at open holds every one of `ids`. Asking it may wait for the
/// thread that builds it, which must not happen on a runtime's thread: asked from a thread of
/// its own.
fn filter_holds(opened: &mut Opened, ids: impl IntoIterator<Item = CorrelationId>) -> bool {
    let ids: Vec<u128> = ids.into_iter().map(|id| id.0).collect();
    let filter = &mut opened.filter;
    std::thread::scope(|s| s.spawn(|| ids.iter().all(|&id| filter.may_contain(id))).join().unwrap())
}

/// The summary as the writer answers it, in order after every hand-over before it.
async fn summary(h: &History, from: Option<i64>, to: Option<i64>) -> Vec<Totals> {
    let (tx, rx) = oneshot::channel();
    h.summary(from.map(UtcMillis), to.map(UtcMillis), tx);
    tokio::time::timeout(WAIT, rx).await.expect("summary answered in time").expect("writer answered")
}

/// Waits until the history holds payment `seq` durably.
async fn confirmed(h: &History, seq: u64) {
    let mut rx = h.confirmed.clone();
    tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= seq)).await.expect("confirmed in time").expect("writer alive");
}

async fn purge(h: &History) {
    let (tx, rx) = oneshot::channel();
    h.purge(tx);
    tokio::time::timeout(WAIT, rx).await.expect("purge answered in time").expect("writer answered").expect("purge succeeds");
}

/// Per processor: count and cents of `model`'s entries with `from <= requested_at <= to`.
fn naive(model: &[Entry], processors: usize, from: Option<i64>, to: Option<i64>) -> Vec<Totals> {
    let mut out = vec![Totals::default(); processors];
    for e in model {
        let at = e.requested_at.0;
        if from.is_none_or(|f| f <= at) && to.is_none_or(|t| at <= t) {
            out[usize::from(e.processor)] = out[usize::from(e.processor)].plus(t(1, u128::from(e.cents.get())));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. The summary against a naive model.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// Hands over a new payment at `T0 + at`.
    Settle { at: i64, processor: u8, amount: u64 },
    /// Hands over an earlier payment again (index modulo those handed over so far).
    Again(usize),
    /// Commits what the writer holds.
    Flush,
    /// Closes the history and reopens it with a recovered state holding some earlier payments
    /// again (`again`, indices as in `Again`) and some new ones (`fresh`).
    Reopen { again: Vec<usize>, fresh: Vec<(i64, u8, u64)> },
    /// Compares the summary of `[T0 + from, T0 + to]` with the model.
    Query(Option<i64>, Option<i64>),
}

/// A requestedAt offset from T0: anywhere in a span of seven seconds, or on or next to a
/// second's edge.
fn at_offset() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => -2_500i64..4_500,
        1 => (-3i64..5).prop_map(|s| s * 1_000),
        1 => (-3i64..5).prop_map(|s| s * 1_000 + 999),
        1 => (-3i64..5, prop::sample::select(vec![-1i64, 1, 500, 998])).prop_map(|(s, d)| s * 1_000 + d),
    ]
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![5 => 1u64..=100_000, 1 => Just(MAX_CENTS), 1 => Just(1u64)]
}

fn bound() -> impl Strategy<Value = Option<i64>> {
    proptest::option::weighted(
        0.85,
        prop_oneof![
            3 => -3_500i64..5_500,
            1 => (-4i64..6).prop_map(|s| s * 1_000),
            1 => (-4i64..6).prop_map(|s| s * 1_000 + 999),
            1 => (-4i64..6).prop_map(|s| s * 1_000 - 1),
            1 => (-4i64..6).prop_map(|s| s * 1_000 + 1),
        ],
    )
}

fn window() -> impl Strategy<Value = (Option<i64>, Option<i64>)> {
    let edge_lo = prop::sample::select(vec![-1i64, 0, 1]);
    let edge_hi = prop::sample::select(vec![998i64, 999, 1_000]);
    prop_oneof![
        // Independent bounds (None allowed; from > to about half the time both are set).
        3 => (bound(), bound()),
        // Inside one second.
        1 => (-4i64..6, 0i64..1_000, 0i64..1_000).prop_map(|(s, a, b)| (Some(s * 1_000 + a.min(b)), Some(s * 1_000 + a.max(b)))),
        // From at or next to one second's start to at or next to a later second's end.
        1 => (-4i64..6, 0i64..9, edge_lo, edge_hi).prop_map(|(s, n, a, b)| (Some(s * 1_000 + a), Some((s + n) * 1_000 + b))),
        // Reversed.
        1 => (-3_500i64..5_500, 1i64..3_000).prop_map(|(f, d)| (Some(f), Some(f - d))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let fresh = proptest::collection::vec((at_offset(), 0u8..2, amount()), 0..4);
    prop_oneof![
        10 => (at_offset(), 0u8..2, amount()).prop_map(|(at, processor, amount)| Op::Settle { at, processor, amount }),
        2 => any::<usize>().prop_map(Op::Again),
        1 => Just(Op::Flush),
        1 => (proptest::collection::vec(any::<usize>(), 0..4), fresh).prop_map(|(again, fresh)| Op::Reopen { again, fresh }),
        6 => window().prop_map(|(f, t)| Op::Query(f, t)),
    ]
}

/// Query bounds for a final sweep: every second's edges and middle, relative to T0.
fn sweep_points() -> Vec<i64> {
    (-4i64..=5).flat_map(|s| [0, 1, 500, 998, 999].map(|d| s * 1_000 + d)).collect()
}

async fn check_sweep(h: &History, t0: i64, model: &[Entry], when: &str) -> Result<(), TestCaseError> {
    let points = sweep_points();
    let mut froms: Vec<Option<i64>> = points.iter().map(|&p| Some(t0 + p)).collect();
    froms.push(None);
    for &from in &froms {
        let base = from.unwrap_or(t0 - 3_000);
        let tos = [Some(base - 1), Some(base), Some(base + 1), Some(base.div_euclid(1_000) * 1_000 + 999), Some(base + 2_500), None];
        for to in tos {
            prop_assert_eq!(summary(h, from, to).await, naive(model, NAMES.len(), from, to), "{}: window {:?}..={:?}", when, from, to);
        }
    }
    Ok(())
}

fn run_case(t0: i64, salt: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut store = Store::new("model");
        let mut state = State::new(&NAMES);
        let opened = store.open(&mut state);
        prop_assert_eq!(opened.len, 0);
        prop_assert_eq!(opened.absorbed, 0);
        drop(opened);
        // Every distinct payment handed over or absorbed: each counts once.
        let mut model: Vec<Entry> = Vec::new();
        let mut next = 0u128;
        let mut fresh_id = || {
            next += 1;
            (u128::from(salt) << 64) | next
        };
        // The number of the last payment handed over to this handle.
        let mut seq = 0u64;
        for op in ops {
            match op {
                Op::Settle { at, processor, amount } => {
                    let e = entry(fresh_id(), t0 + at, processor, amount);
                    seq += 1;
                    store.h().settled(seq, e);
                    model.push(e);
                }
                Op::Again(i) => {
                    if !model.is_empty() {
                        let e = model[i % model.len()];
                        seq += 1;
                        store.h().settled(seq, e);
                    }
                }
                Op::Flush => {
                    store.h().flush().await.map_err(TestCaseError::fail)?;
                    prop_assert_eq!(*store.h().confirmed.borrow(), seq, "flush confirms every payment handed over");
                }
                Op::Reopen { again, fresh } => {
                    store.close();
                    let mut absorb: Vec<Entry> = Vec::new();
                    for i in again {
                        if !model.is_empty() {
                            let e = model[i % model.len()];
                            if !absorb.iter().any(|a| a.id == e.id) {
                                absorb.push(e);
                            }
                        }
                    }
                    let new: Vec<Entry> = fresh.into_iter().map(|(at, p, c)| entry(fresh_id(), t0 + at, p, c)).collect();
                    let mut state = processed_state(absorb.iter().chain(&new));
                    let mut opened = store.open(&mut state);
                    prop_assert_eq!(opened.absorbed, absorb.len() + new.len(), "every processed payment leaves the state");
                    prop_assert_eq!(state.len(), 0);
                    model.extend(new);
                    prop_assert_eq!(opened.len, model.len() as u64, "each payment is stored once");
                    prop_assert!(filter_holds(&mut opened, model.iter().map(|e| e.id)), "the filter holds every id");
                    seq = 0;
                    prop_assert_eq!(*store.h().confirmed.borrow(), 0);
                }
                Op::Query(from, to) => {
                    let (from, to) = (from.map(|f| t0 + f), to.map(|t| t0 + t));
                    prop_assert_eq!(
                        summary(store.h(), from, to).await,
                        naive(&model, NAMES.len(), from, to),
                        "window {:?}..={:?}",
                        from,
                        to
                    );
                }
            }
        }
        // Whatever is pending now, and then everything committed.
        check_sweep(store.h(), t0, &model, "end, mixed").await?;
        store.h().flush().await.map_err(TestCaseError::fail)?;
        prop_assert_eq!(*store.h().confirmed.borrow(), seq);
        for e in &model {
            prop_assert_eq!(store.h().get(e.id).map_err(TestCaseError::fail)?, Some(*e));
        }
        // Reloaded from disk alone.
        store.close();
        let mut state = State::new(&NAMES);
        let opened = store.open(&mut state);
        prop_assert_eq!(opened.len, model.len() as u64);
        prop_assert_eq!(opened.absorbed, 0);
        drop(opened);
        check_sweep(store.h(), t0, &model, "after reopen").await?;
        store.close();
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 2_048, ..ProptestConfig::default() })]

    #[test]
    fn summary_matches_a_naive_model(
        t0 in prop_oneof![Just(0i64), Just(T_REAL)],
        salt in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run_case(t0, salt, ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Reads by id.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_returns_what_was_handed_over_once_confirmed() {
    let mut store = Store::new("get");
    let mut state = State::new(&NAMES);
    store.open(&mut state);
    let a = entry(u128::MAX, T_REAL + 1, 0, MAX_CENTS);
    let b = entry(1, -1, 1, 1);
    let c = entry(0xdead_beef, T_REAL + 999, 1, 1_990);
    store.h().settled(1, a);
    store.h().settled(2, b);
    store.h().settled(3, a); // again: the first stays, counted once
    confirmed(store.h(), 3).await;
    assert_eq!(store.h().get(a.id).unwrap(), Some(a));
    assert_eq!(store.h().get(b.id).unwrap(), Some(b));
    assert!(store.h().contains(b.id).unwrap());
    assert_eq!(store.h().get(c.id).unwrap(), None, "never handed over");
    assert_eq!(store.h().get(CorrelationId(0)).unwrap(), None);
    assert!(!store.h().contains(c.id).unwrap());
    assert_eq!(summary(store.h(), None, None).await, vec![t(1, u128::from(MAX_CENTS)), t(1, 1)]);

    store.h().settled(4, c);
    confirmed(store.h(), 4).await;
    assert_eq!(store.h().get(c.id).unwrap(), Some(c));

    // Across a restart, and a closed handle refuses reads.
    let closed = store.h().clone();
    store.close();
    assert!(closed.get(a.id).is_err(), "reads after close fail");
    let mut opened = store.open(&mut State::new(&NAMES));
    assert_eq!(opened.len, 3);
    for e in [a, b, c] {
        assert_eq!(store.h().get(e.id).unwrap(), Some(e));
    }
    assert!(filter_holds(&mut opened, [a.id, b.id, c.id]));
    assert_eq!(*store.h().confirmed.borrow(), 0, "a new handle has confirmed nothing of its own");
    store.close();
}

// ---------------------------------------------------------------------------------------------
// 3. Absorbing a recovered state at open.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn absorbing_at_open_skips_known_ids() {
    let mut store = Store::new("absorb");
    let a = entry(10, T_REAL + 100, 0, 1_000);
    let b = entry(11, T_REAL + 1_999, 1, 2_000);
    let e = entry(12, T_REAL + 2_000, 0, 4_000);

    // A recovered state with two processed payments, one pending and one sent.
    let mut state = processed_state([&a, &b]);
    state.apply(&Event::Accepted { id: CorrelationId(20), cents: cents(7), accepted_at: UtcMillis(T_REAL) }).unwrap();
    state.apply(&Event::Accepted { id: CorrelationId(21), cents: cents(8), accepted_at: UtcMillis(T_REAL) }).unwrap();
    state.apply(&Event::Intent { id: CorrelationId(21), processor: 1, requested_at: UtcMillis(T_REAL + 5) }).unwrap();
    let mut opened = store.open(&mut state);
    assert_eq!(opened.absorbed, 2, "the two processed payments move");
    assert_eq!(opened.len, 2);
    assert!(filter_holds(&mut opened, [a.id, b.id]));
    assert_eq!(state.len(), 2, "unfinished payments stay in the state");
    assert!(state.get(a.id).is_none() && state.get(b.id).is_none());
    assert!(state.get(CorrelationId(20)).is_some() && state.get(CorrelationId(21)).is_some());
    assert_eq!(store.h().get(a.id).unwrap(), Some(a));
    assert_eq!(summary(store.h(), None, None).await, vec![t(1, 1_000), t(1, 2_000)]);
    store.close();

    // A crash before the journal forgot them: the same payments come back, with a new one.
    let mut state = processed_state([&a, &b, &e]);
    let opened = store.open(&mut state);
    assert_eq!(opened.absorbed, 3, "every processed payment leaves the state");
    assert_eq!(opened.len, 3, "the known two are not stored again");
    assert!(state.is_empty());
    assert_eq!(summary(store.h(), None, None).await, vec![t(2, 5_000), t(1, 2_000)]);
    assert_eq!(summary(store.h(), Some(T_REAL + 1_000), Some(T_REAL + 1_999)).await, vec![t(0, 0), t(1, 2_000)]);
    assert_eq!(summary(store.h(), Some(T_REAL + 1_999), Some(T_REAL + 2_000)).await, vec![t(1, 4_000), t(1, 2_000)]);
    assert_eq!(summary(store.h(), Some(T_REAL + 100), Some(T_REAL + 100)).await, vec![t(1, 1_000), t(0, 0)]);
    // Handed over again by the ledger after open: still once.
    store.h().settled(1, a);
    store.h().settled(2, e);
    assert_eq!(summary(store.h(), None, None).await, vec![t(2, 5_000), t(1, 2_000)]);
    store.close();

    // And the per-millisecond totals on disk agree after yet another start.
    let opened = store.open(&mut processed_state([&e]));
    assert_eq!(opened.len, 3);
    assert_eq!(summary(store.h(), Some(T_REAL + 1), Some(T_REAL + 2_000)).await, vec![t(2, 5_000), t(1, 2_000)]);
    assert_eq!(summary(store.h(), Some(T_REAL + 2_000), None).await, vec![t(1, 4_000), t(0, 0)]);
    store.close();
}

// ---------------------------------------------------------------------------------------------
// 4. Purge and resume.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn purge_empties_the_history_and_drops_until_resume() {
    let mut store = Store::new("purge");
    store.open(&mut State::new(&NAMES));
    let zero = vec![Totals::default(); 2];
    let before: Vec<Entry> = (1..=4).map(|i| entry(i, T_REAL + i as i64 * 400, (i % 2) as u8, 100 * i as u64)).collect();
    store.h().settled(1, before[0]);
    store.h().settled(2, before[1]);
    store.h().flush().await.unwrap(); // two committed ...
    store.h().settled(3, before[2]);
    store.h().settled(4, before[3]); // ... and two pending
    assert_eq!(summary(store.h(), None, None).await, vec![t(2, 600), t(2, 400)]);

    purge(store.h()).await;
    assert_eq!(summary(store.h(), None, None).await, zero);
    assert_eq!(summary(store.h(), Some(T_REAL + 1), Some(T_REAL + 1_599)).await, zero, "partial seconds too");
    for e in &before {
        assert_eq!(store.h().get(e.id).unwrap(), None, "{:?} purged", e.id);
    }

    // Handed over between purge and resume: they belong to the purged books.
    let during = [entry(50, T_REAL + 10, 0, 5), entry(51, T_REAL + 1_010, 1, 6)];
    store.h().settled(5, during[0]);
    store.h().settled(6, during[1]);
    store.h().settled(7, before[0]);
    assert_eq!(summary(store.h(), None, None).await, zero);
    store.h().flush().await.unwrap();
    for e in during.iter().chain(&before) {
        assert_eq!(store.h().get(e.id).unwrap(), None);
    }
    assert_eq!(summary(store.h(), None, None).await, zero);

    store.h().resume();
    let after = [entry(60, T_REAL + 10, 0, 7), entry(61, T_REAL + 1_500, 1, 8)];
    store.h().settled(8, after[0]);
    store.h().settled(9, after[1]);
    store.h().settled(10, before[0]); // purged earlier: a new payment now
    store.h().settled(11, after[0]); // again: once
    let want = vec![t(1, 7), t(2, 108)];
    assert_eq!(summary(store.h(), None, None).await, want);
    assert_eq!(summary(store.h(), Some(T_REAL + 400), Some(T_REAL + 1_500)).await, vec![t(0, 0), t(2, 108)]);
    assert_eq!(summary(store.h(), Some(T_REAL + 401), Some(T_REAL + 1_499)).await, zero);
    confirmed(store.h(), 11).await;
    assert_eq!(store.h().get(after[0].id).unwrap(), Some(after[0]));
    assert_eq!(store.h().get(before[0].id).unwrap(), Some(before[0]));
    assert_eq!(store.h().get(during[0].id).unwrap(), None);
    assert_eq!(store.h().get(before[1].id).unwrap(), None);

    // The purge is durable.
    store.close();
    let opened = store.open(&mut State::new(&NAMES));
    assert_eq!(opened.len, 3);
    assert_eq!(store.h().get(during[0].id).unwrap(), None);
    assert_eq!(summary(store.h(), None, None).await, want);
    assert_eq!(summary(store.h(), Some(T_REAL + 400), Some(T_REAL + 1_500)).await, vec![t(0, 0), t(2, 108)]);
    store.close();
}

// ---------------------------------------------------------------------------------------------
// 5. Processor numbering across restarts.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn processor_indices_follow_names_across_restarts() {
    let mut store = Store::new("names");
    store.open(&mut State::new(&["default", "fallback", "third"]));
    let d = entry(1, T_REAL + 1, 0, 10);
    let f = entry(2, T_REAL + 2, 1, 20);
    let x = entry(3, T_REAL + 3, 2, 40);
    for (i, e) in [d, f, x].into_iter().enumerate() {
        store.h().settled(i as u64 + 1, e);
    }
    assert_eq!(summary(store.h(), None, None).await, vec![t(1, 10), t(1, 20), t(1, 40)]);
    store.close();

    // The configuration now lists them the other way round, and without "third".
    let mut state = State::new(&["fallback", "default"]);
    store.open(&mut state);
    assert_eq!(state.names(), ["fallback", "default", "third"], "names only the history knows are added");
    assert_eq!(summary(store.h(), None, None).await, vec![t(1, 20), t(1, 10), t(1, 40)]);
    assert_eq!(summary(store.h(), Some(T_REAL + 2), Some(T_REAL + 2)).await, vec![t(1, 20), t(0, 0), t(0, 0)]);
    assert_eq!(store.h().get(d.id).unwrap(), Some(Entry { processor: 1, ..d }));
    assert_eq!(store.h().get(f.id).unwrap(), Some(Entry { processor: 0, ..f }));
    assert_eq!(store.h().get(x.id).unwrap(), Some(x));
    // A payment handed over in the new numbering.
    let g = entry(4, T_REAL + 4, 0, 80);
    store.h().settled(1, g);
    assert_eq!(summary(store.h(), Some(T_REAL + 2), Some(T_REAL + 4)).await, vec![t(2, 100), t(0, 0), t(1, 40)]);
    store.close();

    let mut state = State::new(&NAMES);
    store.open(&mut state);
    assert_eq!(summary(store.h(), None, None).await, vec![t(1, 10), t(2, 100), t(1, 40)]);
    assert_eq!(store.h().get(g.id).unwrap(), Some(Entry { processor: 1, ..g }));
    store.close();
}

// ---------------------------------------------------------------------------------------------
// 6. Import.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn import_writes_entries_once() {
    let mut store = Store::new("import");
    let names: Vec<String> = NAMES.map(String::from).to_vec();
    let entries: Vec<Entry> = (1..=10).map(|i| entry(i, T_REAL - 1_500 + i as i64 * 250, (i % 2) as u8, i as u64)).collect();
    // Duplicates within one batch and across batches.
    let with_dups = entries.iter().chain(&entries[..3]).chain(&entries[8..]).copied();
    assert_eq!(history::import(&store.dir.0, &names, with_dups, 4).unwrap(), 10);
    assert_eq!(history::import(&store.dir.0, &names, entries[5..].iter().copied(), 3).unwrap(), 0);

    let mut opened = store.open(&mut State::new(&NAMES));
    assert_eq!(opened.len, 10);
    for e in &entries {
        assert_eq!(store.h().get(e.id).unwrap(), Some(*e));
    }
    assert!(filter_holds(&mut opened, entries.iter().map(|e| e.id)));
    drop(opened);
    for (from, to) in [(None, None), (Some(T_REAL - 1_000), Some(T_REAL)), (Some(T_REAL - 999), Some(T_REAL - 1)), (Some(T_REAL + 1), None)]
    {
        assert_eq!(summary(store.h(), from, to).await, naive(&entries, 2, from, to), "window {from:?}..={to:?}");
    }
    store.close();
}

// ---------------------------------------------------------------------------------------------
// 7. Instants and bounds at the ends of the range.
// ---------------------------------------------------------------------------------------------

async fn check_all_windows(h: &History, entries: &[Entry], bounds: &[Option<i64>], when: &str) {
    for &from in bounds {
        for &to in bounds {
            assert_eq!(summary(h, from, to).await, naive(entries, 2, from, to), "{when}: window {from:?}..={to:?}");
        }
    }
}

#[tokio::test]
async fn extreme_instants_and_bounds() {
    let mut store = Store::new("extreme");
    store.open(&mut State::new(&NAMES));
    let ats = [i64::MIN, i64::MIN + 1, i64::MIN + 999, -1_000, -1, 0, 999, i64::MAX - 999, i64::MAX - 1, i64::MAX];
    let entries: Vec<Entry> = ats
        .iter()
        .enumerate()
        .map(|(i, &at)| Entry { accepted_at: UtcMillis(0), requested_at: UtcMillis(at), ..entry(i as u128 + 1, 0, (i % 2) as u8, 1 << i) })
        .collect();
    let mut bounds: Vec<Option<i64>> = vec![None];
    for &at in &ats {
        bounds.extend([-1i64, 0, 1].iter().filter_map(|&d| at.checked_add(d)).map(Some));
    }
    for (i, e) in entries.iter().enumerate() {
        store.h().settled(i as u64 + 1, *e);
    }
    check_all_windows(store.h(), &entries, &bounds, "pending").await;
    store.h().flush().await.unwrap();
    check_all_windows(store.h(), &entries, &bounds, "committed").await;
    for e in &entries {
        assert_eq!(store.h().get(e.id).unwrap(), Some(*e));
    }
    store.close();
    store.open(&mut State::new(&NAMES));
    check_all_windows(store.h(), &entries, &bounds, "reopened").await;
    store.close();
}
