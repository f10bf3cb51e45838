use rand::{RngCore as _, SeedableRng as _, rngs::StdRng};

use super::{bloom::Generation, file, *};

/// The defaults of `[replay]`.
const DEFAULTS: ReplayLimits = ReplayLimits {
    retention_secs: 86_400,
    handshakes: 1_000_000,
    memory_bytes: 32 << 20,
};

fn key(i: u64) -> ReplayKey {
    let mut r = [0; 32];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r[8] = 0x5a;
    ReplayKey::tls(&r)
}

fn memory(limits: ReplayLimits) -> ReplayMemory {
    ReplayMemory::with_rng(limits, StdRng::seed_from_u64(7))
}

#[test]
fn detects_replays() {
    let mut m = memory(DEFAULTS);
    assert!(!m.check_and_insert(key(1), 1000));
    assert!(m.check_and_insert(key(1), 1001));
    assert!(!m.check_and_insert(key(2), 1001));
    assert_eq!(m.coverage(1001).entries, 2);
}

#[test]
fn keys_cover_the_right_bytes() {
    let mut a = [7u8; 48];
    let k = ReplayKey::obfs2(&a);
    a[47] ^= 1;
    assert_ne!(ReplayKey::obfs2(&a), k);
    let mut r = [9u8; 32];
    let t = ReplayKey::tls(&r);
    r[31] ^= 1; // bytes 16.. carry no identity (the timestamp XOR lives there)
    assert_eq!(ReplayKey::tls(&r), t);
    r[0] ^= 1;
    assert_ne!(ReplayKey::tls(&r), t);
}

#[test]
fn default_sizing() {
    DEFAULTS.check().expect("defaults fit");
    assert_eq!(DEFAULTS.generation_keys(), 250_000);
    assert_eq!(DEFAULTS.generation_bytes(), 1_250_000);
    assert_eq!(DEFAULTS.max_generations(), 26);
    let fp = DEFAULTS.false_positive_rate();
    assert!(fp < 1.2e-7 && fp > 1.1e-7, "{fp}");
    // A day is kept up to about 72 handshakes per second.
    assert!(DEFAULTS.max_rate_for_retention() > 72.0);
    // The old default of 8 MiB still holds a million handshakes.
    ReplayLimits {
        memory_bytes: 8 << 20,
        ..DEFAULTS
    }
    .check()
    .expect("8 MiB");
    let err = ReplayLimits {
        memory_bytes: 1 << 20,
        ..DEFAULTS
    }
    .check()
    .expect_err("1 MiB is too small");
    assert!(err.contains("memory_bytes"), "{err}");
}

/// A million handshakes in one burst (no time passes): every one is still found.
#[test]
fn default_sizing_remembers_a_million_handshakes() {
    let mut m = memory(DEFAULTS);
    let now = 1_700_000_000;
    for i in 0..1_000_000 {
        assert!(
            !m.check_and_insert(key(i), now),
            "fresh key {i} taken for a replay"
        );
    }
    for i in (0..1_000_000).step_by(997).chain([0, 999_999]) {
        assert!(m.contains(&key(i)), "key {i} forgotten");
    }
    let c = m.coverage(now);
    assert_eq!(c.entries, 1_000_000);
    assert_eq!((c.dropped_early, c.dropped_expired), (0, 0));
    assert!(c.bytes <= DEFAULTS.memory_bytes);
}

/// A day at 25 handshakes a second (2.16 million, more than the count bound): a key from
/// the start of the day is still found at its end.
#[test]
fn default_sizing_remembers_a_day() {
    let mut m = memory(DEFAULTS);
    let start = 1_700_000_000;
    assert!(!m.check_and_insert(key(u64::MAX), start));
    let rate = 25;
    let mut n = 0;
    for second in 0..=86_400 {
        for _ in 0..rate {
            m.check_and_insert(key(n), start + second);
            n += 1;
        }
    }
    assert!(m.contains(&key(u64::MAX)), "forgotten within a day");
    assert!(m.contains(&key(0)));
    let c = m.coverage(start + 86_400);
    assert!(c.covered_secs >= 86_400, "{c:?}");
    assert_eq!(c.dropped_early, 0);
    assert!(c.bytes <= DEFAULTS.memory_bytes);
}

