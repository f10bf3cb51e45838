//! Per-user accounting and limits: concurrent connections, distinct client addresses over a
//! window, a new-connection rate, a byte quota (both directions, persisted), an expiry date,
//! and an enable switch (config and operator). Accounts outlive config reloads; only their
//! limits change.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use governor::DefaultDirectRateLimiter;

use crate::{admission::keys::SourceKey, config, rate::Rate};

/// Limits of one user, from the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Disabled in the config.
    pub disabled: bool,
    /// Concurrent connections.
    pub max_connections: Option<u64>,
    /// Distinct client addresses (IPv6: /64 prefixes) within the unique-IP window.
    pub max_unique_ips: Option<u64>,
    /// Bytes in both directions, all time.
    pub quota: Option<u64>,
    /// No new connections after this instant.
    pub expires: Option<SystemTime>,
    /// New connections admitted per unit of time, whatever their source.
    pub connection_rate: Option<ConnectionRate>,
}

/// A user's new-connection rate: `burst` at once (default: the rate's count), then `rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRate {
    /// Sustained rate.
    pub rate: Rate,
    /// Connections admitted at once.
    pub burst: Option<NonZeroU32>,
}

impl ConnectionRate {
    /// The burst in force.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.rate.count).get()
    }
}

impl From<&config::User> for Limits {
    /// The limits `[[users]]` sets for one user.
    fn from(user: &config::User) -> Limits {
        Limits {
            disabled: !user.enabled,
            max_connections: user.max_connections,
            max_unique_ips: user.max_unique_ips,
            quota: user.quota,
            expires: user.expires,
            connection_rate: user.connection_rate.map(|rate| ConnectionRate {
                rate,
                burst: user.connection_burst,
            }),
        }
    }
}

/// Why a user's connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Disabled in the config or by the operator.
    Disabled,
    /// Past its expiry date.
    Expired,
    /// Quota used up.
    Quota,
    /// Too many concurrent connections.
    MaxConnections,
    /// Too many distinct addresses in the window.
    MaxUniqueIps,
    /// Over its new-connection rate.
    Rate,
}

impl Rejection {
    /// Every reason.
    pub const ALL: [Rejection; 6] = [
        Rejection::Disabled,
        Rejection::Expired,
        Rejection::Quota,
        Rejection::MaxConnections,
        Rejection::MaxUniqueIps,
        Rejection::Rate,
    ];

    /// Stable snake_case name.
    pub const fn name(self) -> &'static str {
        match self {
            Rejection::Disabled => "disabled",
            Rejection::Expired => "expired",
            Rejection::Quota => "quota",
            Rejection::MaxConnections => "max_connections",
            Rejection::MaxUniqueIps => "max_unique_ips",
            Rejection::Rate => "rate",
        }
    }
}

/// One user's live state.
#[derive(Debug)]
pub struct Account {
    /// User name.
    pub name: String,
    limits: RwLock<Limits>,
    operator_disabled: AtomicBool,
    active: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Client addresses within the unique-IP window, IPv6 per /64: one host's privacy
    /// addresses are one address, and a holder of a /64 cannot take a slot per address.
    recent_ips: Mutex<HashMap<SourceKey, Instant>>,
    /// The user's `connection_rate` (one limiter per user, shared by all its sources).
    rate: RwLock<Option<DefaultDirectRateLimiter>>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
}

