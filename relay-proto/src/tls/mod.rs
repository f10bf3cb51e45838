//! Fake TLS (docs/protocol.md §4–6): the client's ClientHello carries an HMAC of the user's secret,
//! the server answers with exactly three records carrying its own HMAC, then obfuscated2 rides in
//! application-data records.
//!
//! - [`reader`]: reassemble the ClientHello from TCP segments and TLS records.
//! - [`hello`]: authenticate and parse it.
//! - [`flight`]: build (and, client side, check) the server's three records.
//! - [`profile`]: probe the mask site and learn the shape of its own server flight.
//! - [`record`]: the application-data record codec.

pub mod flight;
pub mod hello;
pub mod profile;
pub mod reader;
pub mod record;

pub use flight::{
    FlightError, plausible_cert_len, server_flight, server_flight_shaped, verify_server_flight,
};
pub use hello::{
    CLIENT_HELLO_RECORD_LEN, DEFAULT_WINDOW_SECS, HelloError, HelloKey, HelloPolicy, SessionId,
    TlsClientHello, UPTIME_MAX_SECS, build_client_hello, build_client_hello_padded,
    verify_client_hello, verify_client_hello_keys,
};
pub use profile::{
    ExtensionOrder, FlightProfile, FlightShape, ProfileError, parse_flight, probe_hello,
};
pub use reader::{ClientHelloReader, HelloRead, ReadError, ReassembledHello, Sniff, sniff};
pub use record::{MAX_PAYLOAD, RecordDecoder, RecordError, app_data_header, encode_records};

/// Content type of handshake records.
pub const CONTENT_HANDSHAKE: u8 = 0x16;
/// Content type of ChangeCipherSpec records.
pub const CONTENT_CCS: u8 = 0x14;
/// Content type of application-data records.
pub const CONTENT_APP_DATA: u8 = 0x17;
/// Largest TLS plaintext fragment (2^14).
pub const MAX_PLAINTEXT: usize = 16384;
/// Length of a record header: type, version, u16 BE length.
pub const RECORD_HEADER_LEN: usize = 5;
