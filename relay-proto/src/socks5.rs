//! A SOCKS5 client for one CONNECT (RFC 1928), with username/password authentication
//! (RFC 1929), as a state machine over bytes.
//!
//! [`Client::start`] returns the greeting to send. The caller then reads exactly
//! [`Progress::NeedMore`] further bytes at a time and passes everything received so far in the
//! current reply to [`Client::advance`]; it never reads past the end of a reply, so the first
//! byte after [`Progress::Connected`] belongs to the destination.

use std::{fmt, net::SocketAddr};

const VERSION: u8 = 0x05;
const METHOD_NONE: u8 = 0x00;
const METHOD_USER_PASS: u8 = 0x02;
const METHOD_NO_ACCEPTABLE: u8 = 0xff;
const AUTH_VERSION: u8 = 0x01;
const CMD_CONNECT: u8 = 0x01;
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// RFC 1929 credentials: each 1 to 255 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: Vec<u8>,
    password: Vec<u8>,
}

impl Credentials {
    /// Checks the RFC 1929 lengths (the length fields are one byte, and zero is refused by
    /// common servers).
    pub fn new(
        username: impl Into<Vec<u8>>,
        password: impl Into<Vec<u8>>,
    ) -> Result<Credentials, Socks5Error> {
        let (username, password) = (username.into(), password.into());
        for (field, value) in [("username", &username), ("password", &password)] {
            if value.is_empty() || value.len() > 255 {
                return Err(Socks5Error::CredentialLength {
                    field,
                    len: value.len(),
                });
            }
        }
        Ok(Credentials { username, password })
    }

    /// The username, for logs.
    pub fn username(&self) -> &[u8] {
        &self.username
    }
}

// The password never reaches a log through `{:?}`.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Which exchange of the SOCKS5 dialogue a client is in (named in errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Method negotiation: the greeting and the server's method choice.
    Greeting,
    /// RFC 1929 username/password sub-negotiation.
    Authentication,
    /// The CONNECT request and its reply.
    Connect,
    /// The tunnel is open.
    Connected,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Greeting => "greeting",
            Phase::Authentication => "authentication",
            Phase::Connect => "CONNECT",
            Phase::Connected => "relay",
        })
    }
}

/// What the SOCKS5 server answered wrongly or refused. The wording completes a sentence
/// whose subject is the proxy ("SOCKS5 proxy 192.0.2.1:1080 …").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    /// A configured username or password cannot be encoded.
    #[error("{field} must be 1 to 255 bytes, not {len}")]
    CredentialLength {
        /// `username` or `password`.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A reply carried another protocol version.
    #[error("answered the {phase} with version {version:#04x}, not SOCKS5")]
    Version {
        /// The exchange.
        phase: Phase,
        /// The version byte received.
        version: u8,
    },
    /// The server accepts none of the offered methods (0xFF).
    #[error("accepts none of the offered authentication methods ({offered})")]
    NoAcceptableMethod {
        /// What was offered.
        offered: &'static str,
    },
    /// The server chose a method that was not offered.
    #[error("chose authentication method {0:#04x}, which was not offered")]
    UnexpectedMethod(u8),
    /// The username/password were refused (RFC 1929 status other than 0).
    #[error("refused the username/password (status {0})")]
    AuthRefused(u8),
    /// The CONNECT reply's code was not 0 (succeeded).
    #[error("refused CONNECT to {target}: {} (code {code})", reply_meaning(*code))]
    ConnectRefused {
        /// The destination asked for.
        target: SocketAddr,
        /// The RFC 1928 reply code.
        code: u8,
    },
    /// The CONNECT reply's bound address has an unknown type.
    #[error("answered CONNECT with unknown address type {0:#04x}")]
    AddressType(u8),
    /// Bytes were passed after the dialogue ended.
    #[error("sent bytes after the CONNECT reply")]
    AlreadyConnected,
}

/// The RFC 1928 §6 meaning of a CONNECT reply code.
pub fn reply_meaning(code: u8) -> &'static str {
    match code {
        0x00 => "succeeded",
        0x01 => "general SOCKS server failure",
        0x02 => "connection not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused by destination",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unassigned reply code",
    }
}

