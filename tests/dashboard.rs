//! The dashboard against a real moto: its HTTP API (validation, token,
//! downloads) and the page itself in a real headless Chromium.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace(' ', "+")))
        .collect::<Vec<_>>()
        .join("&")
}

fn json(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn row<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
}

#[test]
fn api_validates_input_and_leaves_the_running_swarm_alone() {
    let moto = Moto::start();
    let profiles = tempfile::tempdir().unwrap();
    std::fs::copy("profiles/smoke.toml", profiles.path().join("smoke.toml")).unwrap();
    std::fs::write(
        profiles.path().join("broken.toml"),
        "[[user]]\nname = \"x\"\n[[user.task]]\nop = \"ec2:LaunchRockets\"\n",
    )
    .unwrap();
    let d = Dashboard::start(
        &moto,
        &[
            "--profiles-dir",
            profiles.path().to_str().unwrap(),
            "--max-volumes",
            "7",
        ],
    );
    assert_eq!(d.requests()["state"], "ready");
    // Every capped kind shows its cap; snapshots share the volumes' cap.
    let v = d.requests();
    let cap = |kind: &str| {
        let rows = v["resources"].as_array().unwrap();
        rows.iter().find(|r| r["kind"] == kind).unwrap()["cap"].clone()
    };
    assert_eq!(cap("volumes"), 7, "{v}");
    assert_eq!(cap("snapshots"), 7, "{v}");
    assert_eq!(cap("instances"), 20, "{v}");
    assert_eq!(cap("key pairs"), serde_json::Value::Null, "{v}");
    let post = |body: &str| d.http("POST", "/swarm", &[], body);

    // Bad input before any run: a 400 naming the field.
    for (body, field, says) in [
        (
            form(&[
                ("user_count", "-5"),
                ("spawn_rate", "1"),
                ("profile", "smoke"),
            ]),
            "user_count",
            "-5",
        ),
        (
            form(&[
                ("user_count", "ten"),
                ("spawn_rate", "1"),
                ("profile", "smoke"),
            ]),
            "user_count",
            "ten",
        ),
        (
            form(&[
                ("user_count", "0"),
                ("spawn_rate", "1"),
                ("profile", "smoke"),
            ]),
            "user_count",
            "0 users",
        ),
        (
            form(&[
                ("user_count", "5000000000"),
                ("spawn_rate", "1"),
                ("profile", "smoke"),
            ]),
            "user_count",
            "1000000",
        ),
        (
            form(&[
                ("user_count", "2"),
                ("spawn_rate", "0"),
                ("profile", "smoke"),
            ]),
            "spawn_rate",
            "hatch rate",
        ),
        (
            form(&[
                ("user_count", "2"),
                ("spawn_rate", "1"),
                ("profile", "nope"),
            ]),
            "profile",
            "unknown profile `nope`",
        ),
        (
            form(&[
                ("user_count", "2"),
                ("spawn_rate", "1"),
                ("profile", "../smoke"),
            ]),
            "profile",
            "unknown profile",
        ),
        (
            form(&[
                ("user_count", "2"),
                ("spawn_rate", "1"),
                ("profile", "broken"),
            ]),
            "profile",
            "ec2:LaunchRockets",
        ),
        (
            form(&[
                ("user_count", "2"),
                ("spawn_rate", "1"),
                ("profile", "smoke"),
                ("run_time", "a while"),
            ]),
            "run_time",
            "a while",
        ),
    ] {
        let r = post(&body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let j = json(&r);
        assert_eq!(j["field"], field, "{body}: {j}");
        assert!(j["message"].as_str().unwrap().contains(says), "{body}: {j}");
    }
    let broken = json(&post(&form(&[
        ("user_count", "2"),
        ("spawn_rate", "1"),
        ("profile", "broken"),
    ])));
    assert!(
        broken["message"].as_str().unwrap().contains("broken.toml:"),
        "file and line: {broken}"
    );
    assert_eq!(d.requests()["state"], "ready");

    // A JSON body works too (scripts).
    let r = d.http(
        "POST",
        "/swarm",
        &[("Content-Type", "application/json")],
        r#"{"user_count": 3, "spawn_rate": 10, "profile": "smoke.toml"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let run_id = json(&r)["run_id"].as_str().unwrap().to_string();
    let v = d.wait_for(
        "3 users and requests of both services",
        Duration::from_secs(60),
        |v| {
            v["user_count"] == 3
                && row(v, "ec2:DescribeInstances").is_some()
                && row(v, "s3:PutObject").is_some()
        },
    );
    assert_eq!(v["run_id"], run_id.as_str());
    assert_eq!(v["profile"], "smoke");

    // Bad edits are refused and change nothing.
    for (body, status, field) in [
        (
            form(&[("user_count", "-1"), ("spawn_rate", "1")]),
            400,
            "user_count",
        ),
        (
            form(&[("user_count", "4"), ("spawn_rate", "-2")]),
            400,
            "spawn_rate",
        ),
        (
            form(&[("user_count", "4"), ("spawn_rate", "1e-300")]),
            400,
            "spawn_rate",
        ),
        (
            form(&[
                ("user_count", "4"),
                ("spawn_rate", "1"),
                ("run_time", "1e30"),
            ]),
            400,
            "run_time",
        ),
        (
            form(&[
                ("user_count", "4"),
                ("spawn_rate", "1"),
                ("profile", "broken"),
            ]),
            409,
            "profile",
        ),
    ] {
        let r = post(&body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(json(&r)["field"], field, "{body}: {}", r.body);
    }
    let v = d.requests();
    assert_eq!(v["target_user_count"], 3, "{v}");
    assert!(
        matches!(v["state"].as_str(), Some("running" | "spawning")),
        "{v}"
    );

    // A good edit takes effect.
    let r = post(&form(&[("user_count", "5"), ("spawn_rate", "10")]));
    assert_eq!(r.status, 200, "{}", r.body);
    d.wait_for("5 users", Duration::from_secs(30), |v| v["user_count"] == 5);

    // Reset clears the counts but not the run.
    let total = |v: &Value| row(v, "Aggregated").map_or(0, |r| r["num_requests"].as_u64().unwrap());
    let before = total(&d.wait_for("60 requests", Duration::from_secs(60), |v| total(v) >= 60));
    let r = d.http("GET", "/stats/reset", &[], "");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let after = d.requests();
    assert!(
        total(&after) < before / 2,
        "reset left {} of {before} requests",
        total(&after)
    );
    assert_eq!(after["run_id"], run_id.as_str());

    // Stop: users finish, clean-up deletes everything, the state says stopped.
    d.wait_for(
        "ec2 and s3 requests after the reset",
        Duration::from_secs(60),
        |v| row(v, "ec2:DescribeInstances").is_some() && row(v, "s3:PutObject").is_some(),
    );
    assert_eq!(d.http("GET", "/stop", &[], "").status, 200);
    // A start or an edit right after the stop is refused: the swarm is stopping.
    let r = post(&form(&[("user_count", "2"), ("spawn_rate", "1")]));
    assert_eq!(r.status, 409, "{}", r.body);
    let v = d.wait_for("stopped and cleaned up", Duration::from_secs(120), |v| {
        v["state"] == "stopped"
    });
    assert_eq!(v["live_resources"], 0, "{v}");
    assert_eq!(v["cleanup"]["outcome"]["leaked"], 0, "{v}");
    assert!(v["ended_at"].as_f64().is_some());

    // Downloads of the finished run.
    let csv = d.http("GET", "/stats/requests/csv", &[], "");
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-disposition").unwrap().contains(&run_id));
    let mut lines = csv.body.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("Type,Name,Request Count,Failure Count,Median Response Time")
    );
    let names: Vec<&str> = lines.map(|l| l.split(',').nth(1).unwrap()).collect();
    assert!(
        names.contains(&"ec2:DescribeInstances") && names.contains(&"s3:PutObject"),
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"Aggregated"));
    let hist = d.http("GET", "/stats/history/csv", &[], "");
    assert!(hist.body.lines().count() > 3, "{}", hist.body);
    let fails = d.http("GET", "/stats/failures/csv", &[], "");
    assert!(fails.body.starts_with("Method,Name,Error,Occurrences"));
    let report = d.http("GET", "/report", &[], "");
    assert_eq!(report.status, 200);
    for must in [
        "<style>",
        "CloudswarmCharts.drawAll",
        "s3:PutObject",
        &run_id,
    ] {
        assert!(report.body.contains(must), "report lacks {must}");
    }
    assert!(
        !report.body.contains("src=\"http") && !report.body.contains("href=\"/static"),
        "the report loads nothing from elsewhere"
    );
    let rj = json(&d.http("GET", "/report.json", &[], ""));
    assert_eq!(rj["run_id"], run_id.as_str());
    assert_eq!(rj["resources"]["leaked"], 0);

    // Nothing runs now: stop answers as Locust does, clean-up again is fine,
    // and nothing shows the secret key.
    assert_eq!(d.http("GET", "/stop", &[], "").status, 200);
    assert_eq!(d.http("POST", "/cleanup", &[], "").status, 200);
    for path in [
        "/",
        "/stats/requests",
        "/report",
        "/report.json",
        "/stats/failures/csv",
        "/metrics",
    ] {
        let r = d.http("GET", path, &[], "");
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.body.contains(SECRET), "{path} shows the secret key");
    }
}

