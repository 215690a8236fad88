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
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_s3::config::{
    RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_types::service_config::ServiceConfigKey;
use clap::Args;

use crate::failure::Failure;
use crate::failure::classify;

/// Where and how to reach the cloud (shared by every command).
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// EC2 endpoint URL (default: AWS_ENDPOINT_URL_EC2, the config profile's services section, AWS_ENDPOINT_URL, the profile's endpoint_url, then AWS's own)
    #[arg(long, value_name = "URL")]
    pub ec2_endpoint: Option<String>,
    /// S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, the config profile's services section, AWS_ENDPOINT_URL, the profile's endpoint_url, then AWS's own)
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Region label (default: AWS_REGION / profile, then us-east-1; `eucalyptus` with --eucarc)
    #[arg(long)]
    pub region: Option<String>,
    /// Eucalyptus eucarc file: EC2_URL, S3_URL and EC2_ACCESS_KEY/EC2_SECRET_KEY (or AWS_ACCESS_KEY/AWS_SECRET_KEY)
    #[arg(long, value_name = "FILE")]
    pub eucarc: Option<std::path::PathBuf>,
    /// Extra CA certificates (PEM) to trust, for clouds with their own TLS
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Do not verify TLS certificates (never on a network you do not control)
    #[arg(long, conflicts_with = "ca_bundle")]
    pub insecure: bool,
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
    crate::units::parse_duration(s)
}

/// What a run or report may show of the target: never credentials.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetInfo {
    pub ec2_endpoint: String,
    pub s3_endpoint: String,
    pub region: String,
}

/// An endpoint URL for display: any `user:password@` part is dropped.
pub fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// The shared SDK clients of a run.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub info: TargetInfo,
    /// What the clients sign with (for naming the key in messages).
    creds: Option<SharedCredentialsProvider>,
}

/// What a eucarc file says (values may be quoted, lines may start with
/// `export`, `$VAR` / `${VAR}` refer to earlier lines; other lines are ignored).
#[derive(Default, Clone, PartialEq)]
pub struct Eucarc {
    pub ec2_url: Option<String>,
    pub s3_url: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub region: Option<String>,
}

impl std::fmt::Debug for Eucarc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Eucarc")
            .field("ec2_url", &self.ec2_url)
            .field("s3_url", &self.s3_url)
            .field("access_key", &self.access_key.as_ref().map(|_| "<set>"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<set>"))
            .field("region", &self.region)
            .finish()
    }
}

/// Parses eucarc text.
pub fn parse_eucarc(text: &str) -> Eucarc {
    let mut vars: std::collections::HashMap<String, String> = Default::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let mut v = v.trim();
        // Drop a trailing comment outside quotes.
        let quoted = v.starts_with('"') || v.starts_with('\'');
        if !quoted && let Some(i) = v.find(" #") {
            v = v[..i].trim();
        }
        let single = v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'');
        let double = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
        let inner = if single || double {
            &v[1..v.len() - 1]
        } else {
            v
        };
        let value = if single {
            inner.to_string()
        } else {
            expand(inner, &vars)
        };
        vars.insert(k.to_string(), value);
    }
    let get = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| vars.get(*n).filter(|v| !v.is_empty()).cloned())
    };
    Eucarc {
        ec2_url: get(&["EC2_URL"]),
        s3_url: get(&["S3_URL"]),
        access_key: get(&["EC2_ACCESS_KEY", "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID"]),
        secret_key: get(&["EC2_SECRET_KEY", "AWS_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"]),
        region: get(&["AWS_DEFAULT_REGION", "AWS_REGION", "EC2_REGION"]),
    }
}

/// Expands `$NAME` and `${NAME}` from earlier lines (unknown names stay as written).
fn expand(v: &str, vars: &std::collections::HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(b) = after.strip_prefix('{') {
            match b.find('}') {
                Some(j) => (&b[..j], j + 2),
                None => ("", 0),
            }
        } else {
            let j = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..j], j)
        };
        match vars.get(name).filter(|_| !name.is_empty()) {
            Some(val) => out.push_str(val),
            None => out.push_str(&rest[i..i + 1 + len]),
        }
        rest = &rest[i + 1 + len..];
    }
    out.push_str(rest);
    out
}

