//! The cloud under test: endpoints, region, credentials from the standard AWS
//! chain, and the one shared EC2 and S3 client each run uses (retries off by
//! default so every attempt is measured, explicit timeouts, no optional
//! checksums, path-style S3). Also the preflight that checks, before any user
//! hatches, that each service answers and accepts the credentials.

use std::time::Duration;

use anyhow::{Result, bail};
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use clap::Args;

use crate::stats::Failure;
use crate::tasks::errors::classify;

/// Where and how to reach the cloud (shared by every command).
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// EC2 endpoint URL (default: AWS_ENDPOINT_URL_EC2, then AWS's own for the region)
    #[arg(long, value_name = "URL")]
    pub ec2_endpoint: Option<String>,
    /// S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, then AWS's own for the region)
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Region label (default: AWS_REGION / profile, then us-east-1)
    #[arg(long)]
    pub region: Option<String>,
    /// Retries per request (0: every attempt is measured on its own)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,
    /// Connect timeout
    #[arg(long, default_value = "5s", value_parser = parse_dur)]
    pub connect_timeout: Duration,
    /// Read timeout (time to the first byte of an answer)
    #[arg(long, default_value = "60s", value_parser = parse_dur)]
    pub read_timeout: Duration,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    crate::profile::parse_duration(s)
}

/// What a run or report may show of the target: never credentials.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetInfo {
    pub ec2_endpoint: String,
    pub s3_endpoint: String,
    pub region: String,
}

/// The shared SDK clients of a run.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub info: TargetInfo,
}

fn check_url(what: &str, url: &str) -> Result<()> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.split("://").nth(1).is_some_and(|h| !h.is_empty());
    if !ok {
        bail!("{what} endpoint `{url}` is not an http:// or https:// URL");
    }
    Ok(())
}

impl TargetArgs {
    /// Builds the clients from the flags, the environment and the AWS config files.
    pub async fn clients(&self) -> Result<Clients> {
        let env_ep = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let ec2_ep = self
            .ec2_endpoint
            .clone()
            .or_else(|| env_ep("AWS_ENDPOINT_URL_EC2"));
        let s3_ep = self
            .s3_endpoint
            .clone()
            .or_else(|| env_ep("AWS_ENDPOINT_URL_S3"));
        if let Some(u) = &ec2_ep {
            check_url("EC2", u)?;
        }
        if let Some(u) = &s3_ep {
            check_url("S3", u)?;
        }
        if let Some(r) = &self.region
            && (r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            bail!("region `{r}` is not a region label (letters, digits and -)");
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &self.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let shared = loader.load().await;
        let region = shared
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".to_string());
        let region_obj = aws_config::Region::new(region.clone());
        let retry = if self.retries == 0 {
            RetryConfig::disabled()
        } else {
            RetryConfig::standard().with_max_attempts(self.retries + 1)
        };
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .build();

        let mut ec2 = aws_sdk_ec2::config::Builder::from(&shared)
            .region(region_obj.clone())
            .retry_config(retry.clone())
            .timeout_config(timeouts.clone());
        if let Some(u) = &ec2_ep {
            ec2 = ec2.endpoint_url(u.clone());
        }
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared)
            .region(region_obj)
            .retry_config(retry)
            .timeout_config(timeouts)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(u) = &s3_ep {
            s3 = s3.endpoint_url(u.clone());
        }
        Ok(Clients {
            ec2: aws_sdk_ec2::Client::from_conf(ec2.build()),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            info: TargetInfo {
                ec2_endpoint: ec2_ep.unwrap_or_else(|| format!("aws ec2 ({region})")),
                s3_endpoint: s3_ep.unwrap_or_else(|| format!("aws s3 ({region})")),
                region,
            },
        })
    }
}

/// Codes that mean the credentials were rejected.
fn is_credential_code(code: &str) -> bool {
    matches!(
        code,
        "AuthFailure"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "UnrecognizedClientException"
            | "InvalidSecurity"
            | "ExpiredToken"
            | "AccessDenied"
            | "HTTP 403"
    )
}

fn explain(service: &str, endpoint: &str, f: &Failure) -> String {
    if is_credential_code(&f.code) {
        format!(
            "{service} at {endpoint} rejected the credentials ({}: {}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS profile",
            f.code, f.message
        )
    } else if matches!(
        f.code.as_str(),
        "refused" | "reset" | "dns" | "tls" | "timeout" | "connect"
    ) {
        format!(
            "cannot reach {service} at {endpoint} ({}): {}",
            f.code, f.message
        )
    } else {
        format!(
            "{service} at {endpoint} answered the preflight call with an error ({}: {})",
            f.code, f.message
        )
    }
}

/// A cheap call per service used by the profile; an error names the problem.
/// Returns the first availability zone when EC2 was checked.
pub async fn preflight(c: &Clients, ec2: bool, s3: bool) -> Result<Option<String>> {
    let mut az = None;
    if ec2 {
        match tokio::time::timeout(
            Duration::from_secs(30),
            c.ec2.describe_availability_zones().send(),
        )
        .await
        {
            Err(_) => bail!(
                "cannot reach EC2 at {}: no answer in 30s",
                c.info.ec2_endpoint
            ),
            Ok(Err(e)) => bail!(explain("EC2", &c.info.ec2_endpoint, &classify(&e))),
            Ok(Ok(out)) => {
                az = out
                    .availability_zones()
                    .iter()
                    .filter_map(|z| z.zone_name())
                    .next()
                    .map(str::to_string);
            }
        }
    }
    if s3 {
        match tokio::time::timeout(Duration::from_secs(30), c.s3.list_buckets().send()).await {
            Err(_) => bail!(
                "cannot reach S3 at {}: no answer in 30s",
                c.info.s3_endpoint
            ),
            Ok(Err(e)) => bail!(explain("S3", &c.info.s3_endpoint, &classify(&e))),
            Ok(Ok(_)) => {}
        }
    }
    Ok(az)
}
