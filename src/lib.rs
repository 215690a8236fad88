//! cloudswarm: a Locust-style load tester for EC2- and S3-compatible clouds.
//!
//! Data flow: [`profile`] (what users do) → [`engine`] (hatches and runs
//! users) → [`tasks`] (cloud ops through the AWS SDK, against the [`target`],
//! whose S3 endpoints [`endpoint`] resolves once per bucket, creating
//! resources tracked by [`resources`]) → [`stats`] (exact
//! percentiles, errors, history) → [`output`] (table, CSV, JSON, SLAs) and
//! [`metrics`] (Prometheus).
//! [`session`] is one run's life; [`run`] drives it headless and [`web`]
//! from the browser dashboard; [`reclaim`] cleans up
//! after runs; [`results`] lists the kept runs and compares two;
//! [`cluster`] takes a run beyond one machine on Locust's master/worker
//! protocol; [`cli`] is the command line.

pub mod capacity;
pub mod cleanup;
pub mod cli;
pub mod cluster;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod failure;
pub mod httpd;
pub mod metrics;
pub mod naming;
pub mod ops;
pub mod output;
pub mod profile;
pub mod reclaim;
pub mod resources;
pub mod results;
pub mod run;
pub mod session;
pub mod signals;
pub mod stats;
pub mod target;
pub mod tasks;
pub mod tls;
pub mod units;
pub mod web;