/// An S3 endpoint with a path prefix must end with `/`, or the SDK drops the
/// separator before the bucket (aws-sdk-rust #1387).
pub fn normalize_s3_endpoint(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |x| x.1);
    match after_scheme.find('/') {
        Some(i) if i + 1 < after_scheme.len() && !url.ends_with('/') => format!("{url}/"),
        _ => url.to_string(),
    }
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
    /// Long on purpose: one straight sequence (endpoints, region,
    /// credentials, TLS, timeouts, then each client), each step with its own
    /// error message; split up it would only pass the half-built config around.
    pub async fn clients(&self) -> Result<Clients> {
        let euca = match &self.eucarc {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read eucarc {}: {e}", path.display()))?;
                let e = parse_eucarc(&text);
                if e.ec2_url.is_none() && e.s3_url.is_none() {
                    bail!("eucarc {} sets neither EC2_URL nor S3_URL", path.display());
                }
                if e.access_key.is_some() != e.secret_key.is_some() {
                    bail!(
                        "eucarc {} sets only one of the access key and the secret key",
                        path.display()
                    );
                }
                Some(e)
            }
            None => None,
        };
        let euca = euca.unwrap_or_default();
        if let Some(r) = &self.region
            && (r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            bail!("region `{r}` is not a region label (letters, digits and -)");
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        let mut http_client = None;
        if self.insecure {
            eprintln!(
                "WARNING: --insecure: TLS certificates are NOT verified; anyone on the path can read and change the traffic"
            );
            http_client = Some(crate::tls::insecure(self.connect_timeout));
        } else if let Some(ca) = &self.ca_bundle {
            http_client = Some(crate::tls::with_ca_bundle(ca)?);
        }
        if let Some(c) = &http_client {
            loader = loader.http_client(c.clone());
        }
        let region_flag = self.region.clone().or(euca.region.clone()).or_else(|| {
            // Eucalyptus clouds take any label; use theirs unless told otherwise.
            (self.eucarc.is_some() && std::env::var("AWS_REGION").is_err())
                .then(|| "eucalyptus".to_string())
        });
        if let Some(r) = &region_flag {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let (Some(ak), Some(sk)) = (&euca.access_key, &euca.secret_key) {
            loader = loader.credentials_provider(Credentials::new(
                ak.clone(),
                sk.clone(),
                None,
                None,
                "eucarc",
            ));
        }
        let shared = loader.load().await;
        let plain = shared
            .credentials_provider()
            .map(|p| SharedCredentialsProvider::new(PlainCredentials(p)));
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
        let mut timeouts = TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout);
        if self.insecure {
            // That client does not apply the read timeout itself: bound each attempt.
            timeouts = timeouts.operation_attempt_timeout(self.connect_timeout + self.read_timeout);
        }
        let timeouts = timeouts.build();

        // Endpoints: the flag, the eucarc, then what the environment and the
        // config profile say, read the way the SDK reads them: the service's
        // own (AWS_ENDPOINT_URL_S3, the profile's `services` section), then
        // the global one (AWS_ENDPOINT_URL, the profile's `endpoint_url`).
        // An empty value counts as unset.
        let configured = |id: &str, env: &str| {
            let key = ServiceConfigKey::builder()
                .service_id(id)
                .env(env)
                .profile("endpoint_url")
                .build()
                .ok()?;
            shared
                .service_config()
                .and_then(|c| c.load_config(key))
                .filter(|u| !u.is_empty())
                .or_else(|| shared.endpoint_url().map(String::from))
                .filter(|u| !u.is_empty())
        };
        let ec2_ep = (self.ec2_endpoint.clone())
            .or(euca.ec2_url.clone())
            .or_else(|| configured("EC2", "AWS_ENDPOINT_URL_EC2"));
        let s3_ep = (self.s3_endpoint.clone())
            .or(euca.s3_url.clone())
            .or_else(|| configured("S3", "AWS_ENDPOINT_URL_S3"))
            .map(|u| normalize_s3_endpoint(&u));
        if let Some(u) = &ec2_ep {
            check_url("EC2", u)?;
        }
        if let Some(u) = &s3_ep {
            check_url("S3", u)?;
        }

        // Each client is built from scratch with only the settings the loaded
        // config really has. `Builder::from(&SdkConfig)` would also store each
        // setting nobody made as an explicit "unset" entry, which every
        // request's config lookups then step over (measured: ~1% of a 1 KiB
        // put's CPU). The defaults aws-config always fills in (sleep, time
        // source, identity cache) are the clients' own defaults anyway.
        macro_rules! base_config {
            ($svc:ident) => {{
                let mut b = $svc::config::Builder::new()
                    .behavior_version(BehaviorVersion::latest())
                    .region(region_obj.clone())
                    .retry_config(retry.clone())
                    .timeout_config(timeouts.clone());
                b.set_credentials_provider(plain.clone());
                b.set_http_client(http_client.clone());
                if let Some(v) = shared.use_fips() {
                    b = b.use_fips(v);
                }
                if let Some(v) = shared.use_dual_stack() {
                    b = b.use_dual_stack(v);
                }
                if let Some(v) = shared.app_name() {
                    b = b.app_name(v.clone());
                }
                if let Some(v) = shared.auth_scheme_preference() {
                    b = b.auth_scheme_preference(v.clone());
                }
                if let Some(v) = shared.disable_clock_skew_correction() {
                    b = b.disable_clock_skew_correction(v);
                }
                if let Some(v) = shared.stalled_stream_protection() {
                    b = b.stalled_stream_protection(v);
                }
                for m in shared.framework_metadata() {
                    b.push_framework_metadata(m.clone());
                }
                b
            }};
        }
        let mut ec2 = base_config!(aws_sdk_ec2);
        if let Some(u) = &ec2_ep {
            ec2 = ec2.endpoint_url(u.clone());
        }
        let mut s3 = base_config!(aws_sdk_s3)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(v) = shared.sigv4a_signing_region_set() {
            s3 = s3.sigv4a_signing_region_set(v.clone());
        }
        if let Some(u) = &s3_ep {
            s3 = s3.endpoint_url(u.clone());
        }
        // Resolves the endpoint once per bucket, not once per object key.
        s3 = s3.endpoint_resolver(crate::endpoint::KeylessS3Resolver::default());
        Ok(Clients {
            ec2: aws_sdk_ec2::Client::from_conf(ec2.build()),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            creds: shared.credentials_provider(),
            info: TargetInfo {
                ec2_endpoint: ec2_ep
                    .as_deref()
                    .map_or_else(|| format!("aws ec2 ({region})"), without_userinfo),
                s3_endpoint: s3_ep
                    .as_deref()
                    .map_or_else(|| format!("aws s3 ({region})"), without_userinfo),
                region,
            },
        })
    }
}

