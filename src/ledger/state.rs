//! The ledger's state as a pure function of its events: payments by id and their
//! forward-only status. Replaying the journal through [`State::apply`] rebuilds exactly the
//! state the running gateway had; a running gateway also removes settled payments once the
//! history holds them ([`State::evict`]), so its state is the hot set, not all of history.
//! Summaries are the history's (see `history`).

/// The ledger's id-keyed table. Ids are chosen by clients, so the hash is keyed: foldhash with
/// a per-process random seed, about as fast as FxHash on a u128 but without FxHash's closed
/// formula for colliding ids (with FxHash, `hi = C - lo * K` gives every id the same hash,
/// and each insert becomes a scan of all the others on the single writer). perf.md measures
/// the three choices; `fxhash` (unkeyed) and neither feature (std's SipHash) remain for that.
/// The table itself is sized once and never rehashes (see `table`).
type IdMap<V> = super::table::IdTable<V>;

use crate::domain::{Cents, CorrelationId, UtcMillis};
use crate::processor::ProcessorIdx;

/// A change to the ledger. Every change is journaled before its effects leave the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Accepted {
        id: CorrelationId,
        cents: Cents,
        accepted_at: UtcMillis,
    },
    /// About to send the payment to `processor` with this `requestedAt`.
    Intent {
        id: CorrelationId,
        processor: ProcessorIdx,
        requested_at: UtcMillis,
    },
    /// The processor recorded the payment with this `requestedAt`.
    Processed {
        id: CorrelationId,
        processor: ProcessorIdx,
        requested_at: UtcMillis,
    },
    /// The processor certainly did not record the payment and never will.
    Rejected {
        id: CorrelationId,
        processor: ProcessorIdx,
    },
    Purged,
}

/// Where a payment is in its life. It only moves forward:
/// Pending → Sent → (Processed | back to Pending after a definitive rejection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Sent { processor: ProcessorIdx, requested_at: UtcMillis },
    Processed { processor: ProcessorIdx, requested_at: UtcMillis },
}

#[derive(Clone, Copy, Debug)]
pub struct Payment {
    pub cents: Cents,
    pub accepted_at: UtcMillis,
    pub status: Status,
    /// Which work item may act on this payment (in memory only, never journaled): dispatch's
    /// commands must carry it, so that an item replaced after a journal repair, or one of a
    /// payment purged and accepted again, can change nothing.
    pub ticket: u64,
}

/// Only a placeholder for the table's empty slots.
impl Default for Payment {
    fn default() -> Payment {
        Payment { cents: Cents::new(1).expect("one cent is an amount"), accepted_at: UtcMillis(0), status: Status::Pending, ticket: 0 }
    }
}

/// Payments are equal when their journaled facts are; tickets are a property of one process.
impl PartialEq for Payment {
    fn eq(&self, other: &Payment) -> bool {
        (self.cents, self.accepted_at, self.status) == (other.cents, other.accepted_at, other.status)
    }
}

impl Eq for Payment {}

/// An event that does not fit the state: a defect, or a journal that is not ours.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} does not apply to payment state {found:?}")]
pub struct ApplyError {
    pub event: Event,
    pub found: Option<Payment>,
}

#[derive(Clone, Debug)]
pub struct State {
    /// Processor names; a [`ProcessorIdx`] indexes this list. The configured processors come
    /// first, in their order; processors known only from the journal follow.
    names: Vec<String>,
    payments: IdMap<Payment>,
    /// Payments accepted and not yet processed.
    unfinished: usize,
    /// The ticket the next accepted payment gets; never reset, not even by a purge.
    next_ticket: u64,
}

/// Two states are equal when they hold the same payments.
impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self.names == other.names && self.payments == other.payments && self.unfinished == other.unfinished
    }
}

impl State {
    /// An empty state over these processors (cheapest first).
    pub fn new<S: AsRef<str>>(names: &[S]) -> State {
        let names: Vec<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
        assert!(names.len() <= usize::from(ProcessorIdx::MAX), "at most 255 processors");
        State { names, payments: IdMap::default(), unfinished: 0, next_ticket: 1 }
    }

    /// Makes room for `n` payments at once, so that the map never grows (is never rehashed
    /// into a larger table) while it holds at most `n`.
    pub fn reserve_total(&mut self, n: usize) {
        self.payments.reserve(n.saturating_sub(self.payments.len()));
    }

    /// How many payments the map holds before it must grow.
    pub fn capacity(&self) -> usize {
        self.payments.capacity()
    }

