//! A small HTTP/1.1 client for the LAPI: one connection per request (a poll every few
//! seconds needs no pool), plain TCP or rustls, every request bounded in time and in the size
//! of its answer, so a stuck or malicious LAPI costs one task a timeout and never the relay.

use std::{io::Read, path::Path, sync::Arc, time::Duration};

use bytes::{Buf as _, Bytes};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::{Mutex, mpsc},
};

pub use crate::config::LapiUrl;

use super::api;

/// CA bundle used for `https` when `[crowdsec] ca_file` is not set (Debian's
/// ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What relay calls itself in `User-Agent` (shown by `cscli bouncers list`).
pub const USER_AGENT: &str = concat!("relay-xdp-bouncer/v", env!("CARGO_PKG_VERSION"));

/// Why a LAPI request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `lapi_url` is not usable.
    #[error("invalid lapi_url: {0}")]
    Url(String),
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
    /// The LAPI answered with an error status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The answer is not the JSON expected.
    #[error("unexpected answer: {0}")]
    Json(#[from] serde_json::Error),
    /// Publishing needs a machine login, which is not configured.
    #[error("no machine_id configured")]
    NoMachine,
}

impl ClientError {
    /// Whether repeating the same request cannot help: the LAPI rejected it. It answers 500
    /// to schema validation errors too, but also to a busy sqlite ("database is locked"),
    /// which passes.
    pub fn is_rejection(&self) -> bool {
        match self {
            ClientError::Status { status: 500, body } => !body.contains("locked"),
            ClientError::Status { status, .. } => {
                (400..500).contains(status) && ![401, 408, 429].contains(status)
            }
            _ => false,
        }
    }
}

/// An HTTP client bound to one LAPI.
pub struct Client {
    url: LapiUrl,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl Client {
    /// A client for `url`; `https` trusts `ca_file` (else the system bundle). Each request
    /// must complete within `timeout`.
    pub fn new(
        url: &str,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let url = LapiUrl::parse(url).map_err(ClientError::Url)?;
        let tls = if url.tls {
            let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
            let ca_error = |message: String| ClientError::Ca {
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
                .map_err(|e| ClientError::Url(format!("host `{}`: {e}", url.host)))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Client { url, tls, timeout })
    }

    /// Sends one request to `path` (after the URL's prefix) and returns the status and body.
    /// The body may hold at most `limit` bytes.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), ClientError> {
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
    /// [`ClientError::TooLarge`] once the body passes `limit` bytes. An answer that is not a
    /// success is an error with the start of its body.
    pub async fn get_streamed<T: Send + 'static>(
        &self,
        path: &str,
        headers: &[(&'static str, &str)],
        limit: usize,
        read: impl FnOnce(&mut dyn Read) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        let request = self.request(Method::GET, path, headers, None)?;
        self.bounded(async {
            let (response, driver) = self.open(request).await?;
            let status = response.status();
            if !status.is_success() {
                let body = collect(response, MAX_SMALL_BYTES).await?;
                return Err(status_error(status, &body));
            }
            if declared_too_large(&response, limit) {
                return Err(ClientError::TooLarge(limit));
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
                .map_err(|e| ClientError::Body(format!("reading the answer stopped: {e}")))?;
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
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url.base))
            .header(header::HOST, self.url.authority())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Ok(match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))?,
            None => request.body(Full::new(Bytes::new()))?,
        })
    }

    /// `exchange`, bounded by the client's timeout.
    async fn bounded<T>(
        &self,
        exchange: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    /// Connects (TCP, TLS) and sends `request`; returns the answer's head with its body still
    /// to read, and the task driving the connection.
    async fn open(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, AbortOnDrop), ClientError> {
        let addr = self.url.authority();
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| ClientError::Connect { addr, source })?;
                exchange(stream, request).await
            }
            None => exchange(tcp, request).await,
        }
    }
}

/// One request on a fresh connection: the answer's head, and the task doing the I/O, which
/// ends with the exchange or is aborted when the guard is dropped (the caller gave up).
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, AbortOnDrop), ClientError>
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
async fn collect(response: Response<Incoming>, limit: usize) -> Result<Bytes, ClientError> {
    if declared_too_large(&response, limit) {
        return Err(ClientError::TooLarge(limit));
    }
    Ok(Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ClientError::TooLarge(limit)
            } else {
                ClientError::Body(e.to_string())
            }
        })?
        .to_bytes())
}

/// Chunks of a body in flight between the connection and its reader.
const IN_FLIGHT_CHUNKS: usize = 8;

