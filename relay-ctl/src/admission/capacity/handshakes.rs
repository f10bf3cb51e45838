//! Handshake slots: connections that have not finished their handshake, bounded in all, per
//! source (IPv4 address, IPv6 /64) and per prefix (IPv4 /24, IPv6 /48).
//!
//! A slot is cheap to hold and costs nothing to fill: a client that connects and sends nothing
//! holds one until its deadline. So a bound is not enforced by refusing the newcomer, which
//! would let a few dozen silent sources lock everyone out, but by evicting the oldest
//! handshake that has not sent a byte yet (in the same source or prefix when that bound is the
//! one reached). Only when every slot is held by a client that has spoken is the newcomer
//! refused. Allowlisted sources are never refused and never counted against the per-source and
//! per-prefix bounds.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::Notify;

use super::Refusal;
use crate::admission::keys::{PrefixKey, SourceKey};

/// What one handshake shares with the registry: whether its client has sent a byte, and the
/// signal that it has been evicted.
#[derive(Debug, Default)]
pub struct Ticket {
    spoke: AtomicBool,
    evicted: Notify,
}

impl Ticket {
    /// The client sent its first byte: this handshake is no longer a candidate for eviction.
    pub fn spoke(&self) {
        self.spoke.store(true, Ordering::Relaxed);
    }

    /// Completes once the handshake has been evicted to make room for another.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

/// The bounds on handshakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeBounds {
    /// In all (`[limits] max_handshakes`).
    pub total: usize,
    /// Per source (`[limits] max_handshakes_per_source`).
    pub per_source: usize,
    /// Per prefix (`[limits] max_handshakes_per_prefix`).
    pub per_prefix: usize,
}

/// A handshake admitted into the registry.
#[derive(Debug)]
pub struct Admitted {
    /// Its key in the registry, to release it.
    pub id: u64,
    /// Its ticket.
    pub ticket: Arc<Ticket>,
    /// Whether three quarters of the slots were taken when it was admitted: it gets a shorter
    /// deadline.
    pub pressured: bool,
}

#[derive(Debug)]
struct Entry {
    source: SourceKey,
    prefix: PrefixKey,
    exempt: bool,
    ticket: Arc<Ticket>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// In admission order: the first silent one is the oldest silent one.
    order: BTreeMap<u64, Entry>,
    per_source: HashMap<SourceKey, usize>,
    per_prefix: HashMap<PrefixKey, usize>,
    evicted: u64,
}

/// The handshakes in progress.
#[derive(Debug)]
pub struct Handshakes {
    bounds: Mutex<HandshakeBounds>,
    inner: Mutex<Inner>,
}

impl Handshakes {
    /// Empty, with `bounds`.
    pub fn new(bounds: HandshakeBounds) -> Handshakes {
        Handshakes {
            bounds: Mutex::new(bounds),
            inner: Mutex::default(),
        }
    }

    /// Changes the bounds; handshakes in progress stay.
    pub fn set_bounds(&self, bounds: HandshakeBounds) {
        *lock(&self.bounds) = bounds;
    }

    /// Admits a handshake from `source`, evicting the oldest silent one in its way, or refuses
    /// it when every handshake in its way has spoken. `exempt` (allowlisted) sources are never
    /// refused and are not counted per source or prefix.
    pub fn admit(&self, source: IpAddr, exempt: bool) -> Result<Admitted, Refusal> {
        let bounds = *lock(&self.bounds);
        let key = SourceKey::from(source.to_canonical());
        let prefix = PrefixKey::from(source);
        let mut inner = lock(&self.inner);
        if !exempt {
            if count(&inner.per_source, &key) >= bounds.per_source
                && !inner.evict_oldest_silent(|e| e.source == key)
            {
                return Err(Refusal::HandshakesPerSource);
            }
            if count(&inner.per_prefix, &prefix) >= bounds.per_prefix
                && !inner.evict_oldest_silent(|e| e.prefix == prefix)
            {
                return Err(Refusal::HandshakesPerPrefix);
            }
        }
        if inner.order.len() >= bounds.total && !inner.evict_oldest_silent(|_| true) && !exempt {
            return Err(Refusal::Handshakes);
        }
        let pressured = inner.order.len() * 4 >= bounds.total * 3;
        let id = inner.next;
        inner.next += 1;
        let ticket = Arc::new(Ticket::default());
        if !exempt {
            *inner.per_source.entry(key).or_insert(0) += 1;
            *inner.per_prefix.entry(prefix).or_insert(0) += 1;
        }
        inner.order.insert(
            id,
            Entry {
                source: key,
                prefix,
                exempt,
                ticket: Arc::clone(&ticket),
            },
        );
        Ok(Admitted {
            id,
            ticket,
            pressured,
        })
    }

    /// The handshake `id` is over (or was evicted already: then nothing happens).
    pub fn release(&self, id: u64) {
        let mut inner = lock(&self.inner);
        if let Some(entry) = inner.order.remove(&id) {
            inner.uncount(&entry);
        }
    }

    /// Handshakes in progress.
    pub fn len(&self) -> usize {
        lock(&self.inner).order.len()
    }

