//! The admin socket's request rate per caller, keyed by uid (governor): a caller looping on
//! requests, read-only monitoring gone wrong say, is answered
//! [`ErrorKind::RateLimited`](super::api::ErrorKind::RateLimited) past its rate, while other
//! callers are served as usual.

use std::num::NonZeroU32;

use governor::DefaultKeyedRateLimiter;

use crate::rate::Rate;

/// Requests a second each caller may send, sustained.
pub const REQUESTS_PER_SEC: u32 = 100;
/// Requests a caller may send at once (a script's burst of CLI calls).
pub const REQUEST_BURST: u32 = 200;
/// Distinct callers remembered before the idle ones are forgotten.
const MAX_PEERS: usize = 1024;

/// Per-uid request limiter.
#[derive(Debug)]
pub struct PeerRate {
    limiter: DefaultKeyedRateLimiter<u32>,
}

impl Default for PeerRate {
    fn default() -> PeerRate {
        PeerRate::new(REQUESTS_PER_SEC, REQUEST_BURST)
    }
}

impl PeerRate {
    /// `per_sec` requests a second per uid, `burst` at once (0 counts as 1).
    pub fn new(per_sec: u32, burst: u32) -> PeerRate {
        let nonzero = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let quota = Rate::per_second(nonzero(per_sec)).quota(Some(nonzero(burst)));
        PeerRate {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
        }
    }

    /// Whether `uid` may send one more request now.
    pub fn allows(&self, uid: u32) -> bool {
        if self.limiter.len() > MAX_PEERS {
            // Keys whose state is back to full cost nothing to forget.
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&uid).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_over_its_rate_does_not_limit_another() {
        let rate = PeerRate::new(1, 5);
        for _ in 0..5 {
            assert!(rate.allows(1000));
        }
        assert!(!rate.allows(1000), "past the burst");
        assert!(rate.allows(0), "another uid has its own allowance");
    }
}
