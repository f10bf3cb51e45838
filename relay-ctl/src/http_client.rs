//! A small bounded HTTP/1.1 client: one connection per request (a poll every few seconds or a
//! list fetched every hour needs no pool), plain TCP or rustls, every request bounded in time
//! and in the size of its answer, so a stuck or malicious server costs one task a timeout and
//! never the relay.
//!
//! It knows nothing of what it talks to: the caller names itself (`User-Agent`) and says what
//! it accepts (`Accept`) in [`ClientOptions`]; the CrowdSec LAPI client and the middle-proxy
//! list fetch each build their own [`Client`].

use std::{io::Read, path::Path, sync::Arc, time::Duration};

use bytes::{Buf as _, Bytes};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue, InvalidHeaderValue},
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::mpsc,
};

pub use crate::config::HttpUrl;

/// CA bundle used for `https` when no CA file is given (Debian's ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Largest error answer whose start is kept (the body of a non-2xx answer to a streamed GET).
const MAX_ERROR_BYTES: usize = 64 << 10;

/// Characters of an error answer's body kept in [`HttpError::Status`].
const ERROR_BODY_CHARS: usize = 300;

/// Why an HTTP request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not usable.
    #[error("invalid URL: {0}")]
    Url(String),
    /// The `User-Agent` or `Accept` value cannot be sent (a control character).
    #[error("{name} header: {source}")]
    Header {
        /// The header.
        name: &'static str,
        /// The error.
        #[source]
        source: InvalidHeaderValue,
    },
    /// The CA file could not be read or holds no certificate.
    #[error("CA file {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    TlsSetup(#[from] rustls::Error),
    /// TCP connect or the TLS handshake failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// host:port.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a header value with control characters).
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    /// No complete answer within the timeout.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The answer was larger than allowed.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// Reading the answer's body failed.
    #[error("reading the answer: {0}")]
    Body(String),
    /// The server answered with an error status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The start of the answer's body, printable characters only.
        body: String,
    },
}

impl HttpError {
    /// The error for a non-2xx answer, with the start of its body in printable form (it may
    /// go into a log line).
    pub fn from_status(status: StatusCode, body: &[u8]) -> HttpError {
        let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_CHARS)]);
        HttpError::Status {
            status: status.as_u16(),
            body: printable(text.trim(), ERROR_BODY_CHARS),
        }
    }
}

/// `text` without control characters (C0, DEL, C1), line or paragraph separators and
/// bidirectional overrides, cut to `max` characters: what a server sends goes into logs,
/// tables and metric labels only in this form.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
                && !('\u{202a}'..='\u{202e}').contains(c)
                && !('\u{2066}'..='\u{2069}').contains(c)
        })
        .take(max)
        .collect()
}

/// How a [`Client`] presents itself and how long it waits.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions<'a> {
    /// `User-Agent` of every request: who is asking (a LAPI shows it in `cscli bouncers
    /// list`).
    pub user_agent: &'a str,
    /// `Accept` of every request: the media types the caller can read.
    pub accept: &'a str,
    /// CA certificates trusted for `https` (PEM); `None` is the system bundle.
    pub ca_file: Option<&'a Path>,
    /// Time allowed for a whole request: connect, send, and the complete answer.
    pub timeout: Duration,
}

/// An HTTP client bound to one base URL.
pub struct Client {
    url: HttpUrl,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    user_agent: HeaderValue,
    accept: HeaderValue,
}

