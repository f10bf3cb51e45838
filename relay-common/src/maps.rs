//! Names, sizes and value layouts of the maps the XDP program shares with userspace.
//!
//! Addresses are stored as their network-order bytes (`[u8; 4]`, `[u8; 16]`), so neither side
//! ever converts byte order. IPv6 sources are limited per /64: [`V6_LIMIT_PREFIX_BYTES`].

/// One-entry `Array<XdpConfig>`: tunables written by userspace at start and on reload.
pub const CONFIG: &str = "CONFIG";
/// The object's `.bss` (its zero-initialised globals, of which the listen-port set is the only
/// one), which the loader makes a one-entry `Array<[u8; LISTEN_PORT_SLOTS]>`: the TCP
/// destination ports the program acts on, a byte per port indexed by the port in host order,
/// non-zero for a listen port. A global rather than a map of its own because every packet pays
/// for this check, most of them for nothing else: the program reads it with one load from a
/// known address, no lookup. Not pinned: relay-ctl writes the ports at every start.
pub const LISTEN_PORTS: &str = ".bss";
/// `LpmTrie<[u8; 4], u8>`: allowlisted IPv4 prefixes.
pub const ALLOW_V4: &str = "ALLOW_V4";
/// `LpmTrie<[u8; 16], u8>`: allowlisted IPv6 prefixes.
pub const ALLOW_V6: &str = "ALLOW_V6";
/// `LpmTrie<[u8; 4], u8>`: blocked IPv4 prefixes (operator lists and feeds).
pub const BLOCK_V4: &str = "BLOCK_V4";
/// `LpmTrie<[u8; 16], u8>`: blocked IPv6 prefixes.
pub const BLOCK_V6: &str = "BLOCK_V6";
/// `HashMap<[u8; 4], BanEntry>`: exact-address bans. A plain hash, so floods cannot evict them.
pub const BANS_V4: &str = "BANS_V4";
/// `HashMap<[u8; 8], BanEntry>`: IPv6 bans per /64 (the first [`V6_LIMIT_PREFIX_BYTES`]
/// bytes), the granularity the misuse detector counts at: a host owns its /64 and could rotate
/// addresses inside it.
pub const BANS_V6: &str = "BANS_V6";
/// `LruHashMap<[u8; 4], TokenBucket>`: new-connection limiter state per IPv4 source.
pub const SYN_V4: &str = "SYN_V4";
/// `LruHashMap<[u8; 8], TokenBucket>`: new-connection limiter state per IPv6 /64.
pub const SYN_V6: &str = "SYN_V6";
/// `LruHashMap<[u8; 4], TokenBucket>`: the smaller new-connection budget of IPv4 sources under
/// a front-ban ([`BanAction::Front`]); apart from [`SYN_V4`] so a ban starts a fresh budget.
pub const BAN_SYN_V4: &str = "BAN_SYN_V4";
/// `LruHashMap<[u8; 8], TokenBucket>`: the same per front-banned IPv6 /64.
pub const BAN_SYN_V6: &str = "BAN_SYN_V6";
/// `HashMap<[u8; 4], u64>`: IPv4 sources that sent a packet the program could not rate (a
/// SYN behind IPv4 fragments), with the CLOCK_MONOTONIC time (ns) of the latest. Userspace
/// applies the SYN limit at accept to these sources' connections, and removes old entries. A
/// plain hash: traffic cannot evict a mark, and when it is full the program sets
/// [`UNRATED_ANY`] instead.
pub const UNRATED_V4: &str = "UNRATED_V4";
/// `HashMap<[u8; 8], u64>`: the same per IPv6 /64 (a SYN behind extension headers).
pub const UNRATED_V6: &str = "UNRATED_V6";
/// One-entry `Array<u64>`: time (ns) of the latest unrated packet the program could not
/// attribute to a source (malformed, too many VLAN tags) or could not mark (mark map full).
/// While it is recent, userspace applies the SYN limit at accept to every source.
pub const UNRATED_ANY: &str = "UNRATED_ANY";
/// `PerCpuArray<StateBudget>` with one entry: the new-state budget of each CPU.
pub const STATE_BUDGET: &str = "STATE_BUDGET";
/// `PerCpuArray<u64>` indexed by [`crate::Verdict`].
pub const VERDICTS: &str = "VERDICTS";
/// Maps pinned with `[xdp] keep_on_exit` (all but aya-log's channel and [`LISTEN_PORTS`]).
pub const PINNED: [&str; 16] = [
    CONFIG,
    ALLOW_V4,
    ALLOW_V6,
    BLOCK_V4,
    BLOCK_V6,
    BANS_V4,
    BANS_V6,
    SYN_V4,
    SYN_V6,
    BAN_SYN_V4,
    BAN_SYN_V6,
    UNRATED_V4,
    UNRATED_V6,
    UNRATED_ANY,
    STATE_BUDGET,
    VERDICTS,
];
/// Version of the pinned layout: bumped whenever a key or value struct changes, so a new
/// relay-ctl never reuses pins of an incompatible shape.
pub const PIN_LAYOUT: &str = "v2";
/// Name of the XDP program in the object file.
pub const PROGRAM: &str = "relay_xdp";
/// Name of the TC ingress (tcx) classifier in the object file: the same parse and policy as
/// [`PROGRAM`], for interfaces where XDP would copy every packet (veth).
pub const PROGRAM_TC: &str = "relay_tc";