    /// Removes every processed payment and returns them (recovery hands them to the history).
    pub fn take_processed(&mut self) -> Vec<(CorrelationId, Payment)> {
        let ids: Vec<u128> = self.payments.iter().filter(|(_, p)| matches!(p.status, Status::Processed { .. })).map(|(k, _)| *k).collect();
        ids.into_iter().filter_map(|k| self.payments.remove(&k).map(|p| (CorrelationId(k), p))).collect()
    }

    /// Puts back a payment [`State::take_processed`] took.
    pub fn put_back(&mut self, id: CorrelationId, p: Payment) {
        self.payments.insert(id.0, p);
    }

    /// Keeps every unfinished payment, and the processed ones `keep` names.
    pub fn retain_processed(&mut self, mut keep: impl FnMut(CorrelationId) -> bool) {
        self.payments.retain(|k, p| !matches!(p.status, Status::Processed { .. }) || keep(CorrelationId(*k)));
    }

    /// Forgets a processed payment (the history holds it); `false` when `id` is not processed
    /// here.
    pub fn evict(&mut self, id: CorrelationId) -> bool {
        match self.payments.get(&id.0) {
            Some(p) if matches!(p.status, Status::Processed { .. }) => {
                self.payments.remove(&id.0);
                true
            }
            _ => false,
        }
    }

    /// Rebuilds a state from its payments (a snapshot), whose processor indices refer to
    /// `names`.
    pub fn restore(names: &[String], payments: Vec<(CorrelationId, Payment)>) -> State {
        let mut s = State::new(names);
        s.payments.reserve(payments.len());
        for (id, p) in payments {
            if !matches!(p.status, Status::Processed { .. }) {
                s.unfinished += 1;
            }
            s.payments.insert(id.0, Payment { ticket: s.next_ticket, ..p });
            s.next_ticket += 1;
        }
        s
    }

    pub fn processors(&self) -> usize {
        self.names.len()
    }

