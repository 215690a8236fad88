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
