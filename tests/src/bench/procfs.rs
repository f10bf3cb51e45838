//! What the benchmark reads about processes and the machine: CPU time and RSS from `/proc`,
//! the process's own `getrusage`, system-wide CPU from `/proc/stat`, and the file-descriptor
//! limit the load needs.

use std::io;

use nix::libc;

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Fields of `/proc/<pid>/stat` after the command name (which may hold spaces), so index 0 is
/// field 3 (`state`).
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat: no `)`")))?;
    Ok(after.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds (user + system, all threads, living and exited) process `pid` has used.
pub fn cpu_secs(pid: u32) -> io::Result<f64> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15, i.e. indices 11 and 12 here.
    let tick = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat: field {}", i + 3)))
    };
    Ok((tick(11)? + tick(12)?) / clock_ticks())
}

/// A `/proc/<pid>/status` value in kB (`VmRSS`, `VmHWM`, …).
pub fn status_kib(pid: u32, key: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/status: no {key}")))
}

/// Resident set size of `pid`, KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// Threads of `pid`.
pub fn threads(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/status: no Threads")))
}

/// User + system CPU seconds this process has used so far (`getrusage(RUSAGE_SELF)`).
pub fn rusage_self() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Machine-wide CPU time from the `cpu` line of `/proc/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SysCpu {
    /// user + nice.
    pub user: f64,
    /// system.
    pub system: f64,
    /// hardware interrupts.
    pub irq: f64,
    /// softirq (where XDP and the network stack's receive path run).
    pub softirq: f64,
    /// idle + iowait.
    pub idle: f64,
    /// Everything, steal included.
    pub total: f64,
}

impl SysCpu {
    /// Reads `/proc/stat` now.
    pub fn now() -> io::Result<SysCpu> {
        let text = std::fs::read_to_string("/proc/stat")?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or_else(|| io::Error::other("/proc/stat: no cpu line"))?;
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse::<f64>().ok())
            .map(|x| x / clock_ticks())
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
        Ok(SysCpu {
            user: at(0) + at(1),
            system: at(2),
            idle: at(3) + at(4),
            irq: at(5),
            softirq: at(6),
            // Guest time is already inside user.
            total: (0..8).map(at).sum(),
        })
    }

    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &SysCpu) -> SysCpu {
        SysCpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            irq: self.irq - earlier.irq,
            softirq: self.softirq - earlier.softirq,
            idle: self.idle - earlier.idle,
            total: self.total - earlier.total,
        }
    }
}

/// Raises this process's `RLIMIT_NOFILE` (soft and hard) to at least `want`. Raising the hard
/// limit needs root (CAP_SYS_RESOURCE); without it the soft limit goes as high as allowed.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    // SAFETY: getrlimit/setrlimit on structs we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur >= want {
            return Ok(lim.rlim_cur);
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return Ok(want);
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(lim.rlim_max)
    }
}

/// This process's `RLIMIT_NOFILE` hard limit (what children can get at most without
/// CAP_SYS_RESOURCE).
pub fn nofile_hard() -> io::Result<u64> {
    // SAFETY: getrlimit writes into the struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(lim.rlim_max)
    }
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> io::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// Named counters of a `/proc/net/netstat`- or `/proc/net/snmp`-style file (header line, value
/// line, per protocol), as `Proto.Name → value`.
pub fn netstat_counters(text: &str) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let mut names = names.split_whitespace();
        let mut values = values.split_whitespace();
        let (Some(proto), Some(_)) = (names.next(), values.next()) else {
            continue;
        };
        let proto = proto.trim_end_matches(':');
        for (name, value) in names.zip(values) {
            if let Ok(value) = value.parse::<i64>() {
                out.insert(format!("{proto}.{name}"), value);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_secs(pid).unwrap() >= 0.0);
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(threads(pid).unwrap() >= 1);
        let a = SysCpu::now().unwrap();
        assert!(a.total > 0.0);
        assert!(rusage_self() >= 0.0);
    }

    #[test]
    fn netstat_pairs_names_with_values() {
        let text = "TcpExt: SyncookiesSent ListenDrops\nTcpExt: 5 7\nIpExt: InOctets\nIpExt: 99\n";
        let c = netstat_counters(text);
        assert_eq!(c["TcpExt.SyncookiesSent"], 5);
        assert_eq!(c["TcpExt.ListenDrops"], 7);
        assert_eq!(c["IpExt.InOctets"], 99);
    }
}
