//! Cooling a failing upstream down, as LiteLLM's router does (its defaults: 3 failures within
//! a minute cool a deployment down for 5 s). While the upstream cools, the worker pulls none of
//! its models' jobs, so they wait in the queue or go to other workers, and the jobs it holds
//! wait before their next try instead of hammering a server that is down.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures older than this no longer count.
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Health {
    failures_to_cool: usize,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: VecDeque<Instant>,
    cool_until: Option<Instant>,
}

impl Health {
    /// Cools down for `cooldown` once `failures_to_cool` failures fall within a minute; zero
    /// failures never cools.
    pub fn new(failures_to_cool: usize, cooldown: Duration) -> Self {
        Health { failures_to_cool, cooldown, state: Mutex::default() }
    }

    /// How much longer the upstream cools down, if it does.
    pub fn cooling(&self) -> Option<Duration> {
        let state = self.state.lock().unwrap();
        state.cool_until.and_then(|until| until.checked_duration_since(Instant::now())).filter(|left| !left.is_zero())
    }

    /// Counts a failure; returns true when it starts a cooldown.
    pub fn failed(&self) -> bool {
        if self.failures_to_cool == 0 {
            return false;
        }
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        while state.failures.front().is_some_and(|at| now.duration_since(*at) > WINDOW) {
            state.failures.pop_front();
        }
        state.failures.push_back(now);
        if state.failures.len() < self.failures_to_cool {
            return false;
        }
        state.failures.clear();
        state.cool_until = Some(now + self.cooldown);
        true
    }

    /// An answer came: the failures so far no longer count.
    pub fn succeeded(&self) {
        let mut state = self.state.lock().unwrap();
        state.failures.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_third_failure_in_a_row_cools_down_and_a_success_resets_the_count() {
        let health = Health::new(3, Duration::from_secs(5));
        assert!(!health.failed());
        assert!(!health.failed());
        health.succeeded();
        assert!(!health.failed());
        assert!(!health.failed());
        assert_eq!(health.cooling(), None);
        assert!(health.failed());
        let left = health.cooling().expect("cooling down");
        assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5), "{left:?}");
    }

    #[test]
    fn zero_failures_never_cools() {
        let health = Health::new(0, Duration::from_secs(5));
        for _ in 0..10 {
            assert!(!health.failed());
        }
        assert_eq!(health.cooling(), None);
    }
}
