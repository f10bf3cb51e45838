//! Prometheus metrics: an HTTP listener at `[metrics] listen` (loopback by default) serving
//! the text exposition format on any path (`/metrics` by convention).
//!
//! The relay's own counters (atomics in the relay's statistics, the accounts, the admission
//! and the misuse detector) stay the source of truth: the daemon copies a snapshot of them
//! into the exporter once a second, so the connection path never touches it. The exceptions
//! are the histograms ([`histograms`]), recorded where a DC connection is made or a CrowdSec
//! pull ends (not per byte).
//!
//! - [`metrics`]: the table declaring every metric once; [`Metric`] is its typed identifier.
//! - [`samples`]: typed metric values as the admin `stats` reply carries them, and their
//!   `relay-ctl stats --json` form.
//! - [`exporter`]: the HTTP listener and the descriptions taken from the table.
//!
//! No metric has a per-address label: sources are counted, never named.
//!
//! # Adding a metric
//!
//! 1. Add an entry to the table in [`metrics`]: name, kind, help, label names and, for a
//!    counter or gauge, a `json` key (its place in `relay-ctl stats --json`).
//! 2. Where the snapshot is taken (the owner's export function, e.g. `RelayStats::export` in
//!    the relay, or the daemon's stats snapshot), set its value with [`Samples::set`]. A
//!    histogram is recorded where it happens instead, like [`histograms`].
//!
//! Describing, publishing, the JSON and the check that every declared metric is exported
//! follow from the table. A new label value (a new reason) only needs the label's enum to
//! list it where the samples are set.

pub mod exporter;
pub mod histograms;
pub mod metrics;
pub mod samples;

pub use exporter::install;
pub use histograms::{record_crowdsec_pull, record_dc_connect};
pub use metrics::{Kind, Metric, MetricDef};
pub use samples::{Sample, Samples};