/// Most listen ports a configuration may name.
pub const MAX_LISTEN_PORTS: u32 = 64;
/// Bytes in the [`LISTEN_PORTS`] value: one per port.
pub const LISTEN_PORT_SLOTS: usize = 1 << 16;
/// Capacity of each allowlist trie.
pub const MAX_ALLOW_ENTRIES: u32 = 16_384;
/// Capacity of each blocklist trie (a full FireHOL level 1-3 feed fits).
pub const MAX_BLOCK_ENTRIES: u32 = 262_144;
/// Capacity of each ban map.
pub const MAX_BANS: u32 = 131_072;
/// Capacity of each limiter LRU map.
pub const MAX_LIMITER_ENTRIES: u32 = 131_072;
/// Capacity of each unrated-source map.
pub const MAX_UNRATED_ENTRIES: u32 = 65_536;
/// IPv6 sources share one limiter bucket per /64.
pub const V6_LIMIT_PREFIX_BYTES: usize = 8;

/// Value of the [`CONFIG`] map.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// New connections per second refilled into each source's bucket.
    pub syn_rate_per_sec: u32,
    /// Bucket size: how many new connections a source may open at once.
    pub syn_burst: u32,
    /// New limiter entries each CPU may create per second; beyond it, no state is created.
    pub new_state_per_cpu_per_sec: u32,
    /// Bit set of `XdpConfig::FLAG_*`.
    pub flags: u32,
    /// New connections per second refilled into the budget of a front-banned source.
    pub banned_syn_rate_per_sec: u32,
    /// Size of a front-banned source's budget. Applies whether or not the limiter is on.
    pub banned_syn_burst: u32,
}

const _: () = assert!(core::mem::size_of::<XdpConfig>() == 24);

impl XdpConfig {
    /// The per-source new-connection limiter is on.
    pub const FLAG_SYN_LIMIT: u32 = 1;
    /// The IPv4 allowlist may hold entries: the program looks sources up in it. Without the
    /// flag it skips the lookup (most operators allowlist nothing). Userspace sets it before
    /// it inserts a first entry and clears it after it removed the last.
    pub const FLAG_ALLOW_V4: u32 = 1 << 1;
    /// The same for the IPv6 allowlist.
    pub const FLAG_ALLOW_V6: u32 = 1 << 2;
    /// The flags userspace keeps in step with the allowlists, whatever the tunables say.
    pub const ALLOW_FLAGS: u32 = Self::FLAG_ALLOW_V4 | Self::FLAG_ALLOW_V6;

    /// Whether the limiter is on.
    pub const fn syn_limit_enabled(&self) -> bool {
        self.flags & Self::FLAG_SYN_LIMIT != 0
    }
}

