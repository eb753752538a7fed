//! `Rng`: the one small deterministic generator of the tree's tests, fuzz
//! loops and load scripts. SplitMix64 (Steele, Lea, Flood 2014): one add
//! and two multiply-xorshift rounds per draw, every seed (zero included)
//! gives a full-period sequence, and the same seed always gives the same
//! sequence on every machine. Written here rather than taken from `rand`
//! so that the engine and the spool gain no dependency for their tests.
//! With `Rng::new(seed)` it is bit-identical to the spool simulator's
//! `Prng`, so that one could become this one without changing a history.
//! Owns: its 64-bit state. May call: std (env, clock) for the seed only.
//! Never: anything that needs real randomness (it is predictable by design).

use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable a seeded run reads its seed from.
pub const SEED_ENV: &str = "ECELERITY_SEED";

/// SplitMix64's increment: the odd number closest to 2^64 / phi.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// Seeded from `ECELERITY_SEED` when set, else from the clock; prints
    /// the seed so that a failing run can be repeated.
    pub fn from_env_or_clock() -> Rng {
        let seed = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("testkit: {SEED_ENV}={seed}");
        Rng::new(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`; the modulo bias is below 2^-32 for
    /// the small `n` tests use).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// An index into a slice of `len` elements (`len > 0`).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Uniform-ish in `low..high` (`high` exclusive, `low < high`).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low < high, "range({low}, {high}) is empty");
        low + self.below(high - low)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }

    /// Uniform in [0, 1), with the 53 bits an f64 holds.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // First outputs of the reference splitmix64.c for seed 1234567.
        let mut rng = Rng::new(1234567);
        let expected = [
            6457827717110365317u64,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        for value in expected {
            assert_eq!(rng.next_u64(), value);
        }
    }

    /// The spool simulator's `Prng` draws `below` and `chance` exactly
    /// this way; its regression seeds depend on it.
    #[test]
    fn below_and_chance_are_plain_remainders_of_one_draw() {
        for seed in [0u64, 1, 0xdead_beef, u64::MAX] {
            let mut a = Rng::new(seed);
            let mut b = Rng::new(seed);
            for n in [1u64, 2, 7, 100, 1 << 40] {
                assert_eq!(a.below(n), b.next_u64() % n);
            }
            for percent in [0u32, 5, 50, 100] {
                assert_eq!(a.chance(percent), b.next_u64() % 100 < u64::from(percent));
            }
        }
    }

    #[test]
    fn equal_seeds_give_equal_sequences_and_zero_is_a_seed() {
        let mut a = Rng::new(0);
        let mut b = Rng::new(0);
        let drawn: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert!(drawn.iter().all(|&v| v == b.next_u64()));
        assert!(drawn.iter().any(|&v| v != 0));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn bounded_draws_stay_in_their_bounds_and_cover_them() {
        let mut rng = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..10_000 {
            let r = rng.range(5, 15);
            assert!((5..15).contains(&r));
            seen[(r - 5) as usize] = true;
            assert!(rng.index(3) < 3);
            let u = rng.unit_f64();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(seen.iter().all(|&s| s));
        assert!(!(0..1000).any(|_| rng.chance(0)));
        assert!((0..1000).all(|_| rng.chance(100)));
    }
}
