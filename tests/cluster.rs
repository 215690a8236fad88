//! Beyond one machine on Locust's protocol, for real: a stock Locust
//! master (pip `locust`, the version of locust-protocol.md) drives
//! cloudswarm workers against moto, all on loopback.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The venv's `locust` (next to moto_server).
fn locust_bin() -> PathBuf {
    let moto = std::env::var("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".venv/bin/moto_server"));
    let p = moto.parent().unwrap().join("locust");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (the test command does)",
        p.display()
    );
    p
}

fn worker(moto: &Moto, port: u16, state: &Path, profile: &str) -> Child {
    cloudswarm()
        .args(["worker", "-f", profile, "--master-port", &port.to_string()])
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .args(["--state-dir", state.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker")
}

/// Waits for a child to exit within `limit`; kills it if it does not.
fn wait_out(mut c: Child, limit: Duration, what: &str) -> (Option<i32>, String, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = c.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = c.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.is_some(),
        "{what} did not exit within {limit:?}\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    (status.and_then(|s| s.code()), out, err)
}

/// `worker X: reported N requests, F failures in R stats reports`.
fn reported(out: &str) -> (u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("worker ") && l.contains(": reported "))
        .unwrap_or_else(|| panic!("no `reported` line in\n{out}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let n = nums.len();
    (nums[n - 3], nums[n - 2], nums[n - 1])
}

/// The run ids a worker printed (`worker: run X started`).
fn runs_of(err: &str) -> Vec<String> {
    err.lines()
        .filter_map(|l| l.strip_prefix("worker: run "))
        .filter(|l| l.contains(" started"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

/// Locust's stats CSV: (type, name) → (requests, failures).
fn locust_csv(path: &Path) -> BTreeMap<(String, String), (u64, u64)> {
    let mut rd = csv::Reader::from_path(path).unwrap();
    let h = rd.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|c| c == n).unwrap();
    let (t, name, reqs, fails) = (
        col("Type"),
        col("Name"),
        col("Request Count"),
        col("Failure Count"),
    );
    rd.records()
        .map(|r| {
            let r = r.unwrap();
            (
                (r[t].to_string(), r[name].to_string()),
                (r[reqs].parse().unwrap(), r[fails].parse().unwrap()),
            )
        })
        .collect()
}

#[test]
fn a_stock_locust_master_drives_two_cloudswarm_workers() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = "profiles/burn-in.toml";
    let lf = cloudswarm().args(["locustfile", profile]).output().unwrap();
    assert!(lf.status.success(), "{}", text(&lf));
    let locustfile = dir.path().join("locustfile.py");
    std::fs::write(&locustfile, &lf.stdout).unwrap();

    let port = free_port();
    let prefix = dir.path().join("master");
    let master = Command::new(locust_bin())
        .current_dir(dir.path())
        .args(["-f", locustfile.to_str().unwrap()])
        .args(["--master", "--headless", "--expect-workers", "2"])
        .args(["--master-bind-host", "127.0.0.1"])
        .args(["--master-bind-port", &port.to_string()])
        .args(["-u", "6", "-r", "6", "-t", "15s"])
        .args(["--csv", prefix.to_str().unwrap()])
        .args(["--loglevel", "INFO"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Locust master");
    let states: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let workers: Vec<Child> = states
        .iter()
        .map(|s| worker(&moto, port, s.path(), profile))
        .collect();

    let (_, m_out, m_err) = wait_out(master, Duration::from_secs(120), "the Locust master");
    let outs: Vec<(Option<i32>, String, String)> = workers
        .into_iter()
        .map(|w| wait_out(w, Duration::from_secs(120), "a worker"))
        .collect();
    let all = || {
        let mut s = format!("--- master stdout\n{m_out}\n--- master stderr\n{m_err}\n");
        for (i, (c, o, e)) in outs.iter().enumerate() {
            s += &format!("--- worker {i} ({c:?}) stdout\n{o}\n--- stderr\n{e}\n");
        }
        s
    };

    // Each worker quit when the master did, cleanly, under a run of its own.
    let mut sent = (0, 0);
    let mut runs = vec![];
    for (code, out, err) in &outs {
        assert_eq!(*code, Some(0), "{}", all());
        let (reqs, fails, reports) = reported(out);
        assert!(reqs > 0 && reports >= 3, "{}", all());
        sent.0 += reqs;
        sent.1 += fails;
        let r = runs_of(err);
        assert_eq!(r.len(), 1, "one run per worker\n{}", all());
        assert!(
            out.contains(&format!("run {}: nothing left", r[0])),
            "{}",
            all()
        );
        runs.extend(r);
    }
    assert_ne!(
        runs[0], runs[1],
        "each worker has its own run under a stock master"
    );

    // The master counted exactly what the workers sent, on rows of their own.
    let rows = locust_csv(&dir.path().join("master_stats.csv"));
    let total = rows
        .get(&(String::new(), "Aggregated".to_string()))
        .copied()
        .unwrap_or_else(|| panic!("no Aggregated row: {rows:?}\n{}", all()));
    assert_eq!(
        total,
        sent,
        "master's totals vs the workers' reports\n{}",
        all()
    );
    for (service, op) in [("ec2", "ec2:RunInstances"), ("s3", "s3:PutObject")] {
        let row = rows
            .get(&(service.to_string(), op.to_string()))
            .unwrap_or_else(|| panic!("no {op} row: {rows:?}"));
        assert!(row.0 > 0, "{op}: {row:?}");
    }
    // Nothing of either run is left in the cloud.
    let rt = tokio::runtime::Runtime::new().unwrap();
    for run in &runs {
        let left = rt.block_on(everything_of_run(&moto, run));
        assert!(left.is_empty(), "run {run} left {left:?}");
    }
}
