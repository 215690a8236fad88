//! Test fixtures: a real moto server on a free loopback port, the cloudswarm
//! binary run against it, and SDK clients to look at what the cloud holds.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A moto server that lives as long as this value.
pub struct Moto {
    child: Child,
    pub port: u16,
    pub url: String,
}

fn moto_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (the test command does)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(moto_bin())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ALLOW_NONEXISTENT_REGION", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cloudswarm binary with a clean AWS environment (test credentials, no
/// config files, no instance metadata lookups).
pub fn cloudswarm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cloudswarm"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// Runs cloudswarm against moto with the given extra args.
pub fn run_against(moto: &Moto, state: &Path, args: &[&str]) -> Output {
    cloudswarm()
        .arg("run")
        .args(["--ec2-endpoint", &moto.url, "--s3-endpoint", &moto.url])
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "--status-every",
            "1",
        ])
        .args(args)
        .output()
        .expect("run cloudswarm")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// SDK clients pointed at moto, to inspect what the cloud holds.
pub async fn clients(moto: &Moto) -> (aws_sdk_ec2::Client, aws_sdk_s3::Client) {
    let creds = aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test");
    let region = aws_sdk_ec2::config::Region::new("us-east-1");
    let ec2 = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .credentials_provider(creds.clone())
        .region(region.clone())
        .endpoint_url(&moto.url)
        .build();
    let s3 = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .credentials_provider(creds)
        .region(region)
        .endpoint_url(&moto.url)
        .force_path_style(true)
        .build();
    (
        aws_sdk_ec2::Client::from_conf(ec2),
        aws_sdk_s3::Client::from_conf(s3),
    )
}

/// An nginx on a free loopback port, configured by the caller's `server {}` body.
pub struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Nginx {
    /// `server_body` is placed inside `server { listen ...; }`.
    pub fn start(server_body: &str) -> Nginx {
        Self::start_with("", server_body)
    }

    /// Serves HTTPS with the given certificate and key files.
    pub fn start_tls(cert: &Path, key: &Path, server_body: &str) -> Nginx {
        let body = format!(
            "    ssl_certificate {};\n    ssl_certificate_key {};\n{server_body}",
            cert.display(),
            key.display()
        );
        let mut n = Self::start_with(" ssl", &body);
        n.url = n.url.replace("http://", "https://");
        n
    }

    fn start_with(listen_opts: &str, server_body: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d};\n  \
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
             client_max_body_size 100m;\n  proxy_request_buffering off;\n  proxy_http_version 1.1;\n  \
             server {{\n    listen 127.0.0.1:{port}{listen_opts};\n{server_body}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is missing: run scripts/setup.sh (the test command does)");
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a JSON report.
pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("json report")).expect("valid json")
}

/// One entry of a JSON report, if recorded.
pub fn find_entry<'a>(report: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

/// What of a run moto still holds: (live instances, volumes not being deleted, buckets).
pub async fn run_leftovers(moto: &Moto, run_id: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    use aws_sdk_ec2::types::{Filter, InstanceStateName, VolumeState};
    let (ec2, s3) = clients(moto).await;
    let tag = Filter::builder()
        .name("tag:cloudswarm:run-id")
        .values(run_id)
        .build();
    let inst = ec2
        .describe_instances()
        .filters(tag.clone())
        .send()
        .await
        .unwrap();
    let live: Vec<String> = inst
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            !matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            )
        })
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    let vols = ec2.describe_volumes().filters(tag).send().await.unwrap();
    let vols: Vec<String> = vols
        .volumes()
        .iter()
        .filter(|v| {
            !matches!(
                v.state(),
                Some(VolumeState::Deleting | VolumeState::Deleted)
            )
        })
        .filter_map(|v| v.volume_id().map(str::to_string))
        .collect();
    let b = s3.list_buckets().send().await.unwrap();
    let buckets: Vec<String> = b
        .buckets()
        .iter()
        .filter_map(|b| b.name())
        .filter(|n| n.starts_with(&format!("cs-{run_id}-")))
        .map(str::to_string)
        .collect();
    (live, vols, buckets)
}
