//! `crowdsec`: the Local API `[crowdsec] lapi_url` names answers, takes the bouncer key and,
//! when publishing is configured, the machine login. Nothing it does changes what the running
//! bouncer receives.

use std::net::IpAddr;

use super::{Check, is_loopback_host};
use crate::{
    crowdsec::{Credentials, client::ClientError},
    http_client::HttpError,
};

const NAME: &str = "crowdsec";

/// Checks the LAPI; skipped without `[crowdsec]`, and with `offline` when it is not on
/// loopback.
pub async fn check(config: &crate::config::Config, offline: bool) -> Check {
    let Some(cs) = &config.crowdsec else {
        return Check::skip(NAME, "[crowdsec] not configured");
    };
    if offline && !url_on_loopback(&cs.lapi_url) {
        return Check::skip(
            NAME,
            format!("--offline: {} is not on loopback", cs.lapi_url),
        );
    }
    let credentials = match Credentials::read(cs) {
        Ok(credentials) => credentials,
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "make the key and password files readable by root, one secret on the first line",
            );
        }
    };
    let publishes = credentials.can_publish();
    let lapi = match credentials.into_lapi(cs) {
        Ok(lapi) => lapi,
        Err(e) => return Check::fail(NAME, e.to_string(), "correct lapi_url or ca_file"),
    };
    if let Err(e) = lapi.check_bouncer_key().await {
        let fix = match &e {
            ClientError::Http(HttpError::Status { status: 403, .. }) => {
                "the LAPI refuses the bouncer key: `cscli bouncers add relay` prints a new one \
                 for bouncer_key_file"
            }
            _ => "start the LAPI (systemctl status crowdsec) or correct lapi_url and ca_file",
        };
        return Check::fail(
            NAME,
            format!("{}: bouncer key check: {e}", cs.lapi_url),
            fix,
        );
    }
    if publishes && let Err(e) = lapi.check_machine_login().await {
        return Check::fail(
            NAME,
            format!("{}: machine login: {e}", cs.lapi_url),
            "check machine_id and password_file against `cscli machines list`, or remove \
             machine_id to stop publishing",
        );
    }
    let what = if publishes {
        "accepts the bouncer key and the machine login"
    } else {
        "accepts the bouncer key (no machine_id: relay's bans are not published)"
    };
    Check::ok(NAME, format!("{} {what}", cs.lapi_url))
}

/// Whether `url`'s host is this host's loopback.
fn url_on_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    is_loopback_host(host)
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_recognised() {
        for url in [
            "http://127.0.0.1:8080/",
            "http://localhost:8080",
            "https://[::1]:8443/",
            "http://127.0.0.2",
        ] {
            assert!(url_on_loopback(url), "{url}");
        }
        for url in ["http://lapi.example:8080/", "https://192.0.2.1:8080"] {
            assert!(!url_on_loopback(url), "{url}");
        }
    }
}
