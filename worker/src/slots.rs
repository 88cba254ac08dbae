//! A worker's slots, shared by its lanes: interactive jobs first, batch jobs only in spare slots.
//!
//! An interactive job takes any free slot. A batch job takes one only while more than `reserve`
//! slots are free and no delivered interactive job is waiting for a slot, so `reserve` slots are
//! always left for interactive work and a freed slot goes to a waiting interactive job before a
//! batch job. An interactive job therefore waits at most for running jobs, never behind queued
//! batch jobs.

use std::sync::{Arc, Mutex};

use switchyard_schemas::Lane;
use tokio::sync::Notify;

pub struct Slots {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    total: usize,
    free: usize,
    reserve: usize,
    /// Interactive jobs delivered and waiting for a slot: batch jobs must not take one first.
    interactive_waiting: usize,
}

impl State {
    /// Slots a job of `lane` could take now.
    fn open_to(&self, lane: Lane) -> usize {
        match lane {
            Lane::Interactive => self.free,
            Lane::Batch if self.interactive_waiting > 0 => 0,
            Lane::Batch => self.free.saturating_sub(self.reserve),
        }
    }
}

/// A taken slot; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.state.lock().unwrap().free += 1;
        self.slots.changed.notify_waiters();
    }
}

impl Slots {
    /// `total` slots, of which `reserve` are never given to batch jobs. A reserve of `total` or
    /// more means this worker takes no batch work at all.
    pub fn new(total: usize, reserve: usize) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State { total, free: total, reserve, interactive_waiting: 0 }), changed: Notify::new() })
    }

    /// How many jobs of `lane` could start now.
    pub fn open_to(&self, lane: Lane) -> usize {
        self.state.lock().unwrap().open_to(lane)
    }

    /// Waits until at least one job of `lane` could start, and returns how many could.
    pub async fn wait_open(&self, lane: Lane) -> usize {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let open = self.open_to(lane);
            if open > 0 {
                return open;
            }
            changed.await;
        }
    }

    /// Once a job of `lane` could start: waits up to `patience` more for at least half of the
    /// lane's slots to be open, and returns how many are. Batch jobs finish and free their
    /// slots one at a time; gathering them makes one pull request fetch many jobs.
    pub async fn wait_gathered(&self, lane: Lane, patience: std::time::Duration) -> usize {
        let open = self.wait_open(lane).await;
        let half = {
            let state = self.state.lock().unwrap();
            let capacity = match lane {
                Lane::Interactive => state.total,
                Lane::Batch => state.total.saturating_sub(state.reserve),
            };
            capacity.div_ceil(2)
        };
        if open >= half || patience.is_zero() {
            return open;
        }
        let gathered = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.open_to(lane) >= half {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(patience, gathered).await;
        self.open_to(lane).max(1)
    }

    /// Takes a slot for a delivered job of `lane`, waiting for one.
    pub async fn take(self: &Arc<Self>, lane: Lane) -> Slot {
        let mut waiting = Waiting { slots: self, counted: false };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.state.lock().unwrap();
                if state.open_to(lane) > 0 {
                    state.free -= 1;
                    if waiting.counted {
                        state.interactive_waiting -= 1;
                        waiting.counted = false;
                    }
                    return Slot { slots: self.clone() };
                }
                if lane == Lane::Interactive && !waiting.counted {
                    state.interactive_waiting += 1;
                    waiting.counted = true;
                }
            }
            changed.await;
        }
    }
}

/// Uncounts a waiting interactive job whose wait was abandoned (shutdown).
struct Waiting<'a> {
    slots: &'a Arc<Slots>,
    counted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.slots.state.lock().unwrap().interactive_waiting -= 1;
            self.slots.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn batch_jobs_leave_the_reserve_free() {
        let slots = Slots::new(3, 1);
        assert_eq!(slots.open_to(Lane::Batch), 2);
        let a = slots.take(Lane::Batch).await;
        let _b = slots.take(Lane::Batch).await;
        assert_eq!(slots.open_to(Lane::Batch), 0);
        assert_eq!(slots.open_to(Lane::Interactive), 1);
        let blocked = tokio::time::timeout(Duration::from_millis(50), slots.take(Lane::Batch)).await;
        assert!(blocked.is_err(), "a batch job took the reserved slot");
        let _i = slots.take(Lane::Interactive).await;
        drop(a);
        assert_eq!(slots.open_to(Lane::Batch), 0, "one free slot is the reserve");
    }

    #[tokio::test]
    async fn a_waiting_interactive_job_gets_the_next_slot() {
        let slots = Slots::new(2, 0);
        let a = slots.take(Lane::Batch).await;
        let _b = slots.take(Lane::Batch).await;
        let interactive = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(Lane::Interactive).await }
        });
        // The interactive job is counted as waiting before the slot frees.
        while slots.state.lock().unwrap().interactive_waiting == 0 {
            tokio::task::yield_now().await;
        }
        let batch = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(Lane::Batch).await }
        });
        tokio::task::yield_now().await;
        drop(a);
        let _slot = tokio::time::timeout(Duration::from_secs(1), interactive).await.unwrap().unwrap();
        assert!(!batch.is_finished(), "the batch job took the slot an interactive job waited for");
        batch.abort();
    }

    #[tokio::test]
    async fn a_batch_pull_gathers_freed_slots_for_a_moment() {
        let slots = Slots::new(5, 1);
        let taken: Vec<_> = [(); 4].iter().map(|_| slots.take(Lane::Batch)).collect::<futures::future::JoinAll<_>>().await;
        let mut taken = taken.into_iter();
        drop(taken.next());
        // One of four batch slots open: not half; after the patience, what is open.
        assert_eq!(slots.wait_gathered(Lane::Batch, Duration::from_millis(20)).await, 1);
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.wait_gathered(Lane::Batch, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        drop(taken.next());
        assert_eq!(tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap(), 2, "half open ends the wait");
    }

    #[tokio::test]
    async fn an_abandoned_interactive_wait_is_uncounted() {
        let slots = Slots::new(1, 0);
        let held = slots.take(Lane::Interactive).await;
        let waited = tokio::time::timeout(Duration::from_millis(20), slots.take(Lane::Interactive)).await;
        assert!(waited.is_err());
        drop(held);
        assert_eq!(slots.open_to(Lane::Batch), 1);
    }
}
