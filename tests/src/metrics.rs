//! Reading relay's Prometheus endpoint: a plain HTTP/1.1 GET and a parser for the text
//! exposition format, enough to look samples up by name and labels.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// `GET /metrics` from `addr`; the body of a 200 answer.
pub fn scrape(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(|e| io::Error::other(e.to_string()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(io::Error::other(format!("HTTP status {status:?}")));
    }
    Ok(body.to_owned())
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Name as exported (`relay_dc_connect_seconds_bucket` for a histogram bucket).
    pub name: String,
    /// Label names and values.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Every sample, in exposition order.
    pub samples: Vec<Sample>,
    /// `# TYPE` lines: metric name → type.
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses the text exposition format; panics on a line it cannot read.
    pub fn parse(text: &str) -> Metrics {
        let mut metrics = Metrics::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    metrics
                        .types
                        .insert(name.to_owned(), kind.trim().to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            metrics.samples.push(parse_sample(line));
        }
        metrics
    }

    /// Sum of the samples named `name` whose labels include all of `labels` (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|got| got == v))
        })
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// Every sample name.
    pub fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

fn parse_sample(line: &str) -> Sample {
    let (name_labels, value) = match line.rfind('}') {
        Some(end) => (&line[..=end], line[end + 1..].trim()),
        None => line
            .split_once(' ')
            .map(|(n, v)| (n, v.trim()))
            .unwrap_or_else(|| panic!("metric line without value: {line:?}")),
    };
    // A timestamp may follow the value.
    let value = value.split_whitespace().next().unwrap_or_default();
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
    };
    let (name, labels) = match name_labels.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'), line)),
        None => (name_labels, BTreeMap::new()),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

fn parse_labels(mut rest: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.is_empty() {
            return labels;
        }
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("bad escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_labels_and_histograms() {
        let text = "\
# HELP relay_handshakes_total Client handshakes.
# TYPE relay_handshakes_total counter
relay_handshakes_total{mode=\"tls\",result=\"ok\"} 4
relay_handshakes_total{mode=\"unknown\",result=\"failed\"} 2
relay_connections_accepted_total 7
relay_blocklist_entries{source=\"feed:/a \\\"b\\\".netset\"} 9
# TYPE relay_dc_connect_seconds histogram
relay_dc_connect_seconds_bucket{dc=\"2\",le=\"+Inf\"} 3
relay_dc_connect_seconds_sum{dc=\"2\"} 0.004
";
        let m = Metrics::parse(text);
        assert_eq!(m.sum("relay_handshakes_total", &[]), 6.0);
        assert_eq!(m.sum("relay_handshakes_total", &[("mode", "tls")]), 4.0);
        assert_eq!(m.sum("relay_connections_accepted_total", &[]), 7.0);
        assert_eq!(
            m.sum(
                "relay_blocklist_entries",
                &[("source", "feed:/a \"b\".netset")]
            ),
            9.0
        );
        assert_eq!(
            m.sum("relay_dc_connect_seconds_bucket", &[("le", "+Inf")]),
            3.0
        );
        assert_eq!(m.types["relay_dc_connect_seconds"], "histogram");
        assert!(m.has("relay_dc_connect_seconds_sum"));
        assert!(!m.has("relay_nothing"));
    }
}
