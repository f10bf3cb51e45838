//! What the kernel tells about a TCP socket that the passthrough needs: its cookie (the map
//! key) and how many bytes have been written into it.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// The socket's cookie (`SO_COOKIE`), unique while the system runs.
pub fn cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid descriptor and an 8-byte buffer of the given length.
    let done = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Makes the kernel run the socket's data-ready callback now (setting `SO_RCVLOWAT`, at its
/// default of 1, checks for queued bytes): a socket that joined a sockmap with segments
/// already queued gets them through the verdict program at once, not at the next arrival.
pub fn kick(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid descriptor and an int option of the given length.
    let done = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The head of `struct tcp_info` (`linux/tcp.h`) up to `tcpi_bytes_acked`.
#[repr(C)]
#[derive(Default)]
struct TcpInfoHead {
    /// state .. rcv_wscale, 8 one-byte fields.
    flags: [u8; 8],
    /// rto .. total_retrans, 24 `u32` fields.
    words: [u32; 24],
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
}

fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfoHead> {
    let mut info = TcpInfoHead::default();
    let mut len = std::mem::size_of::<TcpInfoHead>() as libc::socklen_t;
    // SAFETY: a valid descriptor; the kernel writes at most `len` bytes into `info`.
    let done = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < std::mem::size_of::<TcpInfoHead>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "tcp_info without tcpi_bytes_acked",
        ));
    }
    Ok(info)
}

/// Bytes written into the socket so far, up to a constant: the bytes the peer acknowledged
/// plus those still in the send queue. Never more than the true figure: the two are read one
/// after the other, and an acknowledgement between the reads only moves bytes from the second
/// to the first.
pub fn written(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let acked = tcp_info(fd)?.bytes_acked;
    let mut queued: libc::c_int = 0;
    // SAFETY: a valid descriptor and an int for SIOCOUTQ (TIOCOUTQ) to fill.
    let done = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(acked + u64::try_from(queued).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write as _, os::fd::AsFd as _};

    #[test]
    fn written_counts_what_was_written() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut a =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (b, _) = listener.accept().expect("accept");
        let before = written(a.as_fd()).expect("written");
        a.write_all(&[7; 100_000]).expect("write");
        let after = written(a.as_fd()).expect("written");
        assert_eq!(after - before, 100_000);
        let (ca, cb) = (cookie(a.as_fd()), cookie(b.as_fd()));
        assert_ne!(ca.expect("cookie"), cb.expect("cookie"));
    }
}