#[test]
fn forgets_only_beyond_both_bounds() {
    let limits = ReplayLimits {
        retention_secs: 1000,
        handshakes: 100,
        memory_bytes: 1 << 20,
    };
    let mut m = memory(limits);
    let t0 = 10_000;
    // Many handshakes, little time: the time bound keeps the key.
    m.check_and_insert(key(u64::MAX), t0);
    let mut n = 0;
    let mut add = |m: &mut ReplayMemory, count: u64, at: u64| {
        for _ in 0..count {
            m.check_and_insert(key(n), at);
            n += 1;
        }
    };
    add(&mut m, 1000, t0 + 10);
    assert!(
        m.contains(&key(u64::MAX)),
        "forgotten before retention_secs"
    );
    // Past the time bound too: forgotten at the next insert.
    add(&mut m, 1, t0 + 1010);
    assert!(!m.contains(&key(u64::MAX)), "kept beyond both bounds");

    // Much time, few handshakes: the count bound keeps the key.
    let t1 = t0 + 100_000;
    m.check_and_insert(key(u64::MAX - 1), t1);
    add(&mut m, 10, t1 + 50_000);
    assert!(
        m.contains(&key(u64::MAX - 1)),
        "forgotten before 100 handshakes"
    );
    // Enough handshakes, but its generation also holds keys younger than retention_secs.
    add(&mut m, 150, t1 + 50_000);
    assert!(m.contains(&key(u64::MAX - 1)));
    add(&mut m, 1, t1 + 51_000);
    assert!(!m.contains(&key(u64::MAX - 1)), "kept beyond both bounds");
    let c = m.coverage(t1 + 51_000);
    assert!(c.dropped_expired > 0);
    assert_eq!(c.dropped_early, 0);
}

#[test]
fn memory_bound_drops_early_and_counts_it() {
    let limits = ReplayLimits {
        retention_secs: 86_400,
        handshakes: 400,
        memory_bytes: 6 * 504, // six generations of 100 keys (504 bytes each)
    };
    assert_eq!(limits.generation_bytes(), 504);
    let mut m = memory(limits);
    for i in 0..1000 {
        m.check_and_insert(key(i), 5000);
        assert!(m.bytes() <= limits.memory_bytes);
    }
    // The five full generations before the newest are all there: 500 keys at least.
    for i in 500..1000 {
        assert!(m.contains(&key(i)), "key {i}");
    }
    let c = m.coverage(5000);
    assert_eq!(c.generations, 6);
    assert_eq!(c.dropped_early, 4);
}

/// The filter behaves as the formula says, with the real probe count: measured on a
/// generation filled to twice its size (20 bits per key, ≈ 3.6 × 10⁻⁴), where false positives
/// are frequent enough to count.
#[test]
fn false_positive_rate_matches_the_formula() {
    let mut rng = StdRng::seed_from_u64(1);
    let keys = 10_000u64;
    let mut g = Generation::new(0, keys, 0, 0, [3; 16]);
    for _ in 0..2 * keys {
        g.insert(&random_key(&mut rng), 0);
    }
    let expected = g.false_positive_rate();
    assert!(expected > 3e-4 && expected < 4e-4, "{expected}");
    let lookups = 1_000_000;
    let hits = (0..lookups)
        .filter(|_| g.contains(&random_key(&mut rng)))
        .count();
    let measured = hits as f64 / f64::from(lookups);
    // ≈ 360 expected hits: ±25 % is more than four standard deviations.
    assert!(
        (measured - expected).abs() < expected * 0.25,
        "measured {measured}, formula {expected}"
    );
}

/// At full load (every generation the memory holds full) with the default filter and
/// generation count, measured false positives stay below the stated bound. Scaled down to
/// 10,000 keys per generation: the rate depends on the filter's bits and probes per key and
/// the number of generations, not on their size.
#[test]
fn false_positive_rate_at_full_load_is_below_the_bound() {
    let gen_bytes = bloom::bytes_for(10_000);
    let limits = ReplayLimits {
        retention_secs: 86_400,
        handshakes: 40_000,
        memory_bytes: DEFAULTS.max_generations() * gen_bytes,
    };
    assert_eq!(limits.max_generations(), DEFAULTS.max_generations());
    assert!((limits.false_positive_rate() - DEFAULTS.false_positive_rate()).abs() < 1e-9);
    let mut m = memory(limits);
    let mut rng = StdRng::seed_from_u64(2);
    let full = limits.max_generations() as u64 * limits.generation_keys();
    for _ in 0..full {
        m.check_and_insert(random_key(&mut rng), 1);
    }
    let c = m.coverage(1);
    assert_eq!(c.generations, limits.max_generations());
    assert_eq!(c.entries, full);
    let lookups = 1_000_000;
    let hits = (0..lookups)
        .filter(|_| m.contains(&random_key(&mut rng)))
        .count();
    let measured = hits as f64 / f64::from(lookups);
    assert!(
        measured <= limits.false_positive_rate(),
        "{hits} false positives in {lookups} lookups, bound {}",
        limits.false_positive_rate()
    );
}

