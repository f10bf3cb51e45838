//! The kernel driver behind a network interface, as `ethtool -i` reports it, and the attach
//! modes `[xdp] mode` allows on it, best first.
//!
//! `auto` prefers native XDP, which runs in the driver before any allocation. Where the driver
//! has none, both other places run after the skb exists, and generic XDP then copies nearly
//! every packet (it needs 256 bytes of headroom that skbs rarely have), while the TC ingress
//! (tcx) hook runs the same program without copying: so TC comes next, and generic XDP last
//! (kernels before 6.6 have no tcx). On a veth (containers, network namespaces) the frames
//! already arrive as skbs and native XDP is the worst place: it copies every frame and turns
//! off GSO on the peer, so `auto` starts with TC there (`cargo xtask bench` measures each
//! mode; the figures are in its report).

use std::{
    ffi::c_char,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::AttachMode;
use crate::config::XdpMode;

/// ethtool command: driver name and version (`linux/ethtool.h`).
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
/// The driver on which `auto` starts with the TC hook (both XDP modes copy every packet).
const VETH: &str = "veth";

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [c_char; 32],
    version: [c_char; 32],
    fw_version: [c_char; 32],
    bus_info: [c_char; 32],
    erom_version: [c_char; 32],
    reserved2: [c_char; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The driver of `interface` (`veth`, `virtio_net`, `mlx5_core`, …). Fails for an unknown
/// interface, and for one whose driver does not answer (loopback, some tunnels).
pub fn driver(interface: &str) -> io::Result<String> {
    let bytes = interface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{interface}` is not an interface name"),
        ));
    }
    // Any socket reaches the device ioctls; this one lives in the caller's network namespace.
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: both are plain C structs for which all-zero is a valid value.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    for (dst, &src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = src as c_char;
    }
    // SAFETY: a valid socket, and a request whose data pointer is a live `ethtool_drvinfo`
    // the kernel fills in (at most its size).
    let done = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL as _, &raw mut request) };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    let name: Vec<u8> = info
        .driver
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// The modes to try on an interface whose driver is `driver` (`None`: unknown), in order.
pub fn attach_order(mode: XdpMode, driver: Option<&str>) -> &'static [AttachMode] {
    match mode {
        XdpMode::Auto if driver == Some(VETH) => &[AttachMode::Tc, AttachMode::Generic],
        XdpMode::Auto => &[AttachMode::Native, AttachMode::Tc, AttachMode::Generic],
        XdpMode::Native => &[AttachMode::Native],
        XdpMode::Tc => &[AttachMode::Tc],
        XdpMode::Generic | XdpMode::Off => &[AttachMode::Generic],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_tc_on_veth_and_native_elsewhere() {
        assert_eq!(
            attach_order(XdpMode::Auto, Some("veth")),
            [AttachMode::Tc, AttachMode::Generic]
        );
        for other in [Some("virtio_net"), Some("mlx5_core"), None] {
            assert_eq!(
                attach_order(XdpMode::Auto, other),
                [AttachMode::Native, AttachMode::Tc, AttachMode::Generic],
                "{other:?}"
            );
        }
        // An explicit mode is what the operator asked for, whatever the driver.
        assert_eq!(
            attach_order(XdpMode::Native, Some("veth")),
            [AttachMode::Native]
        );
        assert_eq!(
            attach_order(XdpMode::Generic, Some("veth")),
            [AttachMode::Generic]
        );
        assert_eq!(attach_order(XdpMode::Tc, Some("ixgbe")), [AttachMode::Tc]);
    }

    #[test]
    fn bad_names_are_refused_before_the_kernel() {
        for name in ["", "a-name-far-too-long", "nul\0inside"] {
            let e = driver(name).expect_err(name);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn unknown_interface_is_an_error() {
        let e = driver("relaynosuch0").expect_err("no such interface");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }
}
