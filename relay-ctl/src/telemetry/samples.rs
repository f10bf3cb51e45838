//! Metric values as the snapshot carries them: typed [`Metric`] identifiers with label values,
//! kept sorted so two snapshots with the same values compare equal.
//!
//! In `relay-ctl stats --json` each metric with a [`MetricDef::json`] key appears under that
//! key, one nested object per label (`"handshakes": {"tls": {"ok": 4}}`), a bare number when
//! it has no labels.
//!
//! [`MetricDef::json`]: super::metrics::MetricDef::json

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _, ser::SerializeMap};
use serde_json::Value;

use super::metrics::Metric;

/// One value of a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Which metric.
    pub metric: Metric,
    /// Label values, in the order of [`Metric::labels`].
    pub labels: Vec<String>,
    /// The value.
    pub value: u64,
}

/// The values of a snapshot's metrics, at most one per metric and label values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Samples(Vec<Sample>);

impl Samples {
    /// Sets `metric` with `labels` (as many as the metric declares) to `value`.
    pub fn set(&mut self, metric: Metric, labels: &[&str], value: u64) {
        debug_assert_eq!(labels.len(), metric.labels().len(), "{metric:?}");
        let at = self.0.binary_search_by(|s| {
            s.metric.cmp(&metric).then_with(|| {
                s.labels
                    .iter()
                    .map(String::as_str)
                    .cmp(labels.iter().copied())
            })
        });
        match at {
            Ok(i) => self.0[i].value = value,
            Err(i) => self.0.insert(
                i,
                Sample {
                    metric,
                    labels: labels.iter().map(|l| (*l).to_owned()).collect(),
                    value,
                },
            ),
        }
    }

    /// Every sample, by metric then label values.
    pub fn iter(&self) -> impl Iterator<Item = &Sample> {
        self.0.iter()
    }

    /// The samples of `metric`.
    pub fn of(&self, metric: Metric) -> impl Iterator<Item = &Sample> {
        self.0.iter().filter(move |s| s.metric == metric)
    }

    /// The value of `metric` with `labels`; 0 when there is none.
    pub fn get(&self, metric: Metric, labels: &[&str]) -> u64 {
        self.of(metric)
            .find(|s| {
                s.labels
                    .iter()
                    .map(String::as_str)
                    .eq(labels.iter().copied())
            })
            .map_or(0, |s| s.value)
    }

    /// The sum of every value of `metric`.
    pub fn total(&self, metric: Metric) -> u64 {
        self.of(metric).map(|s| s.value).sum()
    }

    /// The values of `metric` by its first label value (summed over any further labels).
    pub fn by_label(&self, metric: Metric) -> BTreeMap<&str, u64> {
        let mut out = BTreeMap::new();
        for s in self.of(metric) {
            if let Some(first) = s.labels.first() {
                *out.entry(first.as_str()).or_insert(0) += s.value;
            }
        }
        out
    }
}

impl Serialize for Samples {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for metric in Metric::ALL {
            let Some(key) = metric.def().json else {
                continue;
            };
            if metric.labels().is_empty() {
                if let Some(s) = self.of(*metric).next() {
                    map.serialize_entry(key, &s.value)?;
                }
                continue;
            }
            let mut tree = serde_json::Map::new();
            for s in self.of(*metric) {
                insert(&mut tree, &s.labels, s.value);
            }
            map.serialize_entry(key, &tree)?;
        }
        map.end()
    }
}

/// Puts `value` at the path `labels` of nested objects.
fn insert(tree: &mut serde_json::Map<String, Value>, labels: &[String], value: u64) {
    match labels {
        [] => {}
        [last] => {
            tree.insert(last.clone(), Value::from(value));
        }
        [first, rest @ ..] => {
            let child = tree
                .entry(first.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Value::Object(child) = child {
                insert(child, rest, value);
            }
        }
    }
}

impl<'de> Deserialize<'de> for Samples {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = BTreeMap::<String, Value>::deserialize(deserializer)?;
        let mut samples = Samples::default();
        for metric in Metric::ALL {
            let Some(value) = metric.def().json.and_then(|key| fields.remove(key)) else {
                continue;
            };
            collect(*metric, &value, &mut Vec::new(), &mut samples).map_err(D::Error::custom)?;
        }
        Ok(samples)
    }
}

/// Reads the nested objects of `metric` below the label values in `labels`.
fn collect<'a>(
    metric: Metric,
    value: &'a Value,
    labels: &mut Vec<&'a str>,
    out: &mut Samples,
) -> Result<(), String> {
    let key = metric.def().json.unwrap_or_default();
    if labels.len() == metric.labels().len() {
        let n = value
            .as_u64()
            .ok_or_else(|| format!("{key}: expected a count, got {value}"))?;
        out.set(metric, labels, n);
        return Ok(());
    }
    let object = value
        .as_object()
        .ok_or_else(|| format!("{key}: expected an object, got {value}"))?;
    for (label, inner) in object {
        labels.push(label);
        collect(metric, inner, labels, out)?;
        labels.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some() -> Samples {
        let mut s = Samples::default();
        s.set(Metric::Handshakes, &["tls", "ok"], 4);
        s.set(Metric::ConnectionsAccepted, &[], 7);
        s.set(Metric::Handshakes, &["tls", "failed"], 1);
        s.set(Metric::Handshakes, &["classic", "ok"], 2);
        s.set(Metric::ConnectionsAccepted, &[], 8);
        s
    }

    #[test]
    fn set_keeps_one_value_per_series_in_order() {
        let s = some();
        assert_eq!(s.iter().count(), 4);
        assert_eq!(s.get(Metric::ConnectionsAccepted, &[]), 8);
        assert_eq!(s.get(Metric::Handshakes, &["tls", "ok"]), 4);
        assert_eq!(s.get(Metric::Handshakes, &["secure", "ok"]), 0);
        assert_eq!(s.total(Metric::Handshakes), 7);
        assert_eq!(
            s.by_label(Metric::Handshakes),
            BTreeMap::from([("classic", 2), ("tls", 5)])
        );
    }

    #[test]
    fn json_nests_by_label_and_reads_back() {
        let s = some();
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["connections_accepted"], 8);
        assert_eq!(json["handshakes"]["tls"]["ok"], 4);
        assert_eq!(json["verdicts"], serde_json::json!({}));
        assert_eq!(json.get("admin_refused"), None);
        let back: Samples = serde_json::from_value(json).expect("parse");
        assert_eq!(back, s);
        let bad = serde_json::json!({"handshakes": {"tls": 3}});
        assert!(serde_json::from_value::<Samples>(bad).is_err());
    }
}