fn random_key(rng: &mut StdRng) -> ReplayKey {
    let mut r = [0; 32];
    rng.fill_bytes(&mut r[..16]);
    ReplayKey::tls(&r)
}

#[test]
fn round_trip_through_files() {
    let limits = ReplayLimits {
        retention_secs: 1000,
        handshakes: 400,
        memory_bytes: 1 << 20,
    };
    let mut m = memory(limits);
    for i in 0..250 {
        m.check_and_insert(key(i), 100 + i);
    }
    let stored: Vec<Vec<u8>> = m.unsaved(true).iter().map(file::encode).collect();
    assert_eq!(stored.len(), 3);
    let decoded = stored
        .iter()
        .map(|b| file::decode(b))
        .collect::<Result<Vec<_>, _>>()
        .expect("decode");
    let (mut back, left_out) = ReplayMemory::restore(limits, decoded, StdRng::seed_from_u64(9));
    assert_eq!(left_out, 0);
    assert_eq!(back.coverage(400), m.coverage(400));
    assert!(
        back.unsaved(true).is_empty(),
        "restored generations count as saved"
    );
    for i in 0..250 {
        assert!(back.check_and_insert(key(i), 400), "key {i} lost");
    }
    // Inserting continues the stream where it stopped.
    assert!(!back.check_and_insert(key(250), 400));
    assert_eq!(back.coverage(400).entries, 251);
    assert_eq!(back.live_seqs(), vec![0, 1, 2]);
    assert_eq!(back.unsaved(true).len(), 1);
}

#[test]
fn damaged_files_are_refused() {
    let mut m = memory(DEFAULTS);
    m.check_and_insert(key(1), 1);
    let good = file::encode(&m.unsaved(true)[0]);
    assert!(file::decode(&good).is_ok());

    let truncated = &good[..good.len() - 100];
    assert!(matches!(
        file::decode(truncated),
        Err(file::FileError::Truncated { .. })
    ));
    assert!(matches!(
        file::decode(&good[..20]),
        Err(file::FileError::Truncated { .. })
    ));
    let mut flipped = good.clone();
    flipped[5000] ^= 0x10;
    assert_eq!(
        file::decode(&flipped).err(),
        Some(file::FileError::Checksum)
    );
    let mut foreign = good.clone();
    foreign[..8].copy_from_slice(b"{\"bans\":");
    assert_eq!(file::decode(&foreign).err(), Some(file::FileError::Foreign));
    assert_eq!(file::decode(b"").err(), Some(file::FileError::Foreign));
    let mut version = good.clone();
    version[8] = 9;
    assert_eq!(
        file::decode(&version).err(),
        Some(file::FileError::Version(9))
    );
    let mut longer = good;
    longer.push(0);
    assert!(matches!(
        file::decode(&longer),
        Err(file::FileError::Invalid(_))
    ));
}

#[test]
fn restore_keeps_the_newest_that_fit() {
    let limits = ReplayLimits {
        retention_secs: 1000,
        handshakes: 400,
        memory_bytes: 1 << 20,
    };
    let mut m = memory(limits);
    for i in 0..1000 {
        m.check_and_insert(key(i), 100);
    }
    let gens = m.unsaved(true);
    assert_eq!(gens.len(), 10);
    let smaller = ReplayLimits {
        memory_bytes: 6 * limits.generation_bytes(),
        ..limits
    };
    let (back, left_out) = ReplayMemory::restore(smaller, gens, StdRng::seed_from_u64(9));
    assert_eq!(left_out, 4);
    assert_eq!(back.live_seqs(), vec![4, 5, 6, 7, 8, 9]);
    assert!(back.contains(&key(999)) && back.contains(&key(400)));
}