/// The credential chain's answer without its bookkeeping. The chain tags
/// what it finds with where it came from (environment, profile, ...) for the
/// SDK's user-agent metrics, and the SDK turns those tags into a config
/// layer of their own on every request: a layer that every config lookup of
/// the request then walks. Keys, session token and expiry pass through
/// unchanged (and the identity cache still refreshes expiring ones); only
/// the tags are dropped. That is ~2% of the CPU of a 1 KiB PutObject.
#[derive(Debug)]
pub struct PlainCredentials(pub SharedCredentialsProvider);

impl ProvideCredentials for PlainCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let c = self.0.provide_credentials().await?;
            Ok(Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                c.session_token().map(str::to_string),
                c.expiry(),
                "cloudswarm",
            ))
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
            | "NotSignedUp"
            | "OptInRequired"
            | "InvalidToken"
            | "AccessDenied"
            | "HTTP 403"
    )
}

/// Which credentials a client signs with, for messages: the access key id
/// shortened (`AKIA…WXYZ`) and where it came from; never the secret.
async fn credentials_hint(config: Option<SharedCredentialsProvider>) -> String {
    let Some(p) = config else {
        return "no credentials".into();
    };
    match p.provide_credentials().await {
        Ok(c) => {
            let id = c.access_key_id();
            let chars: Vec<char> = id.chars().collect();
            let short = if chars.len() > 8 {
                let head: String = chars[..4].iter().collect();
                let tail: String = chars[chars.len() - 4..].iter().collect();
                format!("{head}…{tail}")
            } else {
                "…".to_string()
            };
            format!("access key {short} from {}", provider_name(&c))
        }
        Err(e) => format!("no usable credentials ({e})"),
    }
}

