//! Client-chosen ids against the ledger's hash maps: ids crafted so that every one has the
//! same unkeyed FxHash (for a u128 the high half is a closed formula of the low half) must
//! not turn the single writer's inserts into scans of all the others.

use std::time::Duration;

use paygate::domain::{Cents, CorrelationId, UtcMillis};
use paygate::ledger::{Event, State};

/// rustc-hash 2's multiplier: FxHash(u128) = ((lo * K) + hi) * K, rotated.
const FX_K: u64 = 0xf1357aea2e62a9c5;
const CRAFTED: u64 = 50_000;
/// Generous: the keyed map needs milliseconds; a map that collides needs minutes here.
const BOUND: Duration = Duration::from_secs(20);

/// `n` ids whose unkeyed FxHash is the same: hi = C - lo * K makes lo * K + hi = C.
fn colliding_ids(n: u64) -> Vec<CorrelationId> {
    const C: u64 = 0x5eed_5eed_5eed_5eed;
    (1..=n).map(|lo| CorrelationId(((C.wrapping_sub(lo.wrapping_mul(FX_K)) as u128) << 64) | lo as u128)).collect()
}

#[test]
fn crafted_ids_share_one_unkeyed_fxhash() {
    use std::hash::BuildHasher;
    let fx = rustc_hash::FxBuildHasher;
    let ids = colliding_ids(100);
    let first = fx.hash_one(ids[0].0);
    assert!(ids.iter().all(|id| fx.hash_one(id.0) == first), "the test's ids must collide under FxHash");
}

#[test]
fn fifty_thousand_colliding_ids_are_inserted_in_bounded_time() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = State::new(&["default", "fallback"]);
        for id in colliding_ids(CRAFTED) {
            s.apply(&Event::Accepted { id, cents: Cents::new(100).unwrap(), accepted_at: UtcMillis(1) }).unwrap();
        }
        let _ = tx.send(s.len());
    });
    let inserted = rx.recv_timeout(BOUND).expect("inserting crafted ids did not finish: the ledger's map is not keyed");
    assert_eq!(inserted, CRAFTED as usize);
}
