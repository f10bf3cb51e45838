//! TCP handshakes made of crafted frames: the SYN is any frame [`crate::packet::Frame`] can
//! build (IPv6 extension headers, IPv4 fragments, stacked VLAN tags), sent through an
//! `AF_PACKET` socket on the client's veth; the server's SYN-ACK is read back from the same
//! socket and answered with a plain ACK, so the server's kernel completes a real connection.
//!
//! The source address must not belong to the client namespace (its kernel would reset the
//! SYN-ACK it has no socket for), and the server needs a neighbour entry for it.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use nix::libc;

use crate::packet::{ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, TCP_RST, TCP_SYN};

/// A TCP segment read off the wire: the fields a handshake needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Flags byte.
    pub flags: u8,
}

/// Reads the TCP segment of an Ethernet frame (after any VLAN tags), if it is one with plain
/// IPv4 or IPv6 (no extension headers) and not a fragment.
pub fn parse_segment(frame: &[u8]) -> Option<Segment> {
    let mut at = ETH_HLEN - 2;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    let l3 = frame.get(at + 2..)?;
    let (src, dst, l4) = match ethertype {
        ETH_P_IP => {
            let ihl = usize::from(l3.first()? & 0x0f) * 4;
            let fragmented = u16::from_be_bytes([*l3.get(6)?, *l3.get(7)?]) & 0x3fff != 0;
            if *l3.get(9)? != 6 || fragmented {
                return None;
            }
            let src: [u8; 4] = l3.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = l3.get(16..20)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), l3.get(ihl..)?)
        }
        ETH_P_IPV6 => {
            if *l3.get(6)? != 6 {
                return None;
            }
            let src: [u8; 16] = l3.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = l3.get(24..40)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), l3.get(40..)?)
        }
        _ => return None,
    };
    Some(Segment {
        src,
        dst,
        src_port: u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
        dst_port: u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
        seq: u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?),
        flags: *l4.get(13)?,
    })
}

/// An `AF_PACKET` socket bound to one interface that sends frames and sees every frame the
/// interface receives; it remembers every TCP segment it read, so a reset that arrives while a
/// later handshake is waiting is not lost.
pub struct PacketSocket {
    fd: OwnedFd,
    seen: std::cell::RefCell<Vec<Segment>>,
}

impl PacketSocket {
    /// Binds to `iface` in the calling thread's network namespace.
    pub fn bind(iface: &str) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let socket = PacketSocket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seen: std::cell::RefCell::default(),
        };
        // SAFETY: a zeroed sockaddr_ll is valid; the fields bind reads are set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = i32::try_from(index).map_err(io::Error::other)?;
        // SAFETY: a valid fd and a sockaddr_ll of the right size.
        let bound = unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }

    /// Sends one frame as is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: a valid fd and buffer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next TCP segment received (outgoing copies and other frames skipped), or `None`
    /// once `deadline` passes.
    pub fn recv_until(&self, deadline: Instant) -> io::Result<Option<Segment>> {
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            if ready < 0 {
                return Err(io::Error::last_os_error());
            }
            if ready == 0 {
                continue;
            }
            // SAFETY: a zeroed sockaddr_ll is valid output space.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: valid fd, buffer and address space of the given sizes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &raw mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let n = usize::try_from(n).map_err(io::Error::other)?;
            if let Some(segment) = parse_segment(&buf[..n]) {
                self.seen.borrow_mut().push(segment);
                return Ok(Some(segment));
            }
        }
    }

    /// Waits up to `wait` for a segment from `server_port` to (`client`, `client_port`) with
    /// all of `flags` set.
    pub fn wait_for(
        &self,
        client: IpAddr,
        client_port: u16,
        server_port: u16,
        flags: u8,
        wait: Duration,
    ) -> io::Result<Option<Segment>> {
        let deadline = Instant::now() + wait;
        while let Some(s) = self.recv_until(deadline)? {
            if s.dst == client
                && s.dst_port == client_port
                && s.src_port == server_port
                && s.flags & flags == flags
            {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }
}

/// How a crafted handshake ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// No SYN-ACK: the SYN was dropped (in XDP) or never reached a listener.
    NoAnswer,
    /// SYN-ACK answered with an ACK: the server holds an established connection. Carries the
    /// server's initial sequence number.
    Established(u32),
}

/// Sends the frames of a SYN, waits up to `wait` for the SYN-ACK and answers it with the frame
/// `ack(server_isn)` builds.
pub fn handshake(
    socket: &PacketSocket,
    syn_frames: &[Vec<u8>],
    client: (IpAddr, u16),
    server_port: u16,
    ack: impl Fn(u32) -> Vec<u8>,
    wait: Duration,
) -> io::Result<Handshake> {
    for frame in syn_frames {
        socket.send(frame)?;
    }
    let flags = TCP_SYN | crate::packet::TCP_ACK;
    match socket.wait_for(client.0, client.1, server_port, flags, wait)? {
        None => Ok(Handshake::NoAnswer),
        Some(syn_ack) => {
            socket.send(&ack(syn_ack.seq))?;
            Ok(Handshake::Established(syn_ack.seq))
        }
    }
}

/// Reads for `wait` more, then returns the client ports of `client` the server reset since the
/// socket was opened.
pub fn resets(
    socket: &PacketSocket,
    client: IpAddr,
    server_port: u16,
    wait: Duration,
) -> io::Result<Vec<u16>> {
    let deadline = Instant::now() + wait;
    while socket.recv_until(deadline)?.is_some() {}
    let mut ports: Vec<u16> = socket
        .seen
        .borrow()
        .iter()
        .filter(|s| s.dst == client && s.src_port == server_port && s.flags & TCP_RST != 0)
        .map(|s| s.dst_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::packet::{ETH_P_8021AD, Frame};

    #[test]
    fn parses_what_the_builder_builds() {
        let src = Ipv4Addr::new(198, 18, 0, 7);
        let frame = Frame::tcp_v4(src, 443)
            .syn()
            .ack()
            .seq(77)
            .src_port(1234)
            .vlan(5)
            .vlan_tpid(ETH_P_8021AD)
            .inner_vlan(6)
            .build();
        let s = parse_segment(&frame).expect("a segment");
        assert_eq!(
            (s.src, s.src_port, s.dst_port, s.seq, s.flags),
            (
                IpAddr::V4(src),
                1234,
                443,
                77,
                TCP_SYN | crate::packet::TCP_ACK
            )
        );
        let v6 = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 7);
        let s = parse_segment(&Frame::tcp_v6(v6, 80).rst().build()).expect("a segment");
        assert_eq!((s.src, s.flags), (IpAddr::V6(v6), TCP_RST));
        // Fragments and extension headers are not read.
        let [first, _] = Frame::tcp_v4(src, 443).syn().ipv4_fragments(8);
        assert_eq!(parse_segment(&first), None);
    }
}