impl Account {
    fn new(name: &str, limits: Limits) -> Account {
        Account {
            name: name.to_owned(),
            rate: RwLock::new(limits.connection_rate.map(limiter)),
            limits: RwLock::new(limits),
            operator_disabled: AtomicBool::new(false),
            active: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            recent_ips: Mutex::new(HashMap::new()),
            rejections: Mutex::new(BTreeMap::new()),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        read(&self.limits).clone()
    }

    /// Why new connections are refused right now, if they are (ignoring per-connection limits).
    pub fn blocked(&self, now: SystemTime) -> Option<Rejection> {
        let limits = read(&self.limits);
        if limits.disabled || self.operator_disabled.load(Ordering::Relaxed) {
            Some(Rejection::Disabled)
        } else if limits.expires.is_some_and(|e| now >= e) {
            Some(Rejection::Expired)
        } else if limits.quota.is_some_and(|q| self.bytes_total() >= q) {
            Some(Rejection::Quota)
        } else {
            None
        }
    }

    /// Admits a connection from `ip`, or says why not (and counts the refusal).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
        wall: SystemTime,
        ip_window: Duration,
    ) -> Result<ActiveConnection, Rejection> {
        let result = self.check(ip, now, wall, ip_window);
        if let Err(rejection) = result {
            *lock(&self.rejections).entry(rejection.name()).or_insert(0) += 1;
            return Err(rejection);
        }
        Ok(ActiveConnection(self.clone()))
    }

    fn check(
        &self,
        ip: IpAddr,
        now: Instant,
        wall: SystemTime,
        ip_window: Duration,
    ) -> Result<(), Rejection> {
        if let Some(rejection) = self.blocked(wall) {
            return Err(rejection);
        }
        // Before the slots: a connection over the rate takes neither.
        if read(&self.rate)
            .as_ref()
            .is_some_and(|limiter| limiter.check().is_err())
        {
            return Err(Rejection::Rate);
        }
        let limits = self.limits();
        // The connection slot first: a refused connection must not take an address slot.
        let active = self.active.fetch_add(1, Ordering::AcqRel) + 1;
        if limits.max_connections.is_some_and(|max| active > max) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::MaxConnections);
        }
        if let Some(max) = limits.max_unique_ips {
            let mut recent = lock(&self.recent_ips);
            // Addresses are kept only as long as the window.
            recent.retain(|_, seen| now.duration_since(*seen) < ip_window);
            let source = SourceKey::from(ip);
            if !recent.contains_key(&source) && recent.len() as u64 >= max {
                self.active.fetch_sub(1, Ordering::AcqRel);
                return Err(Rejection::MaxUniqueIps);
            }
            recent.insert(source, now);
        }
        Ok(())
    }

    /// Counts bytes read from the client.
    pub fn add_up(&self, n: u64) {
        self.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes read from the DC.
    pub fn add_down(&self, n: u64) {
        self.bytes_down.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes both ways.
    pub fn bytes_total(&self) -> u64 {
        self.bytes_up.load(Ordering::Relaxed) + self.bytes_down.load(Ordering::Relaxed)
    }

    /// Whether the quota is used up.
    pub fn over_quota(&self) -> bool {
        read(&self.limits)
            .quota
            .is_some_and(|q| self.bytes_total() >= q)
    }

    /// Bytes that may still be counted with [`Account::over_quota`] staying false (`None`: no
    /// quota).
    pub fn quota_left(&self) -> Option<u64> {
        read(&self.limits)
            .quota
            .map(|q| q.saturating_sub(self.bytes_total()).saturating_sub(1))
    }

    /// A snapshot for the CLI, metrics and persistence.
    pub fn usage(&self, now: Instant, ip_window: Duration) -> Usage {
        let unique_ips = lock(&self.recent_ips)
            .values()
            .filter(|seen| now.duration_since(**seen) < ip_window)
            .count() as u64;
        Usage {
            active_connections: self.active.load(Ordering::Relaxed),
            unique_ips,
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            operator_disabled: self.operator_disabled.load(Ordering::Relaxed),
            rejections: lock(&self.rejections)
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }
    }

    /// Forgets client addresses last seen `window` or longer before `now` (run periodically, so
    /// an address is kept no longer than the unique-IP window even if the user goes quiet).
    pub fn forget_ips(&self, now: Instant, window: Duration) {
        lock(&self.recent_ips).retain(|_, seen| now.duration_since(*seen) < window);
    }

    /// Whether the config (not the operator) disables the user.
    pub fn disabled_in_config(&self) -> bool {
        read(&self.limits).disabled
    }

    /// Sets the operator's switch; returns the previous value.
    pub fn set_operator_disabled(&self, disabled: bool) -> bool {
        self.operator_disabled.swap(disabled, Ordering::Relaxed)
    }

    /// Restores persisted usage.
    pub fn restore(&self, bytes_up: u64, bytes_down: u64, operator_disabled: bool) {
        self.bytes_up.store(bytes_up, Ordering::Relaxed);
        self.bytes_down.store(bytes_down, Ordering::Relaxed);
        self.operator_disabled
            .store(operator_disabled, Ordering::Relaxed);
    }
}

impl super::pump::Meter for Account {
    fn client_bytes(&self, n: u64) {
        self.add_up(n);
    }
    fn upstream_bytes(&self, n: u64) {
        self.add_down(n);
    }
    fn exhausted(&self) -> bool {
        self.over_quota()
    }
    fn budget(&self) -> Option<u64> {
        self.quota_left()
    }
}

/// A user's usage at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Connections open.
    pub active_connections: u64,
    /// Distinct addresses in the window.
    pub unique_ips: u64,
    /// Bytes from clients.
    pub bytes_up: u64,
    /// Bytes from DCs.
    pub bytes_down: u64,
    /// Disabled by the operator.
    pub operator_disabled: bool,
    /// Refusals by reason.
    pub rejections: BTreeMap<String, u64>,
}

