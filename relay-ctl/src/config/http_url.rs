//! An `http://` or `https://` base URL taken apart: `[crowdsec] lapi_url` is checked with it
//! when the configuration is read, and the HTTP client (`http_client`) connects with it, to
//! the LAPI or to Telegram's middle-proxy URLs.

/// A base URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80/443 unless given).
    pub port: u16,
    /// Path prefix without a trailing `/` (usually empty).
    pub base: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/prefix]` or `https://...`.
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{text}` must start with http:// or https://"));
        };
        if rest.contains(['?', '#', '@', ' ']) {
            return Err(format!(
                "`{text}` must be a plain base URL (no user, query or fragment)"
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{text}`: unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{text}`: bad port `{p}`"))?,
            None if tls => 443,
            None => 80,
        };
        Ok(HttpUrl {
            tls,
            host: host.to_owned(),
            port,
            base: path.trim_end_matches('/').to_owned(),
        })
    }

    /// Whether the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.to_canonical().is_loopback())
    }

    /// `host:port`, with an IPv6 host in brackets, as a connection and `Host` header want it.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HttpUrl;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080").expect("plain");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base.as_str()),
            (false, "127.0.0.1", 8080, "")
        );
        let u = HttpUrl::parse("https://lapi.example.org/cs/").expect("prefix");
        assert_eq!((u.tls, u.port, u.base.as_str()), (true, 443, "/cs"));
        let u = HttpUrl::parse("http://[2001:db8::1]:81").expect("v6");
        assert_eq!(
            (u.host.as_str(), u.authority()),
            ("2001:db8::1", "[2001:db8::1]:81".to_owned())
        );
        for bad in [
            "ftp://x",
            "127.0.0.1:8080",
            "http://",
            "http://h:0",
            "http://h:x",
            "http://u@h",
            "http://h/?a",
            "http://[::1",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
