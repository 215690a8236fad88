//! The runs kept in the state directory. Every run, headless or from the
//! dashboard, local or on workers, leaves its outputs in
//! `<state-dir>/runs/<run-id>/` next to its journal and `run.json`:
//! `report.json` (schema 1), `report.html`, `stats.csv`, `failures.csv`,
//! `stats_history.csv` (and `sla.csv` with SLAs). While the run goes,
//! `snapshot.json` (the report so far) is rewritten every few seconds, so a
//! crash leaves the journal and the last snapshot; the final report
//! replaces it. Every file is written to a temporary name and renamed, so
//! a reader never sees half of one. `cloudswarm runs`, the dashboard's Runs
//! tab and `compare` read them back; `--keep-runs` prunes the oldest.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;

use super::report::Report;
use crate::naming::{JOURNAL, META, RunId, RunMeta};

/// The final JSON report's file name in a run's folder.
pub const REPORT: &str = "report.json";
/// The report so far, while the run goes (or after a crash).
pub const SNAPSHOT: &str = "snapshot.json";
/// The HTML report's file name.
pub const HTML: &str = "report.html";
/// Runs `--keep-runs` keeps by default.
pub const DEFAULT_KEEP_RUNS: usize = 100;

/// The files of a kept run that may be downloaded, with their types.
pub const FILES: &[(&str, &str)] = &[
    (HTML, "text/html; charset=utf-8"),
    (REPORT, "application/json"),
    (SNAPSHOT, "application/json"),
    ("stats.csv", "text/csv; charset=utf-8"),
    ("failures.csv", "text/csv; charset=utf-8"),
    ("stats_history.csv", "text/csv; charset=utf-8"),
    ("sla.csv", "text/csv; charset=utf-8"),
    (JOURNAL, "application/x-ndjson"),
    (META, "application/json"),
];

/// Writes `bytes` to `path` atomically: a temporary file next to it, then
/// a rename over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A run's folder, for its outputs.
#[derive(Debug, Clone)]
pub struct KeptRun {
    dir: PathBuf,
}

impl KeptRun {
    /// The folder of run `run_id` (made if missing: a master's run has no
    /// journal to make it).
    pub fn open(state_dir: &Path, run_id: &RunId) -> Result<KeptRun> {
        let dir = run_id.dir(state_dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(KeptRun { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rewrites `snapshot.json` with the report so far (not once the final
    /// report is there: a snapshot racing the end must not outlive it).
    pub fn write_snapshot(&self, report: &serde_json::Value) -> Result<()> {
        if self.dir.join(REPORT).exists() {
            return Ok(());
        }
        write_atomic(&self.dir.join(SNAPSHOT), &serde_json::to_vec(report)?)
    }

    /// Writes the run's final outputs (each even if another fails; the
    /// first error is returned) and drops the snapshot they replace.
    pub fn write_final(
        &self,
        report: &serde_json::Value,
        html: &str,
        csv: &[(&str, String)],
    ) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(report)?;
        text.push(b'\n');
        let mut files: Vec<(String, &[u8])> =
            vec![(REPORT.into(), &text[..]), (HTML.into(), html.as_bytes())];
        files.extend(csv.iter().map(|(s, t)| (format!("{s}.csv"), t.as_bytes())));
        let mut first = None;
        for (name, bytes) in files {
            if let Err(e) = write_atomic(&self.dir.join(&name), bytes) {
                first.get_or_insert(e);
            }
        }
        if first.is_none() {
            let _ = std::fs::remove_file(self.dir.join(SNAPSHOT));
        }
        first.map_or(Ok(()), Err)
    }
}

/// Seconds between snapshots: 5, longer as the history grows (the report
/// carries a point per second), at most a minute.
pub fn snapshot_period(history_len: usize) -> Duration {
    Duration::from_secs((history_len as u64 / 120).clamp(5, 60))
}

/// Rewrites the run's snapshot with `report()` every [`snapshot_period`],
/// until dropped (it never returns).
pub async fn snapshots(kept: KeptRun, report: impl Fn() -> serde_json::Value) {
    let mut period = snapshot_period(0);
    loop {
        tokio::time::sleep(period).await;
        let r = report();
        period = snapshot_period(r["history"].as_array().map_or(0, Vec::len));
        if let Err(e) = kept.write_snapshot(&r) {
            tracing::warn!("run snapshot: {e:#}");
        }
    }
}

/// Runs `work` while rewriting the run's snapshot with `report()` (when
/// the run is kept); answers what `work` does.
pub async fn while_snapshotting<T>(
    kept: Option<&KeptRun>,
    report: impl Fn() -> serde_json::Value,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some(k) = kept else {
        return work.await;
    };
    tokio::select! {
        t = work => t,
        () = snapshots(k.clone(), report) => unreachable!("snapshots never end"),
    }
}

/// Where a kept run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptState {
    /// Its final report is there.
    Complete,
    /// Only the snapshot: the run crashed, or still goes.
    Snapshot,
    /// Neither: a worker's share of a run, or a run from before reports were kept.
    JournalOnly,
}

impl KeptState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeptState::Complete => "complete",
            KeptState::Snapshot => "snapshot",
            KeptState::JournalOnly => "journal only",
        }
    }
}

