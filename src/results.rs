//! `cloudswarm runs` (the runs kept in the state directory) and
//! `cloudswarm compare BASE NEW` (two runs side by side, optionally a
//! gate: exit 0 nothing regressed, 1 something did, 2 bad input).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::error::config_err;
use crate::output::compare::{self, GateArgs};
use crate::output::kept::{self, KeptState};

/// Flags of `cloudswarm runs`.
#[derive(Args, Debug, Clone)]
pub struct RunsArgs {
    /// Where runs are kept (default: the user's state directory)
    #[arg(long, env = "CLOUDSWARM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the list as JSON (what the dashboard's /runs.json answers)
    #[arg(long)]
    pub json: bool,
}

fn state_dir(given: &Option<PathBuf>) -> PathBuf {
    given
        .clone()
        .unwrap_or_else(crate::naming::default_state_dir)
}

/// `cloudswarm runs`: id, profile, started, duration, users, requests,
/// failure %, SLA verdict, newest first; a master's run (no journal here)
/// and a run without a final report say so.
pub fn runs(args: &RunsArgs) -> i32 {
    let dir = state_dir(&args.state_dir);
    let list = kept::list(&dir);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "runs": list })).unwrap_or_default()
        );
        return 0;
    }
    if list.is_empty() {
        eprintln!("no runs kept in {}", dir.display());
        return 0;
    }
    println!(
        "{:<10} {:<20} {:<20} {:>9} {:>6} {:>10} {:>8}  {:<6}  notes",
        "RUN", "PROFILE", "STARTED", "DURATION", "USERS", "REQUESTS", "FAIL %", "SLA"
    );
    for r in &list {
        let mut notes = Vec::new();
        match r.state {
            KeptState::Complete => {}
            KeptState::Snapshot => {
                notes.push("no final report: crashed or still running (last snapshot)")
            }
            KeptState::JournalOnly => {
                notes.push("journal only: a worker's share of a run, or from before reports")
            }
        }
        if r.workers {
            notes.push("on workers: no journal here (each worker keeps its own)");
        } else if !r.journal {
            notes.push("no journal");
        }
        let started = if r.started_at > 0.0 {
            crate::output::sla::clock(r.started_at)
        } else {
            "?".into()
        };
        let (duration, figures) = if r.state == KeptState::JournalOnly {
            (
                "-".to_string(),
                format!("{:>6} {:>10} {:>8}", "-", "-", "-"),
            )
        } else {
            (
                humantime::format_duration(std::time::Duration::from_secs(
                    r.duration_s.max(0.0) as u64
                ))
                .to_string(),
                format!("{:>6} {:>10} {:>8.2}", r.users, r.requests, r.failure_pct),
            )
        };
        println!(
            "{:<10} {:<20} {:<20} {:>9} {figures}  {:<6}  {}",
            r.run_id,
            r.profile,
            started,
            duration,
            if r.sla.is_empty() { "-" } else { &r.sla },
            notes.join("; ")
        );
    }
    0
}

/// Flags of `cloudswarm compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The run compared with: a kept run's id, a JSON report, or a run's folder
    pub base: String,
    /// The run judged against it (same forms)
    pub new: String,
    #[command(flatten)]
    pub gate: GateArgs,
    /// Write the comparison as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Where runs are kept (default: the user's state directory)
    #[arg(long, env = "CLOUDSWARM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `cloudswarm compare BASE NEW`: prints the table; exit 1 when a gate's
/// limit was passed, 2 when a run is missing or not a schema-1 report.
pub fn compare(args: &CompareArgs) -> Result<i32> {
    let dir = state_dir(&args.state_dir);
    let read = |what: &str, which: &str| {
        kept::resolve(&dir, what).map_err(|e| config_err(format!("{which} {e}")))
    };
    let base = read(&args.base, "BASE:")?;
    let new = read(&args.new, "NEW:")?;
    if let Some(p) = &args.json {
        crate::output::check_writable(p).map_err(|e| config_err(format!("--json: {e:#}")))?;
    }
    let c = compare::compare(&base, &args.base, &new, &args.new, args.gate.limits());
    print!("{}", compare::table(&c));
    if let Some(p) = &args.json {
        let v = serde_json::to_value(&c)?;
        crate::output::write_json(p, &v).map_err(|e| config_err(format!("--json: {e:#}")))?;
    }
    Ok(i32::from(c.failed()))
}
