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

/// A child whose stderr lines are collected as they come, with when.
struct Watched {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watched {
    fn new(mut child: Child) -> Watched {
        use std::io::BufRead;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push((Instant::now(), line));
            }
        });
        let out = child.stdout.take().unwrap();
        let o = stdout.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::BufReader::new(out).read_to_string(&mut s);
            *o.lock().unwrap() = s;
        });
        Watched {
            child,
            lines,
            stdout,
        }
    }

    /// The first stderr line containing `needle`, waiting up to `limit`.
    fn wait_line(&self, needle: &str, limit: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(needle))
            {
                return Some(l.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        let l = self.lines.lock().unwrap();
        l.iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for exit; the code and stdout.
    fn finish(&mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(300));
        let out = self.stdout.lock().unwrap().clone();
        assert!(
            status.is_some(),
            "did not exit within {limit:?}\n--- stdout\n{out}\n--- stderr\n{}",
            self.stderr()
        );
        (status.and_then(|s| s.code()), out)
    }

    /// The worker's node id (its first line).
    fn node_id(&self) -> String {
        let (_, l) = self
            .wait_line("cloudswarm worker ", Duration::from_secs(30))
            .expect("a worker's first line");
        l["cloudswarm worker ".len()..]
            .split(':')
            .next()
            .unwrap()
            .to_string()
    }
}

/// The state directory of a master whose JSON report is `json`: next to it.
fn master_state(json: &Path) -> PathBuf {
    json.parent().unwrap().join("master-state")
}

fn master(profile: &str, port: u16, json: &Path, extra: &[&str]) -> Watched {
    Watched::new(
        cloudswarm()
            .args(["run", "--master", "-f", profile])
            .args(["--master-bind-port", &port.to_string()])
            .args(["--json", json.to_str().unwrap(), "--status-every", "1"])
            .env("CLOUDSWARM_STATE_DIR", master_state(json))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the master"),
    )
}

/// A summary table's rows: name → (requests, max ms).
fn summary_rows(out: &str) -> BTreeMap<String, (u64, f64)> {
    out.lines()
        .filter(|l| l.starts_with("ec2:") || l.starts_with("s3:") || l.starts_with("Aggregated"))
        // The first table (the second, of percentiles, has no `|`).
        .filter(|l| l.contains(" | "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Name, # reqs, fails(%), |, Avg, Min, Max, ...
            let max = f.get(6)?.parse().ok()?;
            Some((f[0].to_string(), (f[1].parse().ok()?, max)))
        })
        .collect()
}