/// One kept run, as `runs` and `/runs.json` list it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub run_id: String,
    pub profile: String,
    pub started_at: f64,
    pub duration_s: f64,
    pub users: u64,
    pub requests: u64,
    pub failure_pct: f64,
    /// `held`, `FAILED`, `none` (no SLA), or empty (no report).
    pub sla: String,
    pub state: KeptState,
    /// The journal is here (a master's run has none: its workers keep theirs).
    pub journal: bool,
    /// A master's run (its users ran on workers).
    pub workers: bool,
    /// The files there, of [`FILES`].
    pub files: Vec<String>,
}

/// A kept run's report: the final one, else the snapshot.
pub fn report_of(dir: &Path) -> Option<(Report, KeptState)> {
    for (name, state) in [
        (REPORT, KeptState::Complete),
        (SNAPSHOT, KeptState::Snapshot),
    ] {
        let p = dir.join(name);
        if p.exists()
            && let Ok(r) = Report::read(&p)
        {
            return Some((r, state));
        }
    }
    None
}

fn listed(state_dir: &Path, id: &RunId) -> Listed {
    let dir = id.dir(state_dir);
    let files = FILES
        .iter()
        .filter(|(f, _)| dir.join(f).is_file())
        .map(|(f, _)| f.to_string())
        .collect();
    let journal = dir.join(JOURNAL).is_file();
    match report_of(&dir) {
        Some((r, state)) => Listed {
            run_id: id.to_string(),
            profile: r.profile.clone(),
            started_at: r.started_at,
            duration_s: r.duration_s,
            users: r.users,
            requests: r.total.num_requests,
            failure_pct: r.total.failure_ratio() * 100.0,
            sla: r.sla_verdict().into(),
            state,
            journal,
            workers: r.workers.is_some(),
            files,
        },
        None => {
            let meta = RunMeta::read(state_dir, id).unwrap_or_default();
            let profile = Path::new(&meta.profile)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Listed {
                run_id: id.to_string(),
                profile,
                started_at: if meta.started_at > 0.0 {
                    meta.started_at
                } else {
                    modified_secs(&dir)
                },
                duration_s: 0.0,
                users: 0,
                requests: 0,
                failure_pct: 0.0,
                sla: String::new(),
                state: KeptState::JournalOnly,
                journal,
                workers: false,
                files,
            }
        }
    }
}

/// Unix seconds of a path's last change (0 when unknown).
fn modified_secs(p: &Path) -> f64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The kept runs, newest first.
pub fn list(state_dir: &Path) -> Vec<Listed> {
    let mut out: Vec<Listed> = crate::naming::runs_on_disk(state_dir)
        .iter()
        .map(|id| listed(state_dir, id))
        .collect();
    out.sort_by(|a, b| {
        b.started_at
            .total_cmp(&a.started_at)
            .then_with(|| a.run_id.cmp(&b.run_id))
    });
    out
}

