//! The open workload against a real moto server: a class with an
//! `arrival_rate` starts its tasks at that rate whatever the latency, a pool
//! too small for the rate drops arrivals (counted and reported, never
//! queued), `--stages` with `rate=` changes the rate while running, and
//! `check` / `run` explain mistakes before anything starts.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy on a free loopback port in front of 127.0.0.1:`upstream`
/// that holds each chunk a client sends for `delay` before passing it on:
/// every request takes `delay` longer, as over a long network path. It
/// lives as long as the test process.
fn delaying_proxy(upstream: u16, delay: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                            tokio::time::sleep(delay).await;
                            if to_server.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to_server.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
    });
    format!("http://127.0.0.1:{port}")
}

/// Writes a profile of one open class `web` (its extra lines, its task's
/// line) with the given `[params]` lines.
fn open_profile(dir: &Path, name: &str, params: &str, class: &str, task: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("[params]\n{params}\n[[user]]\nname = \"web\"\n{class}\n[[user.task]]\n{task}\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// The task starts of class `class` (the count of its `arrival:<class>` row).
fn starts(report: &serde_json::Value, class: &str) -> u64 {
    find_entry(report, &format!("arrival:{class}"))
        .unwrap_or_else(|| panic!("no arrival:{class} row in {report:#}"))["num_requests"]
        .as_u64()
        .unwrap()
}

fn avg_ms(report: &serde_json::Value, name: &str) -> f64 {
    find_entry(report, name).unwrap()["avg_ms"]
        .as_f64()
        .unwrap()
}

#[test]
fn an_open_class_starts_its_tasks_at_its_rate_whatever_the_latency() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // The cloud is 60 ms away: each request of the two takes longer than
    // the 50 ms between two arrivals, so a user serves one arrival now and
    // then; 20 users are the pool.
    let far = delaying_proxy(moto.port, Duration::from_millis(60));
    let profile = open_profile(
        dir.path(),
        "open.toml",
        "",
        "arrival_rate = \"20/s\"",
        "sequence = [\"s3:ListBuckets\", \"ec2:DescribeAvailabilityZones\"]",
    );
    let json = dir.path().join("r.json");
    let out = cloudswarm()
        .arg("run")
        .args(["--ec2-endpoint", &far, "--s3-endpoint", &far])
        .args(["--state-dir", dir.path().to_str().unwrap()])
        .args(["-f", &profile, "-u", "20", "-r", "200", "-t", "20s"])
        .args(["--status-every", "5", "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_json(&json);
    let started = starts(&r, "web");
    let dropped = r["dropped"]["web"].as_u64().unwrap();
    let iteration = avg_ms(&r, "s3:ListBuckets") + avg_ms(&r, "ec2:DescribeAvailabilityZones");
    eprintln!(
        "{started} task starts in 20 s, {dropped} dropped; an iteration took {iteration:.0} ms on average"
    );
    assert!(
        (380..=420).contains(&started),
        "20/s for 20 s is 400 ± 5% task starts, got {started} ({dropped} dropped)"
    );
    assert!(
        iteration > 100.0,
        "the iterations ({iteration:.0} ms) outlast the 50 ms between arrivals"
    );
    assert_eq!(dropped, 0, "the pool is large enough");
    // Every start ran its sequence.
    for op in ["s3:ListBuckets", "ec2:DescribeAvailabilityZones"] {
        let n = find_entry(&r, op).unwrap()["num_requests"]
            .as_u64()
            .unwrap();
        assert_eq!(n, started, "{op}");
    }
    // Lateness is a timing, not a request: the aggregate leaves it out.
    let requests: u64 = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| cloudswarm::ops::is_request(e["name"].as_str().unwrap()))
        .map(|e| e["num_requests"].as_u64().unwrap())
        .sum();
    assert_eq!(r["total"]["num_requests"].as_u64().unwrap(), requests);
}

#[test]
fn a_pool_too_small_for_the_rate_drops_arrivals_and_says_so() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // One user cannot run a put and a delete every millisecond.
    let profile = open_profile(
        dir.path(),
        "tight.toml",
        "object_size = \"1KiB\"\nbucket = \"shared\"",
        "arrival_rate = \"1000/s\"",
        "sequence = [\"s3:PutObject\", \"s3:DeleteObject\"]",
    );
    let json = dir.path().join("r.json");
    let csv = dir.path().join("tight");
    let port = free_port();
    let child = cloudswarm()
        .arg("run")
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .args(["--state-dir", dir.path().to_str().unwrap()])
        .args(["-f", &profile, "-u", "1", "-r", "10", "-t", "6s"])
        .args(["--status-every", "1"])
        .args(["--json", json.to_str().unwrap()])
        .args(["--csv", csv.to_str().unwrap()])
        .args(["--metrics-bind", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Prometheus counts them while the run goes on.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metric = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let body = http(port, "GET", "/metrics", &[], "").body;
            if let Some(line) = body
                .lines()
                .find(|l| l.starts_with("cloudswarm_dropped_arrivals_total{class=\"web\"}"))
                && !line.ends_with(" 0")
            {
                assert!(
                    body.contains("cloudswarm_arrival_rate{class=\"web\"} 1000"),
                    "{body}"
                );
                break line.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no cloudswarm_dropped_arrivals_total on --metrics-bind"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_json(&json);
    let started = starts(&r, "web");
    let dropped = r["dropped"]["web"].as_u64().unwrap();
    eprintln!("{started} started, {dropped} dropped; {metric}");
    assert!(dropped > 0 && started > 0, "{r:#}");
    assert!(
        dropped > started,
        "one user serves a small part: {started} started, {dropped} dropped"
    );
    // Every arrival of the 6 s either started or was dropped.
    assert!(
        (5_400..=6_001).contains(&(started + dropped)),
        "{started} + {dropped}"
    );
    // The summary, the status lines and the CSV say so too.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Arrivals (open classes)"))
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no arrivals table: {stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[1..3],
        [started.to_string(), dropped.to_string()],
        "{row}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rfind(|l| l.contains("arrivals web 1000/s  dropped "))
        .unwrap_or_else(|| panic!("no status line with arrivals: {stderr}"));
    let said: u64 = last
        .split("dropped ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in {last}"));
    assert!(said > 0, "{last}");
    let stats = std::fs::read_to_string(format!("{}_stats.csv", csv.display())).unwrap();
    let header: Vec<&str> = stats.lines().next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "Dropped Arrivals")
        .expect(&stats);
    let field = |name: &str| {
        let line = stats
            .lines()
            .find(|l| l.split(',').nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} row: {stats}"));
        line.split(',').nth(col).unwrap().to_string()
    };
    assert_eq!(field("arrival:web"), dropped.to_string());
    assert_eq!(field("Aggregated"), dropped.to_string());
    assert_eq!(field("s3:PutObject"), "0");
    let hist = std::fs::read_to_string(format!("{}_stats_history.csv", csv.display())).unwrap();
    let header: Vec<&str> = hist.lines().next().unwrap().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name}: {hist}"))
    };
    // The seconds that dropped arrivals are the generator's, not the cloud's.
    let (total, limited, by) = (
        col("Total Dropped Arrivals"),
        col("Generator Limited"),
        col("Limited By"),
    );
    let rows: Vec<Vec<&str>> = hist
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let mut last = 0u64;
    let mut marked = 0;
    for f in &rows {
        let now: u64 = f[total].parse().unwrap();
        if now > last {
            assert_eq!(f[limited], "1", "{hist}");
            assert!(
                f[by].contains(&format!("{} arrivals dropped", now - last)),
                "{hist}"
            );
            marked += 1;
        }
        last = now;
    }
    assert!(marked >= 4, "{marked} seconds dropped arrivals: {hist}");
    let g = &r["generator"];
    assert!(g["dropped_seconds"].as_u64().unwrap() >= 4, "{g}");
    assert!(
        g["limited_seconds"].as_u64() >= g["dropped_seconds"].as_u64(),
        "{g}"
    );
}

#[test]
fn stages_with_rate_change_the_arrival_rate_while_running() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // The profile says 1/s: the stages' rates replace it.
    let profile = open_profile(
        dir.path(),
        "staged.toml",
        "",
        "arrival_rate = \"1/s\"",
        "op = \"s3:ListBuckets\"",
    );
    let csv = dir.path().join("staged");
    let json = dir.path().join("r.json");
    let out = run_against(
        &moto,
        dir.path(),
        &[
            "-f",
            &profile,
            "-u",
            "10",
            "-r",
            "100",
            "--stages",
            "rate=5/s:6s,rate=20/s:6s",
            "--csv",
            csv.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = read_json(&json);
    let started = starts(&r, "web");
    assert!(
        (135..=165).contains(&started),
        "5/s for 6 s and 20/s for 6 s make 150 starts, got {started}: {r:#}"
    );
    // Per phase, from the history (a row about a second from the start,
    // each with its time; one request per task): about 5/s in the first,
    // 20/s in the second. The rows are picked by their time, away from the
    // stage boundary (about 5 s after the first row), so a late row does
    // not shift a phase.
    let hist = std::fs::read_to_string(format!("{}_stats_history.csv", csv.display())).unwrap();
    let header: Vec<&str> = hist.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (at, count) = (col("Timestamp"), col("Total Request Count"));
    let rows: Vec<(u64, u64)> = hist
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[at].parse().unwrap(), f[count].parse().unwrap())
        })
        .collect();
    assert!(rows.len() >= 11, "{hist}");
    let t0 = rows[0].0;
    let last_by = |t: u64| *rows.iter().rev().find(|r| r.0 <= t0 + t).unwrap();
    let first_from = |t: u64| *rows.iter().find(|r| r.0 >= t0 + t).unwrap();
    let rate = |a: (u64, u64), b: (u64, u64)| (b.1 - a.1) as f64 / (b.0 - a.0) as f64;
    let first = rate(rows[0], last_by(4));
    let second = rate(first_from(6), last_by(10));
    eprintln!("{started} starts; {first}/s, then {second}/s");
    assert!(
        (3.5..=6.5).contains(&first),
        "first phase {first}/s: {hist}"
    );
    assert!(
        (16.0..=24.0).contains(&second),
        "second phase {second}/s: {hist}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("arrivals web 5/s"), "{stderr}");
    assert!(stderr.contains("arrivals web 20/s"), "{stderr}");
}

