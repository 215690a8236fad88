//! What a run leaves when it ends, whoever drove it (`run`, `run
//! --master`, the dashboard): the comparison with a baseline folded into
//! the JSON report, the kept run's files, and the `--html` and `--junit`
//! reports. Each file is written even if another fails; what could not be
//! written comes back for the caller to report.

use std::path::Path;

use super::compare::{self, Comparison, Limits};
use super::kept::{self, KeptRun};
use super::report::Report;
use super::{html, junit};
use crate::stats::{HistoryRow, Snapshot};

/// What a run keeps and compares with: its folder in the state directory
/// (None when it cannot be made: the run goes on, unkept, with a warning),
/// the profile's text for its reports, and the baseline.
pub struct Keep {
    pub run: Option<KeptRun>,
    pub profile_text: String,
    pub baseline: Option<Report>,
}

impl Keep {
    pub fn new(
        profile: &Path,
        state_dir: &Path,
        run_id: &crate::naming::RunId,
        baseline: Option<Report>,
    ) -> Result<Keep, String> {
        let profile_text =
            std::fs::read_to_string(profile).map_err(|e| format!("{}: {e}", profile.display()))?;
        let run = match KeptRun::open(state_dir, run_id) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("warning: run {run_id} is not kept: {e:#}");
                None
            }
        };
        Ok(Keep {
            run,
            profile_text,
            baseline,
        })
    }
}

/// A run's end.
pub struct Ending<'a> {
    /// The JSON report (`json_report` and what the driver adds).
    pub report: serde_json::Value,
    pub snap: &'a Snapshot,
    pub history: &'a [HistoryRow],
    pub verdicts: &'a [super::sla::Verdict],
    /// The run's folder in the state directory (None: it could not be made).
    pub kept: Option<&'a KeptRun>,
    /// The run to compare with, and what the user named it by.
    pub baseline: Option<(&'a Report, &'a str)>,
    pub limits: Limits,
    pub html: Option<&'a Path>,
    pub junit: Option<&'a Path>,
}

/// What the end wrote.
pub struct Ended {
    /// The JSON report, with `comparison` when there was a baseline.
    pub report: serde_json::Value,
    pub comparison: Option<Comparison>,
    /// `--html: cannot write ...`, per file that failed.
    pub unwritten: Vec<String>,
}

/// Compares, renders and writes (see the module's notes).
pub fn finish(e: Ending<'_>) -> Ended {
    let mut report = e.report;
    let mut unwritten = Vec::new();
    let this = match Report::from_value(report.clone()) {
        Ok(r) => r,
        Err(err) => {
            unwritten.push(format!("the report: {err}"));
            return Ended {
                report,
                comparison: None,
                unwritten,
            };
        }
    };
    let comparison = e
        .baseline
        .map(|(base, named)| compare::compare(base, named, &this, &this.run_id, e.limits.clone()));
    let this = match &comparison {
        Some(c) => {
            report["comparison"] = serde_json::to_value(c).unwrap_or_default();
            Report {
                comparison: Some(c.clone()),
                ..this
            }
        }
        None => this,
    };
    let page = html::render(&this, e.baseline.map(|(b, _)| b));
    if let Some(k) = e.kept {
        let csv = super::csv_files(e.snap, e.history, e.verdicts);
        let page = page
            .as_deref()
            .unwrap_or("<!doctype html><p>the report could not be rendered</p>");
        if let Err(err) = k.write_final(&report, page, &csv) {
            unwritten.push(format!("the kept run in {}: {err:#}", k.dir().display()));
        }
    }
    if let Some(p) = e.html {
        let written = page
            .as_ref()
            .map_err(|err| anyhow::anyhow!("{err}"))
            .and_then(|h| kept::write_atomic(p, h.as_bytes()));
        if let Err(err) = written {
            unwritten.push(format!("--html: {err:#}"));
        }
    }
    if let Some(p) = e.junit
        && let Err(err) = kept::write_atomic(p, junit::junit(&this).as_bytes())
    {
        unwritten.push(format!("--junit: {err:#}"));
    }
    Ended {
        report,
        comparison,
        unwritten,
    }
}