    /// Processor names, indexed by [`ProcessorIdx`].
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The index of processor `name`, added (after every other) if this state has not seen it.
    /// `None` when 255 processors are known already.
    pub fn processor_index(&mut self, name: &str) -> Option<ProcessorIdx> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Some(i as ProcessorIdx);
        }
        if self.names.len() >= usize::from(ProcessorIdx::MAX) {
            return None;
        }
        self.names.push(name.to_string());
        Some((self.names.len() - 1) as ProcessorIdx)
    }

    /// When the oldest unfinished payment was accepted (a scan of every payment).
    pub fn oldest_unfinished(&self) -> Option<UtcMillis> {
        self.payments.values().filter(|p| !matches!(p.status, Status::Processed { .. })).map(|p| p.accepted_at).min()
    }

    /// Payments sent to `processor` whose outcome there is not known yet.
    pub fn unresolved_at(&self, processor: ProcessorIdx) -> usize {
        self.payments.values().filter(|p| matches!(p.status, Status::Sent { processor: s, .. } if s == processor)).count()
    }

    pub fn get(&self, id: CorrelationId) -> Option<&Payment> {
        self.payments.get(&id.0)
    }

    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    pub fn len(&self) -> usize {
        self.payments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payments.is_empty()
    }

    pub fn payments(&self) -> impl Iterator<Item = (CorrelationId, &Payment)> {
        self.payments.iter().map(|(&k, v)| (CorrelationId(k), v))
    }

    /// The ticket the next accepted payment will get.
    pub fn next_ticket(&self) -> u64 {
        self.next_ticket
    }

    /// Takes over the tickets of `old` (the state before a journal repair) for every payment
    /// the disk holds exactly as `old` did, so their work items stay valid; every other
    /// unfinished payment, and those in `orphans` (whose item ended while the journal was
    /// failed), gets a fresh ticket. Returns the unfinished payments with fresh tickets: they
    /// need a new work item, and nothing else does.
    pub fn adopt_tickets(&mut self, old: &State, orphans: &[CorrelationId]) -> Vec<CorrelationId> {
        let mut next = self.next_ticket.max(old.next_ticket);
        let mut fresh = Vec::new();
        self.payments.for_each_mut(|id, p| match old.payments.get(id) {
            Some(o) if o == p => p.ticket = o.ticket,
            _ => {
                p.ticket = next;
                next += 1;
                if !matches!(p.status, Status::Processed { .. }) {
                    fresh.push(CorrelationId(*id));
                }
            }
        });
        for id in orphans {
            if let Some(p) = self.payments.get_mut(&id.0)
                && !matches!(p.status, Status::Processed { .. })
                && old.payments.get(&id.0).is_some_and(|o| o.ticket == p.ticket)
            {
                p.ticket = next;
                next += 1;
                fresh.push(*id);
            }
        }
        self.next_ticket = next;
        fresh
    }

    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        let bad = |found: Option<&Payment>| ApplyError { event: *event, found: found.copied() };
        match *event {
            Event::Accepted { id, cents, accepted_at } => {
                if let Some(p) = self.payments.get(&id.0) {
                    return Err(bad(Some(p)));
                }
                self.payments.insert(id.0, Payment { cents, accepted_at, status: Status::Pending, ticket: self.next_ticket });
                self.next_ticket += 1;
                self.unfinished += 1;
            }
            Event::Intent { id, processor, requested_at } => {
                let p = self.payments.get_mut(&id.0).ok_or_else(|| bad(None))?;
                if p.status != Status::Pending || usize::from(processor) >= self.names.len() {
                    return Err(bad(Some(p)));
                }
                p.status = Status::Sent { processor, requested_at };
            }
            Event::Processed { id, processor, requested_at } => {
                let p = self.payments.get_mut(&id.0).ok_or_else(|| bad(None))?;
                if !matches!(p.status, Status::Sent { processor: sent, .. } if sent == processor) {
                    return Err(bad(Some(p)));
                }
                p.status = Status::Processed { processor, requested_at };
                self.unfinished -= 1;
            }
            Event::Rejected { id, processor } => {
                let p = self.payments.get_mut(&id.0).ok_or_else(|| bad(None))?;
                if !matches!(p.status, Status::Sent { processor: sent, .. } if sent == processor) {
                    return Err(bad(Some(p)));
                }
                p.status = Status::Pending;
            }
            Event::Purged => {
                self.payments.clear();
                self.unfinished = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: CorrelationId = CorrelationId(7);

    fn accepted() -> Event {
        Event::Accepted { id: ID, cents: Cents::new(1990).unwrap(), accepted_at: UtcMillis(1_000) }
    }

    #[test]
    fn payment_moves_forward_to_processed() {
        let mut s = State::new(&["default", "fallback"]);
        s.apply(&accepted()).unwrap();
        s.apply(&Event::Intent { id: ID, processor: 0, requested_at: UtcMillis(2_000) }).unwrap();
        s.apply(&Event::Processed { id: ID, processor: 0, requested_at: UtcMillis(2_000) }).unwrap();
        assert_eq!(s.unfinished(), 0);
        assert!(matches!(s.get(ID).unwrap().status, Status::Processed { processor: 0, requested_at: UtcMillis(2_000) }));
        assert!(s.evict(ID));
        assert!(s.get(ID).is_none());
    }

    #[test]
    fn rejection_returns_payment_to_pending_for_another_processor() {
        let mut s = State::new(&["default", "fallback"]);
        s.apply(&accepted()).unwrap();
        s.apply(&Event::Intent { id: ID, processor: 0, requested_at: UtcMillis(2_000) }).unwrap();
        s.apply(&Event::Rejected { id: ID, processor: 0 }).unwrap();
        s.apply(&Event::Intent { id: ID, processor: 1, requested_at: UtcMillis(3_000) }).unwrap();
        s.apply(&Event::Processed { id: ID, processor: 1, requested_at: UtcMillis(3_000) }).unwrap();
        assert!(matches!(s.get(ID).unwrap().status, Status::Processed { processor: 1, .. }));
    }

    #[test]
    fn backward_or_foreign_moves_are_refused() {
        let mut s = State::new(&["default", "fallback"]);
        assert!(s.apply(&Event::Intent { id: ID, processor: 0, requested_at: UtcMillis(1) }).is_err());
        s.apply(&accepted()).unwrap();
        assert!(s.apply(&accepted()).is_err());
        assert!(s.apply(&Event::Processed { id: ID, processor: 0, requested_at: UtcMillis(1) }).is_err());
        s.apply(&Event::Intent { id: ID, processor: 0, requested_at: UtcMillis(1) }).unwrap();
        assert!(s.apply(&Event::Processed { id: ID, processor: 1, requested_at: UtcMillis(1) }).is_err());
        assert!(s.apply(&Event::Intent { id: ID, processor: 1, requested_at: UtcMillis(1) }).is_err());
        s.apply(&Event::Processed { id: ID, processor: 0, requested_at: UtcMillis(1) }).unwrap();
        assert!(s.apply(&Event::Rejected { id: ID, processor: 0 }).is_err());
    }

    #[test]
    fn purge_forgets_everything() {
        let mut s = State::new(&["default"]);
        s.apply(&accepted()).unwrap();
        s.apply(&Event::Purged).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.unfinished(), 0);
        s.apply(&accepted()).unwrap();
    }
}