/// What the caller does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Read this many more bytes of the current reply, then call [`Client::advance`] again
    /// with the whole reply so far.
    NeedMore(usize),
    /// The current reply is complete: send `bytes`, then read the first `need` bytes of the
    /// next reply (into an empty buffer).
    Send {
        /// The next request.
        bytes: Vec<u8>,
        /// Bytes of the answer to read before calling [`Client::advance`].
        need: usize,
    },
    /// The tunnel is open: what follows on the stream is the destination's.
    Connected,
}

/// One SOCKS5 CONNECT dialogue.
#[derive(Debug)]
pub struct Client {
    target: SocketAddr,
    credentials: Option<Credentials>,
    phase: Phase,
}

impl Client {
    /// Starts a dialogue for CONNECT to `target`; returns the greeting to send and the number
    /// of bytes of the server's method choice to read. With credentials only
    /// username/password is offered, so a server cannot skip the authentication the operator
    /// asked for.
    pub fn start(target: SocketAddr, credentials: Option<Credentials>) -> (Client, Vec<u8>, usize) {
        let method = if credentials.is_some() {
            METHOD_USER_PASS
        } else {
            METHOD_NONE
        };
        let client = Client {
            target,
            credentials,
            phase: Phase::Greeting,
        };
        (client, vec![VERSION, 1, method], 2)
    }

    /// The exchange in progress.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Takes the current reply as received so far (never more than asked for).
    pub fn advance(&mut self, reply: &[u8]) -> Result<Progress, Socks5Error> {
        match self.phase {
            Phase::Greeting => self.method_choice(reply),
            Phase::Authentication => self.auth_status(reply),
            Phase::Connect => self.connect_reply(reply),
            Phase::Connected => Err(Socks5Error::AlreadyConnected),
        }
    }

    fn method_choice(&mut self, reply: &[u8]) -> Result<Progress, Socks5Error> {
        let [version, method] = match reply {
            [v, m, ..] => [*v, *m],
            _ => return Ok(Progress::NeedMore(2 - reply.len())),
        };
        if version != VERSION {
            return Err(Socks5Error::Version {
                phase: Phase::Greeting,
                version,
            });
        }
        let offered = if self.credentials.is_some() {
            METHOD_USER_PASS
        } else {
            METHOD_NONE
        };
        if method == METHOD_NO_ACCEPTABLE {
            return Err(Socks5Error::NoAcceptableMethod {
                offered: if offered == METHOD_USER_PASS {
                    "username/password"
                } else {
                    "no authentication"
                },
            });
        }
        if method != offered {
            return Err(Socks5Error::UnexpectedMethod(method));
        }
        match &self.credentials {
            Some(c) => {
                self.phase = Phase::Authentication;
                Ok(Progress::Send {
                    bytes: auth_request(c),
                    need: 2,
                })
            }
            None => {
                self.phase = Phase::Connect;
                Ok(Progress::Send {
                    bytes: connect_request(self.target),
                    need: 5,
                })
            }
        }
    }

    fn auth_status(&mut self, reply: &[u8]) -> Result<Progress, Socks5Error> {
        let [version, status] = match reply {
            [v, s, ..] => [*v, *s],
            _ => return Ok(Progress::NeedMore(2 - reply.len())),
        };
        // RFC 1929 names 0x01 as the sub-negotiation's version; some servers echo 0x05.
        if version != AUTH_VERSION && version != VERSION {
            return Err(Socks5Error::Version {
                phase: Phase::Authentication,
                version,
            });
        }
        if status != 0 {
            return Err(Socks5Error::AuthRefused(status));
        }
        self.phase = Phase::Connect;
        Ok(Progress::Send {
            bytes: connect_request(self.target),
            need: 5,
        })
    }

