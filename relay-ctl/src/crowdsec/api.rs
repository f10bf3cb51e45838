//! The LAPI's JSON, as far as relay uses it (shapes checked against CrowdSec 1.4.6; newer
//! fields such as `uuid` are ignored, empty lists arrive as `null`).

use std::{cell::Cell, fmt, io::Read};

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

/// One decision in a `/v1/decisions/stream` answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Decision {
    /// Time left as a Go duration (negative for ended decisions).
    pub duration: String,
    /// Who made it: `crowdsec`, `cscli`, `CAPI`, `lists`, `relay`, ...
    #[serde(default)]
    pub origin: String,
    /// Why (the scenario or `--reason` text).
    #[serde(default)]
    pub scenario: String,
    /// `Ip` or `Range` (other scopes are not asked for).
    pub scope: String,
    /// `ban`, `captcha`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// An address (`Ip`) or a CIDR (`Range`).
    pub value: String,
}

/// A `/v1/decisions/stream` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Stream {
    /// Decisions that started (all active ones with `startup=true`).
    #[serde(default)]
    pub new: Option<Vec<Decision>>,
    /// Decisions that ended or were deleted.
    #[serde(default)]
    pub deleted: Option<Vec<Decision>>,
}

/// Why a stream answer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// More decisions (`new` and `deleted` together) than `[crowdsec] max_decisions`.
    #[error("more than {0} decisions in one pull (max_decisions)")]
    TooMany(usize),
    /// Not the JSON expected, or reading it failed.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Reads a `/v1/decisions/stream` answer from `reader` as it arrives, holding at most `max`
/// decisions: the answer is refused as soon as it holds one more, without reading the rest.
pub fn read_stream(reader: impl Read, max: usize) -> Result<Stream, StreamError> {
    let budget = Budget {
        left: Cell::new(max),
        exceeded: Cell::new(false),
    };
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(64 << 10, reader));
    let read = (&budget)
        .deserialize(&mut de)
        .and_then(|stream| de.end().map(|()| stream));
    match read {
        Err(_) if budget.exceeded.get() => Err(StreamError::TooMany(max)),
        other => Ok(other?),
    }
}

/// Decisions still allowed in the answer being read.
struct Budget {
    left: Cell<usize>,
    exceeded: Cell<bool>,
}

/// The answer object: `new` and `deleted` through the budget, other keys skipped.
impl<'de> DeserializeSeed<'de> for &Budget {
    type Value = Stream;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Stream, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &Budget {
    type Value = Stream;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decision stream object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Stream, A::Error> {
        let mut stream = Stream::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "new" => stream.new = map.next_value_seed(List(self))?,
                "deleted" => stream.deleted = map.next_value_seed(List(self))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(stream)
    }
}

/// A list of decisions, or `null`.
struct List<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for List<'_> {
    type Value = Option<Vec<Decision>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = Option<Vec<Decision>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of decisions or null")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut list = Vec::new();
        while let Some(decision) = seq.next_element::<Decision>()? {
            let left = self.0.left.get();
            if left == 0 {
                self.0.exceeded.set(true);
                return Err(serde::de::Error::custom("too many decisions"));
            }
            self.0.left.set(left - 1);
            list.push(decision);
        }
        Ok(Some(list))
    }
}

/// `POST /v1/watchers/login` body.
#[derive(Debug, Serialize)]
pub struct Login<'a> {
    /// The machine's name (`cscli machines add NAME`).
    pub machine_id: &'a str,
    /// Its password.
    pub password: &'a str,
}

/// `POST /v1/watchers/login` answer.
#[derive(Debug, Deserialize)]
pub struct LoginAnswer {
    /// The JWT for `Authorization: Bearer`.
    pub token: String,
}

/// One alert of a `POST /v1/alerts` body. The LAPI's schema requires every field here even
/// when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Scenario name (`relay/misuse`).
    pub scenario: String,
    /// Required, may be empty.
    pub scenario_hash: String,
    /// Required, may be empty.
    pub scenario_version: String,
    /// Free text.
    pub message: String,
    /// How many events (bans) the alert stands for.
    pub events_count: u32,
    /// RFC 3339; now.
    pub start_at: String,
    /// RFC 3339; now, because the LAPI ends a decision at `stop_at + duration`.
    pub stop_at: String,
    /// Required, 0.
    pub capacity: u32,
    /// Required, "0".
    pub leakspeed: String,
    /// Required, false.
    pub simulated: bool,
    /// Required, empty.
    pub events: Vec<serde_json::Value>,
    /// The (first) source the alert is about.
    pub source: Source,
    /// The bans, explicit so the LAPI profile does not choose their length.
    pub decisions: Vec<NewDecision>,
}

/// An alert's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// `Ip` or `Range`.
    pub scope: String,
    /// The address or CIDR.
    pub value: String,
}

