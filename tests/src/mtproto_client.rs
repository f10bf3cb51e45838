//! A small blocking MTProto proxy client built on relay's sans-IO protocol core: it opens a
//! connection the way a Telegram client does (obfuscated2 header with an `ef`/`ee`/`dd` tag, or
//! a fake-TLS ClientHello, the server flight checked as tdlib checks it, then records), and
//! then moves opaque bytes through the proxy with the right keystreams.
//!
//! The client is framing-agnostic: it encrypts whatever it is given. Against the fake DC (which
//! echoes decrypted bytes) that is all a test needs; a caller that talks to a real DC must
//! build the abridged/intermediate frames itself.
//!
//! Used by the probe tests and by benchmarks: [`MtprotoClient::split`] gives a reader and a
//! writer that can live on different threads.

use std::{
    io::{self, ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use relay_proto::{
    AesCtr, ProtoTag, Secret, obfs2,
    tls::{
        CONTENT_APP_DATA, CONTENT_HANDSHAKE, MAX_PLAINTEXT, RECORD_HEADER_LEN,
        flight::{CHANGE_CIPHER_SPEC, MAX_CERT_LEN, verify_server_flight},
        hello::{build_client_hello, build_client_hello_padded},
        record::app_data_header,
    },
};

/// Largest application-data payload tdlib puts in one client record
/// (`TcpTransport.h` `MAX_TLS_PACKET_LENGTH`); the client sends records of this size.
pub const CLIENT_RECORD_PAYLOAD: usize = 2878;

/// How the client reaches the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// obfuscated2, tag `ef ef ef ef` (plain secret, "classic").
    Abridged,
    /// obfuscated2, tag `ee ee ee ee` (plain secret, "classic").
    Intermediate,
    /// obfuscated2, tag `dd dd dd dd` (`dd` secret, "secure").
    Secure,
    /// Fake TLS with SNI `domain`, `dd` inside (`ee` secret).
    FakeTls {
        /// The SNI to send (the `[tls] domain` of the relay for a valid hello).
        domain: String,
    },
}

impl Transport {
    /// The obfuscated2 tag this transport announces.
    pub fn tag(&self) -> ProtoTag {
        match self {
            Transport::Abridged => ProtoTag::Abridged,
            Transport::Intermediate => ProtoTag::Intermediate,
            Transport::Secure | Transport::FakeTls { .. } => ProtoTag::PaddedIntermediate,
        }
    }

    /// Whether the stream is wrapped in fake-TLS records.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::FakeTls { .. })
    }
}

/// Everything needed to open a proxied connection.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The user's 16-byte secret.
    pub secret: Secret,
    /// obfuscated2 tag or fake TLS.
    pub transport: Transport,
    /// DC id written into the header (negative = media, +10000 = test DC).
    pub dc: i16,
    /// Bound for connecting and for each read of the handshake.
    pub timeout: Duration,
    /// Write what follows the ClientHello (or the whole obfuscated2 opening) in pieces of
    /// this many bytes with this pause between them, as a client behind MSS clamping or a
    /// DPI-evasion tool would; `None`: one write.
    pub segments: Option<(usize, Duration)>,
    /// Fake TLS: pad the ClientHello record to this many bytes, as real clients do
    /// (`relay_proto::tls::CLIENT_HELLO_RECORD_LEN`); 0: the minimal hello.
    pub hello_len: usize,
}

impl ClientOptions {
    /// Options with DC 2 and a 10 s handshake bound.
    pub fn new(secret: Secret, transport: Transport) -> ClientOptions {
        ClientOptions {
            secret,
            transport,
            dc: 2,
            timeout: Duration::from_secs(10),
            segments: None,
            hello_len: 0,
        }
    }
}

