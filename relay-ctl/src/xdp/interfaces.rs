//! Which interfaces to attach to: named ones (checked to exist) or `auto`, the interfaces that
//! carry the listen addresses.

use std::{collections::BTreeSet, net::SocketAddr};

use nix::{ifaddrs::getifaddrs, net::if_::InterfaceFlags};

/// Why the interface list could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// Listing interfaces failed.
    #[error("cannot list network interfaces: {0}")]
    List(#[source] nix::Error),
    /// A configured name does not exist.
    #[error("unknown interface `{name}` in [xdp] interfaces (this host has: {available})")]
    Unknown {
        /// The configured name.
        name: String,
        /// Names that do exist.
        available: String,
    },
    /// `auto` found nothing.
    #[error(
        "[xdp] interfaces = [\"auto\"] found no interface carrying {listen}; name interfaces explicitly"
    )]
    NoneFound {
        /// The listen addresses.
        listen: String,
    },
}

struct Iface {
    name: String,
    flags: InterfaceFlags,
    addr: Option<std::net::IpAddr>,
}

fn interfaces() -> Result<Vec<Iface>, InterfaceError> {
    Ok(getifaddrs()
        .map_err(InterfaceError::List)?
        .map(|ifa| Iface {
            addr: ifa.address.as_ref().and_then(|a| {
                a.as_sockaddr_in()
                    .map(|s| std::net::IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| std::net::IpAddr::V6(s.ip())))
            }),
            name: ifa.interface_name,
            flags: ifa.flags,
        })
        .collect())
}

/// Resolves `[xdp] interfaces` against this host.
pub fn resolve(
    configured: &[String],
    listen: &[SocketAddr],
) -> Result<Vec<String>, InterfaceError> {
    let all = interfaces()?;
    let names: BTreeSet<&str> = all.iter().map(|i| i.name.as_str()).collect();
    if !(configured.len() == 1 && configured[0] == "auto") {
        for name in configured {
            if !names.contains(name.as_str()) {
                return Err(InterfaceError::Unknown {
                    name: name.clone(),
                    available: names.iter().copied().collect::<Vec<_>>().join(", "),
                });
            }
        }
        let mut out = configured.to_vec();
        out.dedup();
        return Ok(out);
    }
    let mut chosen = BTreeSet::new();
    for addr in listen {
        let ip = addr.ip().to_canonical();
        for iface in &all {
            let carries = if ip.is_unspecified() {
                // A wildcard listener is reachable on every interface that is up, but XDP on
                // loopback would only filter local traffic: leave `lo` out.
                iface.flags.contains(InterfaceFlags::IFF_UP)
                    && !iface.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            } else {
                iface.addr == Some(ip)
            };
            if carries {
                chosen.insert(iface.name.clone());
            }
        }
    }
    if chosen.is_empty() {
        return Err(InterfaceError::NoneFound {
            listen: listen
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(chosen.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_address_resolves_to_lo() {
        let got = resolve(
            &["auto".to_owned()],
            &["127.0.0.1:443".parse().expect("addr")],
        )
        .expect("lo exists");
        assert_eq!(got, vec!["lo"]);
    }

    #[test]
    fn unknown_name_lists_the_real_ones() {
        let err = resolve(&["nosuch0".to_owned()], &[]).expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("nosuch0") && msg.contains("lo"), "{msg}");
    }

    #[test]
    fn address_nobody_has_is_an_error() {
        let err = resolve(
            &["auto".to_owned()],
            &["192.0.2.99:443".parse().expect("addr")],
        )
        .expect_err("nobody has it");
        assert!(err.to_string().contains("192.0.2.99:443"), "{err}");
    }
}