/// Reads the report a user named: a kept run's id (its final report, else
/// its last snapshot), a report file, or a run's folder.
pub fn resolve(state_dir: &Path, what: &str) -> Result<Report, String> {
    let path = Path::new(what);
    if path.is_file() {
        return Report::read(path);
    }
    if path.is_dir() {
        return report_of(path)
            .map(|(r, _)| r)
            .ok_or_else(|| format!("{what}: no {REPORT} or {SNAPSHOT} in this folder"));
    }
    let Ok(id) = RunId::parse(what) else {
        return Err(format!(
            "`{what}` is neither a file nor a run id (`cloudswarm runs` lists the kept runs)"
        ));
    };
    let dir = id.dir(state_dir);
    if !dir.is_dir() {
        return Err(format!(
            "no run {what} in {} (`cloudswarm runs --state-dir DIR` lists the kept runs)",
            state_dir.display()
        ));
    }
    for name in [REPORT, SNAPSHOT] {
        let p = dir.join(name);
        if p.exists() {
            return Report::read(&p);
        }
    }
    Err(format!(
        "run {what} has no report in {} (a worker's share of a run, or a run from before reports were kept)",
        dir.display()
    ))
}

/// A run `prune` left in place, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Spared {
    pub run_id: String,
    pub why: String,
}

/// How long a run without a final report is presumed to be still going.
const STILL_GOING: Duration = Duration::from_secs(3600);

/// Deletes the oldest kept runs so that at most `keep` remain (0: keep
/// every run). Never deleted: a run whose journal says it may still hold
/// resources (`cloudswarm cleanup` needs the journal; its report did not
/// find the cloud clean), nor one without a final report whose folder
/// changed within the last hour (it may be going on in another process).
/// Answers the runs deleted and those spared.
pub fn prune(state_dir: &Path, keep: usize) -> (Vec<String>, Vec<Spared>) {
    let (mut deleted, mut spared) = (Vec::new(), Vec::new());
    if keep == 0 {
        return (deleted, spared);
    }
    let mut runs = list(state_dir);
    // Oldest first, beyond the newest `keep`.
    let excess = runs.len().saturating_sub(keep);
    runs.reverse();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for run in runs.into_iter().take(excess) {
        let Ok(id) = RunId::parse(&run.run_id) else {
            continue;
        };
        let dir = id.dir(state_dir);
        let clean = report_of(&dir).is_some_and(|(r, state)| {
            state == KeptState::Complete && r.resources.leaked == Some(0)
        });
        let journal = dir.join(JOURNAL);
        if !clean && journal.exists() {
            match crate::resources::replay(&journal) {
                Ok(j) if j.alive.values().all(Vec::is_empty) && j.unanswered == 0 => {}
                Ok(_) => {
                    spared.push(Spared {
                        run_id: run.run_id,
                        why: format!(
                            "its journal may still hold resources: run `cloudswarm cleanup --run-id {id}`"
                        ),
                    });
                    continue;
                }
                Err(e) => {
                    spared.push(Spared {
                        run_id: run.run_id,
                        why: format!("its journal cannot be read: {e:#}"),
                    });
                    continue;
                }
            }
        }
        if run.state != KeptState::Complete && now - newest_change(&dir) < STILL_GOING.as_secs_f64()
        {
            spared.push(Spared {
                run_id: run.run_id,
                why: "it has no final report and changed within the hour: it may still run".into(),
            });
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => deleted.push(run.run_id),
            Err(e) => spared.push(Spared {
                run_id: run.run_id,
                why: format!("cannot delete {}: {e}", dir.display()),
            }),
        }
    }
    (deleted, spared)
}

/// Unix seconds of the latest change to a folder or a file in it.
fn newest_change(dir: &Path) -> f64 {
    let files = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| modified_secs(&e.path()));
    files.fold(modified_secs(dir), f64::max)
}