/// An admitted connection; releases its slot when dropped.
#[derive(Debug)]
pub struct ActiveConnection(Arc<Account>);

impl ActiveConnection {
    /// The account it belongs to.
    pub fn account(&self) -> &Arc<Account> {
        &self.0
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All accounts by name.
#[derive(Debug, Default)]
pub struct Accounts {
    by_name: RwLock<BTreeMap<String, Arc<Account>>>,
}

impl Accounts {
    /// The account for `name`, created if new, with `limits` applied.
    pub fn upsert(&self, name: &str, limits: Limits) -> Arc<Account> {
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let account = map
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Account::new(name, limits.clone())));
        let mut current = account.limits.write().unwrap_or_else(|e| e.into_inner());
        // A changed rate starts afresh; an unchanged one keeps its state across reloads.
        if current.connection_rate != limits.connection_rate {
            *account.rate.write().unwrap_or_else(|e| e.into_inner()) =
                limits.connection_rate.map(limiter);
        }
        *current = limits;
        drop(current);
        account.clone()
    }

    /// Drops accounts whose names are not in `keep` (users removed from the config). Their
    /// open connections finish normally.
    pub fn retain(&self, keep: &[&str]) {
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| keep.contains(&name.as_str()));
    }

    /// One account.
    pub fn get(&self, name: &str) -> Option<Arc<Account>> {
        read(&self.by_name).get(name).cloned()
    }

    /// All accounts, by name.
    pub fn all(&self) -> Vec<Arc<Account>> {
        read(&self.by_name).values().cloned().collect()
    }
}

