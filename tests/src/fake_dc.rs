//! A fake Telegram data centre: accepts the relay's DC-side obfuscated2 header, then echoes
//! every decrypted byte back re-encrypted, so whatever framing the client used comes back as
//! the same frames.
//!
//! The DC side is implemented here directly on AES-CTR, independently of relay's own protocol
//! code, so a mistake in relay's DC leg cannot cancel itself out.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use aes::cipher::{KeyIvInit as _, StreamCipher as _};

type AesCtr = ctr::Ctr128BE<aes::Aes256>;

/// What the fake DC saw on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Protocol tag from header bytes 56..60.
    pub tag: [u8; 4],
    /// DC id from header bytes 60..62.
    pub dc: i16,
    /// Bytes echoed.
    pub bytes: u64,
    /// Whether the header's first bytes broke a forbidden-prefix rule.
    pub forbidden_prefix: bool,
}

/// A running fake DC on a loopback or namespace address; runs until the process ends.
#[derive(Clone)]
pub struct FakeDc {
    /// Where it listens.
    pub addr: SocketAddr,
    sessions: Arc<Mutex<Vec<Session>>>,
}

impl FakeDc {
    /// Listens on `addr` (port 0 picks one) and serves each connection on its own thread.
    pub fn start(addr: SocketAddr) -> FakeDc {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("fake DC bind {addr}: {e}"));
        let dc = FakeDc {
            addr: listener.local_addr().expect("local addr"),
            sessions: Arc::default(),
        };
        let sessions = dc.sessions.clone();
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let sessions = sessions.clone();
                thread::spawn(move || serve(stream, &sessions));
            }
        });
        dc
    }

    /// Sessions seen so far (completed ones and those in progress, by header).
    pub fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().expect("sessions").clone()
    }
}

/// The first u32 values (LE) a DC-bound header must not start with (tdlib's list).
const FORBIDDEN_FIRST_WORDS: [u32; 7] = [
    0x4441_4548,
    0x5453_4f50,
    0x2054_4547,
    0x4954_504f,
    0xdddd_dddd,
    0xeeee_eeee,
    0x0201_0316,
];

fn serve(mut stream: TcpStream, sessions: &Mutex<Vec<Session>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let mut header = [0u8; 64];
    if stream.read_exact(&mut header).is_err() {
        return;
    }
    let first = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let forbidden_prefix =
        header[0] == 0xef || FORBIDDEN_FIRST_WORDS.contains(&first) || header[4..8] == [0, 0, 0, 0];

    // No secret on the DC leg: the key material is used raw.
    let mut decrypt = AesCtr::new(header[8..40].into(), header[40..56].into());
    let mut reversed = [0u8; 48];
    reversed.copy_from_slice(&header[8..56]);
    reversed.reverse();
    let mut encrypt = AesCtr::new(reversed[..32].into(), reversed[32..].into());
    let mut plain = header;
    decrypt.apply_keystream(&mut plain);
    let index = {
        let mut all = sessions.lock().expect("sessions");
        all.push(Session {
            tag: [plain[56], plain[57], plain[58], plain[59]],
            dc: i16::from_le_bytes([plain[60], plain[61]]),
            bytes: 0,
            forbidden_prefix,
        });
        all.len() - 1
    };

    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        decrypt.apply_keystream(&mut buf[..n]);
        encrypt.apply_keystream(&mut buf[..n]);
        if stream.write_all(&buf[..n]).is_err() {
            break;
        }
        sessions.lock().expect("sessions")[index].bytes += n as u64;
    }
    let _ = stream.shutdown(Shutdown::Write);
}
