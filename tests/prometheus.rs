//! Metrics against a real Prometheus: a swarm on moto (with an nginx in front
//! of S3 that throttles HEAD requests, so errors and throttling have data),
//! scraped through the dashboard's token; then every query of every panel
//! and annotation of the Grafana dashboard must return data, for every run
//! and for the run's own id (the `run_id` variable), and the compare row
//! with a short offset. Plus structural checks on the dashboard JSON and
//! the headless `--metrics-bind`.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn dashboard_json() -> Value {
    let text = std::fs::read_to_string("grafana/dashboards/cloudswarm.json").unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

#[test]
fn dashboard_json_is_well_formed() {
    let d = dashboard_json();
    let vars: HashSet<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in [
        "datasource",
        "instance",
        "op",
        "run_id",
        "compare_offset",
        "base_run_id",
    ] {
        assert!(vars.contains(v), "no ${v} variable");
    }
    // Every variable a query uses is defined (or one of Grafana's own).
    let defined = |title: &str, expr: &str| {
        for part in expr.split('$').skip(1) {
            let name: String = part
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                vars.contains(name.as_str()) || name.starts_with("__"),
                "{title}: ${name} is not a dashboard variable"
            );
        }
    };
    // Runs and SLA breaches are annotations from Prometheus queries.
    let notes = annotations(&d);
    let names: Vec<&str> = notes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Runs", "SLA breaches"]);
    for a in d["annotations"]["list"].as_array().unwrap() {
        if a["builtIn"] == 1 {
            continue;
        }
        assert_eq!(a["datasource"]["uid"], "${datasource}", "{a}");
        defined(a["name"].as_str().unwrap(), a["expr"].as_str().unwrap());
    }
    let ds_var = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap();
    assert_eq!(ds_var["type"], "datasource");
    assert_eq!(ds_var["query"], "prometheus");

    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    let all = panels(&d);
    assert!(all.len() >= 12, "{} panels", all.len());
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("numeric id")),
            "duplicate id in {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{title} overlaps another panel at {cx},{cy}"
                );
            }
        }
        if p["type"] == "row" {
            continue;
        }
        let refs = std::iter::once(&p["datasource"]).chain(
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| &t["datasource"]),
        );
        for ds in refs {
            assert_eq!(ds["type"], "prometheus", "{title}");
            assert_eq!(
                ds["uid"], "${datasource}",
                "{title}: the datasource is the variable"
            );
        }
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            defined(title, expr);
            assert!(!expr.contains("[5m]"), "{title}: use $__rate_interval");
            // Every panel but the workers' follows the Run variable (the
            // compare row's earlier queries, the Compared run).
            assert!(
                expr.contains("$run_id")
                    || expr.contains("$base_run_id")
                    || expr.contains("cloudswarm_workers"),
                "{title}: not narrowed to $run_id: {expr}"
            );
        }
    }
}