impl Client {
    /// A client for `url` (`http://host[:port][/prefix]` or `https://…`); `https` trusts
    /// `options.ca_file` (else the system bundle).
    pub fn new(url: &str, options: ClientOptions<'_>) -> Result<Client, HttpError> {
        let url = HttpUrl::parse(url).map_err(HttpError::Url)?;
        // Checked once here rather than failing every request.
        let header = |name: &'static str, value: &str| {
            HeaderValue::from_str(value).map_err(|source| HttpError::Header { name, source })
        };
        let user_agent = header("User-Agent", options.user_agent)?;
        let accept = header("Accept", options.accept)?;
        let tls = if url.tls {
            Some(tls_connector(&url, options.ca_file)?)
        } else {
            None
        };
        Ok(Client {
            url,
            tls,
            timeout: options.timeout,
            user_agent,
            accept,
        })
    }

    /// Sends one request to `path` (after the URL's prefix) and returns the status and body.
    /// `headers` follow `Host`, `User-Agent` and `Accept` (a `body` needs its
    /// `content-type` among them). The body may hold at most `limit` bytes.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let request = self.request(method, path, headers, body)?;
        self.bounded(async {
            let (response, driver) = self.open(request).await?;
            let status = response.status();
            let body = collect(response, limit).await?;
            drop(driver);
            Ok((status, body))
        })
        .await
    }

    /// Sends a GET to `path` and hands the answer's body to `read`, on the blocking pool, as
    /// it arrives: at most a few chunks are held at a time, and reading stops with
    /// [`HttpError::TooLarge`] once the body passes `limit` bytes. An answer that is not a
    /// success is an error with the start of its body.
    pub async fn get_streamed<T: Send + 'static>(
        &self,
        path: &str,
        headers: &[(&'static str, &str)],
        limit: usize,
        read: impl FnOnce(&mut dyn Read) -> T + Send + 'static,
    ) -> Result<T, HttpError> {
        let request = self.request(Method::GET, path, headers, None)?;
        self.bounded(async {
            let (response, driver) = self.open(request).await?;
            let status = response.status();
            if !status.is_success() {
                let body = collect(response, MAX_ERROR_BYTES).await?;
                return Err(HttpError::from_status(status, &body));
            }
            if declared_too_large(&response, limit) {
                return Err(HttpError::TooLarge(limit));
            }
            let (tx, rx) = mpsc::channel(IN_FLIGHT_CHUNKS);
            let reader = tokio::task::spawn_blocking(move || {
                read(&mut BodyReader {
                    rx,
                    chunk: Bytes::new(),
                })
            });
            // Ends the body for the reader (EOF) when it returns, whatever the outcome.
            let pumped = pump(response.into_body(), tx, limit).await;
            let read = reader
                .await
                .map_err(|e| HttpError::Body(format!("reading the answer stopped: {e}")))?;
            drop(driver);
            pumped?;
            Ok(read)
        })
        .await
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut target = format!("{}{path}", self.url.base);
        // A URL without a path (`http://host`) asked for with no path of its own: the root.
        if target.is_empty() {
            target.push('/');
        }
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, self.url.authority())
            .header(header::USER_AGENT, self.user_agent.clone())
            .header(header::ACCEPT, self.accept.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Ok(request.body(Full::new(body.map(Bytes::from).unwrap_or_default()))?)
    }

    /// `exchange`, bounded by the client's timeout.
    async fn bounded<T>(
        &self,
        exchange: impl Future<Output = Result<T, HttpError>>,
    ) -> Result<T, HttpError> {
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }

    /// Connects (TCP, TLS) and sends `request`; returns the answer's head with its body still
    /// to read, and the task driving the connection.
    async fn open(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, AbortOnDrop), HttpError> {
        let addr = self.url.authority();
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|source| HttpError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| HttpError::Connect { addr, source })?;
                exchange(stream, request).await
            }
            None => exchange(tcp, request).await,
        }
    }
}

/// The TLS connector for `url`, trusting the certificates of `ca_file` (else the system
/// bundle), and the name the server's certificate must carry.
fn tls_connector(
    url: &HttpUrl,
    ca_file: Option<&Path>,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), HttpError> {
    let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let ca_error = |message: String| HttpError::Ca {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| ca_error(e.to_string()))?;
        // A bundle may hold certificates webpki cannot use; the others still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(ca_error("no usable certificate".to_owned()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| HttpError::Url(format!("host `{}`: {e}", url.host)))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// One request on a fresh connection: the answer's head, and the task doing the I/O, which
/// ends with the exchange or is aborted when the guard is dropped (the caller gave up).
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, AbortOnDrop), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await?;
    Ok((response, driver))
}

/// Whether the answer says up front that its body is longer than `limit`.
fn declared_too_large(response: &Response<Incoming>, limit: usize) -> bool {
    response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// The whole body, at most `limit` bytes.
async fn collect(response: Response<Incoming>, limit: usize) -> Result<Bytes, HttpError> {
    if declared_too_large(&response, limit) {
        return Err(HttpError::TooLarge(limit));
    }
    Ok(Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLarge(limit)
            } else {
                HttpError::Body(e.to_string())
            }
        })?
        .to_bytes())
}

/// Chunks of a body in flight between the connection and its reader.
const IN_FLIGHT_CHUNKS: usize = 8;

