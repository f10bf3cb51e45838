//! Concurrency bounds: connections in all, connections per source (/32, /64) and connections
//! still in their handshake (see [`handshakes`]). A connection takes a [`Slot`] at accept; when
//! a bound is reached the connection is refused there (or, for handshakes, the oldest silent
//! one makes room), so overload degrades service instead of growing memory and file
//! descriptors.

pub mod handshakes;

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use self::handshakes::{HandshakeBounds, Handshakes, Ticket};
use crate::{admission::keys::SourceKey, config};

/// The configured bounds (`[limits] max_connections`, `max_connections_per_source`,
/// `max_handshakes`, `max_handshakes_per_source`, `max_handshakes_per_prefix`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Open client connections in all.
    pub connections: usize,
    /// Open client connections from one source (/32 or /64).
    pub per_source: usize,
    /// Client connections that have not finished their handshake, in all, per source and per
    /// prefix.
    pub handshakes: HandshakeBounds,
}

impl From<&config::Limits> for Bounds {
    /// The `[limits]` concurrency bounds.
    fn from(limits: &config::Limits) -> Bounds {
        Bounds {
            connections: limits.max_connections.get(),
            per_source: limits.max_connections_per_source.get(),
            handshakes: HandshakeBounds {
                total: limits.max_handshakes.get(),
                per_source: limits.max_handshakes_per_source.get(),
                per_prefix: limits.max_handshakes_per_prefix.get(),
            },
        }
    }
}

/// Which bound refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections`.
    Connections,
    /// `max_connections_per_source`.
    PerSource,
    /// `max_handshakes`.
    Handshakes,
    /// `max_handshakes_per_source`.
    HandshakesPerSource,
    /// `max_handshakes_per_prefix`.
    HandshakesPerPrefix,
}

impl Refusal {
    /// Every refusal, in counter order.
    pub const ALL: [Refusal; 5] = [
        Refusal::Connections,
        Refusal::PerSource,
        Refusal::Handshakes,
        Refusal::HandshakesPerSource,
        Refusal::HandshakesPerPrefix,
    ];

    /// The metric label and log name.
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections",
            Refusal::PerSource => "max_connections_per_source",
            Refusal::Handshakes => "max_handshakes",
            Refusal::HandshakesPerSource => "max_handshakes_per_source",
            Refusal::HandshakesPerPrefix => "max_handshakes_per_prefix",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Counts of what is open, against the bounds. Shared by every accept loop.
#[derive(Debug)]
pub struct Capacity {
    max_connections: AtomicUsize,
    max_per_source: AtomicUsize,
    connections: AtomicUsize,
    handshakes: Handshakes,
    /// Open connections per source; a source leaves the map with its last connection, so no
    /// address is kept longer than it is connected.
    per_source: Mutex<HashMap<SourceKey, usize>>,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl Capacity {
    /// Empty, with `bounds`.
    pub fn new(bounds: Bounds) -> Arc<Capacity> {
        let capacity = Capacity {
            max_connections: AtomicUsize::new(0),
            max_per_source: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            handshakes: Handshakes::new(bounds.handshakes),
            per_source: Mutex::new(HashMap::new()),
            refused: Default::default(),
        };
        capacity.set_bounds(bounds);
        Arc::new(capacity)
    }

    /// Changes the bounds (on reload). Connections already open are kept even when they are now
    /// over a bound; only new ones are refused.
    pub fn set_bounds(&self, bounds: Bounds) {
        self.max_connections
            .store(bounds.connections, Ordering::Relaxed);
        self.max_per_source
            .store(bounds.per_source, Ordering::Relaxed);
        self.handshakes.set_bounds(bounds.handshakes);
    }

    /// Takes a slot for a connection from `source`, in its handshake. `allowlisted` sources
    /// skip the per-source bounds and are never refused for the handshake bound.
    pub fn try_admit(self: &Arc<Self>, source: IpAddr, allowlisted: bool) -> Result<Slot, Refusal> {
        let refuse = |r: Refusal| {
            self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
            Err(r)
        };
        if !take(
            &self.connections,
            self.max_connections.load(Ordering::Relaxed),
        ) {
            return refuse(Refusal::Connections);
        }
        let key = SourceKey::from(source.to_canonical());
        {
            let mut per_source = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
            let open = per_source.entry(key).or_insert(0);
            if !allowlisted && *open >= self.max_per_source.load(Ordering::Relaxed) {
                if *open == 0 {
                    per_source.remove(&key);
                }
                drop(per_source);
                self.connections.fetch_sub(1, Ordering::Relaxed);
                return refuse(Refusal::PerSource);
            }
            *open += 1;
        }
        let handshake = match self.handshakes.admit(source, allowlisted) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.release(key, None);
                return refuse(refusal);
            }
        };
        Ok(Slot {
            capacity: Arc::clone(self),
            source: key,
            handshake: Some(handshake.id),
            ticket: handshake.ticket,
            pressured: handshake.pressured,
        })
    }

    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Client connections in their handshake.
    pub fn handshakes(&self) -> usize {
        self.handshakes.len()
    }

    /// Handshakes evicted to make room for newer ones.
    pub fn handshakes_evicted(&self) -> u64 {
        self.handshakes.evicted()
    }

