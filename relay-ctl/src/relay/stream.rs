//! The connections the handshake driver and fronting work on: the client's, and the mask
//! host's. A TCP socket in the daemon; an in-memory pipe in unit tests (see `memory`), so the
//! accept, front and close decisions can be tested without processes. Everything is generic
//! over [`RelayStream`] and monomorphised: the TCP path has no dynamic dispatch.

use std::{future::Future, mem::MaybeUninit};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use super::pump::StreamHalf;

/// A byte stream with what fronting needs beyond reading and writing: halves for the relay
/// loop, waiting for the peer's answer without consuming it, bytes already received, and a
/// reset as the way to close.
pub trait RelayStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The half the relay loop reads.
    type ReadHalf: AsyncRead + StreamHalf + Unpin + Send;
    /// The half the relay loop writes.
    type WriteHalf: AsyncWrite + StreamHalf + Unpin + Send;

    /// Splits into halves that can be used at the same time.
    fn into_split(self) -> (Self::ReadHalf, Self::WriteHalf);

    /// Completes once the peer has sent bytes, a FIN or a reset, consuming nothing (the bytes
    /// stay for whoever reads next). Cancel-safe.
    fn answered(&mut self) -> impl Future<Output = ()> + Send;

    /// Bytes `half` has already received, at most `buf.len()`, without waiting: empty when
    /// there are none or the stream has failed. Not through the runtime's readiness flag, which
    /// may say "not readable" for bytes that arrived just before a reset.
    fn take_queued<'b>(half: &mut Self::ReadHalf, buf: &'b mut [MaybeUninit<u8>]) -> &'b [u8];

    /// Closes the connection with a reset instead of a FIN (a dropped write half would send a
    /// FIN first).
    fn close_with_reset(read: Self::ReadHalf, write: Self::WriteHalf);

    /// Closes the connection once the relay loop is done with it. The loop has sent every FIN
    /// the peer needed to see early; the close sends the last one, so the write half's own
    /// shutdown on drop would only be one more system call.
    fn close(read: Self::ReadHalf, write: Self::WriteHalf) {
        drop((read, write));
    }

    /// The address the client connected to, when there is one (a socket's).
    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

impl RelayStream for TcpStream {
    type ReadHalf = OwnedReadHalf;
    type WriteHalf = OwnedWriteHalf;

    fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        TcpStream::into_split(self)
    }

    async fn answered(&mut self) {
        // Bytes, FIN or RST all complete a peek; whichever it was, the peer has spoken.
        let _ = self.peek(&mut [0u8; 1]).await;
    }

    fn take_queued<'b>(half: &mut OwnedReadHalf, buf: &'b mut [MaybeUninit<u8>]) -> &'b [u8] {
        let socket = socket2::SockRef::from(half.as_ref());
        match socket.recv(buf) {
            // SAFETY: `recv` initialised the first `n` bytes.
            Ok(n) => unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) },
            Err(_) => &[],
        }
    }

    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        TcpStream::local_addr(self).ok()
    }

    fn close_with_reset(read: OwnedReadHalf, write: OwnedWriteHalf) {
        // Reunited, the halves close without the write half's shutdown.
        if let Ok(stream) = read.reunite(write) {
            let _ = stream.set_zero_linger();
        }
    }

    fn close(read: OwnedReadHalf, write: OwnedWriteHalf) {
        write.forget();
        drop(read);
    }
}
