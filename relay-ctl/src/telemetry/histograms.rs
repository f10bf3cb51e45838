//! Histograms, recorded where the event happens rather than copied from the snapshot.

use std::{sync::OnceLock, time::Duration};

use super::metrics::Metric;

/// Records one DC connect time (a no-op while no recorder is installed).
pub fn record_dc_connect(dc: i16, took: Duration) {
    let [label] = Metric::DcConnectSeconds.labels() else {
        return;
    };
    metrics::histogram!(Metric::DcConnectSeconds.name(), *label => dc_label(dc))
        .record(took.as_secs_f64());
}

/// Records how long one pull of the CrowdSec decision stream took.
pub fn record_crowdsec_pull(took: Duration) {
    metrics::histogram!(Metric::CrowdsecPullSeconds.name()).record(took.as_secs_f64());
}

/// DC ids as label values, without an allocation per connection.
fn dc_label(dc: i16) -> String {
    static COMMON: OnceLock<Vec<String>> = OnceLock::new();
    let common = COMMON.get_or_init(|| (0..=5).map(|i| i.to_string()).collect());
    usize::try_from(dc)
        .ok()
        .and_then(|i| common.get(i).cloned())
        .unwrap_or_else(|| dc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dc_labels() {
        assert_eq!(dc_label(2), "2");
        assert_eq!(dc_label(-2), "-2");
        assert_eq!(dc_label(10_002), "10002");
    }
}