fn limiter(rate: ConnectionRate) -> DefaultDirectRateLimiter {
    DefaultDirectRateLimiter::direct(rate.rate.quota(rate.burst))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(600);

    #[test]
    fn limits_come_from_the_users_section() {
        let config = config::Config::parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"alice\"\n\
             secret = \"00112233445566778899aabbccddeeff\"\nmax_connections = 4\n\
             max_unique_ips = 2\nquota = \"1GiB\"\nexpires = \"2030-01-01T00:00:00Z\"\n\
             [[users]]\nname = \"bob\"\nsecret = \"ffeeddccbbaa99887766554433221100\"\n\
             quota = 1000\nenabled = false\n",
            config::Origin::Embedded,
        )
        .expect("valid");
        let alice = Limits::from(&config.users[0]);
        assert_eq!(alice.max_connections, Some(4));
        assert_eq!(alice.max_unique_ips, Some(2));
        assert_eq!(alice.quota, Some(1 << 30));
        assert!(alice.expires.is_some());
        assert!(!alice.disabled);
        let bob = Limits::from(&config.users[1]);
        assert_eq!(bob.quota, Some(1000));
        assert!(bob.disabled);
    }

    #[test]
    fn connection_rate_burst_defaults_to_the_rate_count() {
        const USER: &str = "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\n\
                            secret = \"00112233445566778899aabbccddeeff\"\n";
        let limits = |extra: &str| {
            let config = config::Config::parse(&format!("{USER}{extra}"), config::Origin::Embedded)
                .expect("valid");
            Limits::from(&config.users[0])
        };
        assert_eq!(limits("").connection_rate.map(|r| r.burst()), None);
        let set = limits("connection_rate = \"20/s\"\nconnection_burst = 40\n")
            .connection_rate
            .expect("rate");
        assert_eq!((set.rate.to_string(), set.burst()), ("20/s".to_owned(), 40));
        let default_burst = limits("connection_rate = \"5/m\"\n")
            .connection_rate
            .expect("rate");
        assert_eq!(default_burst.burst(), 5);
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, n])
    }

    fn account(limits: Limits) -> Arc<Account> {
        Accounts::default().upsert("alice", limits)
    }

    #[test]
    fn max_connections_counts_open_ones() {
        let a = account(Limits {
            max_connections: Some(2),
            ..Limits::default()
        });
        let (now, wall) = (Instant::now(), SystemTime::now());
        let c1 = a.admit(ip(1), now, wall, WINDOW).expect("first");
        let _c2 = a.admit(ip(1), now, wall, WINDOW).expect("second");
        assert_eq!(
            a.admit(ip(1), now, wall, WINDOW).map(|_| ()),
            Err(Rejection::MaxConnections)
        );
        drop(c1);
        assert!(a.admit(ip(1), now, wall, WINDOW).is_ok());
        assert_eq!(a.usage(now, WINDOW).rejections["max_connections"], 1);
    }

    #[test]
    fn unique_ips_over_a_window() {
        let a = account(Limits {
            max_unique_ips: Some(2),
            ..Limits::default()
        });
        let (t0, wall) = (Instant::now(), SystemTime::now());
        assert!(a.admit(ip(1), t0, wall, WINDOW).is_ok());
        assert!(a.admit(ip(2), t0, wall, WINDOW).is_ok());
        assert!(a.admit(ip(1), t0, wall, WINDOW).is_ok(), "known address");
        assert_eq!(
            a.admit(ip(3), t0, wall, WINDOW).map(|_| ()),
            Err(Rejection::MaxUniqueIps)
        );
        let later = t0 + WINDOW + Duration::from_secs(1);
        assert!(
            a.admit(ip(3), later, wall, WINDOW).is_ok(),
            "old ones aged out"
        );
        assert_eq!(a.usage(later, WINDOW).unique_ips, 1);
    }

    /// A phone's IPv6 privacy addresses share its /64: one slot, not one per address; another
    /// /64 is another address.
    #[test]
    fn ipv6_addresses_count_per_64() {
        let a = account(Limits {
            max_unique_ips: Some(2),
            ..Limits::default()
        });
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let v6 = |prefix: u16, host: u16| IpAddr::from([0x2001, 0xdb8, 0, prefix, host, 0, 0, 1]);
        for host in 1..=100 {
            assert!(
                a.admit(v6(1, host), t0, wall, WINDOW).is_ok(),
                "address {host} in the same /64"
            );
        }
        assert!(a.admit(v6(2, 1), t0, wall, WINDOW).is_ok(), "a second /64");
        assert_eq!(
            a.admit(v6(3, 1), t0, wall, WINDOW).map(|_| ()),
            Err(Rejection::MaxUniqueIps),
            "a third /64"
        );
        assert_eq!(a.usage(t0, WINDOW).unique_ips, 2);
    }

    #[test]
    fn addresses_are_forgotten_after_the_window() {
        let a = account(Limits {
            max_unique_ips: Some(5),
            ..Limits::default()
        });
        let (t0, wall) = (Instant::now(), SystemTime::now());
        drop(a.admit(ip(1), t0, wall, WINDOW));
        a.forget_ips(t0 + WINDOW / 2, WINDOW);
        assert_eq!(lock(&a.recent_ips).len(), 1, "still inside the window");
        a.forget_ips(t0 + WINDOW, WINDOW);
        assert!(
            lock(&a.recent_ips).is_empty(),
            "gone once the window passed"
        );
    }

    #[test]
    fn quota_expiry_and_switches() {
        let a = account(Limits {
            quota: Some(1000),
            ..Limits::default()
        });
        let (now, wall) = (Instant::now(), SystemTime::now());
        a.add_up(600);
        assert!(!a.over_quota());
        a.add_down(400);
        assert!(a.over_quota());
        assert_eq!(
            a.admit(ip(1), now, wall, WINDOW).map(|_| ()),
            Err(Rejection::Quota)
        );

        let b = account(Limits {
            expires: Some(wall - Duration::from_secs(1)),
            ..Limits::default()
        });
        assert_eq!(
            b.admit(ip(1), now, wall, WINDOW).map(|_| ()),
            Err(Rejection::Expired)
        );

        let c = account(Limits::default());
        c.set_operator_disabled(true);
        assert_eq!(
            c.admit(ip(1), now, wall, WINDOW).map(|_| ()),
            Err(Rejection::Disabled)
        );
        c.set_operator_disabled(false);
        assert!(c.admit(ip(1), now, wall, WINDOW).is_ok());
    }

    /// Three new connections at once, then one every 20 minutes at `3/h`; another user's rate
    /// is its own, and a reload that keeps the rate keeps its state.
    #[test]
    fn connection_rate_is_per_user_whatever_the_source() {
        let accounts = Accounts::default();
        let rated = Limits {
            connection_rate: Some(ConnectionRate {
                rate: "3/h".parse().expect("rate"),
                burst: None,
            }),
            ..Limits::default()
        };
        let a = accounts.upsert("alice", rated.clone());
        let b = accounts.upsert("bob", rated.clone());
        let (now, wall) = (Instant::now(), SystemTime::now());
        for n in 1..=3 {
            assert!(a.admit(ip(n), now, wall, WINDOW).is_ok(), "burst {n}");
        }
        for n in 4..=10 {
            assert_eq!(
                a.admit(ip(n), now, wall, WINDOW).map(|_| ()),
                Err(Rejection::Rate),
                "from a new address {n}"
            );
        }
        assert!(b.admit(ip(1), now, wall, WINDOW).is_ok(), "bob has his own");
        let usage = a.usage(now, WINDOW);
        assert_eq!(usage.rejections["rate"], 7);
        assert_eq!(usage.active_connections, 0, "refusals take no slot");
        accounts.upsert("alice", rated);
        assert_eq!(
            a.admit(ip(1), now, wall, WINDOW).map(|_| ()),
            Err(Rejection::Rate),
            "an unchanged rate is not reset by a reload"
        );
        accounts.upsert(
            "alice",
            Limits {
                connection_rate: Some(ConnectionRate {
                    rate: "3/h".parse().expect("rate"),
                    burst: NonZeroU32::new(5),
                }),
                ..Limits::default()
            },
        );
        assert!(a.admit(ip(1), now, wall, WINDOW).is_ok(), "a new burst");
    }

    #[test]
    fn accounts_survive_limit_changes() {
        let accounts = Accounts::default();
        let a = accounts.upsert("alice", Limits::default());
        a.add_up(5);
        let again = accounts.upsert(
            "alice",
            Limits {
                quota: Some(10),
                ..Limits::default()
            },
        );
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(again.limits().quota, Some(10));
        accounts.retain(&[]);
        assert!(accounts.get("alice").is_none());
    }
}