fn provider_name(c: &Credentials) -> String {
    // Debug of Credentials redacts the secret and shows the provider's name.
    let d = format!("{c:?}");
    d.split("provider_name: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("the AWS credential chain")
        .to_string()
}

fn explain(service: &str, endpoint: &str, f: &Failure, creds: &str) -> String {
    if is_credential_code(&f.code) {
        format!(
            "{service} at {endpoint} rejected the credentials ({creds}): {}: {}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the AWS profile or the eucarc",
            f.code, f.message
        )
    } else if f.throttled {
        format!(
            "{service} at {endpoint} kept throttling the preflight call for a minute ({}: {}); try again later or ask the cloud's operator for a higher rate limit",
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

/// How long the preflight keeps trying through throttling (and 5xx
/// answers) before it gives up.
const PREFLIGHT_PATIENCE: Duration = Duration::from_secs(60);

/// Sends a preflight call, again with backoff while the cloud throttles or
/// answers 5xx, until [`PREFLIGHT_PATIENCE`] is spent. Each try may take 30
/// s. Err(None): no answer at all in time.
async fn patiently<T, E, F, Fut>(mut send: F) -> Result<T, Option<Failure>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
            Output = Result<
                T,
                aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
            >,
        >,
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    const NO_ANSWER: &str = "no-answer";
    let attempt = || {
        let call = send();
        async move {
            match tokio::time::timeout(Duration::from_secs(30), call).await {
                Err(_) => Err(Failure::new(NO_ANSWER, "no answer in 30s")),
                Ok(r) => r.map_err(|e| classify(&e)),
            }
        }
    };
    let again = |f: &Failure| {
        f.throttled
            || matches!(
                f.code.as_str(),
                "HTTP 500" | "HTTP 502" | "HTTP 504" | "InternalError" | "ServiceUnavailable"
            )
    };
    let deadline = std::time::Instant::now() + PREFLIGHT_PATIENCE;
    crate::failure::retrying(deadline, Duration::from_millis(250), again, attempt)
        .await
        .map_err(|f| (f.code != NO_ANSWER).then_some(f))
}

/// A cheap call per service used by the profile; an error names the problem.
/// Throttling is waited out (for a minute at most). Returns the first
/// availability zone when EC2 was checked.
pub async fn preflight(c: &Clients, ec2: bool, s3: bool) -> Result<Option<String>> {
    let mut az = None;
    if ec2 {
        match patiently(|| c.ec2.describe_availability_zones().send()).await {
            Err(None) => bail!(
                "cannot reach EC2 at {}: no answer in 30s",
                c.info.ec2_endpoint
            ),
            Err(Some(f)) => {
                let creds = credentials_hint(c.creds.clone()).await;
                bail!(explain("EC2", &c.info.ec2_endpoint, &f, &creds))
            }
            Ok(out) => {
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
        match patiently(|| c.s3.list_buckets().send()).await {
            Err(None) => bail!(
                "cannot reach S3 at {}: no answer in 30s",
                c.info.s3_endpoint
            ),
            Err(Some(f)) => {
                let creds = credentials_hint(c.creds.clone()).await;
                bail!(explain("S3", &c.info.s3_endpoint, &f, &creds))
            }
            Ok(_) => {}
        }
    }
    Ok(az)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_credentials_keep_keys_token_and_expiry_and_drop_the_tags() {
        use aws_credential_types::credential_feature::AwsCredentialFeature;
        let expiry = std::time::UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        let mut tagged = Credentials::new(
            "AKIDEXAMPLE",
            "s3cret",
            Some("tok".into()),
            Some(expiry),
            "env",
        );
        tagged
            .get_property_mut_or_default::<Vec<AwsCredentialFeature>>()
            .push(AwsCredentialFeature::CredentialsEnvVars);
        let plain = PlainCredentials(SharedCredentialsProvider::new(tagged))
            .provide_credentials()
            .await
            .unwrap();
        assert_eq!(plain.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(plain.secret_access_key(), "s3cret");
        assert_eq!(plain.session_token(), Some("tok"));
        assert_eq!(plain.expiry(), Some(expiry));
        assert!(plain.get_property::<Vec<AwsCredentialFeature>>().is_none());
    }

    #[test]
    fn endpoints_are_shown_without_userinfo() {
        assert_eq!(
            without_userinfo("https://bob:s3cret@s3.example:8773/services/objectstorage"),
            "https://s3.example:8773/services/objectstorage"
        );
        assert_eq!(
            without_userinfo("http://127.0.0.1:5000"),
            "http://127.0.0.1:5000"
        );
        assert_eq!(without_userinfo("http://h/p@q"), "http://h/p@q");
    }

    #[test]
    fn eucarc_quotes_exports_and_references() {
        let e = parse_eucarc(
            r#"
EUCA_KEY_DIR=$(cd $(dirname ${BASH_SOURCE:-$0}); pwd -P)
export EC2_URL=http://10.1.1.1:8773/services/compute
export S3_URL="http://10.1.1.1:8773/services/objectstorage"
export EC2_ACCESS_KEY='AKIAEXAMPLE'
export EC2_SECRET_KEY='se/cr+et'
export AWS_ACCESS_KEY="$EC2_ACCESS_KEY"
export AWS_SECRET_KEY="${EC2_SECRET_KEY}"
export EC2_CERT=${EUCA_KEY_DIR}/euca2-admin-cert.pem
alias ec2-bundle-image="ec2-bundle-image --cert ${EC2_CERT}"
# a comment
"#,
        );
        assert_eq!(
            e.ec2_url.as_deref(),
            Some("http://10.1.1.1:8773/services/compute")
        );
        assert_eq!(
            e.s3_url.as_deref(),
            Some("http://10.1.1.1:8773/services/objectstorage")
        );
        assert_eq!(e.access_key.as_deref(), Some("AKIAEXAMPLE"));
        assert_eq!(e.secret_key.as_deref(), Some("se/cr+et"));
        assert!(!format!("{e:?}").contains("se/cr+et"), "Debug hides keys");
        let only_aws = parse_eucarc(
            "AWS_ACCESS_KEY=a
AWS_SECRET_KEY=b
S3_URL=http://x/
",
        );
        assert_eq!(only_aws.access_key.as_deref(), Some("a"));
        assert_eq!(only_aws.secret_key.as_deref(), Some("b"));
    }

    #[test]
    fn s3_endpoints_with_a_path_end_with_a_slash() {
        assert_eq!(
            normalize_s3_endpoint("http://h:8773/services/objectstorage"),
            "http://h:8773/services/objectstorage/"
        );
        assert_eq!(
            normalize_s3_endpoint("http://h:8773/services/objectstorage/"),
            "http://h:8773/services/objectstorage/"
        );
        assert_eq!(normalize_s3_endpoint("http://h:9000"), "http://h:9000");
        assert_eq!(normalize_s3_endpoint("http://h:9000/"), "http://h:9000/");
    }
}
