//! The one reconnect backoff of outbound links (uplinks and the hub's CSMS sockets): doubling
//! from an initial pause up to a maximum, reset by a success, with jitter so that many nodes
//! restarting together do not dial in lockstep.

use std::hash::BuildHasher as _;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The pause before the next attempt after a failure: between half and all of the
    /// current step, which then doubles.
    pub fn failed(&mut self) -> Duration {
        let pause = jitter(self.next);
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// A success: the next failure starts again from the initial pause, which is also the
    /// (jittered) pause before redialling a link that just dropped.
    pub fn succeeded(&mut self) -> Duration {
        self.next = self.initial;
        jitter(self.initial)
    }
}

/// A pause between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let fraction = 0.5 + (r % 1000) as f64 / 2000.0;
    d.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let pauses: Vec<Duration> = (0..4).map(|_| b.failed()).collect();
        let limits = [100, 200, 350, 350];
        for (p, max) in pauses.iter().zip(limits) {
            let max = Duration::from_millis(max);
            assert!(*p <= max && *p >= max / 2, "{pauses:?}");
        }
        assert!(b.succeeded() <= Duration::from_millis(100));
        assert!(b.failed() <= Duration::from_millis(100));
    }
}