/// Moves `body` to the reader chunk by chunk, failing once more than `limit` bytes came.
/// Stops early, without error, when the reader is done.
async fn pump(
    mut body: Incoming,
    tx: mpsc::Sender<Bytes>,
    limit: usize,
) -> Result<(), ClientError> {
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(ClientError::TooLarge(limit));
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

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Largest answer to a login or an alert push.
const MAX_SMALL_BYTES: usize = 64 << 10;

/// A machine login for publishing.
pub struct Machine {
    /// `machine_id`.
    pub id: String,
    /// Its password.
    pub password: String,
}

/// The LAPI as relay uses it: the bouncer stream with an API key, alerts with a machine
/// login (JWT, renewed on 401).
pub struct Lapi {
    client: Client,
    bouncer_key: String,
    machine: Option<Machine>,
    token: Mutex<Option<String>>,
}

impl Lapi {
    /// A LAPI reached through `client`.
    pub fn new(client: Client, bouncer_key: String, machine: Option<Machine>) -> Lapi {
        Lapi {
            client,
            bouncer_key,
            machine,
            token: Mutex::new(None),
        }
    }

    /// Whether a machine login is configured (publishing is possible).
    pub fn can_publish(&self) -> bool {
        self.machine.is_some()
    }

    /// `GET /v1/decisions/stream`, its body handed to `read` as it arrives (at most
    /// `max_bytes`; see [`Client::get_streamed`]).
    pub async fn stream<T: Send + 'static>(
        &self,
        startup: bool,
        origins: &[String],
        max_bytes: usize,
        read: impl FnOnce(&mut dyn Read) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        let mut path = format!("/v1/decisions/stream?startup={startup}&scopes=ip,range");
        if !origins.is_empty() {
            path.push_str("&origins=");
            path.push_str(&origins.join(","));
        }
        self.client
            .get_streamed(&path, &[("x-api-key", &self.bouncer_key)], max_bytes, read)
            .await
    }

    /// `POST /v1/alerts`, logging in first if needed and once more on a 401.
    pub async fn push_alerts(&self, alerts: &[api::Alert]) -> Result<(), ClientError> {
        let body = serde_json::to_vec(alerts)?;
        for attempt in 0..2 {
            let token = self.token(attempt > 0).await?;
            let bearer = format!("Bearer {token}");
            let (status, answer) = self
                .client
                .send(
                    Method::POST,
                    "/v1/alerts",
                    &[("authorization", &bearer)],
                    Some(body.clone()),
                    MAX_SMALL_BYTES,
                )
                .await?;
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                continue;
            }
            return check(status, &answer);
        }
        Err(ClientError::Status {
            status: 401,
            body: "unauthorized after a fresh login".to_owned(),
        })
    }

    /// The JWT, logging in when there is none or `renew` is set.
    async fn token(&self, renew: bool) -> Result<String, ClientError> {
        let mut token = self.token.lock().await;
        if let Some(t) = token.as_ref().filter(|_| !renew) {
            return Ok(t.clone());
        }
        let machine = self.machine.as_ref().ok_or(ClientError::NoMachine)?;
        let body = serde_json::to_vec(&api::Login {
            machine_id: &machine.id,
            password: &machine.password,
        })?;
        let (status, answer) = self
            .client
            .send(
                Method::POST,
                "/v1/watchers/login",
                &[],
                Some(body),
                MAX_SMALL_BYTES,
            )
            .await?;
        check(status, &answer)?;
        let login: api::LoginAnswer = serde_json::from_slice(&answer)?;
        *token = Some(login.token.clone());
        Ok(login.token)
    }
}

/// An error for a non-2xx status, with the start of the body.
fn check(status: StatusCode, body: &[u8]) -> Result<(), ClientError> {
    if status.is_success() {
        return Ok(());
    }
    Err(status_error(status, body))
}

/// The error for a non-2xx answer, with the start of its body in printable form.
fn status_error(status: StatusCode, body: &[u8]) -> ClientError {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    ClientError::Status {
        status: status.as_u16(),
        body: super::decisions::printable(text.trim(), 300),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_errors_are_final() {
        let status = |status: u16, body: &str| ClientError::Status {
            status,
            body: body.to_owned(),
        };
        assert!(status(500, "validation failure list").is_rejection());
        assert!(!status(500, "database is locked").is_rejection());
        assert!(status(400, "").is_rejection());
        assert!(!status(401, "").is_rejection());
        assert!(!status(503, "").is_rejection());
        assert!(!ClientError::Timeout(Duration::from_secs(1)).is_rejection());
    }

    /// A server that sends headers and then nothing: the request ends at the timeout.
    #[tokio::test]
    async fn a_stalled_answer_times_out_and_a_huge_one_is_refused() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
                "HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n100000\r\n",
            ] {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
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
        let client = Client::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_millis(300),
        )
        .expect("client");
        let stalled = client.send(Method::GET, "/", &[], None, 1000).await;
        assert!(
            matches!(stalled, Err(ClientError::Timeout(_))),
            "{stalled:?}"
        );
        let huge = client.send(Method::GET, "/", &[], None, 1000).await;
        assert!(matches!(huge, Err(ClientError::TooLarge(1000))), "{huge:?}");
        let chunked = client.send(Method::GET, "/", &[], None, 1000).await;
        assert!(
            matches!(chunked, Err(ClientError::TooLarge(1000))),
            "{chunked:?}"
        );
    }
}