/// Moves `body` to the reader chunk by chunk, failing once more than `limit` bytes came.
/// Stops early, without error, when the reader is done.
async fn pump(mut body: Incoming, tx: mpsc::Sender<Bytes>, limit: usize) -> Result<(), HttpError> {
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| HttpError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(HttpError::TooLarge(limit));
        }
        if tx.send(data).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The blocking end of a body being streamed: the end of the channel is the end of the body.
struct BodyReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// Aborts the connection task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn options(timeout: Duration) -> ClientOptions<'static> {
        ClientOptions {
            user_agent: "relay-test/1",
            accept: "text/plain",
            ca_file: None,
            timeout,
        }
    }

    /// Listens on 127.0.0.1 and answers each connection with the next of `answers` (raw
    /// bytes), keeping the socket open 5 s; returns the port and the request heads seen.
    async fn server(
        answers: Vec<&'static str>,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (seen, heads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for answer in answers {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = seen.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s.write_all(answer.as_bytes()).await;
                if answer.contains("chunked") {
                    let _ = s.write_all(&vec![b'x'; 0x100000]).await;
                }
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    drop(s);
                });
            }
        });
        (port, heads)
    }

    /// A server that sends headers and then nothing: the request ends at the timeout; one that
    /// declares or sends too much is refused at the bound.
    #[tokio::test]
    async fn a_stalled_answer_times_out_and_a_huge_one_is_refused() {
        let (port, _) = server(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n100000\r\n",
        ])
        .await;
        let client = Client::new(
            &format!("http://127.0.0.1:{port}"),
            options(Duration::from_millis(300)),
        )
        .expect("client");
        let stalled = client.send(Method::GET, "/", &[], None, 1000).await;
        assert!(matches!(stalled, Err(HttpError::Timeout(_))), "{stalled:?}");
        let huge = client.send(Method::GET, "/", &[], None, 1000).await;
        assert!(matches!(huge, Err(HttpError::TooLarge(1000))), "{huge:?}");
        let chunked = client.send(Method::GET, "/", &[], None, 1000).await;
        assert!(
            matches!(chunked, Err(HttpError::TooLarge(1000))),
            "{chunked:?}"
        );
    }

    /// Every request carries the caller's `User-Agent` and `Accept`, and the URL's path; a URL
    /// without one asks for the root.
    #[tokio::test]
    async fn requests_carry_the_callers_names_and_path() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (port, mut heads) = server(vec![ok, ok]).await;
        for (url, line) in [
            (
                format!("http://127.0.0.1:{port}/list"),
                "GET /list HTTP/1.1",
            ),
            (format!("http://127.0.0.1:{port}"), "GET / HTTP/1.1"),
        ] {
            let client = Client::new(&url, options(Duration::from_secs(2))).expect("client");
            let (status, body) = client
                .send(Method::GET, "", &[], None, 100)
                .await
                .expect("answer");
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
            let head = heads.recv().await.expect("request").to_ascii_lowercase();
            assert!(head.starts_with(&line.to_ascii_lowercase()), "{head}");
            assert!(head.contains("user-agent: relay-test/1\r\n"), "{head}");
            assert!(head.contains("accept: text/plain\r\n"), "{head}");
            assert!(!head.contains("content-type"), "{head}");
        }
    }

    /// An error answer to a streamed GET is an error with the start of its body, printable.
    #[tokio::test]
    async fn an_error_answer_keeps_the_start_of_its_body() {
        let (port, _) = server(vec![
            "HTTP/1.1 503 X\r\ncontent-length: 11\r\n\r\nbusy\x1b[2J\r\nx",
        ])
        .await;
        let client = Client::new(
            &format!("http://127.0.0.1:{port}"),
            options(Duration::from_secs(2)),
        )
        .expect("client");
        let got = client.get_streamed("/", &[], 100, |_| ()).await;
        assert!(
            matches!(&got, Err(HttpError::Status { status: 503, body }) if body == "busy[2Jx"),
            "{got:?}"
        );
    }

    #[test]
    fn header_values_with_control_characters_are_refused() {
        let bad = ClientOptions {
            user_agent: "relay\r\nx-forged: 1",
            ..options(Duration::from_secs(1))
        };
        assert!(matches!(
            Client::new("http://127.0.0.1:1", bad),
            Err(HttpError::Header {
                name: "User-Agent",
                ..
            })
        ));
    }
}