#[test]
fn a_dashboard_that_cannot_reach_its_cloud_says_so_and_keeps_serving() {
    // Point the dashboard at a port nothing listens on.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let d = Dashboard::start_at(&dead, &["--connect-timeout", "2s"]);
    let r = d.http(
        "POST",
        "/swarm",
        &[],
        &form(&[
            ("user_count", "2"),
            ("spawn_rate", "1"),
            ("profile", "smoke"),
        ]),
    );
    assert_eq!(r.status, 502, "{}", r.body);
    let m = json(&r)["message"].as_str().unwrap().to_string();
    assert!(
        m.contains(&dead) || m.contains("refused") || m.contains("connect"),
        "{m}"
    );
    assert_eq!(d.requests()["state"], "ready");
}

#[test]
fn exposing_the_dashboard_needs_a_token_and_every_call_checks_it() {
    let moto = Moto::start();
    // Not loopback and no token: refuses to start.
    let out = cloudswarm()
        .args([
            "serve",
            "--bind",
            "0.0.0.0:0",
            "--ec2-endpoint",
            &moto.url,
            "--s3-endpoint",
            &moto.url,
        ])
        .env_remove("CLOUDSWARM_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without an access token") && err.contains("--token"),
        "{err}"
    );
    let out = cloudswarm()
        .args(["serve", "--bind", "0.0.0.0:0", "--token", "short"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("16 characters"),
        "{}",
        text(&out)
    );

    let token = "correct-horse-battery-staple";
    let d = Dashboard::start(&moto, &["--token", token]);
    let bearer = format!("Bearer {token}");
    for path in [
        "/stats/requests",
        "/stats/requests/csv",
        "/report.json",
        "/static/app.js",
    ] {
        let r = d.http("GET", path, &[], "");
        assert_eq!(r.status, 401, "{path} without a token: {}", r.body);
        let r = d.http(
            "GET",
            path,
            &[("Authorization", "Bearer wrong-token-wrong-token")],
            "",
        );
        assert_eq!(r.status, 401, "{path} with a wrong token");
    }
    assert_eq!(
        d.http("GET", "/stats/requests", &[("Authorization", &bearer)], "")
            .status,
        200
    );
    let r = d.http(
        "POST",
        "/swarm",
        &[],
        &form(&[
            ("user_count", "1"),
            ("spawn_rate", "1"),
            ("profile", "smoke"),
        ]),
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        requests_with(&d, &bearer)["state"],
        "ready",
        "the refused start started nothing"
    );
    // A browser is sent to the login form; the form sets the cookie.
    let r = d.http("GET", "/", &[("Accept", "text/html")], "");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
    let r = d.http("POST", "/login", &[], &format!("token={}", "nope"));
    assert_eq!(r.status, 401);
    let r = d.http("POST", "/login", &[], &format!("token={token}"));
    assert_eq!(r.status, 303);
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let set = r.header("set-cookie").unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains(token), "the cookie is not the token: {set}");
    let page = d.http("GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("swarm-form"));
    assert!(!page.body.contains(SECRET), "no credentials in the page");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    // Another site cannot post into it, even with the cookie.
    let r = d.http(
        "POST",
        "/swarm",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        &form(&[
            ("user_count", "1"),
            ("spawn_rate", "1"),
            ("profile", "smoke"),
        ]),
    );
    assert_eq!(r.status, 403);
    let r = d.http(
        "GET",
        "/stop",
        &[("Cookie", &cookie), ("Sec-Fetch-Site", "cross-site")],
        "",
    );
    assert_eq!(
        r.status, 403,
        "a link on another site cannot stop the swarm"
    );
    // Scripts use the bearer token.
    let r = d.http(
        "POST",
        "/swarm",
        &[("Authorization", &bearer)],
        &form(&[
            ("user_count", "1"),
            ("spawn_rate", "1"),
            ("profile", "smoke"),
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        d.http("GET", "/stop", &[("Authorization", &bearer)], "")
            .status,
        200
    );

    // Without a token, only loopback names are answered (DNS rebinding).
    let open = Dashboard::start(&moto, &[]);
    assert_eq!(open.http("GET", "/stats/requests", &[], "").status, 200);
    let r = open.http(
        "GET",
        "/stats/requests",
        &[("Host", "evil.example:8089")],
        "",
    );
    assert_eq!(r.status, 403, "{}", r.body);
}

fn requests_with(d: &Dashboard, bearer: &str) -> Value {
    json(&d.http("GET", "/stats/requests", &[("Authorization", bearer)], ""))
}

/// One browser test at a time: two Chromiums and their swarms on a 2-core CI
/// machine make the waits flaky.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A chromedriver on a free port, driving Debian's headless Chromium.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (scripts/setup.sh installs chromium-driver)"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            child,
            port,
            profile: tempfile::tempdir().unwrap(),
        }
    }

    async fn browser(&self) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1500,950",
                    "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ]
            }),
        );
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }

    /// A browser on the dashboard at `url`, once its page script says `ready`.
    async fn open(&self, url: &str) -> fantoccini::Client {
        let b = self.browser().await;
        b.goto(url).await.unwrap();
        until(
            &b,
            "the page script",
            Duration::from_secs(30),
            "return document.getElementById('status').textContent === 'ready'",
        )
        .await;
        b
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn js(b: &fantoccini::Client, script: &str) -> Value {
    b.execute(script, vec![]).await.unwrap()
}

/// Polls a script until it returns something truthy.
async fn until(b: &fantoccini::Client, what: &str, timeout: Duration, script: &str) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = js(b, script).await;
        let truthy = match &v {
            Value::Null | Value::Bool(false) => false,
            Value::Array(a) => !a.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn fill(b: &fantoccini::Client, id: &str, value: &str) {
    let e = b.find(fantoccini::Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn click(b: &fantoccini::Client, css: &str) {
    b.find(fantoccini::Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Pixels of the chart's first series colour inside its plot area.
const LINE_PIXELS: &str = r#"
  const c = document.getElementById(arguments[0] || 'chart-rps');
  const ctx = c.getContext('2d');
  const top = Math.ceil(24 * (window.devicePixelRatio || 1));
  const d = ctx.getImageData(0, top, c.width, c.height - top).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (Math.abs(d[i] - 63) < 12 && Math.abs(d[i+1] - 182) < 12 && Math.abs(d[i+2] - 139) < 12 && d[i+3] > 200) n++;
  return n;
"#;

#[tokio::test(flavor = "multi_thread")]
async fn browser_starts_edits_stops_and_downloads() {
    let _one = BROWSER.lock().await;
    let moto = Moto::start();
    let d = Dashboard::start(&moto, &[]);
    let driver = Driver::start();
    let b = driver.open(&d.url).await;
    let options = js(
        &b,
        "return Array.from(document.querySelectorAll('#profile option')).map(o => o.value)",
    )
    .await;
    for p in ["burn-in", "smoke", "storage"] {
        assert!(
            options.as_array().unwrap().iter().any(|o| o == p),
            "{options}"
        );
    }

    // Bad input: a message next to the field, nothing starts.
    js(
        &b,
        "document.getElementById('profile').value = 'smoke'; return 1",
    )
    .await;
    fill(&b, "user_count", "-4").await;
    click(&b, "#swarm-submit").await;
    let msg = until(
        &b,
        "the field error",
        Duration::from_secs(30),
        "return document.querySelector('.field-error[data-for=user_count]').textContent",
    )
    .await;
    assert!(msg.as_str().unwrap().contains("-4"), "{msg}");
    assert_eq!(d.requests()["state"], "ready");

    // Start from the form.
    fill(&b, "user_count", "3").await;
    fill(&b, "spawn_rate", "5").await;
    click(&b, "#swarm-submit").await;
    // s3:PutObject rather than any s3 row: the user's first put creates the
    // bucket, whose row can be drawn a refresh before the put's own.
    let names = until(&b, "ec2 and s3:PutObject rows in the statistics table", Duration::from_secs(60), r#"
        const n = Array.from(document.querySelectorAll('#stats-table tbody tr')).map(r => r.dataset.name);
        return n.some(x => x.startsWith('ec2:')) && n.includes('s3:PutObject') ? n : null;
    "#).await;
    assert!(
        names
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "s3:PutObject"),
        "{names}"
    );
    until(&b, "the Aggregated row", Duration::from_secs(30),
        "return document.querySelector('#stats-table tfoot tr') && document.querySelector('#stats-table tfoot tr').dataset.name === 'Aggregated'").await;
    let status = js(&b, "return document.getElementById('status').textContent").await;
    assert!(
        matches!(status.as_str(), Some("running" | "hatching")),
        "{status}"
    );
    assert_eq!(
        js(
            &b,
            "return document.getElementById('field-run-time').hidden"
        )
        .await,
        false,
        "the start form shows the run time"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let shot = b.screenshot().await.unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("dashboard.png"), &shot).unwrap();
    assert!(shot.len() > 10_000 && shot.starts_with(b"\x89PNG"));

    // Charts draw their lines from the server's history.
    click(&b, "a[data-tab=charts]").await;
    let px = until(
        &b,
        "the RPS line",
        Duration::from_secs(20),
        &format!("const n = (function() {{ {LINE_PIXELS} }})(); return n > 40 ? n : null"),
    )
    .await;
    assert!(px.as_u64().unwrap() > 40);
    std::fs::write(
        dir.join("dashboard-charts.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();
    // A reload keeps the history (it comes from the server).
    b.refresh().await.unwrap();
    click(&b, "a[data-tab=charts]").await;
    until(
        &b,
        "the RPS line after a reload",
        Duration::from_secs(30),
        &format!("const n = (function() {{ {LINE_PIXELS} }})(); return n > 40 ? n : null"),
    )
    .await;
    click(&b, "a[data-tab=stats]").await;

    // Edit the running swarm: the user count follows.
    until(
        &b,
        "the Edit button",
        Duration::from_secs(30),
        "return !document.getElementById('edit-button').hidden",
    )
    .await;
    click(&b, "#edit-button").await;
    let title = js(
        &b,
        "return document.getElementById('form-title').textContent",
    )
    .await;
    assert_eq!(title, "Edit running swarm");
    assert_eq!(
        js(
            &b,
            "return document.getElementById('field-run-time').hidden"
        )
        .await,
        true,
        "an edit does not touch the run time"
    );
    fill(&b, "user_count", "6").await;
    click(&b, "#swarm-submit").await;
    until(
        &b,
        "6 users in the top bar",
        Duration::from_secs(30),
        "return document.getElementById('users').textContent === '6'",
    )
    .await;
    assert_eq!(d.requests()["user_count"], 6);

    // Stop: the state goes to stopped once clean-up is done.
    click(&b, "#stop-button").await;
    until(
        &b,
        "stopped",
        Duration::from_secs(120),
        "return document.getElementById('status').textContent === 'stopped'",
    )
    .await;
    click(&b, "a[data-tab=resources]").await;
    let cleanup = until(
        &b,
        "the clean-up verdict",
        Duration::from_secs(30),
        "return document.getElementById('cleanup-status').textContent",
    )
    .await;
    assert!(
        cleanup
            .as_str()
            .unwrap()
            .contains("nothing of the run is left"),
        "{cleanup}"
    );
    assert_eq!(
        js(
            &b,
            "return document.getElementById('live-resources').textContent"
        )
        .await,
        "0"
    );

    // Download the CSV through the page's link and check its rows.
    click(&b, "a[data-tab=download]").await;
    let csv = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.getElementById('dl-stats').href).then(r => r.text()).then(done);",
            vec![],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0][..4],
        ["Type", "Name", "Request Count", "Failure Count"]
    );
    let agg = rows
        .iter()
        .find(|r| r[1] == "Aggregated")
        .expect("Aggregated row");
    assert!(agg[2].parse::<u64>().unwrap() > 0, "{csv}");
    assert!(
        rows.iter().any(|r| r[0] == "ec2") && rows.iter().any(|r| r[0] == "s3"),
        "{csv}"
    );

    // The HTML report opens from a file, with nothing but itself: its table
    // and its charts are there.
    let report = d.http("GET", "/report?download=1", &[], "");
    assert_eq!(report.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.html");
    std::fs::write(&file, &report.body).unwrap();
    b.goto(&format!("file://{}", file.display())).await.unwrap();
    let rows = until(
        &b,
        "the report's table",
        Duration::from_secs(30),
        "return Array.from(document.querySelectorAll('table.stats tbody tr td:first-child')).map(td => td.textContent)",
    )
    .await;
    assert!(
        rows.as_array().unwrap().iter().any(|r| r == "s3:PutObject"),
        "{rows}"
    );
    until(
        &b,
        "the report's RPS line",
        Duration::from_secs(30),
        &format!("const n = (function() {{ {LINE_PIXELS} }})(); return n > 40 ? n : null"),
    )
    .await;
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_logs_in_with_the_token() {
    let _one = BROWSER.lock().await;
    let moto = Moto::start();
    let token = "another-long-access-token";
    let d = Dashboard::start(&moto, &["--token", token]);
    let driver = Driver::start();
    let b = driver.browser().await;
    b.goto(&d.url).await.unwrap();
    assert!(b.current_url().await.unwrap().path() == "/login");
    fill(&b, "token", "wrong").await;
    click(&b, "button[type=submit]").await;
    until(&b, "the error", Duration::from_secs(30),
        "return document.getElementById('login-error') && document.getElementById('login-error').textContent").await;
    fill(&b, "token", token).await;
    click(&b, "button[type=submit]").await;
    until(&b, "the dashboard", Duration::from_secs(30),
        "return document.getElementById('status') && document.getElementById('status').textContent === 'ready'").await;
    b.close().await.unwrap();
}

#[test]
fn run_time_stops_the_swarm_and_an_edit_keeps_the_deadline() {
    let moto = Moto::start();
    let d = Dashboard::start(&moto, &[]);
    let post = |body: &str| d.http("POST", "/swarm", &[], body);
    let r = post(&form(&[
        ("user_count", "2"),
        ("spawn_rate", "5"),
        ("profile", "smoke"),
        ("run_time", "6s"),
    ]));
    assert_eq!(r.status, 200, "{}", r.body);
    let t0 = Instant::now();
    d.wait_for("2 users", Duration::from_secs(30), |v| v["user_count"] == 2);
    assert_eq!(
        post(&form(&[("user_count", "3"), ("spawn_rate", "5")])).status,
        200
    );
    let v = d.wait_for("the run time to stop it", Duration::from_secs(90), |v| {
        v["state"] == "stopped"
    });
    assert!(t0.elapsed() >= Duration::from_secs(5), "stopped too early");
    assert_eq!(v["live_resources"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_swarm_and_cleans_up_before_exiting() {
    let moto = Moto::start();
    let mut d = Dashboard::start(&moto, &[]);
    let r = d.http(
        "POST",
        "/swarm",
        &[],
        &form(&[
            ("user_count", "4"),
            ("spawn_rate", "10"),
            ("profile", "burn-in"),
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let run_id = json(&r)["run_id"].as_str().unwrap().to_string();
    d.wait_for("live resources", Duration::from_secs(60), |v| {
        v["live_resources"].as_u64().unwrap_or(0) > 0
    });
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "serve exits cleanly after clean-up");
    let (i, v, b) = run_leftovers(&moto, &run_id).await;
    assert!(
        i.is_empty() && v.is_empty() && b.is_empty(),
        "left behind: {i:?} {v:?} {b:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_that_is_a_master_runs_on_its_workers_and_shows_them() {
    let _one = BROWSER.lock().await;
    let moto = Moto::start();
    let mport = free_port();
    let mut d = Dashboard::start(
        &moto,
        &["--master", "--master-bind-port", &mport.to_string()],
    );
    let states: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut workers: Vec<Child> = states
        .iter()
        .map(|s| {
            // No -f: the dashboard sends the profile chosen in the form.
            cloudswarm()
                .args(["worker", "--master-port", &mport.to_string()])
                .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
                .args(["--state-dir", s.path().to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    d.wait_for("two workers", Duration::from_secs(60), |v| {
        v["worker_count"] == 2
    });
    let r = d.http(
        "POST",
        "/swarm",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &form(&[
            ("user_count", "4"),
            ("spawn_rate", "4"),
            ("profile", "storage"),
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let run_id = json(&r)["run_id"].as_str().unwrap().to_string();

    let driver = Driver::start();
    let b = driver.browser().await;
    b.goto(&format!("{}/#workers", d.url)).await.unwrap();
    let shown = until(
        &b,
        "two running workers with 4 users between them",
        Duration::from_secs(60),
        r#"const rows = Array.from(document.querySelectorAll('#workers-table tbody tr'));
           const cells = rows.map(r => Array.from(r.cells).map(c => c.textContent));
           const users = cells.reduce((a, c) => a + Number(c[3]), 0);
           return rows.length === 2 && cells.every(c => c[2] === 'running') && users === 4
             && !document.getElementById('tab-workers').hidden ? cells : null;"#,
    )
    .await;
    let cells = shown.as_array().unwrap();
    assert!(
        cells.iter().all(|c| c[3] == "2"),
        "users dealt evenly: {shown}"
    );
    until(
        &b,
        "the workers' requests in the statistics",
        Duration::from_secs(30),
        "return document.getElementById('worker-count').textContent === '2' && Number(document.querySelector('#workers-table tbody tr').cells[5].textContent.replace(/,/g, '')) > 0",
    )
    .await;
    // (A worker's first report may hold only its CreateBucket.)
    let v = d.wait_for("the workers' puts", Duration::from_secs(30), |v| {
        row(v, "s3:PutObject").is_some_and(|r| r["num_requests"].as_u64() > Some(0))
    });
    assert_eq!(v["user_count"], 4, "{v}");

    // Stopping waits for each worker's clean-up and says how it went.
    let r = d.http("POST", "/stop", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    d.wait_for("the workers' clean-up", Duration::from_secs(120), |v| {
        v["state"] == "stopped" && v["cleanup"]["outcome"]["leaked"] == 0
    });
    // Each worker says it is ready again.
    let done = d.wait_for("the workers ready again", Duration::from_secs(30), |v| {
        v["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["state"] == "ready"))
    });
    assert_eq!(done["cleanup"]["outcome"]["leaked"], 0, "{done}");
    let m = d.http("GET", "/metrics", &[], "");
    assert!(
        m.body.contains("cloudswarm_workers{state=\"ready\"} 2"),
        "{}",
        m.body
    );
    assert!(everything_of_run(&moto, &run_id).await.is_empty());
    // The run is kept on the master's machine, without a journal.
    let deadline = Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let runs = json(&d.http("GET", "/runs.json", &[], ""));
        if runs["runs"][0]["state"] == "complete" || Instant::now() > deadline {
            break runs;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let kept = &runs["runs"][0];
    assert_eq!(kept["run_id"], run_id.as_str(), "{runs}");
    assert_eq!(
        (&kept["state"], &kept["workers"], &kept["journal"]),
        (
            &Value::from("complete"),
            &Value::from(true),
            &Value::from(false)
        ),
        "{runs}"
    );
    drop(b);
    // The dashboard's shutdown tells its workers to quit.
    assert!(d.terminate().success());
    for w in workers.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while w.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "a worker did not quit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An open workload from the page: the form's arrival rate starts it, the
/// top bar and the class line show the rate and the dropped arrivals, an
/// edit changes the rate, and the reports carry the dropped per class.
#[tokio::test(flavor = "multi_thread")]
async fn browser_runs_an_open_workload_and_changes_its_arrival_rate() {
    let _one = BROWSER.lock().await;
    let moto = Moto::start();
    let d = Dashboard::start(&moto, &[]);

    // The API refuses a bad rate, and a rate for a profile without open classes.
    let post = |pairs: &[(&str, &str)]| d.http("POST", "/swarm", &[], &form(pairs));
    let r = post(&[
        ("user_count", "5"),
        ("spawn_rate", "10"),
        ("profile", "open-storage"),
        ("arrival_rate", "0/s"),
    ]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(json(&r)["field"], "arrival_rate", "{}", r.body);
    let r = post(&[
        ("user_count", "2"),
        ("spawn_rate", "10"),
        ("profile", "smoke"),
        ("arrival_rate", "20/s"),
    ]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        json(&r)["message"]
            .as_str()
            .unwrap()
            .contains("no open class"),
        "{}",
        r.body
    );
    assert_eq!(d.requests()["state"], "ready");

    let driver = Driver::start();
    let b = driver.open(&d.url).await;
    js(
        &b,
        "document.getElementById('profile').value = 'open-storage'; return 1",
    )
    .await;
    fill(&b, "user_count", "10").await;
    fill(&b, "spawn_rate", "20").await;
    fill(&b, "arrival_rate", "20/s").await;
    click(&b, "#swarm-submit").await;
    until(
        &b,
        "the arrival rate in the top bar",
        Duration::from_secs(60),
        "return !document.getElementById('arrivals-box').hidden && document.getElementById('arrival-rate').textContent === '20/s'",
    )
    .await;
    let classes = until(
        &b,
        "the open class's arrivals in the class line",
        Duration::from_secs(60),
        "const t = document.getElementById('classes').textContent; return /api 9 \\(arrivals 20\\/s, dropped \\d+\\)/.test(t) ? t : null",
    )
    .await;
    assert!(classes.as_str().unwrap().contains("browser 1"), "{classes}");
    assert!(
        !js(&b, "return document.getElementById('dropped-box').hidden")
            .await
            .as_bool()
            .unwrap(),
        "the Dropped box shows for an open workload"
    );
    let v = d.requests();
    assert_eq!(v["arrival_rate"], 20.0, "{v}");
    let api = v["user_classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "api")
        .unwrap();
    assert_eq!(
        api["arrival_rate"], 20.0,
        "the one open class takes it all: {v}"
    );
    assert!(api["dropped"].is_u64(), "{v}");
    until(
        &b,
        "task starts on the arrival:api row",
        Duration::from_secs(60),
        "const r = document.querySelector('#stats-table tbody tr[data-name=\"arrival:api\"]'); return r && r.children[2].textContent !== '0'",
    )
    .await;

    // Edit: the rate shown is the current one; a new one takes effect.
    click(&b, "#edit-button").await;
    assert_eq!(
        js(&b, "return document.getElementById('arrival_rate').value").await,
        "20/s"
    );
    fill(&b, "arrival_rate", "60/min").await;
    click(&b, "#swarm-submit").await;
    until(
        &b,
        "the new rate in the top bar",
        Duration::from_secs(30),
        "return document.getElementById('arrival-rate').textContent === '1/s'",
    )
    .await;
    assert_eq!(d.requests()["arrival_rate"], 1.0);
    std::fs::write(
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-open.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();

    // Stop; the JSON and HTML reports carry the dropped arrivals per class.
    click(&b, "#stop-button").await;
    d.wait_for("stopped", Duration::from_secs(120), |v| {
        v["state"] == "stopped"
    });
    let report = json(&d.http("GET", "/report.json", &[], ""));
    assert!(report["dropped"]["api"].is_u64(), "{report}");
    let html = d.http("GET", "/report", &[], "").body;
    assert!(
        html.contains("<h2>Arrivals (open classes)</h2>") && html.contains("<td>api</td>"),
        "{html}"
    );
    b.close().await.unwrap();
}

/// A capacity search started from the form: S3 behind an nginx that lets
/// 10 requests a second through (the rest answered 503), steps of 4/s. The
/// Capacity tab and box follow the steps; 4/s and 8/s hold, 12/s is
/// throttled, the run stops by itself, and the JSON and HTML reports and
/// `/metrics` carry the answer: 8/s.
#[tokio::test(flavor = "multi_thread")]
async fn browser_runs_a_capacity_search_and_shows_its_steps() {
    let _one = BROWSER.lock().await;
    let moto = Moto::start();
    let front = Nginx::rate_limited(&moto.url, 10);
    let profiles = tempfile::tempdir().unwrap();
    std::fs::copy("profiles/smoke.toml", profiles.path().join("smoke.toml")).unwrap();
    std::fs::write(
        profiles.path().join("cap.toml"),
        "[params]\nobject_size = \"1KiB\"\nbucket = \"shared\"\n\
         [[user]]\nname = \"api\"\narrival_rate = \"4/s\"\n[[user.task]]\nop = \"s3:PutObject\"\n",
    )
    .unwrap();
    let d = Dashboard::start_with(
        &moto.url,
        &front.url,
        &["--profiles-dir", profiles.path().to_str().unwrap()],
    );
    // The API: a search needs an open class, and a plan it can read.
    let post = |pairs: &[(&str, &str)]| d.http("POST", "/swarm", &[], &form(pairs));
    for (profile, plan, says) in [
        ("smoke", "1/s:1/s:1m", "no class of profile `smoke` has one"),
        ("cap", "1/s:1/s", "is not START:STEP:HOLD"),
    ] {
        let r = post(&[
            ("user_count", "4"),
            ("spawn_rate", "10"),
            ("profile", profile),
            ("find_max", plan),
        ]);
        assert_eq!(
            (r.status, json(&r)["field"].as_str()),
            (400, Some("find_max")),
            "{}",
            r.body
        );
        assert!(r.body.contains(says), "{}", r.body);
    }
    assert_eq!(d.requests()["state"], "ready");

    let driver = Driver::start();
    let b = driver.open(&d.url).await;
    js(
        &b,
        "document.getElementById('profile').value = 'cap'; return 1",
    )
    .await;
    fill(&b, "user_count", "8").await;
    fill(&b, "spawn_rate", "100").await;
    fill(&b, "find_max", "4/s:4/s:4s").await;
    click(&b, "#swarm-submit").await;
    until(
        &b,
        "step 1 in the top bar",
        Duration::from_secs(60),
        "return !document.getElementById('capacity-box').hidden && /^step 1 at 4\\/s/.test(document.getElementById('capacity-summary').textContent)",
    )
    .await;
    // An edit cannot start a search on a running swarm.
    let r = post(&[
        ("user_count", "8"),
        ("spawn_rate", "10"),
        ("find_max", "1/s:1/s:1m"),
    ]);
    assert_eq!(
        (r.status, json(&r)["field"].as_str()),
        (409, Some("find_max")),
        "{}",
        r.body
    );
    click(&b, "a[data-tab=capacity]").await;
    until(
        &b,
        "step 1 held in the Capacity tab",
        Duration::from_secs(30),
        "const r = document.querySelector('#capacity-table tbody tr[data-step=\"1\"]'); return r && r.lastChild.textContent === 'held'",
    )
    .await;
    let v = d.wait_for("the search's answer", Duration::from_secs(90), |v| {
        v["capacity"]["searching"] == false
    });
    let cap = &v["capacity"];
    assert_eq!(cap["max_rate"], 8.0, "{cap:#}");
    assert_eq!(cap["stopped_by"], "throttle_rate", "{cap:#}");
    let steps = cap["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{cap:#}");
    for (s, (rate, held)) in steps.iter().zip([(4.0, true), (8.0, true), (12.0, false)]) {
        assert_eq!(
            (s["rate"].as_f64(), s["held"].as_bool()),
            (Some(rate), Some(held)),
            "{s}"
        );
    }
    until(
        &b,
        "the answer in the Capacity tab",
        Duration::from_secs(30),
        "const t = document.getElementById('capacity-answer').textContent; return t.startsWith('the highest arrival rate that held: 8/s') && document.querySelector('#capacity-table tbody tr[data-step=\"3\"]').lastChild.textContent.startsWith('broke: throttle rate')",
    )
    .await;
    assert_eq!(
        js(
            &b,
            "return document.getElementById('capacity-summary').textContent"
        )
        .await,
        "max 8/s"
    );
    std::fs::write(
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-capacity.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();
    // The search stops the run; the reports and /metrics have the answer.
    d.wait_for("stopped", Duration::from_secs(120), |v| {
        v["state"] == "stopped"
    });
    let report = json(&d.http("GET", "/report.json", &[], ""));
    assert_eq!(report["capacity"]["max_rate"], 8.0, "{report:#}");
    let html = d.http("GET", "/report", &[], "").body;
    assert!(
        html.contains("id=\"capacity\"")
            && html.contains("the highest arrival rate that held: 8/s"),
        "{html}"
    );
    let m = d.http("GET", "/metrics", &[], "").body;
    let run = format!("run_id=\"{}\"", report["run_id"].as_str().unwrap());
    for line in [
        format!("cloudswarm_capacity_max_rate{{{run}}} 8"),
        format!("cloudswarm_capacity_searching{{{run}}} 0"),
        format!("cloudswarm_capacity_steps_total{{{run},verdict=\"held\"}} 2"),
        format!("cloudswarm_capacity_steps_total{{{run},verdict=\"broke\"}} 1"),
    ] {
        assert!(m.lines().any(|l| l == line), "{line}\n{m}");
    }
    b.close().await.unwrap();
}

/// Pixels of the generator-limited shade (unpremultiplied) in a chart.
const SHADE_PIXELS: &str = r#"
  const c = document.getElementById(arguments[0] || 'chart-rps');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (d[i] > 235 && Math.abs(d[i+1] - 138) < 20 && Math.abs(d[i+2] - 61) < 20 && d[i+3] > 35 && d[i+3] < 80) n++;
  return n;
"#;

#[tokio::test(flavor = "multi_thread")]
async fn browser_shows_slas_and_the_generator_limit_and_aborts_on_a_breach() {
    let _one = BROWSER.lock().await;
    let moto = Moto::start();
    let profiles = tempfile::tempdir().unwrap();
    std::fs::copy("profiles/smoke.toml", profiles.path().join("smoke.toml")).unwrap();
    std::fs::write(
        profiles.path().join("puts.toml"),
        "description = \"puts\"\nsla = [\"failure_rate < 50%\", \"p95(s3:PutObject) < 10s\"]\n\
         [params]\nobject_size = \"1KiB\"\nbucket = \"shared\"\n\
         [[user]]\nname = \"s\"\nwait = { constant = 0 }\n\
         [[user.task]]\nsequence = [\"s3:PutObject\", \"s3:DeleteObject\"]\n",
    )
    .unwrap();
    // One op in flight for 8 users: the generator is the limit.
    let d = Dashboard::start(
        &moto,
        &[
            "--profiles-dir",
            profiles.path().to_str().unwrap(),
            "--max-inflight",
            "1",
        ],
    );
    // The API: a bad SLA names its field; an abort needs an SLA.
    let post = |pairs: &[(&str, &str)]| d.http("POST", "/swarm", &[], &form(pairs));
    let base = [
        ("user_count", "2"),
        ("spawn_rate", "5"),
        ("profile", "smoke"),
    ];
    let r = post(&[&base[..], &[("sla", "p95(s3:PutObject)<soon")]].concat());
    assert_eq!(
        (r.status, json(&r)["field"].as_str()),
        (400, Some("sla")),
        "{}",
        r.body
    );
    assert!(r.body.contains("`soon` is not a time"), "{}", r.body);
    let r = post(&[&base[..], &[("abort_on_sla_failure", "true")]].concat());
    assert_eq!(
        (r.status, json(&r)["field"].as_str()),
        (400, Some("sla")),
        "{}",
        r.body
    );
    assert_eq!(d.requests()["state"], "ready");

    let driver = Driver::start();
    let b = driver.open(&d.url).await;
    // Choosing the profile fills the SLA box with its SLAs.
    js(
        &b,
        "const p = document.getElementById('profile'); p.value = 'puts'; p.dispatchEvent(new Event('change')); return 1",
    )
    .await;
    assert_eq!(
        js(&b, "return document.getElementById('sla').value").await,
        "failure_rate < 50%\np95(s3:PutObject) < 10s"
    );
    // Add one that breaks: more than 3 puts in 5 s.
    js(
        &b,
        "const s = document.getElementById('sla'); s.value += '\\nrequests[5s](s3:PutObject)<3'; s.dispatchEvent(new Event('input')); return 1",
    )
    .await;
    fill(&b, "user_count", "8").await;
    fill(&b, "spawn_rate", "8").await;
    click(&b, "#swarm-submit").await;
    until(
        &b,
        "the SLAs tab",
        Duration::from_secs(60),
        "return !document.getElementById('sla-tab').hidden",
    )
    .await;
    click(&b, "a[data-tab=sla]").await;
    let rows = until(
        &b,
        "two SLAs holding and one breached",
        Duration::from_secs(60),
        r#"const rows = Array.from(document.querySelectorAll('#sla-table tbody tr'));
           const st = rows.map(r => r.dataset.state).join(',');
           return st === 'holding,holding,breached' ? rows.map(r => Array.from(r.children).map(td => td.textContent)) : null;"#,
    )
    .await;
    let rows = rows.as_array().unwrap();
    let broken = rows[2].as_array().unwrap();
    assert_eq!(broken[0], "requests[5s](s3:PutObject)<3");
    assert_eq!(broken[1], "BREACHED");
    assert!(
        broken[2].as_str().unwrap().parse::<u64>().unwrap() >= 3,
        "{broken:?}"
    );
    assert_ne!(broken[3], "", "breached since: {broken:?}");
    assert_ne!(broken[4], "never", "{broken:?}");
    assert_eq!(rows[0].as_array().unwrap()[1], "holding");
    assert_eq!(
        js(
            &b,
            "return document.getElementById('sla-summary').textContent"
        )
        .await,
        "1 BREACHED"
    );
    // The top bar says the generator is the limit, and why.
    let limited = until(
        &b,
        "GENERATOR-LIMITED in the top bar",
        Duration::from_secs(30),
        "return !document.getElementById('generator-box').hidden && document.getElementById('generator-limited').textContent",
    )
    .await;
    // (A busy machine may add "runtime lag ..." after it.)
    assert!(
        limited
            .as_str()
            .unwrap()
            .starts_with("GENERATOR-LIMITED: in-flight slots full"),
        "{limited}"
    );
    let v = d.requests();
    let states: Vec<&str> = v["sla"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["holding", "holding", "breached"], "{v}");
    assert!(v["sla"][2]["first_breach_at"].as_f64().unwrap() >= v["started_at"].as_f64().unwrap());
    assert_eq!(v["generator"]["reasons"][0], "in-flight slots full", "{v}");
    assert!(
        v["generator"]["saturated_seconds"].as_u64().unwrap() >= 1,
        "{v}"
    );
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(dir.join("dashboard-sla.png"), b.screenshot().await.unwrap()).unwrap();
    // The charts shade the seconds the generator limited.
    click(&b, "a[data-tab=charts]").await;
    let shade = until(
        &b,
        "shaded seconds on the RPS chart",
        Duration::from_secs(30),
        &format!("const n = (function() {{ {SHADE_PIXELS} }})(); return n > 500 ? n : null"),
    )
    .await;
    eprintln!("{shade} shaded pixels; the breached SLA: {broken:?}");
    std::fs::write(
        dir.join("dashboard-limited-charts.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();
    click(&b, "#stop-button").await;
    d.wait_for("stopped", Duration::from_secs(120), |v| {
        v["state"] == "stopped"
    });
    // This run's reports say the generator limited it, and why.
    let report = json(&d.http("GET", "/report.json", &[], ""));
    assert!(
        report["generator"]["limited_seconds"].as_u64() >= Some(1),
        "{report:#}"
    );
    let html = d.http("GET", "/report", &[], "").body;
    assert!(html.contains("The load generator limited <b>"), "{html}");
    assert!(html.contains("<td>in-flight slots full"), "{html}");

    // Again, aborting on SLA failure: the run stops itself at the breach.
    until(
        &b,
        "the New button",
        Duration::from_secs(30),
        "return !document.getElementById('new-button').hidden",
    )
    .await;
    click(&b, "#new-button").await;
    assert_eq!(
        js(&b, "return document.getElementById('sla').value").await,
        "failure_rate < 50%\np95(s3:PutObject) < 10s\nrequests[5s](s3:PutObject)<3",
        "the form keeps what was typed"
    );
    click(&b, "#abort_on_sla_failure").await;
    let t0 = Instant::now();
    click(&b, "#swarm-submit").await;
    until(
        &b,
        "a new run",
        Duration::from_secs(60),
        &format!(
            "return document.getElementById('run-id').textContent !== '{}'",
            v["run_id"].as_str().unwrap()
        ),
    )
    .await;
    let v = d.wait_for("the run to stop itself", Duration::from_secs(120), |v| {
        v["state"] == "stopped"
    });
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert_eq!(v["abort_on_sla_failure"], true, "{v}");
    assert_eq!(
        v["aborted_by_sla"]["sla"], "requests[5s](s3:PutObject)<3",
        "{v}"
    );
    assert!(
        v["cleanup"]["log"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "clean-up ran: {v}"
    );
    click(&b, "a[data-tab=sla]").await;
    let said = until(
        &b,
        "the abort message",
        Duration::from_secs(30),
        "const a = document.getElementById('sla-aborted'); return !a.hidden && a.textContent",
    )
    .await;
    assert!(
        said.as_str().unwrap().starts_with(
            "The run was stopped at the first breach: SLA requests[5s](s3:PutObject)<3 broke at "
        ),
        "{said}"
    );
    std::fs::write(
        dir.join("dashboard-sla-aborted.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();
    b.close().await.unwrap();

    // The reports carry the same.
    let report = json(&d.http("GET", "/report.json", &[], ""));
    let oks: Vec<bool> = report["sla"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(oks, [true, true, false], "{report:#}");
    assert_eq!(
        report["aborted_by_sla"]["sla"],
        "requests[5s](s3:PutObject)<3"
    );
    // (This run stops within its first second or two, so whether one of
    // them was marked limited is a matter of timing: not asserted here.)
    let html = d.http("GET", "/report", &[], "").body;
    assert!(
        html.contains(
            "Stopped early (abort on SLA failure): SLA `requests[5s](s3:PutObject)&#60;3` broke"
        ),
        "{html}"
    );
    assert!(html.contains("<td class=\"bad\">FAILED</td>"), "{html}");
    let csv = d.http("GET", "/stats/sla/csv", &[], "").body;
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.lines()
            .nth(3)
            .unwrap()
            .starts_with("requests[5s](s3:PutObject)<3,false,"),
        "{csv}"
    );
}

/// Pixels of the newer run's colour (#f778ba) in a comparison chart.
const COMPARE_PIXELS: &str = r#"
  const c = document.getElementById(arguments[0]);
  const ctx = c.getContext('2d');
  const top = Math.ceil(24 * (window.devicePixelRatio || 1));
  const d = ctx.getImageData(0, top, c.width, c.height - top).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (Math.abs(d[i] - 247) < 12 && Math.abs(d[i+1] - 120) < 12 && Math.abs(d[i+2] - 186) < 12 && d[i+3] > 200) n++;
  return n;
"#;

/// Two headless runs (one writing `--html`) and one from the dashboard are
/// kept: `/runs.json` and the Runs tab list them, after a restart of
/// `serve` too; each run's files download; two ticked runs compare (table
/// and overlaid charts); the `--html` report opens offline.
#[tokio::test(flavor = "multi_thread")]
async fn kept_runs_survive_a_restart_and_compare_in_the_runs_tab() {
    let _one = BROWSER.lock().await;
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(
        profiles.join("objects.toml"),
        "[params]\nobject_size = \"16KiB\"\n[[user]]\nname = \"objects\"\nwait = { constant = 0.05 }\n\
         [[user.task]]\nop = \"s3:PutObject\"\n[[user.task]]\nop = \"s3:GetObject\"\nweight = 2\n",
    )
    .unwrap();
    let profile = profiles.join("objects.toml");
    let html = dir.path().join("a.html");
    let mut ids = Vec::new();
    for extra in [vec!["--html", html.to_str().unwrap()], vec![]] {
        let mut args = vec![
            "-f",
            profile.to_str().unwrap(),
            "-u",
            "2",
            "-r",
            "10",
            "-t",
            "4s",
        ];
        args.extend(extra);
        let o = run_against(&moto, &state, &args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let id = err
            .lines()
            .find_map(|l| l.strip_prefix("cloudswarm run "))
            .and_then(|l| l.split(':').next())
            .unwrap()
            .to_string();
        ids.push(id);
    }
    let listed = |d: &Dashboard| -> Vec<Value> {
        json(&d.http("GET", "/runs.json", &[], ""))["runs"]
            .as_array()
            .unwrap()
            .clone()
    };
    let dash_args = ["--profiles-dir", profiles.to_str().unwrap()];
    let mut d = Dashboard::start_in(&moto.url, &state, &dash_args);
    let runs = listed(&d);
    let got: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[1].as_str(), ids[0].as_str()], "{runs:?}");

    // A run from the dashboard is kept the same way.
    let r = d.http(
        "POST",
        "/swarm",
        &[],
        &form(&[
            ("user_count", "2"),
            ("spawn_rate", "10"),
            ("profile", "objects"),
            ("run_time", "3s"),
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let dash_id = json(&r)["run_id"].as_str().unwrap().to_string();
    d.wait_for(
        "the run to stop and clean up",
        Duration::from_secs(90),
        |v| v["state"] == "stopped" && v["cleanup"]["outcome"]["leaked"] == 0,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let runs = listed(&d);
        if runs[0]["state"] == "complete" {
            break runs;
        }
        assert!(Instant::now() < deadline, "not kept: {runs:?}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0]["run_id"], dash_id.as_str());
    assert_eq!(runs[0]["journal"], true);
    assert_eq!(runs[0]["profile"], "objects");
    assert!(runs[0]["requests"].as_u64().unwrap() > 0, "{runs:?}");
    let page = d.http("GET", &format!("/runs/{dash_id}/report.html"), &[], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&dash_id) && page.body.contains("s3:PutObject"));
    assert!(
        page.header("content-disposition").is_none(),
        "opens in the browser"
    );
    let csv = d.http("GET", &format!("/runs/{dash_id}/stats.csv"), &[], "");
    assert_eq!(csv.status, 200);
    assert!(
        csv.header("content-disposition")
            .unwrap()
            .contains(&format!("cloudswarm_{dash_id}_stats.csv"))
    );
    assert!(csv.body.starts_with("Type,Name,Request Count"));
    for bad in [
        format!("/runs/{dash_id}/secret.txt"),
        format!("/runs/{dash_id}/..%2Frun.json"),
        "/runs/NOT-AN-ID/report.json".to_string(),
        "/runs/nosuchrun/report.json".to_string(),
    ] {
        assert_eq!(d.http("GET", &bad, &[], "").status, 404, "{bad}");
    }

    // They survive a restart of serve.
    assert_eq!(d.terminate().code(), Some(0));
    let d = Dashboard::start_in(&moto.url, &state, &dash_args);
    let again: Vec<String> = listed(&d)
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(again, [dash_id.clone(), ids[1].clone(), ids[0].clone()]);
    let c = d.http(
        "GET",
        &format!("/compare.json?base={}&new={}", ids[0], ids[1]),
        &[],
        "",
    );
    assert_eq!(c.status, 200, "{}", c.body);
    let c = json(&c);
    assert_eq!(c["comparison"]["base"]["run_id"], ids[0].as_str());
    assert!(c["base"]["history"].as_array().unwrap().len() >= 3, "{c}");
    let bad = d.http(
        "GET",
        &format!("/compare.json?base={}&new=nosuchrun", ids[0]),
        &[],
        "",
    );
    assert_eq!(bad.status, 404, "{}", bad.body);

    // The Runs tab: the list, then two ticked runs compared.
    let driver = Driver::start();
    let b = driver.browser().await;
    b.goto(&format!("{}/#runs", d.url)).await.unwrap();
    let rows = until(
        &b,
        "the kept runs",
        Duration::from_secs(30),
        "const r = Array.from(document.querySelectorAll('#runs-table tbody tr')).map(tr => tr.dataset.run); return r.length === 3 ? r : null",
    )
    .await;
    assert_eq!(rows, serde_json::json!([dash_id, ids[1], ids[0]]));
    let links = js(
        &b,
        &format!(
            "return Array.from(document.querySelectorAll('tr[data-run=\"{}\"] td.files a')).map(a => a.getAttribute('href'))",
            ids[0]
        ),
    )
    .await;
    assert!(
        links
            .as_array()
            .unwrap()
            .contains(&Value::from(format!("/runs/{}/report.html", ids[0]))),
        "{links}"
    );
    click(&b, &format!("tr[data-run=\"{}\"] input.run-pick", ids[1])).await;
    click(&b, &format!("tr[data-run=\"{}\"] input.run-pick", ids[0])).await;
    click(&b, "#compare-button").await;
    let names = until(
        &b,
        "the comparison table",
        Duration::from_secs(30),
        "return Array.from(document.querySelectorAll('#compare-table tbody tr')).map(tr => tr.dataset.name)",
    )
    .await;
    let names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"s3:GetObject") && names.last() == Some(&"Aggregated"),
        "{names:?}"
    );
    let title = js(
        &b,
        "return document.getElementById('compare-title').textContent",
    )
    .await;
    assert!(
        title
            .as_str()
            .unwrap()
            .contains(&format!("compared with {}", ids[0])),
        "the older run is the base: {title}"
    );
    for chart in ["chart-compare-rps", "chart-compare-p95"] {
        until(
            &b,
            &format!("the newer run's line in {chart}"),
            Duration::from_secs(30),
            &format!(
                "const n = (function() {{ {COMPARE_PIXELS} }})('{chart}'); return n > 40 ? n : null"
            ),
        )
        .await;
    }

    // The first run's --html report opens offline: its table and chart.
    b.goto(&format!("file://{}", html.display())).await.unwrap();
    let rows = until(
        &b,
        "the --html report's table",
        Duration::from_secs(30),
        "return Array.from(document.querySelectorAll('table.stats tbody tr td:first-child')).map(td => td.textContent)",
    )
    .await;
    assert!(
        rows.as_array().unwrap().iter().any(|r| r == "s3:GetObject"),
        "{rows}"
    );
    until(
        &b,
        "the --html report's RPS line",
        Duration::from_secs(30),
        &format!("const n = (function() {{ {LINE_PIXELS} }})(); return n > 40 ? n : null"),
    )
    .await;
    b.close().await.unwrap();
}
