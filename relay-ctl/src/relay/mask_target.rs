//! Where fronted connections go: the `[tls] mask` address, resolved once and kept.
//!
//! Resolving the mask's host name for every fronted connection would put a blocking
//! `getaddrinfo` on the thread pool per probe: a probe flood would pile up threads and add
//! jitter that a censor can time. So the addresses are looked up once, shared by every
//! connection, and looked up again in the background once they are [`REFRESH`] old while the
//! old ones stay in use (the system resolver does not report record TTLs, so this interval
//! stands in for them). A failed lookup is remembered for [`RETRY`], so a resolver outage
//! costs one lookup per interval, not one per connection.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpStream, sync::Mutex, time::Instant};

use super::stream::RelayStream;

/// Age at which resolved addresses are looked up again (in the background).
pub const REFRESH: Duration = Duration::from_secs(60);
/// How long a failed lookup is remembered before the next try.
pub const RETRY: Duration = Duration::from_secs(5);

/// What opens connections to the mask host: [`MaskTarget`] in the daemon, an in-memory mask
/// in unit tests.
pub trait MaskDialer: Clone + Send + Sync + 'static {
    /// The connection it opens.
    type Stream: RelayStream;

    /// The mask as configured, for logs.
    fn name(&self) -> &str;

    /// Connects within `timeout`. The future owns what it needs, so it can be kept while the
    /// client is read.
    fn dial(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send + 'static;
}

impl MaskDialer for Arc<MaskTarget> {
    type Stream = TcpStream;

    fn name(&self) -> &str {
        MaskTarget::name(self)
    }

    fn dial(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = io::Result<TcpStream>> + Send + 'static {
        let target = Arc::clone(self);
        async move { target.connect(timeout).await }
    }
}

/// The last lookup's outcome.
enum Resolved {
    /// Not looked up yet.
    Never,
    /// Addresses, and when they were looked up.
    Addrs(Vec<SocketAddr>, Instant),
    /// The lookup failed at this time, with this message.
    Failed(String, Instant),
}

/// The mask host and its cached addresses.
pub struct MaskTarget {
    target: String,
    /// A literal `ip:port` needs no lookup.
    literal: Option<SocketAddr>,
    resolved: Mutex<Resolved>,
    refreshing: AtomicBool,
    lookups: AtomicU64,
}

impl MaskTarget {
    /// A target `host:port` (or `ip:port`), not looked up yet.
    pub fn new(target: String) -> Arc<MaskTarget> {
        Arc::new(MaskTarget {
            literal: target.parse().ok(),
            target,
            resolved: Mutex::new(Resolved::Never),
            refreshing: AtomicBool::new(false),
            lookups: AtomicU64::new(0),
        })
    }

    /// `old` if it names the same target as `new` (its cached addresses carry over a reload),
    /// else `new`.
    pub fn reuse(
        old: Option<&Arc<MaskTarget>>,
        new: Option<Arc<MaskTarget>>,
    ) -> Option<Arc<MaskTarget>> {
        match (old, new) {
            (Some(old), Some(new)) if old.target == new.target => Some(Arc::clone(old)),
            (_, new) => new,
        }
    }

    /// `host:port` as configured.
    pub fn name(&self) -> &str {
        &self.target
    }

    /// Host-name lookups made so far.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Connects to the mask within `timeout` (a lookup, if one is due, included).
    pub async fn connect(self: &Arc<Self>, timeout: Duration) -> io::Result<TcpStream> {
        let connect = async {
            let addrs = self.addrs().await?;
            TcpStream::connect(&addrs[..]).await
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// The mask's addresses: cached, or looked up by the first caller while the others wait
    /// for its answer.
    async fn addrs(self: &Arc<Self>) -> io::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.literal {
            return Ok(vec![addr]);
        }
        let mut resolved = self.resolved.lock().await;
        match &*resolved {
            Resolved::Addrs(addrs, at) => {
                if at.elapsed() >= REFRESH && !self.refreshing.swap(true, Ordering::AcqRel) {
                    let this = Arc::clone(self);
                    tokio::spawn(async move { this.refresh().await });
                }
                return Ok(addrs.clone());
            }
            Resolved::Failed(message, at) if at.elapsed() < RETRY => {
                return Err(io::Error::other(message.clone()));
            }
            Resolved::Failed(..) | Resolved::Never => {}
        }
        *resolved = self.lookup().await;
        match &*resolved {
            Resolved::Addrs(addrs, _) => Ok(addrs.clone()),
            Resolved::Failed(message, _) => Err(io::Error::other(message.clone())),
            Resolved::Never => Err(io::ErrorKind::NotFound.into()),
        }
    }

    /// Looks the addresses up again, keeping the old ones if that fails.
    async fn refresh(&self) {
        let fresh = self.lookup().await;
        if matches!(fresh, Resolved::Addrs(..)) {
            *self.resolved.lock().await = fresh;
        }
        self.refreshing.store(false, Ordering::Release);
    }

    async fn lookup(&self) -> Resolved {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        match tokio::net::lookup_host(self.target.as_str()).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    Resolved::Failed(format!("{}: no addresses", self.target), now)
                } else {
                    Resolved::Addrs(addrs, now)
                }
            }
            Err(e) => Resolved::Failed(format!("{}: {e}", self.target), now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_connections_makes_one_lookup() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let target = MaskTarget::new(format!("localhost:{port}"));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let target = Arc::clone(&target);
                tokio::spawn(async move { target.connect(Duration::from_secs(5)).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("connected");
        }
        assert_eq!(target.lookups(), 1);
    }

    #[tokio::test]
    async fn a_literal_address_is_never_looked_up() {
        let target = MaskTarget::new("127.0.0.1:9".to_owned());
        let _ = target.connect(Duration::from_secs(1)).await;
        assert_eq!(target.lookups(), 0);
    }

    #[tokio::test]
    async fn a_failed_lookup_is_remembered_for_a_while() {
        // A port out of range fails in the resolver without any network.
        let target = MaskTarget::new("localhost:99999".to_owned());
        for _ in 0..5 {
            assert!(target.connect(Duration::from_secs(1)).await.is_err());
        }
        assert_eq!(target.lookups(), 1);
    }

    #[test]
    fn a_reload_keeps_the_same_target_and_its_cache() {
        let old = MaskTarget::new("example.com:443".to_owned());
        let same = MaskTarget::reuse(Some(&old), Some(MaskTarget::new("example.com:443".into())));
        assert!(Arc::ptr_eq(&old, &same.expect("same")));
        let other = MaskTarget::reuse(Some(&old), Some(MaskTarget::new("example.org:443".into())));
        assert_eq!(other.expect("other").name(), "example.org:443");
        assert!(MaskTarget::reuse(Some(&old), None).is_none());
    }
}