    /// Whether no handshake is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handshakes evicted so far.
    pub fn evicted(&self) -> u64 {
        lock(&self.inner).evicted
    }
}

impl Inner {
    /// Evicts the oldest handshake matching `which` whose client has not spoken; `false` when
    /// there is none. The scan passes over handshakes that have spoken, which end within a
    /// round trip or two, so it stays short.
    fn evict_oldest_silent(&mut self, which: impl Fn(&Entry) -> bool) -> bool {
        let Some(id) = self
            .order
            .iter()
            .find(|(_, e)| which(e) && !e.ticket.spoke.load(Ordering::Relaxed))
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(entry) = self.order.remove(&id) {
            self.uncount(&entry);
            // A permit is stored if the handshake is not waiting yet.
            entry.ticket.evicted.notify_one();
            self.evicted += 1;
        }
        true
    }

    fn uncount(&mut self, entry: &Entry) {
        if entry.exempt {
            return;
        }
        decrement(&mut self.per_source, &entry.source);
        decrement(&mut self.per_prefix, &entry.prefix);
    }
}

fn count<K: std::hash::Hash + Eq>(map: &HashMap<K, usize>, key: &K) -> usize {
    map.get(key).copied().unwrap_or(0)
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn registry(total: usize, per_source: usize, per_prefix: usize) -> Handshakes {
        Handshakes::new(HandshakeBounds {
            total,
            per_source,
            per_prefix,
        })
    }

    async fn is_evicted(ticket: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(20), ticket.evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_silent_source_at_its_bound_evicts_its_own_oldest() {
        let h = registry(100, 2, 100);
        let a = h.admit(ip("198.18.0.1"), false).expect("first");
        let b = h.admit(ip("198.18.0.1"), false).expect("second");
        let c = h
            .admit(ip("198.18.0.1"), false)
            .expect("third evicts the first");
        assert!(is_evicted(&a.ticket).await);
        assert!(!is_evicted(&b.ticket).await);
        assert_eq!((h.len(), h.evicted()), (2, 1));
        // Releasing an evicted handshake changes nothing.
        h.release(a.id);
        assert_eq!(h.len(), 2);
        // Once both have spoken, the source's next handshake is refused.
        b.ticket.spoke();
        c.ticket.spoke();
        assert_eq!(
            h.admit(ip("198.18.0.1"), false).err(),
            Some(Refusal::HandshakesPerSource)
        );
        // Another source is not affected.
        assert!(h.admit(ip("198.18.0.2"), false).is_ok());
    }

    #[tokio::test]
    async fn a_prefix_bound_evicts_within_the_prefix_only() {
        let h = registry(100, 10, 3);
        let other = h.admit(ip("198.18.1.1"), false).expect("other /24");
        let first: Vec<Admitted> = (1..=3)
            .map(|n| {
                h.admit(ip(&format!("198.18.0.{n}")), false)
                    .expect("in /24")
            })
            .collect();
        let newcomer = h
            .admit(ip("198.18.0.77"), false)
            .expect("evicts in its /24");
        assert!(is_evicted(&first[0].ticket).await);
        assert!(!is_evicted(&other.ticket).await);
        assert!(!is_evicted(&newcomer.ticket).await);
        // IPv6: the /48 is the prefix, across /64s.
        let v6 = registry(100, 10, 2);
        let _x = v6.admit(ip("2001:db8:1:1::1"), false).expect("x");
        let _y = v6.admit(ip("2001:db8:1:2::1"), false).expect("y");
        let z = v6.admit(ip("2001:db8:1:3::1"), false).expect("z evicts x");
        z.ticket.spoke();
        assert_eq!(v6.evicted(), 1);
        assert!(v6.admit(ip("2001:db8:2::1"), false).is_ok(), "another /48");
    }

    #[tokio::test]
    async fn the_global_bound_evicts_then_refuses_but_never_an_allowlisted_source() {
        let h = registry(2, 10, 10);
        let a = h.admit(ip("198.18.0.1"), false).expect("a");
        let b = h.admit(ip("198.18.1.1"), false).expect("b");
        b.ticket.spoke();
        let c = h
            .admit(ip("198.18.2.1"), false)
            .expect("c evicts a, the silent one");
        assert!(is_evicted(&a.ticket).await);
        c.ticket.spoke();
        assert_eq!(
            h.admit(ip("198.18.3.1"), false).err(),
            Some(Refusal::Handshakes),
            "every slot held by a client that spoke"
        );
        let allowed = h
            .admit(ip("198.18.3.1"), true)
            .expect("allowlisted over the bound");
        assert!(allowed.pressured);
        assert_eq!(h.len(), 3);
        h.release(allowed.id);
        h.release(b.id);
        h.release(c.id);
        assert!(h.is_empty());
    }

    #[test]
    fn pressure_starts_at_three_quarters() {
        let h = registry(4, 10, 10);
        let flags: Vec<bool> = (0..4)
            .map(|n| {
                h.admit(ip(&format!("198.18.{n}.1")), false)
                    .expect("admitted")
                    .pressured
            })
            .collect();
        assert_eq!(flags, [false, false, false, true]);
    }
}