    fn connect_reply(&mut self, reply: &[u8]) -> Result<Progress, Socks5Error> {
        // VER REP RSV ATYP, then the first byte of BND.ADDR (a domain's length).
        let [version, code, _, atyp, first] = match reply {
            [v, c, r, a, f, ..] => [*v, *c, *r, *a, *f],
            _ => return Ok(Progress::NeedMore(5 - reply.len())),
        };
        if version != VERSION {
            return Err(Socks5Error::Version {
                phase: Phase::Connect,
                version,
            });
        }
        if code != 0 {
            return Err(Socks5Error::ConnectRefused {
                target: self.target,
                code,
            });
        }
        // The bound address and port are skipped: nothing here needs them.
        let addr_len = match atyp {
            ATYP_IPV4 => 4,
            ATYP_IPV6 => 16,
            ATYP_DOMAIN => 1 + usize::from(first),
            other => return Err(Socks5Error::AddressType(other)),
        };
        let total = 4 + addr_len + 2;
        if reply.len() < total {
            return Ok(Progress::NeedMore(total - reply.len()));
        }
        self.phase = Phase::Connected;
        Ok(Progress::Connected)
    }
}

/// The RFC 1929 username/password request.
pub fn auth_request(credentials: &Credentials) -> Vec<u8> {
    let (u, p) = (&credentials.username, &credentials.password);
    let mut out = Vec::with_capacity(3 + u.len() + p.len());
    out.push(AUTH_VERSION);
    // `Credentials::new` keeps both to 1..=255 bytes.
    out.push(u8::try_from(u.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(u);
    out.push(u8::try_from(p.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(p);
    out
}

/// The RFC 1928 CONNECT request for an IP destination.
pub fn connect_request(target: SocketAddr) -> Vec<u8> {
    let mut out = vec![VERSION, CMD_CONNECT, 0x00];
    match target {
        SocketAddr::V4(a) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.ip().octets());
        }
    }
    out.extend_from_slice(&target.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc() -> SocketAddr {
        "149.154.167.51:443".parse().expect("addr")
    }

    /// Feeds `reply` one byte at a time as the client asks, returning the final progress.
    fn feed(client: &mut Client, first_need: usize, reply: &[u8]) -> Result<Progress, Socks5Error> {
        let mut need = first_need;
        let mut got = Vec::new();
        let mut rest = reply;
        loop {
            assert!(
                need > 0 && need <= rest.len(),
                "asked {need}, {rest:?} left"
            );
            // Deliver one byte at a time: the parser must be incremental.
            got.push(rest[0]);
            rest = &rest[1..];
            need -= 1;
            if need > 0 {
                continue;
            }
            match client.advance(&got)? {
                Progress::NeedMore(n) => need = n,
                done => {
                    assert!(rest.is_empty(), "unread: {rest:?}");
                    return Ok(done);
                }
            }
        }
    }

    #[test]
    fn no_auth_connect_to_ipv4_matches_rfc_1928() {
        let (mut c, greeting, need) = Client::start(dc(), None);
        assert_eq!(greeting, [0x05, 0x01, 0x00]);
        let send = feed(&mut c, need, &[0x05, 0x00]).expect("method");
        assert_eq!(
            send,
            Progress::Send {
                bytes: vec![0x05, 0x01, 0x00, 0x01, 149, 154, 167, 51, 0x01, 0xbb],
                need: 5
            }
        );
        assert_eq!(c.phase(), Phase::Connect);
        let reply = [0x05, 0x00, 0x00, 0x01, 10, 0, 0, 1, 0x04, 0x38];
        assert_eq!(feed(&mut c, 5, &reply), Ok(Progress::Connected));
        assert_eq!(c.phase(), Phase::Connected);
        assert_eq!(c.advance(&[0]), Err(Socks5Error::AlreadyConnected));
    }

    #[test]
    fn user_pass_connect_to_ipv6_matches_rfc_1929() {
        let target: SocketAddr = "[2001:67c:4e8:f002::a]:443".parse().expect("addr");
        let creds = Credentials::new("alice", "s3cret").expect("creds");
        let (mut c, greeting, need) = Client::start(target, Some(creds));
        assert_eq!(greeting, [0x05, 0x01, 0x02]);
        let Progress::Send {
            bytes: auth,
            need: 2,
        } = feed(&mut c, need, &[0x05, 0x02]).expect("method")
        else {
            panic!("no auth request");
        };
        assert_eq!(auth, b"\x01\x05alice\x06s3cret");
        let Progress::Send {
            bytes: connect,
            need: 5,
        } = feed(&mut c, 2, &[0x01, 0x00]).expect("auth")
        else {
            panic!("no CONNECT");
        };
        let mut want = vec![0x05, 0x01, 0x00, 0x04];
        want.extend_from_slice(&[
            0x20, 0x01, 0x06, 0x7c, 0x04, 0xe8, 0xf0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x0a,
        ]);
        want.extend_from_slice(&[0x01, 0xbb]);
        assert_eq!(connect, want);
        // Bound address as IPv6, then as a domain name: both skipped whole.
        let mut v6 = vec![0x05, 0x00, 0x00, 0x04];
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&[0, 80]);
        assert_eq!(feed(&mut c, 5, &v6), Ok(Progress::Connected));
        let (mut c, _, need) = Client::start(dc(), None);
        feed(&mut c, need, &[0x05, 0x00]).expect("method");
        let domain = b"\x05\x00\x00\x03\x0bexample.com\x00\x50";
        assert_eq!(feed(&mut c, 5, domain), Ok(Progress::Connected));
    }

    #[test]
    fn refusals_name_what_was_refused() {
        let (mut c, _, need) = Client::start(dc(), None);
        assert_eq!(
            feed(&mut c, need, &[0x05, 0xff]),
            Err(Socks5Error::NoAcceptableMethod {
                offered: "no authentication"
            })
        );
        let (mut c, _, need) = Client::start(dc(), None);
        assert_eq!(
            feed(&mut c, need, &[0x05, 0x02]),
            Err(Socks5Error::UnexpectedMethod(2))
        );
        let (mut c, _, need) = Client::start(dc(), None);
        assert_eq!(
            feed(&mut c, need, &[0x04, 0x5a]),
            Err(Socks5Error::Version {
                phase: Phase::Greeting,
                version: 4
            })
        );
        let creds = Credentials::new("u", "wrong").expect("creds");
        let (mut c, _, need) = Client::start(dc(), Some(creds));
        feed(&mut c, need, &[0x05, 0x02]).expect("method");
        let err = feed(&mut c, 2, &[0x01, 0x01]).expect_err("refused");
        assert_eq!(err, Socks5Error::AuthRefused(1));
        assert_eq!(c.phase(), Phase::Authentication);
        assert_eq!(err.to_string(), "refused the username/password (status 1)");
        let (mut c, _, need) = Client::start(dc(), None);
        feed(&mut c, need, &[0x05, 0x00]).expect("method");
        let err = feed(&mut c, 5, &[0x05, 0x05, 0x00, 0x01, 0]).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "refused CONNECT to 149.154.167.51:443: connection refused by destination (code 5)"
        );
        let (mut c, _, need) = Client::start(dc(), None);
        feed(&mut c, need, &[0x05, 0x00]).expect("method");
        assert_eq!(
            feed(&mut c, 5, &[0x05, 0x00, 0x00, 0x07, 0]),
            Err(Socks5Error::AddressType(7))
        );
    }

    #[test]
    fn every_reply_code_has_its_rfc_meaning() {
        let meanings: Vec<&str> = (0..=9).map(reply_meaning).collect();
        assert_eq!(
            meanings,
            [
                "succeeded",
                "general SOCKS server failure",
                "connection not allowed by ruleset",
                "network unreachable",
                "host unreachable",
                "connection refused by destination",
                "TTL expired",
                "command not supported",
                "address type not supported",
                "unassigned reply code",
            ]
        );
    }

    #[test]
    fn credentials_outside_rfc_1929_lengths_are_refused() {
        assert!(Credentials::new("", "p").is_err());
        assert!(Credentials::new("u", vec![b'x'; 256]).is_err());
        let max = Credentials::new(vec![b'u'; 255], vec![b'p'; 255]).expect("255 fits");
        let req = auth_request(&max);
        assert_eq!((req.len(), req[1], req[257]), (3 + 510, 255, 255));
        assert!(!format!("{max:?}").contains("ppp"));
    }
}