/// `s` with everything but unreserved characters percent-encoded.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str, token: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: cloudswarm\n    authorization:\n      type: Bearer\n      credentials: {token}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into());
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (scripts/setup.sh installs prometheus)"));
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            || http(port, "GET", "/-/ready", &[], "").status != 200
        {
            assert!(Instant::now() < deadline, "prometheus did not get ready");
            std::thread::sleep(Duration::from_millis(300));
        }
        p
    }

    fn query(&self, q: &str) -> Value {
        let r = http(
            self.port,
            "GET",
            &format!("/api/v1/query?query={}", urlencode(q)),
            &[],
            "",
        );
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// S3 through nginx: HEAD requests (HeadObject) answer 503, the rest go to moto.
fn throttling_proxy(moto: &Moto) -> Nginx {
    Nginx::start(&format!(
        r#"
    location / {{
      if ($request_method = HEAD) {{ return 503; }}
      proxy_pass {};
    }}
"#,
        moto.url
    ))
}

const METRICS_PROFILE: &str = r#"
[params]
image_id = "auto"
object_size = "4KiB"
poll_interval = "200ms"
[[user]]
name = "compute"
wait = { constant = 0.2 }
[[user.task]]
sequence = ["ec2:RunInstances", "ec2:instance-running", "ec2:TerminateInstances"]
[[user.task]]
sequence = ["ec2:CreateVolume", "ec2:volume-available", "ec2:DeleteVolume"]
[[user]]
name = "storage"
wait = { constant = 0.1 }
[[user.task]]
sequence = ["s3:PutObject", "s3:GetObject", "s3:HeadObject"]
"#;

/// The dashboard's Prometheus annotations: (name, query).
fn annotations(d: &Value) -> Vec<(String, String)> {
    d["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["datasource"]["type"] == "prometheus")
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every Grafana panel's and annotation's queries that a dashboard (a
/// master when `master`) feeds, with the test's values for the variables:
/// `run_id` the run's id (or `.*`: All), the compare row 10 s back. The
/// capacity search's panel is fed only by a run with `--find-max`: see
/// [`capacity_queries`].
fn panel_queries(master: bool, run_id: &str) -> Vec<(String, String)> {
    all_queries(run_id)
        .into_iter()
        .filter(|(_, e)| !e.contains("cloudswarm_capacity_"))
        // Only a master has workers; a master has no engine of its own, so
        // no generator health (that stays on each worker).
        .filter(|(_, e)| {
            if master {
                !e.contains("cloudswarm_generator_saturated")
                    && !e.contains("cloudswarm_runtime_lag")
            } else {
                !e.contains("cloudswarm_workers")
            }
        })
        .collect()
}

/// The capacity search panel's queries.
fn capacity_queries(run_id: &str) -> Vec<(String, String)> {
    all_queries(run_id)
        .into_iter()
        .filter(|(_, e)| e.contains("cloudswarm_capacity_"))
        .collect()
}

fn all_queries(run_id: &str) -> Vec<(String, String)> {
    let d = dashboard_json();
    let notes = annotations(&d)
        .into_iter()
        .map(|(n, e)| (format!("annotation {n}"), e));
    panels(&d)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            p["targets"].as_array().unwrap().iter().map(move |t| {
                (
                    format!(
                        "{} / {}",
                        p["title"].as_str().unwrap(),
                        t["refId"].as_str().unwrap()
                    ),
                    t["expr"].as_str().unwrap().to_string(),
                )
            })
        })
        .chain(notes)
        .map(|(what, e)| {
            let e = e
                .replace("$__rate_interval", "15s")
                .replace("$instance", ".*")
                .replace("$op", ".*")
                .replace("$run_id", run_id)
                .replace("$base_run_id", ".*")
                .replace("$compare_offset", "10s");
            (what, e)
        })
        .collect()
}

/// Waits (up to 90 s) until every query returns a number; fails naming
/// the ones that never did.
fn require_data(prom: &Prometheus, exprs: &[(String, String)]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing;
    loop {
        missing = Vec::new();
        for (what, expr) in exprs {
            let v = prom.query(expr);
            assert_eq!(v["status"], "success", "{what}: {expr}: {v}");
            let result = v["data"]["result"].as_array().unwrap();
            let has_number = result.iter().any(|s| {
                s["value"][1]
                    .as_str()
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(|n| n.is_finite())
            });
            if !has_number {
                missing.push(format!("{what}: {expr}"));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        missing.is_empty(),
        "queries without data:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_grafana_panel_query_returns_data_from_a_real_prometheus() {
    let moto = Moto::start();
    let proxy = throttling_proxy(&moto);
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(profiles.path().join("metrics.toml"), METRICS_PROFILE).unwrap();
    let token = "metrics-test-token-0123456789";
    let d = Dashboard::start_with(
        &moto.url,
        &proxy.url,
        &[
            "--token",
            token,
            "--profiles-dir",
            profiles.path().to_str().unwrap(),
        ],
    );
    let bearer = format!("Bearer {token}");
    // /metrics needs the token too.
    assert_eq!(d.http("GET", "/metrics", &[], "").status, 401);
    let r = d.http(
        "POST",
        "/swarm",
        &[("Authorization", &bearer)],
        // SLAs: one that holds, one that breaks (no PutObject takes 0.1 ms).
        "user_count=4&spawn_rate=10&profile=metrics&sla=failure_rate%3C100%25&sla=p95%5B1m%5D(s3:PutObject)%3C0.1ms",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let prom = Prometheus::start(&format!("127.0.0.1:{}", d.port), token);

    let run_id = json_of(&r.body)["run_id"].as_str().unwrap().to_string();
    let exprs = panel_queries(false, ".*");
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    // Give the run time to produce every kind of sample, then require all:
    // for every run, and for this run's id.
    require_data(&prom, &exprs);
    require_data(&prom, &panel_queries(false, &run_id));
    // Another run's id keeps nothing.
    let other = panel_queries(false, "nosuchrun");
    for (what, expr) in other
        .iter()
        .filter(|(w, _)| w.starts_with("Requests/s by op"))
    {
        let v = prom.query(expr);
        assert_eq!(v["data"]["result"], serde_json::json!([]), "{what}: {v}");
    }
    // The figures agree with the dashboard's own statistics.
    let throttled = prom.query("sum(cloudswarm_throttled_total{op=\"s3:HeadObject\"})");
    let n: f64 = throttled["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 0.0);
    let up = prom.query("up{job=\"cloudswarm\"}");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    let body = d
        .http("GET", "/metrics", &[("Authorization", &bearer)], "")
        .body;
    assert!(!body.contains(SECRET), "no credentials in the metrics");
    assert!(!body.contains(&moto.url), "no endpoints in the metrics");
    // Each SLA of the run has its gauge: 1 holding, 0 broken.
    let ok = |sla: &str| -> String {
        let v = prom.query(&format!("cloudswarm_sla_ok{{sla=\"{sla}\"}}"));
        v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or_else(|| panic!("{sla}: {v}"))
            .to_string()
    };
    assert_eq!(ok("failure_rate<100%"), "1");
    assert_eq!(ok("p95[1m](s3:PutObject)<0.1ms"), "0");
    let runs = prom.query("cloudswarm_run_info == 1");
    assert_eq!(
        runs["data"]["result"][0]["metric"]["profile"], "metrics",
        "{runs}"
    );
    assert_eq!(
        runs["data"]["result"][0]["metric"]["run_id"],
        run_id.as_str()
    );

    // Stopped, the run is no longer active: its annotation region ends.
    let r = d.http("POST", "/stop", &[("Authorization", &bearer)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let active = format!("cloudswarm_run_active{{run_id=\"{run_id}\"}}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = prom.query(&active);
        if v["data"]["result"][0]["value"][1] == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "the run stays active: {v}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let (_, runs_note) = panel_queries(false, &run_id)
        .into_iter()
        .find(|(w, _)| w == "annotation Runs")
        .unwrap();
    let v = prom.query(&runs_note);
    assert_eq!(v["data"]["result"], serde_json::json!([]), "{v}");
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A dashboard that is a master exports what its workers measured: every
/// panel (the Workers panel too) has data, and the request counters equal
/// the master's merged statistics.
#[test]
fn a_masters_metrics_carry_its_workers_figures_to_every_grafana_panel() {
    let moto = Moto::start();
    let proxy = throttling_proxy(&moto);
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(profiles.path().join("metrics.toml"), METRICS_PROFILE).unwrap();
    let token = "metrics-test-token-0123456789";
    let mport = free_port();
    let d = Dashboard::start_with(
        &moto.url,
        &proxy.url,
        &[
            "--token",
            token,
            "--profiles-dir",
            profiles.path().to_str().unwrap(),
            "--master",
            "--master-bind-port",
            &mport.to_string(),
        ],
    );
    let state = tempfile::tempdir().unwrap();
    let mut worker = cloudswarm()
        .args(["worker", "--master-port", &mport.to_string()])
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &proxy.url])
        .args(["--state-dir", state.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bearer = format!("Bearer {token}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = serde_json::from_str(
            &d.http("GET", "/stats/requests", &[("Authorization", &bearer)], "")
                .body,
        )
        .unwrap();
        if v["worker_count"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not join: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = d.http(
        "POST",
        "/swarm",
        &[("Authorization", &bearer)],
        // SLAs: one that holds, one that breaks (no PutObject takes 0.1 ms).
        "user_count=4&spawn_rate=10&profile=metrics&sla=failure_rate%3C100%25&sla=p95%5B1m%5D(s3:PutObject)%3C0.1ms",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let prom = Prometheus::start(&format!("127.0.0.1:{}", d.port), token);
    let run_id = json_of(&r.body)["run_id"].as_str().unwrap().to_string();
    let exprs = panel_queries(true, ".*");
    assert!(exprs.iter().any(|(_, e)| e.contains("cloudswarm_workers")));
    require_data(&prom, &exprs);
    require_data(&prom, &panel_queries(true, &run_id));
    let running = prom.query("cloudswarm_workers{state=\"running\"}");
    assert_eq!(running["data"]["result"][0]["value"][1], "1", "{running}");

    // Stopped, the counters equal the merged statistics.
    let r = d.http("POST", "/stop", &[("Authorization", &bearer)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(120);
    let v = loop {
        let v: Value = serde_json::from_str(
            &d.http("GET", "/stats/requests", &[("Authorization", &bearer)], "")
                .body,
        )
        .unwrap();
        if v["state"] == "stopped" && v["cleanup"]["outcome"]["leaked"] == 0 {
            break v;
        }
        assert!(Instant::now() < deadline, "the run did not stop: {v}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let total = v["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "Aggregated")
        .unwrap()["num_requests"]
        .as_u64()
        .unwrap();
    let body = d
        .http("GET", "/metrics", &[("Authorization", &bearer)], "")
        .body;
    let counted: f64 = body
        .lines()
        .filter(|l| l.starts_with("cloudswarm_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as u64, total, "{body}");
    assert!(!body.contains(SECRET) && !body.contains(&moto.url));
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn a_headless_run_serves_metrics_on_metrics_bind() {
    let moto = Moto::start();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = cloudswarm()
        .args([
            "run",
            "-f",
            "profiles/smoke.toml",
            "-u",
            "2",
            "-r",
            "4",
            "-t",
            "20s",
        ])
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .args([
            "--state-dir",
            state.path().to_str().unwrap(),
            "--status-every",
            "0",
        ])
        .args(["--metrics-bind", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let r = http(port, "GET", "/metrics", &[], "");
            if r.body
                .contains("cloudswarm_requests_total{op=\"s3:PutObject\"}")
                && r.body.contains("cloudswarm_provisioning_seconds_bucket")
            {
                break r.body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no request metrics on --metrics-bind"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(body.contains("# TYPE cloudswarm_request_duration_seconds histogram"));
    assert!(body.contains("le=\"1800\""), "buckets reach half an hour");
    assert!(
        body.contains("le=\"0.001\""),
        "buckets start at a millisecond"
    );
    assert!(body.contains("cloudswarm_users{class=\"ec2\"}"));
    assert!(body.contains("cloudswarm_run_info{"));
    assert!(body.contains("cloudswarm_run_active{"), "{body}");
    // The load generator's health: limited (0/1) and the runtime's lag.
    assert!(
        body.lines()
            .any(|l| l == "cloudswarm_generator_saturated 0"
                || l == "cloudswarm_generator_saturated 1"),
        "{body}"
    );
    assert!(body.contains("cloudswarm_runtime_lag_seconds "), "{body}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A headless `--find-max` run feeds the Grafana capacity panel through a
/// real Prometheus: each of its queries has data for the run's id, none
/// for another run's, and the step rate climbs as the search goes.
#[test]
fn a_capacity_search_feeds_the_grafana_capacity_panel() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("open.toml");
    std::fs::write(
        &profile,
        "[[user]]\nname = \"api\"\narrival_rate = \"2/s\"\n[[user.task]]\nop = \"s3:ListBuckets\"\n",
    )
    .unwrap();
    let port = free_port();
    let mut child = cloudswarm()
        .args([
            "run",
            "-f",
            profile.to_str().unwrap(),
            "-u",
            "8",
            "-t",
            "60s",
        ])
        .args(["--find-max", "2/s:2/s:2s"])
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .args([
            "--state-dir",
            dir.path().to_str().unwrap(),
            "--status-every",
            "0",
        ])
        .args(["--metrics-bind", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line names the run.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let run_id = loop {
        let mut line = String::new();
        use std::io::BufRead;
        assert!(err.read_line(&mut line).unwrap() > 0, "no run id");
        if let Some(rest) = line.strip_prefix("cloudswarm run ") {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(':')
                .to_string();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    // (A headless run's /metrics takes no token: the one sent is ignored.)
    let prom = Prometheus::start(&format!("127.0.0.1:{port}"), "unused");
    let exprs = capacity_queries(&run_id);
    assert_eq!(exprs.len(), 3, "{exprs:?}");
    require_data(&prom, &exprs);
    for (what, expr) in capacity_queries("nosuchrun") {
        let v = prom.query(&expr);
        assert_eq!(v["data"]["result"], serde_json::json!([]), "{what}: {v}");
    }
    // The step rate climbs, and a step held, as the search goes on.
    let (_, step_rate) = &exprs[0];
    let (_, held) = &exprs[1];
    let value = |q: &str| -> f64 {
        let v = prom.query(q);
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1.0)
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while !(value(step_rate) >= 6.0 && value(held) >= 4.0) {
        assert!(
            Instant::now() < deadline,
            "step rate {}, held {}",
            value(step_rate),
            value(held)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = child.kill();
    let _ = child.wait();
}