/// Prunes to make room for a new run under `keep` (the new one counts),
/// and says on stderr what it did not delete.
pub fn prune_for_new_run(state_dir: &Path, keep: usize) {
    if keep == 0 {
        return;
    }
    let (deleted, spared) = prune(state_dir, keep - 1);
    if !deleted.is_empty() {
        tracing::info!(
            "--keep-runs {keep}: deleted the oldest runs {}",
            deleted.join(" ")
        );
    }
    for s in spared {
        eprintln!("--keep-runs {keep}: kept run {} ({})", s.run_id, s.why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(state: &Path, id: &str, started: f64, leaked: Option<u64>, complete: bool) {
        let id = RunId::parse(id).unwrap();
        let k = KeptRun::open(state, &id).unwrap();
        let v = serde_json::json!({
            "schema": 1, "run_id": id.as_str(), "profile": "smoke", "started_at": started,
            "duration_s": 10.0, "users": 2, "complete": complete,
            "total": {"name": "Aggregated", "num_requests": 200, "num_failures": 2},
            "resources": {"leaked": leaked},
        });
        if complete {
            k.write_final(&v, "<html></html>", &[("stats", "a,b\n".into())])
                .unwrap();
        } else {
            k.write_snapshot(&v).unwrap();
        }
    }

    #[test]
    fn runs_are_listed_newest_first_and_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        kept(s, "old1", 100.0, Some(0), true);
        kept(s, "mid2", 200.0, Some(0), true);
        kept(s, "new3", 300.0, Some(0), true);
        // An old run whose clean-up left something, with its journal: spared.
        kept(s, "leak0", 50.0, Some(1), true);
        std::fs::write(
            s.join("runs/leak0/journal.jsonl"),
            "{\"ev\":\"intent\",\"seq\":1,\"kind\":\"bucket\",\"name\":\"cs-leak0-1\"}\n\
             {\"ev\":\"created\",\"seq\":1,\"kind\":\"bucket\",\"id\":\"cs-leak0-1\"}\n",
        )
        .unwrap();
        let l = list(s);
        let ids: Vec<&str> = l.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["new3", "mid2", "old1", "leak0"]);
        assert_eq!(l[0].requests, 200);
        assert!((l[0].failure_pct - 1.0).abs() < 1e-9);
        assert_eq!(l[0].sla, "none");
        assert_eq!(l[0].state, KeptState::Complete);
        assert!(!l[0].journal);
        assert_eq!(l[0].files, ["report.html", "report.json", "stats.csv"]);
        let (deleted, spared) = prune(s, 2);
        assert_eq!(deleted, ["old1"]);
        assert_eq!(spared.len(), 1, "{spared:?}");
        assert_eq!(spared[0].run_id, "leak0");
        let ids: Vec<String> = list(s).into_iter().map(|r| r.run_id).collect();
        assert_eq!(ids, ["new3", "mid2", "leak0"]);
        // 0 keeps every run.
        assert_eq!(prune(s, 0).0.len(), 0);
    }

    #[test]
    fn a_snapshot_is_a_run_still_going_and_the_final_report_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        kept(s, "going1", 100.0, None, false);
        kept(s, "done2", 200.0, Some(0), true);
        let l = list(s);
        assert_eq!(l[1].state, KeptState::Snapshot);
        // Fresh: it may still run, so it is spared.
        let (deleted, spared) = prune(s, 1);
        assert!(deleted.is_empty() && spared.len() == 1, "{spared:?}");
        kept(s, "going1", 100.0, Some(0), true);
        assert!(!s.join("runs/going1").join(SNAPSHOT).exists());
        assert_eq!(list(s)[1].state, KeptState::Complete);
        // Resolving: by id, by file, by folder; a missing run says so.
        assert_eq!(resolve(s, "going1").unwrap().run_id, "going1");
        let f = s.join("runs/done2/report.json");
        assert_eq!(resolve(s, f.to_str().unwrap()).unwrap().run_id, "done2");
        let d = s.join("runs/done2");
        assert_eq!(resolve(s, d.to_str().unwrap()).unwrap().run_id, "done2");
        assert!(resolve(s, "nope9").unwrap_err().contains("no run nope9"));
        assert!(
            resolve(s, "Not-An-Id")
                .unwrap_err()
                .contains("neither a file nor a run id")
        );
    }
}
