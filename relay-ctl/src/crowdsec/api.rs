//! The LAPI's JSON, as far as relay uses it (shapes checked against CrowdSec 1.4.6; newer
//! fields such as `uuid` are ignored, empty lists arrive as `null`).

use serde::{Deserialize, Serialize};

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