/// The current unix time as a fake-TLS timestamp.
pub fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// A fake-TLS ClientHello record for `secret` and `domain`, timestamped now.
pub fn fake_tls_hello(secret: &Secret, domain: &str) -> Vec<u8> {
    build_client_hello(&mut rand::rng(), secret, domain, unix_now())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// A connected, handshaken client.
pub struct MtprotoClient {
    reader: ClientReader,
    writer: ClientWriter,
    handshake: Vec<u8>,
    server_flight: Vec<u8>,
}

impl MtprotoClient {
    /// Connects to the proxy at `addr` and completes the handshake. For fake TLS this sends the
    /// ClientHello, reads and verifies the three-record server flight (tdlib's checks: exact
    /// shape, HMAC, no extra bytes already buffered), then sends ChangeCipherSpec and the
    /// obfuscated2 header in an application-data record.
    pub fn connect(addr: SocketAddr, options: &ClientOptions) -> io::Result<MtprotoClient> {
        MtprotoClient::connect_with(addr, options, &[])
    }

    /// Like [`MtprotoClient::connect`], but sends `early_data` in the same write as the
    /// obfuscated2 header (as tdlib does with its first packet): for fake TLS the first record
    /// carries the header and the start of the data, the rest follows in further records.
    pub fn connect_with(
        addr: SocketAddr,
        options: &ClientOptions,
        early_data: &[u8],
    ) -> io::Result<MtprotoClient> {
        let stream = TcpStream::connect_timeout(&addr, options.timeout)?;
        MtprotoClient::handshake(stream, options, early_data)
    }

    /// Runs the handshake on an already connected stream; `early_data` as in
    /// [`MtprotoClient::connect_with`].
    pub fn handshake(
        mut stream: TcpStream,
        options: &ClientOptions,
        early_data: &[u8],
    ) -> io::Result<MtprotoClient> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(options.timeout))?;
        stream.set_write_timeout(Some(options.timeout))?;
        let mut rng = rand::rng();
        let header = obfs2::client_header(
            &mut rng,
            &options.secret,
            options.transport.tag(),
            options.dc,
        );
        let mut encrypt = header.encrypt;
        let mut sent = Vec::new();
        let mut server_flight = Vec::new();
        let tls = match &options.transport {
            Transport::FakeTls { domain } => {
                let hello = build_client_hello_padded(
                    &mut rng,
                    &options.secret,
                    domain,
                    unix_now(),
                    options.hello_len,
                );
                stream.write_all(&hello)?;
                sent.extend_from_slice(&hello);
                let mut client_random = [0u8; 32];
                client_random.copy_from_slice(&hello[11..43]);
                let flight = read_server_flight(&mut stream)?;
                verify_server_flight(&options.secret, &client_random, &flight)
                    .map_err(|e| invalid(format!("server flight refused: {e}")))?;
                server_flight.clone_from(&flight);
                // tdlib: "Proxy has sent too many data" if anything follows the flight.
                stream.set_nonblocking(true)?;
                let mut probe = [0u8; 1];
                let extra = stream.peek(&mut probe);
                stream.set_nonblocking(false)?;
                match extra {
                    Ok(0) => return Err(invalid("proxy closed right after the server flight")),
                    Ok(_) => return Err(invalid("proxy sent bytes after the server flight")),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                let mut plain = header.wire.to_vec();
                let at = plain.len();
                plain.extend_from_slice(early_data);
                encrypt.apply(&mut plain[at..]);
                let mut first = CHANGE_CIPHER_SPEC.to_vec();
                for chunk in plain.chunks(CLIENT_RECORD_PAYLOAD) {
                    first.extend_from_slice(&app_data_header(chunk.len() as u16));
                    first.extend_from_slice(chunk);
                }
                write_segmented(&mut stream, &first, options.segments)?;
                sent.extend_from_slice(&first);
                true
            }
            _ => {
                let mut first = header.wire.to_vec();
                let at = first.len();
                first.extend_from_slice(early_data);
                encrypt.apply(&mut first[at..]);
                write_segmented(&mut stream, &first, options.segments)?;
                sent.extend_from_slice(&first);
                false
            }
        };
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        let write_half = stream.try_clone()?;
        Ok(MtprotoClient {
            reader: ClientReader {
                stream,
                decrypt: header.decrypt,
                tls,
                record_left: 0,
                received: 0,
            },
            writer: ClientWriter {
                stream: write_half,
                encrypt,
                tls,
                scratch: Vec::new(),
                sent: early_data.len() as u64,
            },
            handshake: sent,
            server_flight,
        })
    }

    /// Every byte the client sent during the handshake (hello, CCS, header record(s); or the
    /// 64-byte header), early data included: what a censor would capture and replay.
    pub fn handshake_bytes(&self) -> &[u8] {
        &self.handshake
    }

    /// The fake-TLS server flight the proxy answered with (verified); empty for obfuscated2.
    pub fn server_flight(&self) -> &[u8] {
        &self.server_flight
    }

    /// Encrypts and sends `data` (wrapped in records for fake TLS).
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.writer.send(data)
    }

    /// Receives and decrypts up to `buf.len()` bytes; 0 at a clean end of stream.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.recv(buf)
    }

    /// Receives exactly `buf.len()` bytes.
    pub fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.reader.recv_exact(buf)
    }

    /// Receives until the proxy closes its side.
    pub fn recv_to_end(&mut self) -> io::Result<Vec<u8>> {
        self.reader.recv_to_end()
    }

    /// Half-closes the sending side (the proxy should pass the FIN on).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.writer.shutdown()
    }

    /// Bounds each blocking receive.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.reader.stream.set_read_timeout(timeout)
    }

    /// The underlying socket (for socket options).
    pub fn stream(&self) -> &TcpStream {
        &self.reader.stream
    }

    /// Splits into a reader and a writer usable from different threads.
    pub fn split(self) -> (ClientReader, ClientWriter) {
        (self.reader, self.writer)
    }
}

