//! The LAPI as relay talks to it: the bounded HTTP client of [`crate::http_client`], named as
//! relay's bouncer and asking for JSON, with the bouncer key for the decision stream and a
//! machine login (JWT) for alerts.

use std::{io::Read, path::Path, time::Duration};

use hyper::{Method, StatusCode};
use tokio::sync::Mutex;

use crate::http_client::{Client, ClientOptions, HttpError};

use super::api;

/// What relay calls itself in `User-Agent` (shown by `cscli bouncers list`).
pub const USER_AGENT: &str = concat!("relay-xdp-bouncer/v", env!("CARGO_PKG_VERSION"));

/// What the LAPI speaks, in `Accept` and in the `content-type` of what relay sends.
const JSON: &str = "application/json";

/// Why a LAPI request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP exchange failed, or the LAPI answered with an error status.
    #[error(transparent)]
    Http(#[from] HttpError),
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
            ClientError::Http(HttpError::Status { status: 500, body }) => !body.contains("locked"),
            ClientError::Http(HttpError::Status { status, .. }) => {
                (400..500).contains(status) && ![401, 408, 429].contains(status)
            }
            _ => false,
        }
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
    /// The LAPI at `url` (`lapi_url`); `https` trusts `ca_file` (else the system bundle).
    /// Each request must complete within `timeout`.
    pub fn new(
        url: &str,
        ca_file: Option<&Path>,
        timeout: Duration,
        bouncer_key: String,
        machine: Option<Machine>,
    ) -> Result<Lapi, ClientError> {
        let client = Client::new(
            url,
            ClientOptions {
                user_agent: USER_AGENT,
                accept: JSON,
                ca_file,
                timeout,
            },
        )?;
        Ok(Lapi {
            client,
            bouncer_key,
            machine,
            token: Mutex::new(None),
        })
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
        Ok(self
            .client
            .get_streamed(&path, &[("x-api-key", &self.bouncer_key)], max_bytes, read)
            .await?)
    }

    /// Checks the bouncer key without moving the bouncer's pull mark: `HEAD /v1/decisions`
    /// for an address of TEST-NET-1. The LAPI answers a HEAD before it records a pull, so the
    /// running bouncer's next stream still gets every decision made since its last one.
    pub async fn check_bouncer_key(&self) -> Result<(), ClientError> {
        let (status, answer) = self
            .client
            .send(
                Method::HEAD,
                "/v1/decisions?ip=192.0.2.1",
                &[("x-api-key", &self.bouncer_key)],
                None,
                MAX_SMALL_BYTES,
            )
            .await?;
        check(status, &answer)
    }

    /// Logs in with the machine credentials (what publishing needs).
    pub async fn check_machine_login(&self) -> Result<(), ClientError> {
        self.token(true).await.map(|_| ())
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
                    &[("authorization", &bearer), ("content-type", JSON)],
                    Some(body.clone()),
                    MAX_SMALL_BYTES,
                )
                .await?;
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                continue;
            }
            return check(status, &answer);
        }
        Err(ClientError::Http(HttpError::Status {
            status: 401,
            body: "unauthorized after a fresh login".to_owned(),
        }))
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
                &[("content-type", JSON)],
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
    Err(HttpError::from_status(status, body).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_errors_are_final() {
        let status = |status: u16, body: &str| {
            ClientError::Http(HttpError::Status {
                status,
                body: body.to_owned(),
            })
        };
        assert!(status(500, "validation failure list").is_rejection());
        assert!(!status(500, "database is locked").is_rejection());
        assert!(status(400, "").is_rejection());
        assert!(!status(401, "").is_rejection());
        assert!(!status(503, "").is_rejection());
        assert!(!ClientError::Http(HttpError::Timeout(Duration::from_secs(1))).is_rejection());
    }

    /// The LAPI sees relay's bouncer name, a JSON `Accept`, and JSON bodies said to be JSON:
    /// what it saw before the HTTP client was shared.
    #[tokio::test]
    async fn requests_name_the_bouncer_and_speak_json() {
        let (url, seen) = crate::crowdsec::scripted_lapi::scripted_lapi(vec![
            (
                200,
                r#"{"code":200,"expire":"2026-11-22T03:44:46Z","token":"jwt"}"#,
            ),
            (201, r#"["1"]"#),
        ])
        .await;
        let machine = Machine {
            id: "relay-1".into(),
            password: "pw".into(),
        };
        let lapi = Lapi::new(
            &url,
            None,
            Duration::from_secs(2),
            "key".into(),
            Some(machine),
        )
        .expect("lapi");
        lapi.push_alerts(&[]).await.expect("pushed");
        lapi.stream(true, &[], 1000, |_| ()).await.expect("pulled");
        let requests = seen.lock().expect("seen").clone();
        assert_eq!(requests.len(), 3, "{requests:?}");
        for request in &requests {
            let head = request.to_ascii_lowercase();
            assert!(
                head.contains(&format!(
                    "user-agent: {}\r\n",
                    USER_AGENT.to_ascii_lowercase()
                )),
                "{request}"
            );
            assert!(head.contains("accept: application/json\r\n"), "{request}");
        }
        for post in &requests[..2] {
            assert!(
                post.contains("content-type: application/json\r\n"),
                "{post}"
            );
        }
        assert!(
            requests[2].contains("x-api-key: key\r\n"),
            "{}",
            requests[2]
        );
        assert!(!requests[2].contains("content-type"), "{}", requests[2]);
    }
}