/// A decision relay publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewDecision {
    /// Who made it (`relay`).
    pub origin: String,
    /// `ban`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Exactly `Ip` or `Range`: a lowercase scope is invisible to every stream bouncer.
    pub scope: String,
    /// The address or CIDR.
    pub value: String,
    /// Go duration, e.g. `3600s`.
    pub duration: String,
    /// `relay/<reason>`.
    pub scenario: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_shapes_from_lapi_1_4_6() {
        let empty: Stream = serde_json::from_str(r#"{"deleted":null,"new":null}"#).expect("empty");
        assert_eq!(empty, Stream::default());
        let text = r#"{"deleted": null,
 "new": [
  {"duration":"1m29.223407469s","id":4,"origin":"cscli","scenario":"test-v6-range","scope":"Range","type":"ban","value":"2001:db8:1::/48"},
  {"duration":"59m59.223405892s","id":1,"origin":"cscli","scenario":"test","scope":"Ip","type":"ban","value":"198.18.1.5","uuid":"x-y"}]}"#;
        let s: Stream = serde_json::from_str(text).expect("startup");
        let new = s.new.expect("new");
        assert_eq!(new.len(), 2);
        assert_eq!(new[0].scope, "Range");
        assert_eq!(new[1].kind, "ban");
        assert_eq!(new[1].value, "198.18.1.5");
        assert!(s.deleted.is_none());
    }

    const SAMPLE: &str = r#"{"deleted": [{"duration":"-7.2ms","id":2,"origin":"cscli","scenario":"test-range","scope":"Range","type":"ban","value":"198.18.2.0/24"}],
 "new": [
  {"duration":"1m29.223407469s","id":4,"origin":"cscli","scenario":"test-v6-range","scope":"Range","type":"ban","value":"2001:db8:1::/48"},
  {"duration":"59m59.223405892s","id":1,"origin":"cscli","scenario":"test","scope":"Ip","type":"ban","value":"198.18.1.5","uuid":"x-y"}],
 "extra": {"nested": [1, 2, {"a": null}]}}"#;

    #[test]
    fn streamed_answers_match_the_buffered_parse() {
        let streamed = read_stream(SAMPLE.as_bytes(), 3).expect("three fit");
        let buffered: Stream = serde_json::from_str(SAMPLE).expect("buffered");
        assert_eq!(streamed, buffered);
        assert_eq!(streamed.new.as_ref().map(Vec::len), Some(2));
        for empty in [
            r#"{"deleted":null,"new":null}"#,
            r#"{"new":[],"deleted":[]}"#,
            "{}",
            " {\n} \n",
        ] {
            let s = read_stream(empty.as_bytes(), 0).expect(empty);
            assert_eq!(s.new.unwrap_or_default().len(), 0, "{empty}");
        }
    }

    #[test]
    fn streamed_answers_are_bounded_in_count_and_checked() {
        // new and deleted count together.
        assert!(matches!(
            read_stream(SAMPLE.as_bytes(), 2),
            Err(StreamError::TooMany(2))
        ));
        for bad in [
            "",
            "[]",
            r#"{"new":[{"duration":"1h"}]}"#,
            r#"{"new":[] } trailing"#,
            r#"{"new":[{"duration":"1h","scope":"Ip","type":"ban","value":"1.2.3.4"}"#,
            r#"{"new":"x"}"#,
        ] {
            assert!(
                matches!(read_stream(bad.as_bytes(), 10), Err(StreamError::Json(_))),
                "{bad} accepted"
            );
        }
        // The reader is not read past the decision that broke the bound.
        let item = r#"{"duration":"1h","scope":"Ip","type":"ban","value":"198.18.1.1"},"#;
        let mut endless = format!(r#"{{"new":[{}"#, item.repeat(10)).into_bytes();
        endless.extend(std::iter::repeat_n(b' ', 1 << 20));
        let mut reader = &endless[..];
        assert!(matches!(
            read_stream(&mut reader, 5),
            Err(StreamError::TooMany(5))
        ));
        assert!(
            reader.len() > 900 << 10,
            "read {} bytes",
            endless.len() - reader.len()
        );
    }

    #[test]
    fn alert_has_every_required_field() {
        let alert = Alert {
            scenario: "relay/misuse".into(),
            scenario_hash: String::new(),
            scenario_version: String::new(),
            message: "m".into(),
            events_count: 1,
            start_at: "2026-11-22T02:45:00Z".into(),
            stop_at: "2026-11-22T02:45:00Z".into(),
            capacity: 0,
            leakspeed: "0".into(),
            simulated: false,
            events: Vec::new(),
            source: Source {
                scope: "Ip".into(),
                value: "198.18.5.2".into(),
            },
            decisions: vec![NewDecision {
                origin: "relay".into(),
                kind: "ban".into(),
                scope: "Ip".into(),
                value: "198.18.5.2".into(),
                duration: "3600s".into(),
                scenario: "relay/bad_secret".into(),
            }],
        };
        let v = serde_json::to_value(&alert).expect("json");
        for field in [
            "scenario",
            "scenario_hash",
            "scenario_version",
            "message",
            "events_count",
            "start_at",
            "stop_at",
            "capacity",
            "leakspeed",
            "simulated",
            "events",
            "source",
        ] {
            assert!(v.get(field).is_some(), "{field} missing");
        }
        assert_eq!(v["decisions"][0]["type"], "ban");
        assert_eq!(v["decisions"][0]["scope"], "Ip");
    }
}
