//! Injected imperfection: latency specs and the cheap per-request random
//! numbers that decide delays, relay errors and garbage answers.
//!
//! The random numbers come from rand's Xoshiro256++ seeded from a key such
//! as `(seed, request number)` ([`stream`]), so the hot path needs no lock,
//! no thread-local RNG and no allocation, and a run with one client replays
//! identically for one seed. Xoshiro256++ rather than `SmallRng`, because
//! rand promises its output stays the same across releases.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};

/// A response delay: `mean` plus or minus up to `spread`, uniformly.
///
/// Written on the command line as `150ms`, `150ms±50ms` or `150ms+-50ms`
/// (any `humantime` duration on each side), so benchmarks can model a slow,
/// jittery relay without code changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySpec {
    /// Centre of the delay distribution.
    pub mean: Duration,
    /// Half-width of the uniform jitter around `mean` (delays never go below zero).
    pub spread: Duration,
}

/// Why a `--latency` value was rejected; the message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad latency {input:?}: {reason} (expected e.g. 150ms, 150ms±50ms or 150ms+-50ms)")]
pub struct LatencySpecError {
    input: String,
    reason: String,
}

impl LatencySpec {
    /// No delay at all (the default), so the common case skips the timer.
    pub const ZERO: LatencySpec = LatencySpec {
        mean: Duration::ZERO,
        spread: Duration::ZERO,
    };

    /// Whether every sampled delay is zero, letting the server skip sleeping.
    pub fn is_zero(&self) -> bool {
        self.mean.is_zero() && self.spread.is_zero()
    }

    /// The delay for a uniform random `unit` in `[0, 1)`: a value in
    /// `[mean - spread, mean + spread]`, clamped at zero.
    pub fn sample(&self, unit: f64) -> Duration {
        if self.spread.is_zero() {
            return self.mean;
        }
        let offset = self.spread.as_secs_f64() * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((self.mean.as_secs_f64() + offset).max(0.0))
    }
}

impl FromStr for LatencySpec {
    type Err = LatencySpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| LatencySpecError {
            input: s.to_string(),
            reason,
        };
        let (mean, spread) = match s.split_once('±').or_else(|| s.split_once("+-")) {
            Some((m, sp)) => (m, Some(sp)),
            None => (s, None),
        };
        let parse = |part: &str, what: &str| {
            let part = part.trim();
            if part.is_empty() {
                return Err(err(format!("the {what} is missing")));
            }
            humantime::parse_duration(part).map_err(|e| err(format!("the {what}: {e}")))
        };
        Ok(LatencySpec {
            mean: parse(mean, "mean")?,
            spread: match spread {
                Some(sp) => parse(sp, "spread")?,
                None => Duration::ZERO,
            },
        })
    }
}

impl fmt::Display for LatencySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mean.is_zero() {
            f.write_str("0ms")?;
        } else {
            write!(f, "{}", humantime::format_duration(self.mean))?;
        }
        if !self.spread.is_zero() {
            write!(f, "±{}", humantime::format_duration(self.spread))?;
        }
        Ok(())
    }
}

/// A random stream fully determined by `key`: the same key always gives
/// the same numbers, different keys independent-looking ones (the seed is
/// expanded by SplitMix64 inside `seed_from_u64`, so nearby keys are fine).
pub(crate) fn stream(key: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(key)
}

/// A key for `(a, b)`: for a fixed `a`, distinct `b`s give distinct keys
/// (multiplying by an odd constant is a bijection), spread over all bits.
pub(crate) fn key(a: u64, b: u64) -> u64 {
    a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A float in `[0, 1)` drawn from `key`'s stream; a stateless hash for
/// values that must agree whenever they are asked for (noise per second).
pub(crate) fn unit_for(key: u64) -> f64 {
    stream(key).random::<f64>()
}

/// A tiny per-request random stream; lives on the stack of one request.
#[derive(Debug, Clone)]
pub(crate) struct RequestRng(Xoshiro256PlusPlus);

impl RequestRng {
    /// The stream for request number `n` of a simulator started with `seed`.
    pub(crate) fn new(seed: u64, n: u64) -> Self {
        RequestRng(stream(key(seed, n ^ 0x5151_5151_5151_5151)))
    }

    /// Next raw 64 bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Next float in `[0, 1)`.
    pub(crate) fn next_unit(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// True with probability `p` (always draws, so later draws stay aligned).
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        let u = self.next_unit();
        p > 0.0 && u < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_stays_in_range_and_clamps_at_zero() {
        let spec: LatencySpec = "10ms±20ms".parse().unwrap();
        assert_eq!(spec.sample(0.0), Duration::ZERO);
        assert_eq!(spec.sample(0.75), Duration::from_millis(20));
        let fixed: LatencySpec = "7ms".parse().unwrap();
        assert_eq!(fixed.sample(0.9), Duration::from_millis(7));
    }

    #[test]
    fn display_round_trips() {
        for s in ["0ms", "150ms", "150ms±50ms", "1s±5ms"] {
            let spec: LatencySpec = s.parse().unwrap();
            assert_eq!(
                spec.to_string().parse::<LatencySpec>().unwrap(),
                spec,
                "{s}"
            );
        }
    }

    #[test]
    fn rng_is_deterministic_and_spread() {
        let a: Vec<u64> = (0..4).map(|n| RequestRng::new(1, n).next_u64()).collect();
        let b: Vec<u64> = (0..4).map(|n| RequestRng::new(1, n).next_u64()).collect();
        assert_eq!(a, b);
        let c: Vec<u64> = (0..4).map(|n| RequestRng::new(2, n).next_u64()).collect();
        assert_ne!(a, c);
        assert_ne!(a[0], a[1]);
        let mut r = RequestRng::new(9, 9);
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
        assert!(!RequestRng::new(1, 1).chance(0.0));
    }
}
