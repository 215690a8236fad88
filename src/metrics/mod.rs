//! Prometheus metrics through `metrics` and `metrics-exporter-prometheus`:
//! [`sink`] takes each measurement on the hot path (called by the run
//! context, next to the stats), [`exporter`] installs the recorder, sets the
//! gauges from a run's engine at scrape time and serves `/metrics`. Labels
//! stay bounded: ops and resource kinds are fixed sets, error codes are
//! capped, no ids, endpoints or credentials.

pub mod exporter;
pub mod sink;

pub use exporter::{
    install, observe, render, render_stats, response, response_with, serve, serve_with,
};
