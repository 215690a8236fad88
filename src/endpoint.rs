//! A cheaper S3 endpoint resolver. The SDK's default resolver remembers one
//! answer for one exact set of parameters, and those include the object key:
//! a load test that writes a new key per request walks S3's whole rule set
//! on every call (about 7% of a PutObject's CPU). S3's rules never read the
//! key, the prefix or the copy source, so this resolver remembers answers by
//! bucket, for the other parameters as they are, and asks the default
//! resolver only for a bucket (or settings) it has not seen.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use aws_sdk_s3::config::endpoint::{DefaultResolver, Endpoint, Params, ResolveEndpoint};
use aws_smithy_runtime_api::client::endpoint::EndpointFuture;

/// Most buckets remembered; past it the memory starts afresh.
const MAX_BUCKETS: usize = 4096;

/// Everything but the bucket (and the ignored key, prefix and copy source).
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    region: Option<String>,
    endpoint: Option<String>,
    flags: [Option<bool>; 11],
}

fn flags(p: &Params) -> [Option<bool>; 11] {
    [
        p.use_fips(),
        p.use_dual_stack(),
        p.force_path_style(),
        p.accelerate(),
        p.use_global_endpoint(),
        p.use_object_lambda_endpoint(),
        p.disable_access_points(),
        p.disable_multi_region_access_points(),
        p.use_arn_region(),
        p.use_s3_express_control_endpoint(),
        p.disable_s3_express_session_auth(),
    ]
}

impl Settings {
    fn of(p: &Params) -> Settings {
        Settings {
            region: p.region().map(str::to_string),
            endpoint: p.endpoint().map(str::to_string),
            flags: flags(p),
        }
    }

    fn matches(&self, p: &Params) -> bool {
        self.region.as_deref() == p.region()
            && self.endpoint.as_deref() == p.endpoint()
            && self.flags == flags(p)
    }
}

/// Answers for one set of settings, by bucket.
#[derive(Debug, Clone)]
struct Answers {
    settings: Settings,
    by_bucket: HashMap<String, Endpoint>,
    no_bucket: Option<Endpoint>,
}

/// S3's default resolver behind a memory that ignores the object key.
/// Reads take no lock; a new bucket copies the (small) memory once.
#[derive(Debug, Default)]
pub struct KeylessS3Resolver {
    inner: DefaultResolver,
    answers: ArcSwapOption<Answers>,
}

impl KeylessS3Resolver {
    fn remembered(&self, p: &Params) -> Option<Endpoint> {
        let guard = self.answers.load();
        let a = guard.as_ref()?;
        if !a.settings.matches(p) {
            return None;
        }
        match p.bucket() {
            Some(b) => a.by_bucket.get(b).cloned(),
            None => a.no_bucket.clone(),
        }
    }

    fn remember(&self, p: &Params, ep: &Endpoint) {
        self.answers.rcu(|cur| {
            let mut next = match cur.as_deref() {
                Some(a) if a.settings.matches(p) && a.by_bucket.len() < MAX_BUCKETS => a.clone(),
                _ => Answers {
                    settings: Settings::of(p),
                    by_bucket: HashMap::new(),
                    no_bucket: None,
                },
            };
            match p.bucket() {
                Some(b) => {
                    next.by_bucket.insert(b.to_string(), ep.clone());
                }
                None => next.no_bucket = Some(ep.clone()),
            }
            Some(Arc::new(next))
        });
    }
}

impl ResolveEndpoint for KeylessS3Resolver {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        if let Some(ep) = self.remembered(params) {
            return EndpointFuture::ready(Ok(ep));
        }
        EndpointFuture::new(async move {
            let ep = self.inner.resolve_endpoint(params).await?;
            self.remember(params, &ep);
            Ok(ep)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameters [`Settings`] and the bucket cover, as [`Params`] names
    /// them in its `Debug` output (`key`, `prefix` and `copy_source` are
    /// ignored on purpose): the test fails when the SDK grows a parameter
    /// the resolver does not know.
    const SCOPE_PARAMS: [&str; 14] = [
        "bucket",
        "region",
        "use_fips",
        "use_dual_stack",
        "endpoint",
        "force_path_style",
        "accelerate",
        "use_global_endpoint",
        "use_object_lambda_endpoint",
        "disable_access_points",
        "disable_multi_region_access_points",
        "use_arn_region",
        "use_s3_express_control_endpoint",
        "disable_s3_express_session_auth",
    ];

    #[test]
    fn the_sdk_has_no_endpoint_parameter_this_resolver_does_not_know() {
        let debug = format!("{:?}", Params::builder().build().unwrap());
        let inner = debug
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map(|(fields, _)| fields)
            .unwrap_or_default();
        let mut names: Vec<&str> = inner
            .split(", ")
            .filter_map(|f| f.split_once(':').map(|(n, _)| n.trim()))
            .collect();
        names.sort();
        let mut known: Vec<&str> = SCOPE_PARAMS
            .iter()
            .copied()
            .chain(["key", "prefix", "copy_source"])
            .collect();
        known.sort();
        assert_eq!(
            names, known,
            "aws-sdk-s3 changed its endpoint parameters: check which ones S3's rules read \
             and update KeylessS3Resolver"
        );
    }

    fn params(bucket: Option<&str>, key: &str, endpoint: Option<&str>, path_style: bool) -> Params {
        Params::builder()
            .set_bucket(bucket.map(str::to_string))
            .region("us-east-1")
            .set_endpoint(endpoint.map(str::to_string))
            .force_path_style(path_style)
            .key(key)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn answers_as_the_default_resolver_does_whatever_the_key() {
        let ours = KeylessS3Resolver::default();
        let theirs = DefaultResolver::new();
        let cases = [
            (Some("cs-abcd1234-1"), Some("http://127.0.0.1:5000/"), true),
            (Some("cs-abcd1234-2"), Some("http://127.0.0.1:5000/"), true),
            (None, Some("http://127.0.0.1:5000/"), true),
            (
                Some("cs-abcd1234-1"),
                Some("https://cloud.example/services/objectstorage/"),
                true,
            ),
            (Some("cs-abcd1234-1"), None, false),
            (Some("cs-abcd1234-2"), None, false),
            (Some("cs-abcd1234-1"), None, true),
        ];
        // Twice round, so the second pass answers from memory.
        for _ in 0..2 {
            for (bucket, endpoint, path_style) in cases {
                for key in ["u1/o1", "u2/o99", "other"] {
                    let p = params(bucket, key, endpoint, path_style);
                    let got = ours.resolve_endpoint(&p).await.unwrap();
                    let want = theirs.resolve_endpoint(&p).await.unwrap();
                    assert_eq!(got, want, "{p:?}");
                }
            }
        }
        // Each bucket has its own answer: path style puts it in the URL.
        let a = ours
            .resolve_endpoint(&params(Some("b-one"), "k", Some("http://h/"), true))
            .await
            .unwrap();
        let b = ours
            .resolve_endpoint(&params(Some("b-two"), "k", Some("http://h/"), true))
            .await
            .unwrap();
        assert!(
            a.url().contains("b-one") && b.url().contains("b-two"),
            "{a:?} {b:?}"
        );
    }
}