#[test]
fn cloudswarms_master_merges_its_workers_exactly_and_shares_users_with_a_late_one() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let json = dir.path().join("report.json");
    let profile = "profiles/storage.toml";
    let mut m = master(
        profile,
        port,
        &json,
        &["--expect-workers", "2", "-u", "6", "-r", "6", "-t", "20s"],
    );
    let states: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut workers: Vec<Watched> = states[..2]
        .iter()
        .map(|s| Watched::new(worker(&moto, port, s.path(), profile)))
        .collect();
    let (_, started) = m
        .wait_line(" on 2 worker(s)", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the run did not start\n{}", m.stderr()));
    let run_id = started.split_whitespace().nth(2).unwrap().to_string();
    assert!(
        m.wait_line("6 users over 2 workers", Duration::from_secs(10))
            .is_some(),
        "{}",
        m.stderr()
    );
    std::thread::sleep(Duration::from_secs(5));
    workers.push(Watched::new(worker(&moto, port, states[2].path(), profile)));
    assert!(
        m.wait_line("6 users over 3 workers", Duration::from_secs(20))
            .is_some(),
        "a late worker gets a share\n{}",
        m.stderr()
    );
    let (code, m_out) = m.finish(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{m_out}\n{}", m.stderr());
    let mut rows: Vec<BTreeMap<String, (u64, f64)>> = vec![];
    for w in workers.iter_mut() {
        let (code, out) = w.finish(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{out}\n{}", w.stderr());
        // Every worker ran under the master's run id.
        assert!(
            w.wait_line(&format!("worker: run {run_id} started"), Duration::ZERO)
                .is_some(),
            "{}",
            w.stderr()
        );
        assert!(
            out.contains(&format!("run {run_id}: nothing left")),
            "{out}"
        );
        rows.push(summary_rows(&out));
    }
    assert!(
        rows[2].get("Aggregated").is_some_and(|r| r.0 > 0),
        "the late worker sent requests: {:?}",
        rows[2]
    );

    // The master's figures are the workers' sums; its max is the largest.
    let report = read_json(&json);
    assert_eq!(report["run_id"], run_id.as_str());
    let total = &report["total"];
    let sum: u64 = rows.iter().map(|r| r["Aggregated"].0).sum();
    assert_eq!(total["num_requests"].as_u64().unwrap(), sum, "{report:#}");
    for name in ["s3:PutObject", "s3:GetObject", "s3:CreateBucket"] {
        let e = find_entry(&report, name).unwrap_or_else(|| panic!("no {name}"));
        let sum: u64 = rows.iter().filter_map(|r| r.get(name)).map(|r| r.0).sum();
        assert_eq!(e["num_requests"].as_u64().unwrap(), sum, "{name}");
        let max = rows
            .iter()
            .filter_map(|r| r.get(name))
            .map(|r| r.1)
            .fold(0.0, f64::max);
        let merged = e["max_ms"].as_f64().unwrap();
        // The workers' tables print 2 or 3 significant digits.
        assert!(
            (merged - max).abs() <= 0.006 * max + 0.006,
            "{name}: merged max {merged} vs the workers' largest {max}: {rows:?}\n{e:#}"
        );
    }
    let listed = report["workers"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{report:#}");
    // The run is kept on the master's machine, without a journal (each
    // worker keeps its own), and `runs` says so.
    let kept = master_state(&json).join("runs").join(&run_id);
    let k = read_json(&kept.join("report.json"));
    assert_eq!(k["total"], report["total"]);
    assert!(k["workers"].is_array() && kept.join("report.html").is_file());
    assert!(!kept.join("journal.jsonl").exists());
    let out = cloudswarm()
        .args(["runs", "--state-dir", master_state(&json).to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains(&run_id) && out.contains("on workers: no journal here"),
        "{out}"
    );
    assert!(
        listed
            .iter()
            .all(|w| w["exact"] == true && w["num_requests"].as_u64() > Some(0)),
        "{listed:#?}"
    );
    assert_eq!(report["resources"]["leaked"], 0, "{report:#}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(rt.block_on(everything_of_run(&moto, &run_id)).is_empty());
}

#[test]
fn run_master_aborts_on_an_sla_breach_of_its_merged_figures() {
    // The master judges its workers' merged figures every second like a
    // local run's: a breach stops the run, the workers clean up, exit 1.
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let json = dir.path().join("report.json");
    let profile = "profiles/storage.toml";
    let broken = "p95[30s](s3:PutObject)<0.2ms";
    let t0 = Instant::now();
    let mut m = master(
        profile,
        port,
        &json,
        &[
            "--expect-workers",
            "1",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "90s",
            "--sla",
            broken,
            "--sla",
            "failure_rate<50%",
            "--abort-on-sla-failure",
        ],
    );
    let state = tempfile::tempdir().unwrap();
    let mut w = Watched::new(worker(&moto, port, state.path(), profile));
    let (code, _) = m.finish(Duration::from_secs(120));
    let took = t0.elapsed();
    assert_eq!(code, Some(1), "{}", m.stderr());
    assert!(
        took < Duration::from_secs(60),
        "stopped well before the 90 s run time: {took:?}\n{}",
        m.stderr()
    );
    assert!(
        m.wait_line(
            &format!("stopping (SLA `{broken}` broke: actual "),
            Duration::ZERO
        )
        .is_some(),
        "{}",
        m.stderr()
    );
    let (wcode, _) = w.finish(Duration::from_secs(60));
    assert_eq!(wcode, Some(0), "{}", w.stderr());
    let report = read_json(&json);
    eprintln!("took {took:?}: {:#}", report["sla"]);
    assert_eq!(report["aborted_by_sla"]["sla"], broken, "{report:#}");
    let sla = report["sla"].as_array().unwrap();
    assert_eq!(
        (sla[0]["ok"].as_bool(), sla[1]["ok"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(sla[0]["first_breach_at"].as_f64().unwrap() > report["started_at"].as_f64().unwrap());
    assert_eq!(report["resources"]["leaked"], 0, "{report:#}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run_id = report["run_id"].as_str().unwrap();
    assert!(rt.block_on(everything_of_run(&moto, run_id)).is_empty());
}

#[test]
fn a_worker_killed_mid_run_is_missing_within_5_s_and_a_live_worker_cleans_up_for_it() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let json = dir.path().join("report.json");
    let profile = "profiles/burn-in.toml";
    let mut m = master(
        profile,
        port,
        &json,
        &["--expect-workers", "3", "-u", "9", "-r", "9", "-t", "25s"],
    );
    let states: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut workers: Vec<Watched> = states
        .iter()
        .map(|s| Watched::new(worker(&moto, port, s.path(), profile)))
        .collect();
    let (_, started) = m
        .wait_line(" on 3 worker(s)", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the run did not start\n{}", m.stderr()));
    let run_id = started.split_whitespace().nth(2).unwrap().to_string();
    // Let the victim create resources, then kill it outright.
    std::thread::sleep(Duration::from_secs(8));
    let victim = workers.remove(0);
    let victim_id = victim.node_id();
    let mut child = victim.child;
    child.kill().unwrap();
    let killed = Instant::now();
    let _ = child.wait();
    let (at, _) = m
        .wait_line(
            &format!("worker {victim_id} is missing"),
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("never marked missing\n{}", m.stderr()));
    let after = at.duration_since(killed);
    assert!(after < Duration::from_secs(5), "missing after {after:?}");
    // Its users moved to the two others.
    let (_, moved) = m
        .wait_line("9 users over 2 workers", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("users did not move\n{}", m.stderr()));
    let mut shares: Vec<u64> = moved
        .rsplit(": ")
        .next()
        .unwrap()
        .split(", ")
        .map(|p| p.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    shares.sort();
    assert_eq!(shares, vec![4, 5], "{moved}");
    let (code, out) = m.finish(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{out}\n{}", m.stderr());
    for w in workers.iter_mut() {
        let (code, out) = w.finish(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{out}\n{}", w.stderr());
    }
    let report = read_json(&json);
    // A live worker's clean-up took the missing one's names too, and
    // listed the cloud for them: what is left is known.
    assert_eq!(
        report["resources"]["leaked"],
        0,
        "{:#}\n{}",
        report["resources"],
        m.stderr()
    );
    assert!(
        m.stderr()
            .contains("also cleans up what missing worker(s) "),
        "{}",
        m.stderr()
    );
    assert!(
        workers.iter().any(|w| w
            .stderr()
            .contains("the clean-up also takes what missing worker(s) ")),
        "no worker said it swept for the missing one"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let left = rt.block_on(everything_of_run(&moto, &run_id));
    // Nothing tagged or marked is left; only a bucket the victim made and
    // was killed before marking would be (its journal alone names it).
    assert!(
        left.iter().all(|l| l.starts_with("bucket ")),
        "left after the run: {left:?}\n{}",
        m.stderr()
    );
    let listed = report["workers"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{report:#}");
    for w in listed {
        let is_victim = w["id"] == victim_id.as_str();
        assert_eq!(w["missing"] == true, is_victim, "{w:#}");
    }

    // On the victim's machine, its journal finds whatever else is left.
    let c = cloudswarm()
        .args(["cleanup", "--run-id", &run_id])
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .args(["--state-dir", states[0].path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", text(&c));
    let left = rt.block_on(everything_of_run(&moto, &run_id));
    assert!(
        left.is_empty(),
        "left after cleanup: {left:?}\n{}",
        text(&c)
    );
}

/// One malformed or unwanted frame of kind `k` (of 13), from `me`.
fn bad_frame(k: usize, me: &str, rng: &mut impl rand::Rng) -> Vec<Vec<u8>> {
    use rmpv::Value;
    let enc = |v: &Value| {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    };
    let env =
        |t: &str, d: Value, id: &str| enc(&Value::Array(vec![Value::from(t), d, Value::from(id)]));
    let junk = |rng: &mut dyn rand::RngCore, n: usize| -> Vec<u8> {
        (0..n).map(|_| rng.next_u32() as u8).collect()
    };
    let payload = match k {
        0 => {
            let n = rng.random_range(0..200);
            junk(rng, n)
        }
        1 => {
            let full = env(
                "stats",
                Value::Map(vec![(Value::from("stats"), Value::Array(vec![]))]),
                me,
            );
            full[..rng.random_range(0..full.len())].to_vec()
        }
        2 => env("no_such_type", Value::from(7), me),
        3 => env("heartbeat", Value::Nil, "someone_else"),
        4 => env(
            "stats",
            Value::Map(vec![
                (
                    Value::from("stats"),
                    Value::Array(vec![Value::from(1), Value::Nil]),
                ),
                (Value::from("stats_total"), Value::from("x")),
                (Value::from("errors"), Value::Array(vec![])),
            ]),
            me,
        ),
        5 => env(
            "heartbeat",
            Value::Map(vec![(Value::from("state"), Value::from(12))]),
            me,
        ),
        6 => env("client_ready", Value::from("2.47.0"), me),
        7 => env(
            "cloudswarm_hello",
            Value::Map(vec![(Value::from("token"), Value::from("wrong"))]),
            me,
        ),
        8 => env("spawning_complete", Value::Map(vec![]), me),
        9 => enc(&Value::Array(vec![
            Value::Binary(b"client_ready".to_vec()),
            Value::from(-1),
            Value::Binary(me.as_bytes().to_vec()),
        ])),
        10 => {
            // Deeper than the decoder goes.
            let mut v = Value::Nil;
            for _ in 0..200 {
                v = Value::Array(vec![v]);
            }
            env("stats", v, me)
        }
        11 => {
            // A string header claiming 2 GiB, then little.
            let mut b = vec![0x93, 0xa5];
            b.extend_from_slice(b"stats");
            b.push(0xdb);
            b.extend_from_slice(&0x8000_0000u32.to_be_bytes());
            b.extend_from_slice(b"short");
            b
        }
        _ => {
            // Three frames where one is expected, and now and then a big one.
            let big = if rng.random_range(0..100) == 0 {
                1 << 20
            } else {
                10
            };
            return vec![junk(rng, 5), vec![0u8; big], junk(rng, 5)];
        }
    };
    vec![payload]
}

/// Sends `n` malformed or unwanted frames to the master at `port` from 20
/// DEALERs, and some raw garbage over TCP; answers how many were sent, and
/// the DEALERs (to drop once the master has read everything).
async fn fuzz(port: u16, n: usize) -> (usize, Vec<zeromq::DealerSocket>) {
    use rand::SeedableRng;
    use zeromq::{DealerSocket, Socket, SocketSend, ZmqMessage};
    let (mut sent, mut sockets) = (0, vec![]);
    let mut tasks = vec![];
    for d in 0..20 {
        let per = n / 20 + 1;
        tasks.push(tokio::spawn(async move {
            let me = format!("fuzz_{d}");
            let mut opts = zeromq::SocketOptions::default();
            opts.peer_identity(
                zeromq::util::PeerIdentity::try_from(me.as_bytes().to_vec()).unwrap(),
            );
            let mut s = DealerSocket::with_options(opts);
            s.connect(&format!("tcp://127.0.0.1:{port}")).await.unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(d);
            let mut ok = 0;
            for i in 0..per {
                let frames = bad_frame(i % 13, &me, &mut rng);
                let msg = ZmqMessage::try_from(
                    frames
                        .into_iter()
                        .map(bytes::Bytes::from)
                        .collect::<Vec<_>>(),
                )
                .unwrap();
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(10), s.send(msg)).await
                {
                    ok += 1;
                }
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            // The socket stays open (the caller drops it) so that nothing
            // queued is lost with it.
            (ok, s)
        }));
    }
    for _ in 0..20 {
        // Not ZeroMQ at all.
        if let Ok(mut c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::AsyncWriteExt;
            let _ = c
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\xff\xff\xff")
                .await;
        }
    }
    for t in tasks {
        let (ok, s) = t.await.unwrap();
        sent += ok;
        sockets.push(s);
    }
    (sent, sockets)
}

#[test]
fn ten_thousand_malformed_frames_leave_the_master_serving_and_its_figures_intact() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let json = dir.path().join("report.json");
    let profile = "profiles/storage.toml";
    let mut m = Watched::new(
        cloudswarm()
            .args(["run", "--master", "-f", profile])
            .args(["--master-bind-port", &port.to_string()])
            .args(["--json", json.to_str().unwrap(), "--status-every", "1"])
            .args(["--expect-workers", "2", "-u", "4", "-r", "4", "-t", "20s"])
            .env("CLOUDSWARM_WORKER_TOKEN", "fuzz-test-token")
            .env("CLOUDSWARM_STATE_DIR", master_state(&json))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let states: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut workers: Vec<Watched> = states
        .iter()
        .map(|s| {
            // No -f: the master sends its profile.
            Watched::new(
                cloudswarm()
                    .args(["worker", "--master-port", &port.to_string()])
                    .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
                    .args(["--state-dir", s.path().to_str().unwrap()])
                    .env("CLOUDSWARM_WORKER_TOKEN", "fuzz-test-token")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let (_, started) = m
        .wait_line(" on 2 worker(s)", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the run did not start\n{}", m.stderr()));
    let run_id = started.split_whitespace().nth(2).unwrap().to_string();
    let rss_before = rss_kib(m.child.id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sent, sockets) = rt.block_on(fuzz(port, 10_000));
    assert!(sent >= 10_000, "sent {sent}");
    let rss_after = rss_kib(m.child.id());
    let (code, out) = m.finish(Duration::from_secs(120));
    rt.block_on(async move { drop(sockets) });
    assert_eq!(code, Some(0), "{out}\n{}", m.stderr());
    let (_, dropped) = m
        .wait_line("master: dropped ", Duration::ZERO)
        .unwrap_or_else(|| panic!("no dropped count\n{}", m.stderr()));
    let dropped: u64 = dropped.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(dropped >= 9_000, "{dropped} frames dropped of {sent}");
    assert!(
        rss_after < rss_before + 100 * 1024,
        "master memory {rss_before} KiB → {rss_after} KiB"
    );
    // The run's figures are exactly the workers' sums: no frame changed them.
    let mut sum = 0;
    for w in workers.iter_mut() {
        let (code, out) = w.finish(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{out}\n{}", w.stderr());
        sum += summary_rows(&out)["Aggregated"].0;
    }
    let report = read_json(&json);
    assert_eq!(report["run_id"], run_id.as_str());
    assert!(sum > 0);
    assert_eq!(
        report["total"]["num_requests"].as_u64().unwrap(),
        sum,
        "{report:#}"
    );
    assert_eq!(
        report["workers"].as_array().unwrap().len(),
        2,
        "no fake worker joined"
    );
    assert!(rt.block_on(everything_of_run(&moto, &run_id)).is_empty());
}

/// A `cloudswarm serve --master` on fixed ports; its stderr kept.
fn master_dashboard(moto: &Moto, port: u16, mport: u16, state: &Path) -> Watched {
    Watched::new(
        cloudswarm()
            .arg("serve")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--master", "--master-bind-port", &mport.to_string()])
            .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
            .args(["--state-dir", state.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn requests(port: u16) -> Option<serde_json::Value> {
    let r = std::panic::catch_unwind(|| http(port, "GET", "/stats/requests", &[], ""));
    r.ok().and_then(|r| serde_json::from_str(&r.body).ok())
}

fn wait_doc(
    port: u16,
    what: &str,
    limit: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = requests(port)
            && ok(&v)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            requests(port)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_worker_rejoins_a_restarted_master_and_quits_after_60_s_of_silence() {
    let moto = Moto::start();
    let (port, mport) = (free_port(), free_port());
    let mstate = tempfile::tempdir().unwrap();
    let mut m = master_dashboard(&moto, port, mport, mstate.path());
    let wstate = tempfile::tempdir().unwrap();
    let mut w = Watched::new(
        cloudswarm()
            .args(["worker", "--master-port", &mport.to_string()])
            .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
            .args(["--state-dir", wstate.path().to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_doc(port, "the worker", Duration::from_secs(60), |v| {
        v["worker_count"] == 1
    });
    let r = http(
        port,
        "POST",
        "/swarm",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "user_count=2&spawn_rate=2&profile=storage",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let first: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let first = first["run_id"].as_str().unwrap().to_string();
    wait_doc(port, "requests", Duration::from_secs(30), |v| {
        v["stats"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r["name"] == "s3:PutObject"))
    });

    // The master dies; another takes its port and starts a run of its own.
    let _ = m.child.kill();
    let _ = m.child.wait();
    let mut m2 = master_dashboard(&moto, port, mport, mstate.path());
    wait_doc(port, "the worker back", Duration::from_secs(30), |v| {
        v["worker_count"] == 1
    });
    let r = http(
        port,
        "POST",
        "/swarm",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "user_count=2&spawn_rate=2&profile=storage",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let second: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let second = second["run_id"].as_str().unwrap().to_string();
    // The worker stops and cleans up the orphaned run, then runs the new one.
    assert!(
        w.wait_line(
            &format!("worker: run {second} started"),
            Duration::from_secs(60)
        )
        .is_some(),
        "{}",
        w.stderr()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(
        rt.block_on(everything_of_run(&moto, &first)).is_empty(),
        "the orphaned run was cleaned up\n{}",
        w.stderr()
    );

    // Now the master goes for good: the worker quits after 60 s of silence,
    // cleaning up what it made.
    let _ = m2.child.kill();
    let _ = m2.child.wait();
    let gone = Instant::now();
    let (code, out) = w.finish(Duration::from_secs(120));
    let waited = gone.elapsed();
    assert_eq!(code, Some(0), "{out}\n{}", w.stderr());
    assert!(
        waited >= Duration::from_secs(55) && waited < Duration::from_secs(90),
        "quit after {waited:?}"
    );
    assert!(
        w.stderr().contains("has been silent for 60 s"),
        "{}",
        w.stderr()
    );
    assert!(
        out.contains(&format!("run {second}: nothing left")),
        "{out}"
    );
    assert!(rt.block_on(everything_of_run(&moto, &second)).is_empty());
}

#[test]
fn a_stock_locust_worker_under_cloudswarms_master_counts_through_its_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let lf = dir.path().join("fake.py");
    std::fs::write(
        &lf,
        r#"
from locust import User, task, constant

class writer(User):
    wait_time = constant(0.05)
    @task
    def put(self):
        self.environment.events.request.fire(request_type="s3", name="s3:PutObject",
            response_time=12.5, response_length=1024, exception=None, context={})

class reader(User):
    wait_time = constant(0.05)
    @task
    def get(self):
        self.environment.events.request.fire(request_type="s3", name="s3:GetObject",
            response_time=130.0, response_length=2048, exception=None, context={})
"#,
    )
    .unwrap();
    let port = free_port();
    let json = dir.path().join("report.json");
    let mut m = master(
        "profiles/storage.toml",
        port,
        &json,
        // Locust's worker sleeps the stop timeout before it reads the next message.
        &[
            "--expect-workers",
            "1",
            "-u",
            "3",
            "-r",
            "3",
            "-t",
            "8s",
            "--stop-timeout",
            "0s",
        ],
    );
    let worker = Watched::new(
        Command::new(locust_bin())
            .current_dir(dir.path())
            .args(["-f", lf.to_str().unwrap(), "--worker"])
            .args([
                "--master-host",
                "127.0.0.1",
                "--master-port",
                &port.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (code, out) = m.finish(Duration::from_secs(90));
    assert_eq!(code, Some(0), "{out}\n{}", m.stderr());
    let mut worker = worker;
    let (wcode, _) = worker.finish(Duration::from_secs(30));
    assert!(wcode.is_some(), "the Locust worker quit when told");
    let report = read_json(&json);
    let put = find_entry(&report, "s3:PutObject").unwrap_or_else(|| panic!("{report:#}"));
    assert!(put["num_requests"].as_u64() > Some(10), "{put}");
    // Its ms buckets stand in for a histogram (12.5 ms is in bucket 12, as
    // Python rounds), clamped by the exact min and max it reports.
    assert_eq!(put["p50_ms"].as_f64(), Some(12.5), "{put}");
    assert_eq!(put["max_ms"].as_f64(), Some(12.5), "{put}");
    let get = find_entry(&report, "s3:GetObject").unwrap();
    assert_eq!(get["p50_ms"].as_f64(), Some(130.0), "{get}");
    let w = &report["workers"][0];
    assert_eq!(w["exact"], false, "{w}");
    // A stock worker's last figures come with its quit, after the master
    // listed its workers: the list may lag the total by that last report.
    let (listed, total) = (
        w["num_requests"].as_u64().unwrap(),
        report["total"]["num_requests"].as_u64().unwrap(),
    );
    assert!(listed > 0 && listed <= total, "{report:#}");
    // A stock worker says nothing about resources: unknown, not zero.
    assert!(report["resources"]["leaked"].is_null(), "{report:#}");
}

#[test]
fn a_spawn_naming_a_class_the_profile_lacks_is_reported_not_fatal() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = "profiles/storage.toml";
    let lf = cloudswarm().args(["locustfile", profile]).output().unwrap();
    let mut py = String::from_utf8(lf.stdout).unwrap();
    py.push_str("\n\nclass ghost(_Profile):\n    weight = 3\n");
    let locustfile = dir.path().join("ghost.py");
    std::fs::write(&locustfile, py).unwrap();
    let port = free_port();
    let prefix = dir.path().join("m");
    let master = Watched::new(
        Command::new(locust_bin())
            .current_dir(dir.path())
            .args(["-f", locustfile.to_str().unwrap()])
            .args(["--master", "--headless", "--expect-workers", "1"])
            .args(["--master-bind-host", "127.0.0.1"])
            .args(["--master-bind-port", &port.to_string()])
            .args([
                "-u",
                "6",
                "-r",
                "6",
                "-t",
                "8s",
                "--csv",
                prefix.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let state = tempfile::tempdir().unwrap();
    let mut w = Watched::new(worker(&moto, port, state.path(), profile));
    let mut master = master;
    let (_, m_out) = master.finish(Duration::from_secs(90));
    let (code, out) = w.finish(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "the worker carried on\n{out}\n{}",
        w.stderr()
    );
    assert!(
        w.stderr().contains(
            "spawn names user classes profile profiles/storage.toml does not have: ghost"
        ),
        "{}",
        w.stderr()
    );
    // The master heard it: Locust lists workers' exceptions in its CSV.
    let exceptions =
        std::fs::read_to_string(dir.path().join("m_exceptions.csv")).unwrap_or_default();
    assert!(
        exceptions.contains("does not have: ghost"),
        "{exceptions}\n{m_out}\n{}",
        master.stderr()
    );
    // The classes it knows ran.
    let (reqs, _, _) = reported(&out);
    assert!(reqs > 0, "{out}");
}

/// An open class under cloudswarm's master: the profile's rate and each
/// `rate=` stage are the rate in all, split between the two workers as
/// their users are (not run in full by each), and the status line says it.
#[test]
fn run_master_splits_arrival_rates_between_workers_and_follows_rate_stages() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("open.toml");
    std::fs::write(
        &profile,
        "[[user]]\nname = \"api\"\narrival_rate = \"10/s\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n",
    )
    .unwrap();
    let profile = profile.to_str().unwrap();
    let port = free_port();
    let json = dir.path().join("report.json");
    let mut m = master(
        profile,
        port,
        &json,
        &[
            "--expect-workers",
            "2",
            // A pool big enough that a stall of moto's does not drop arrivals.
            "-u",
            "24",
            "-r",
            "100",
            "--stages",
            "rate=20/s:6s,rate=40/s:6s",
        ],
    );
    let states = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut ws: Vec<Watched> = states
        .iter()
        .map(|s| Watched::new(worker(&moto, port, s.path(), profile)))
        .collect();
    let (code, _) = m.finish(Duration::from_secs(90));
    assert_eq!(code, Some(0), "{}", m.stderr());
    for w in &mut ws {
        let (c, _) = w.finish(Duration::from_secs(60));
        assert_eq!(c, Some(0), "{}", w.stderr());
    }
    // 6 s at 20/s and 6 s at 40/s: 360 task starts in all (720 if each
    // worker ran the whole rate), less what the workers' start-up took.
    let report = read_json(&json);
    let starts = find_entry(&report, "arrival:api").expect("arrival:api row")["num_requests"]
        .as_u64()
        .unwrap();
    assert!(
        (280..=378).contains(&starts),
        "{starts} task starts\n{}",
        m.stderr()
    );
    let dropped = report["dropped"]["api"].as_u64().unwrap_or(0);
    eprintln!("{starts} task starts, {dropped} dropped");
    assert!(dropped * 100 <= starts, "{dropped} dropped of {starts}");
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{report:#}");
    for w in workers {
        let n = w["num_requests"].as_u64().unwrap();
        assert!(
            n * 3 >= starts,
            "each worker ran about half: {w} of {starts}"
        );
    }
    for rate in ["arrivals api 20/s", "arrivals api 40/s"] {
        assert!(
            m.wait_line(rate, Duration::ZERO).is_some(),
            "{rate}\n{}",
            m.stderr()
        );
    }
}

/// `--find-max` under cloudswarm's master: the two workers share each
/// step's rate through an nginx that lets 10 requests a second through
/// (answering the rest 503), so the steps hold at 4/s and 8/s and the
/// 12/s step is throttled, as on one machine.
#[test]
fn run_master_finds_the_max_rate_over_its_workers() {
    let moto = Moto::start();
    let front = Nginx::rate_limited(&moto.url, 10);
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("cap.toml");
    std::fs::write(
        &profile,
        "[params]\nobject_size = \"1KiB\"\nbucket = \"shared\"\n\
         [[user]]\nname = \"api\"\narrival_rate = \"4/s\"\n[[user.task]]\nop = \"s3:PutObject\"\n",
    )
    .unwrap();
    let profile = profile.to_str().unwrap();
    let port = free_port();
    let json = dir.path().join("report.json");
    let mut m = master(
        profile,
        port,
        &json,
        &[
            "--expect-workers",
            "2",
            "-u",
            "8",
            "-r",
            "100",
            "--find-max",
            "4/s:4/s:4s",
            "-t",
            "2m",
        ],
    );
    let states = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut ws: Vec<Watched> = states
        .iter()
        .map(|s| {
            Watched::new(
                cloudswarm()
                    .args(["worker", "-f", profile, "--master-port", &port.to_string()])
                    .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &front.url])
                    .args(["--state-dir", s.path().to_str().unwrap()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let (code, out) = m.finish(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{}", m.stderr());
    for w in &mut ws {
        let (c, _) = w.finish(Duration::from_secs(60));
        assert_eq!(c, Some(0), "{}", w.stderr());
    }
    let report = read_json(&json);
    let cap = &report["capacity"];
    assert_eq!(
        cap["max_rate"].as_f64(),
        Some(8.0),
        "{cap:#}\n{}",
        m.stderr()
    );
    assert_eq!(cap["stopped_by"], "throttle_rate", "{cap:#}");
    let steps = cap["steps"].as_array().unwrap();
    eprintln!("{cap:#}");
    assert_eq!(steps.len(), 3, "{cap:#}");
    for (i, rate) in [4.0, 8.0, 12.0].iter().enumerate() {
        let achieved = steps[i]["achieved_rate"].as_f64().unwrap();
        assert!(
            (achieved - rate).abs() <= rate * 0.3,
            "step {i}: achieved {achieved} for {rate} in all, not per worker\n{cap:#}"
        );
    }
    // Both workers took their share of the steps.
    for w in report["workers"].as_array().unwrap() {
        assert!(w["num_requests"].as_u64().unwrap() > 10, "{w}");
    }
    assert!(
        out.contains("the highest arrival rate that held: 8/s"),
        "{out}"
    );
}

/// The sum over the workers' `/metrics` of `cloudswarm_arrival_rate{class}`,
/// and each worker's value (None while a worker's page is not up).
fn worker_rates(ports: &[u16], class: &str) -> Option<(f64, Vec<f64>)> {
    let want = format!("cloudswarm_arrival_rate{{class=\"{class}\"}} ");
    let mut each = vec![];
    for &p in ports {
        std::net::TcpStream::connect(("127.0.0.1", p)).ok()?;
        let m = std::panic::catch_unwind(|| http(p, "GET", "/metrics", &[], "")).ok()?;
        let v = m
            .body
            .lines()
            .find_map(|l| l.strip_prefix(&want)?.parse::<f64>().ok())
            .unwrap_or(0.0);
        each.push(v);
    }
    Some((each.iter().sum(), each))
}

/// `serve --master`: the start form's arrival rate and an edit's are the
/// rate in all; the workers' engines (their own `/metrics`) run shares that
/// add up to it, split as the open class's users are.
#[test]
fn serve_master_splits_the_forms_arrival_rate_between_its_workers() {
    let moto = Moto::start();
    let (port, mport) = (free_port(), free_port());
    let mstate = tempfile::tempdir().unwrap();
    let mut m = master_dashboard(&moto, port, mport, mstate.path());
    let states = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let metrics = [free_port(), free_port()];
    let mut ws: Vec<Child> = states
        .iter()
        .zip(metrics)
        .map(|(s, mp)| {
            cloudswarm()
                .args(["worker", "--master-port", &mport.to_string()])
                .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
                .args(["--state-dir", s.path().to_str().unwrap()])
                .args(["--metrics-bind", &format!("127.0.0.1:{mp}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_doc(port, "two workers", Duration::from_secs(60), |v| {
        v["worker_count"] == 2
    });
    let post = |pairs: &[(&str, &str)]| {
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('/', "%2F")))
            .collect::<Vec<_>>()
            .join("&");
        http(
            port,
            "POST",
            "/swarm",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &body,
        )
    };
    // open-storage: 9 of 10 users are the open class `api` (5 and 4 per worker).
    let r = post(&[
        ("user_count", "10"),
        ("spawn_rate", "20"),
        ("profile", "open-storage"),
        ("arrival_rate", "18/s"),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    for total in [18.0, 36.0] {
        if total > 18.0 {
            let r = post(&[
                ("user_count", "10"),
                ("spawn_rate", "20"),
                ("arrival_rate", "36/s"),
            ]);
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let v = wait_doc(
            port,
            "the rate in /stats/requests",
            Duration::from_secs(30),
            |v| v["arrival_rate"] == total,
        );
        let api = v["user_classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "api")
            .cloned()
            .unwrap();
        assert_eq!(api["arrival_rate"], total, "{v}");
        // The workers' engines: shares that add up to the total, split as
        // the users (5 and 4 of the 9).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = worker_rates(&metrics, "api");
            if let Some((sum, each)) = &seen {
                let mut users: Vec<f64> = each.iter().map(|r| r * 9.0 / total).collect();
                users.sort_by(f64::total_cmp);
                if (sum - total).abs() < 1e-6
                    && (users[0] - 4.0).abs() < 1e-6
                    && (users[1] - 5.0).abs() < 1e-6
                {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the workers' rates never split {total} as 5 and 4 users: {seen:?}\n{}",
                m.stderr()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let r = http(port, "GET", "/stop", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    wait_doc(port, "stopped", Duration::from_secs(120), |v| {
        v["state"] == "stopped"
    });
    for w in &mut ws {
        let _ = w.kill();
        let _ = w.wait();
    }
    let _ = m.child.kill();
    let _ = m.child.wait();
}
