//! The benchmark's peer: a bare aws-sdk-s3 loop putting 1 KiB objects with
//! CONCURRENCY tasks for SECONDS, the way a hand-written client would.
//! usage: sdk_put_loop ENDPOINT CONCURRENCY SECONDS [tuned|defaults]
//!   tuned     the client settings cloudswarm uses (the SDK's cheapest:
//!             no retries, checksums only where required, no stalled-stream
//!             protection, cloudswarm's default 5 s connect and 60 s read
//!             timeouts, and its S3 endpoint resolver that resolves once per
//!             bucket rather than once per key), so the two differ only by
//!             the engine around the call
//!   defaults  the SDK's defaults
//! Both use cloudswarm's allocator (mimalloc).
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::primitives::ByteStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // The same runtime choice cloudswarm makes: one thread on one core.
    let one_core = std::thread::available_parallelism().map_or(1, |n| n.get()) == 1;
    let rt = if one_core {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    rt.expect("runtime").block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args().collect();
    if !(4..=5).contains(&args.len()) {
        usage();
    }
    let tuned = match args.get(4).map(String::as_str) {
        None | Some("tuned") => true,
        Some("defaults") => false,
        Some(_) => usage(),
    };
    let endpoint = args[1].clone();
    let (Ok(conc), Ok(secs)) = (args[2].parse::<usize>(), args[3].parse::<f64>()) else {
        usage();
    };
    if conc == 0 || !secs.is_finite() || secs < 0.0 {
        usage();
    }
    let mut conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true);
    if tuned {
        conf = conf
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .endpoint_resolver(cloudswarm::endpoint::KeylessS3Resolver::default());
    }
    let s3 = aws_sdk_s3::Client::from_conf(conf.build());
    let body = bytes::Bytes::from(vec![b'x'; 1024]);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..conc {
        let (s3, body, ok, failed) = (s3.clone(), body.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                let r = s3
                    .put_object()
                    .bucket("bench")
                    .key(format!("t{t}/o{i}"))
                    .body(ByteStream::from(body.clone()))
                    .send()
                    .await;
                match r {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let el = t0.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    println!(
        "requests={n} failures={} seconds={el:.2} rps={:.1}",
        failed.load(Ordering::Relaxed),
        n as f64 / el
    );
}

fn usage() -> ! {
    eprintln!("usage: sdk_put_loop ENDPOINT CONCURRENCY SECONDS [tuned|defaults]");
    std::process::exit(2);
}