#[test]
fn check_and_run_explain_arrival_mistakes_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let both = open_profile(
        dir.path(),
        "both.toml",
        "",
        "wait = { constant = 1 }\narrival_rate = \"20/s\"",
        "op = \"s3:ListBuckets\"",
    );
    let zero = open_profile(
        dir.path(),
        "zero.toml",
        "",
        "arrival_rate = \"0/s\"",
        "op = \"s3:ListBuckets\"",
    );
    let bursty = open_profile(
        dir.path(),
        "bursty.toml",
        "",
        "arrival_rate = \"20/s\"\narrival = \"bursty\"",
        "op = \"s3:ListBuckets\"",
    );
    for (file, says) in [
        (
            &both,
            "both.toml:6:16: user class `web` has both `wait` and `arrival_rate`",
        ),
        (
            &zero,
            "zero.toml:5:16: user class `web`: the rate `0/s` must be above zero",
        ),
        (
            &bursty,
            "bursty.toml:6:11: user class `web`: arrival must be \"constant\" (even spacing) or \"poisson\" (exponential gaps), got \"bursty\"",
        ),
    ] {
        let out = cloudswarm().args(["check", file]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
    let good = open_profile(
        dir.path(),
        "good.toml",
        "",
        "arrival_rate = \"90/min\"\narrival = \"poisson\"",
        "op = \"s3:ListBuckets\"",
    );
    let out = cloudswarm().args(["check", &good]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // rate= stages need an open class, and a rate= stage has no users.
    let url = format!("http://127.0.0.1:{}", free_port());
    for (profile, stages, says) in [
        (
            "profiles/smoke.toml",
            "rate=10/s:1m",
            "no class of profiles/smoke.toml has an arrival_rate",
        ),
        (
            good.as_str(),
            "rate=10/s:1m:5",
            "a rate= stage keeps the users",
        ),
        (good.as_str(), "rate=0/s:1m", "must be above zero"),
        (
            good.as_str(),
            "10:1m:rate=5/s",
            "an arrival rate is a stage of its own",
        ),
    ] {
        let out = cloudswarm()
            .args(["run", "-f", profile, "--stages", stages, "--state-dir"])
            .arg(dir.path())
            .args(["--ec2-endpoint", &url, "--s3-endpoint", &url])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{stages}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{stages}: {err}");
        assert!(
            !err.contains("cannot reach"),
            "refused before the preflight: {err}"
        );
    }
}

/// `--find-max` against moto behind an nginx that lets 10 requests a second
/// through and answers the rest 503: steps of 4/s hold at 4/s and 8/s, the
/// 12/s step is throttled, and the answer is 8/s with each step's figures.
#[test]
fn find_max_reports_the_highest_rate_that_held_and_each_step() {
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
    let json = dir.path().join("cap.json");
    let html = dir.path().join("cap.html");
    let state = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let child = cloudswarm()
        .arg("run")
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &front.url])
        .args(["--metrics-bind", &format!("127.0.0.1:{metrics_port}")])
        .args([
            "--state-dir",
            state.path().to_str().unwrap(),
            "--status-every",
            "0",
        ])
        .args(["-f", profile.to_str().unwrap(), "-u", "8", "-r", "100"])
        .args(["--find-max", "4/s:4/s:4s", "-t", "2m"])
        .args([
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ])
        .args(["--csv", dir.path().join("cap").to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The search in Prometheus, scraped as it goes: (step, its rate, the
    // highest rate held so far, searching, steps held, steps broken).
    let pid = child.id();
    let scraper = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
            let up = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok();
            if up
                && let Ok(m) =
                    std::panic::catch_unwind(|| http(metrics_port, "GET", "/metrics", &[], ""))
                && m.status == 200
            {
                // `name{run_id="...",...} value`, the labels holding `label`.
                let g = |name: &str, label: &str| {
                    m.body.lines().find_map(|l| {
                        let rest = l.strip_prefix(name)?.strip_prefix("{run_id=\"")?;
                        let (labels, value) = rest.split_once("} ")?;
                        labels.contains(label).then(|| value.parse::<f64>().ok())?
                    })
                };
                if let Some(step) = g("cloudswarm_capacity_step", "") {
                    seen.push([
                        step,
                        g("cloudswarm_capacity_step_rate", "").unwrap_or(-1.0),
                        g("cloudswarm_capacity_max_rate", "").unwrap_or(-1.0),
                        g("cloudswarm_capacity_searching", "").unwrap_or(-1.0),
                        g("cloudswarm_capacity_steps_total", "verdict=\"held\"").unwrap_or(0.0),
                        g("cloudswarm_capacity_steps_total", "verdict=\"broke\"").unwrap_or(0.0),
                    ]);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        seen
    });
    let o = child.wait_with_output().unwrap();
    let seen = scraper.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Step 1 at 4/s under way, nothing held yet; step 3 at 12/s under way
    // with 8/s held; then step 3 broken, the search over, 8/s the answer.
    for want in [
        [1.0, 4.0, 0.0, 1.0, 0.0, 0.0],
        [3.0, 12.0, 8.0, 1.0, 2.0, 0.0],
        [3.0, 12.0, 8.0, 0.0, 2.0, 1.0],
    ] {
        assert!(seen.contains(&want), "{want:?} not among {seen:?}");
    }
    let report = read_json(&json);
    let cap = &report["capacity"];
    assert_eq!(cap["max_rate"].as_f64(), Some(8.0), "{cap:#}\n{}", text(&o));
    assert_eq!(cap["stopped_by"], "throttle_rate", "{cap:#}");
    let steps = cap["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{cap:#}");
    for (i, (rate, held)) in [(4.0, true), (8.0, true), (12.0, false)].iter().enumerate() {
        let s = &steps[i];
        assert_eq!(s["rate"].as_f64(), Some(*rate), "{s}");
        assert_eq!(s["held"], *held, "{s}");
        // Each step ran at the rate it asked for, whatever the throttling.
        let achieved = s["achieved_rate"].as_f64().unwrap();
        assert!(
            (achieved - rate).abs() <= rate * 0.15,
            "step {i}: achieved {achieved} for {rate}"
        );
        assert!(s["requests"].as_u64().unwrap() > 10, "{s}");
    }
    assert!(
        steps[2]["throttle_ratio"].as_f64().unwrap() > 0.01,
        "{:#}",
        steps[2]
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Capacity search (--find-max):"), "{out}");
    assert!(
        out.contains("the highest arrival rate that held: 8/s"),
        "{out}"
    );
}