/// Value of the ban maps.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BanEntry {
    /// CLOCK_MONOTONIC time (ns) at which the ban lapses; [`BanEntry::NEVER`] for permanent.
    pub expires_ns: u64,
    /// A [`BanReason`] discriminant.
    pub reason: u32,
    /// A [`BanAction`] discriminant; an unknown value drops.
    pub action: u32,
}

const _: () = assert!(core::mem::size_of::<BanEntry>() == 16);

impl BanEntry {
    /// Expiry of a ban that never lapses.
    pub const NEVER: u64 = u64::MAX;

    /// A ban with the given expiry, reason and action.
    pub const fn new(expires_ns: u64, reason: BanReason, action: BanAction) -> Self {
        BanEntry {
            expires_ns,
            reason: reason as u32,
            action: action as u32,
        }
    }

    /// Whether the banned source's connections are fronted rather than dropped.
    pub const fn fronts(&self) -> bool {
        self.action == BanAction::Front as u32
    }

    /// Whether the ban still holds at `now_ns`.
    pub const fn active_at(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }
}

/// Why an address was banned.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BanReason {
    /// Added by the operator.
    Operator = 0,
    /// Repeated handshakes with an unknown secret or a bad MAC.
    BadSecret = 1,
    /// Repeated fake-TLS hellos naming another domain.
    UnknownSni = 2,
    /// Replayed handshakes.
    Replay = 3,
    /// Repeated handshake timeouts.
    Timeout = 4,
    /// Repeated garbage instead of a handshake.
    Garbage = 5,
    /// Too many connections per second.
    ConnRate = 6,
    /// Imported from an external feed.
    Feed = 7,
}

impl BanReason {
    /// Every reason, in discriminant order.
    pub const ALL: [BanReason; 8] = [
        BanReason::Operator,
        BanReason::BadSecret,
        BanReason::UnknownSni,
        BanReason::Replay,
        BanReason::Timeout,
        BanReason::Garbage,
        BanReason::ConnRate,
        BanReason::Feed,
    ];

    /// Stable snake_case name.
    pub const fn name(self) -> &'static str {
        match self {
            BanReason::Operator => "operator",
            BanReason::BadSecret => "bad_secret",
            BanReason::UnknownSni => "unknown_sni",
            BanReason::Replay => "replay",
            BanReason::Timeout => "timeout",
            BanReason::Garbage => "garbage",
            BanReason::ConnRate => "conn_rate",
            BanReason::Feed => "feed",
        }
    }

    /// Whether the reason is a prober's offence (a handshake no client of this relay would
    /// send), for which `[misuse] action` applies; floods and external lists always drop.
    pub const fn is_probe(self) -> bool {
        matches!(
            self,
            BanReason::BadSecret
                | BanReason::UnknownSni
                | BanReason::Replay
                | BanReason::Timeout
                | BanReason::Garbage
        )
    }

    /// The reason for a raw discriminant read back from a map.
    pub const fn from_u32(raw: u32) -> Option<Self> {
        if (raw as usize) < Self::ALL.len() {
            Some(Self::ALL[raw as usize])
        } else {
            None
        }
    }
}

/// What a ban does to the banned source's traffic.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BanAction {
    /// Every packet is dropped in the kernel: the port looks dead to the source.
    Drop = 0,
    /// Connections are admitted within a small SYN budget and handed to the mask site at
    /// accept, without handshake work: a prober keeps seeing the site.
    Front = 1,
}

impl BanAction {
    /// Every action, in discriminant order.
    pub const ALL: [BanAction; 2] = [BanAction::Drop, BanAction::Front];

    /// Stable lowercase name (config value, CLI output, state file).
    pub const fn name(self) -> &'static str {
        match self {
            BanAction::Drop => "drop",
            BanAction::Front => "front",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are `#[repr(C)]`, `Copy`, and padding-free (size asserts above), so
    // any byte pattern of their size is a valid value.
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::BanEntry {}
    unsafe impl aya::Pod for crate::bucket::TokenBucket {}
    unsafe impl aya::Pod for crate::bucket::StateBudget {}
}

/// Which of the two prefix lists (each an LPM trie per address family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PrefixList {
    /// Never dropped, limited or banned.
    Allow,
    /// Dropped.
    Block,
}