fn write_segmented(
    stream: &mut TcpStream,
    bytes: &[u8],
    segments: Option<(usize, Duration)>,
) -> io::Result<()> {
    let Some((size, pause)) = segments else {
        return stream.write_all(bytes);
    };
    for (i, piece) in bytes.chunks(size.max(1)).enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        stream.write_all(piece)?;
    }
    Ok(())
}

/// Reads exactly the three records of a server flight: handshake, CCS, application data.
fn read_server_flight(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut flight = Vec::new();
    for expected in [CONTENT_HANDSHAKE, CHANGE_CIPHER_SPEC[0], CONTENT_APP_DATA] {
        let mut header = [0u8; RECORD_HEADER_LEN];
        stream.read_exact(&mut header)?;
        if header[0] != expected || header[1..3] != [0x03, 0x03] {
            return Err(invalid(format!(
                "server flight record header {header:02x?}, expected type {expected:#04x}"
            )));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_CERT_LEN {
            return Err(invalid(format!("server flight record of {len} bytes")));
        }
        flight.extend_from_slice(&header);
        let start = flight.len();
        flight.resize(start + len, 0);
        stream.read_exact(&mut flight[start..])?;
    }
    Ok(flight)
}

/// The receiving half: strips the proxy's record framing (fake TLS) and decrypts.
pub struct ClientReader {
    stream: TcpStream,
    decrypt: AesCtr,
    tls: bool,
    /// Payload bytes of the current server record still to come.
    record_left: usize,
    received: u64,
}

impl ClientReader {
    /// Receives and decrypts up to `buf.len()` bytes; 0 at a clean end of stream (at a record
    /// boundary for fake TLS). Record headers must be `17 03 03` with at most 16384 bytes, as
    /// tdlib requires; anything else is `InvalidData`.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = if self.tls {
            loop {
                if self.record_left == 0 && !self.next_record()? {
                    return Ok(0);
                }
                if self.record_left == 0 {
                    continue; // an empty record
                }
                let want = self.record_left.min(buf.len());
                let n = self.stream.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!(
                            "proxy closed inside a TLS record ({} payload bytes missing) after {} bytes",
                            self.record_left, self.received
                        ),
                    ));
                }
                self.record_left -= n;
                break n;
            }
        } else {
            self.stream.read(buf)?
        };
        self.decrypt.apply(&mut buf[..n]);
        self.received += n as u64;
        Ok(n)
    }

    /// Reads the next record header; false on EOF at a record boundary.
    fn next_record(&mut self) -> io::Result<bool> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        let mut have = 0;
        while have < RECORD_HEADER_LEN {
            match self.stream.read(&mut header[have..]) {
                Ok(0) if have == 0 => return Ok(false),
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "proxy closed inside a TLS record header",
                    ));
                }
                Ok(n) => have += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if header[..3] != [CONTENT_APP_DATA, 0x03, 0x03] {
            return Err(invalid(format!(
                "proxy sent record header {header:02x?} after {} bytes; tdlib accepts only 17 03 03",
                self.received
            )));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_PLAINTEXT {
            return Err(invalid(format!(
                "proxy sent a {len}-byte record (limit {MAX_PLAINTEXT})"
            )));
        }
        self.record_left = len;
        Ok(true)
    }

    /// Receives exactly `buf.len()` bytes.
    pub fn recv_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.recv(buf)? {
                0 => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("proxy closed after {} bytes", self.received),
                    ));
                }
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }

    /// Receives until the proxy closes its side.
    pub fn recv_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.recv(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Decrypted bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bounds each blocking receive.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }
}

/// The sending half: encrypts and (for fake TLS) frames.
pub struct ClientWriter {
    stream: TcpStream,
    encrypt: AesCtr,
    tls: bool,
    scratch: Vec<u8>,
    sent: u64,
}

impl ClientWriter {
    /// Encrypts and sends `data`, as application-data records of at most
    /// [`CLIENT_RECORD_PAYLOAD`] bytes for fake TLS.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        if self.tls {
            for chunk in data.chunks(CLIENT_RECORD_PAYLOAD) {
                self.scratch
                    .extend_from_slice(&app_data_header(chunk.len() as u16));
                let at = self.scratch.len();
                self.scratch.extend_from_slice(chunk);
                self.encrypt.apply(&mut self.scratch[at..]);
            }
        } else {
            self.scratch.extend_from_slice(data);
            self.encrypt.apply(&mut self.scratch);
        }
        self.stream.write_all(&self.scratch)?;
        self.sent += data.len() as u64;
        Ok(())
    }

    /// Half-closes the sending side.
    pub fn shutdown(&mut self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    /// Plaintext bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}