    /// Sources with an open connection.
    pub fn sources(&self) -> usize {
        self.per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Connections refused so far, by bound.
    pub fn refused(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL
            .iter()
            .map(|r| (*r, self.refused[*r as usize].load(Ordering::Relaxed)))
    }

    fn release(&self, source: SourceKey, handshake: Option<u64>) {
        if let Some(id) = handshake {
            self.handshakes.release(id);
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
        let mut per_source = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = per_source.get_mut(&source) {
            *open -= 1;
            if *open == 0 {
                per_source.remove(&source);
            }
        }
    }
}

/// Increments `counter` unless it has reached `max`.
fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// One open connection's share of the bounds; released on drop.
#[derive(Debug)]
pub struct Slot {
    capacity: Arc<Capacity>,
    source: SourceKey,
    /// The handshake slot, until the handshake is over.
    handshake: Option<u64>,
    ticket: Arc<Ticket>,
    pressured: bool,
}

impl Slot {
    /// The handshake is over (relayed, fronted or failed): the connection no longer counts
    /// against the handshake bounds.
    pub fn handshake_done(&mut self) {
        if let Some(id) = self.handshake.take() {
            self.capacity.handshakes.release(id);
        }
    }

    /// The handshake's ticket: tell it when the client speaks, wait on it for eviction.
    pub fn ticket(&self) -> &Arc<Ticket> {
        &self.ticket
    }

    /// Whether the handshake slots were mostly taken when this one was admitted (its handshake
    /// gets a shorter deadline).
    pub fn pressured(&self) -> bool {
        self.pressured
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.capacity.release(self.source, self.handshake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_come_from_the_limits_section() {
        let config = config::Config::parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[limits]\nmax_connections = 100\n\
             max_connections_per_source = 9\nmax_handshakes = 50\n\
             max_handshakes_per_source = 3\nmax_handshakes_per_prefix = 7\n",
            config::Origin::Embedded,
        )
        .expect("valid");
        let bounds = Bounds::from(&config.limits);
        assert_eq!((bounds.connections, bounds.per_source), (100, 9));
        assert_eq!(
            (
                bounds.handshakes.total,
                bounds.handshakes.per_source,
                bounds.handshakes.per_prefix
            ),
            (50, 3, 7)
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn bounds(connections: usize, per_source: usize, handshakes: usize) -> Bounds {
        Bounds {
            connections,
            per_source,
            handshakes: HandshakeBounds {
                total: handshakes,
                per_source: 1000,
                per_prefix: 1000,
            },
        }
    }

    #[test]
    fn global_bound_refuses_and_frees_on_drop() {
        let cap = Capacity::new(bounds(2, 10, 10));
        let a = cap.try_admit(ip("198.18.0.1"), false).expect("first");
        let _b = cap.try_admit(ip("198.18.0.2"), false).expect("second");
        assert_eq!(
            cap.try_admit(ip("198.18.0.3"), false).err(),
            Some(Refusal::Connections)
        );
        drop(a);
        assert!(cap.try_admit(ip("198.18.0.3"), false).is_ok());
        assert_eq!(cap.refused().map(|(_, n)| n).sum::<u64>(), 1);
    }

    #[test]
    fn per_source_bound_counts_an_ipv6_64_as_one_source() {
        let cap = Capacity::new(bounds(100, 2, 100));
        let _a = cap.try_admit(ip("2001:db8:1:2::1"), false).expect("first");
        let _b = cap
            .try_admit(ip("2001:db8:1:2::ffff"), false)
            .expect("second");
        assert_eq!(
            cap.try_admit(ip("2001:db8:1:2:abcd::9"), false).err(),
            Some(Refusal::PerSource)
        );
        // Another /64, and an allowlisted source, still get in.
        assert!(cap.try_admit(ip("2001:db8:1:3::1"), false).is_ok());
        assert!(cap.try_admit(ip("2001:db8:1:2::7"), true).is_ok());
        // A refusal leaves no count behind.
        assert_eq!(cap.connections(), 2);
    }

    #[test]
    fn handshake_bound_frees_when_the_handshake_ends() {
        let cap = Capacity::new(bounds(100, 100, 1));
        let mut a = cap.try_admit(ip("198.18.0.1"), false).expect("first");
        // A silent handshake would be evicted to make room; one whose client spoke is not.
        a.ticket().spoke();
        assert_eq!(
            cap.try_admit(ip("198.18.0.2"), false).err(),
            Some(Refusal::Handshakes)
        );
        a.handshake_done();
        a.handshake_done();
        let b = cap
            .try_admit(ip("198.18.0.2"), false)
            .expect("after the handshake");
        assert_eq!((cap.connections(), cap.handshakes()), (2, 1));
        drop(a);
        drop(b);
        assert_eq!(
            (cap.connections(), cap.handshakes(), cap.sources()),
            (0, 0, 0)
        );
    }

    #[test]
    fn mapped_ipv4_is_the_same_source() {
        let cap = Capacity::new(bounds(100, 1, 100));
        let _a = cap.try_admit(ip("198.18.0.1"), false).expect("first");
        assert_eq!(
            cap.try_admit(ip("::ffff:198.18.0.1"), false).err(),
            Some(Refusal::PerSource)
        );
    }

    #[test]
    fn lowered_bounds_apply_to_new_connections_only() {
        let cap = Capacity::new(bounds(3, 3, 3));
        let _a = cap.try_admit(ip("198.18.0.1"), false).expect("first");
        let _b = cap.try_admit(ip("198.18.0.1"), false).expect("second");
        cap.set_bounds(bounds(1, 1, 1));
        assert!(cap.try_admit(ip("198.18.0.2"), false).is_err());
        assert_eq!(cap.connections(), 2);
    }
}
