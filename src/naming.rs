//! A run's identity, in one place: its id ([`RunId`]), the names and tags
//! of what it creates (`cs-<runid>-<n>`, the `cloudswarm:run-id` tag, a
//! bucket's marker object), where its state lives on disk (journal and
//! `run.json`, whose schema is [`RunMeta`]). Depends on nothing above it.

use std::path::{Path, PathBuf};

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The tag key every tagged resource carries, with the run id as its value.
pub const RUN_TAG: &str = "cloudswarm:run-id";

/// The key of the marker object cloudswarm writes into each bucket it makes,
/// right after creating it; its body is the run id. Buckets cannot be
/// tagged everywhere (Eucalyptus), so this is what proves a bucket is a
/// run's when the journal is gone.
pub const MARKER_KEY: &str = ".cloudswarm-run";

/// A run id: 1 to 32 lowercase letters and digits (valid in bucket names).
/// New ones are 8 characters, a letter first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    /// A fresh random id.
    pub fn new() -> RunId {
        let mut rng = rand::rng();
        let letters = b"abcdefghijklmnopqrstuvwxyz";
        let chars = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut s = String::with_capacity(8);
        s.push(letters[rng.random_range(0..letters.len())] as char);
        for _ in 0..7 {
            s.push(chars[rng.random_range(0..chars.len())] as char);
        }
        RunId(s)
    }

    /// Checks a run id given by a user, a tag or a folder name.
    pub fn parse(s: &str) -> Result<RunId, String> {
        if Self::is_valid(s) {
            Ok(RunId(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a run id (1 to 32 lowercase letters and digits, as printed at the start of a run)"
            ))
        }
    }

    fn is_valid(s: &str) -> bool {
        (1..=32).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the run's `n`th resource: `cs-<runid>-<n>`.
    pub fn resource_name(&self, n: u64) -> String {
        format!("cs-{}-{n}", self.0)
    }

    /// The tag specification every created resource of a type carries: the
    /// run tag and a `Name`.
    pub fn tags(&self, rt: ResourceType, name: &str) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(rt)
            .tags(Tag::builder().key(RUN_TAG).value(&self.0).build())
            .tags(Tag::builder().key("Name").value(name).build())
            .build()
    }

    /// The filter that matches exactly the run's tagged resources.
    pub fn tag_filter(&self) -> Filter {
        Filter::builder()
            .name(format!("tag:{RUN_TAG}"))
            .values(&self.0)
            .build()
    }

    /// The run's folder in the state directory.
    pub fn dir(&self, state_dir: &Path) -> PathBuf {
        state_dir.join("runs").join(&self.0)
    }

    /// The run's journal.
    pub fn journal(&self, state_dir: &Path) -> PathBuf {
        self.dir(state_dir).join(JOURNAL)
    }

    /// The run's `run.json`.
    pub fn meta(&self, state_dir: &Path) -> PathBuf {
        self.dir(state_dir).join(META)
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl TryFrom<String> for RunId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        RunId::parse(&s)
    }
}

impl From<RunId> for String {
    fn from(r: RunId) -> String {
        r.0
    }
}

impl std::ops::Deref for RunId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The default state directory.
pub fn default_state_dir() -> PathBuf {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .map(|d| d.join("cloudswarm"))
        .unwrap_or_else(|| PathBuf::from(".cloudswarm-state"))
}

/// The journal's file name in a run's folder.
pub const JOURNAL: &str = "journal.jsonl";
/// The run metadata's file name in a run's folder.
pub const META: &str = "run.json";

/// Run ids with a folder in the state directory.
pub fn runs_on_disk(state_dir: &Path) -> Vec<RunId> {
    let Ok(rd) = std::fs::read_dir(state_dir.join("runs")) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| RunId::parse(n).ok()))
        .collect()
}

/// True when `name` is one of run `run_id`'s names (`cs-<runid>-<n>`). A
/// shape only: it narrows listings, it never proves ownership.
pub fn is_run_name(name: &str, run_id: &str) -> bool {
    !run_id.is_empty()
        && name
            .strip_prefix("cs-")
            .and_then(|r| r.strip_prefix(run_id))
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// The number `n` of run `run_id`'s name `cs-<runid>-<n>`, if it is one.
pub fn name_number(name: &str, run_id: &str) -> Option<u64> {
    if !is_run_name(name, run_id) {
        return None;
    }
    name.rsplit('-').next()?.parse().ok()
}

/// How many names each worker of a shared run has to itself: worker `i`
/// (from 0) names from `(i + 1) * NAME_RANGE + 1` on.
pub const NAME_RANGE: u64 = 1_000_000_000;

/// Worker indexes a master may give (far beyond any real fleet; with
/// [`NAME_RANGE`] names each, every name fits a u64).
pub const MAX_WORKER_INDEX: u64 = 1_000_000;

/// The numbers worker `index` (below [`MAX_WORKER_INDEX`]) of a shared
/// run names from.
pub fn worker_names(index: u64) -> std::ops::RangeInclusive<u64> {
    let index = index.min(MAX_WORKER_INDEX);
    (index + 1) * NAME_RANGE + 1..=(index + 2) * NAME_RANGE
}

/// The `Name` tag's value among `tags`, if any.
pub fn name_tag_of(tags: &[Tag]) -> Option<&str> {
    tags.iter()
        .find(|t| t.key() == Some("Name"))
        .and_then(|t| t.value())
}

/// The run id a name such as `cs-k3x9q2ab-12` is shaped for, if any. A
/// shape only: a bucket so named is a run's only if its marker says so.
pub fn run_of_name(name: &str) -> Option<RunId> {
    let (run_id, _) = name.strip_prefix("cs-")?.split_once('-')?;
    let id = RunId::parse(run_id).ok()?;
    is_run_name(name, run_id).then_some(id)
}

/// The value of the run tag among `tags`, if any.
pub fn run_tag_of(tags: &[Tag]) -> Option<&str> {
    tags.iter()
        .find(|t| t.key() == Some(RUN_TAG))
        .and_then(|t| t.value())
}

/// Which services a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Services {
    pub ec2: bool,
    pub s3: bool,
}

impl Services {
    /// Both: what a run whose metadata is lost may have used.
    pub const ALL: Services = Services {
        ec2: true,
        s3: true,
    };

    /// As `run.json` lists them: `["ec2", "s3"]`.
    fn names(self) -> Vec<String> {
        [self.ec2.then_some("ec2"), self.s3.then_some("s3")]
            .into_iter()
            .flatten()
            .map(str::to_string)
            .collect()
    }
}

/// A run's `run.json`: written when the run starts, read by `cleanup`
/// (fields it lacks read as empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunMeta {
    pub run_id: String,
    /// The profile's path as given.
    pub profile: String,
    /// Unix seconds when the run began.
    pub started_at: f64,
    /// The endpoints and region (never credentials).
    pub target: serde_json::Value,
    /// `["ec2", "s3"]`: the services the profile uses.
    pub services: Vec<String>,
}

impl RunMeta {
    pub fn new(
        run_id: &RunId,
        profile: &Path,
        started_at: f64,
        target: serde_json::Value,
        services: Services,
    ) -> RunMeta {
        RunMeta {
            run_id: run_id.to_string(),
            profile: profile.display().to_string(),
            started_at,
            target,
            services: services.names(),
        }
    }

    /// Reads a run's metadata; None when it is missing or unreadable.
    pub fn read(state_dir: &Path, run_id: &RunId) -> Option<RunMeta> {
        let text = std::fs::read_to_string(run_id.meta(state_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The services the run used; both when unknown.
    pub fn services_of(state_dir: &Path, run_id: &RunId) -> Services {
        match RunMeta::read(state_dir, run_id) {
            Some(m) => Services {
                ec2: m.services.iter().any(|s| s == "ec2"),
                s3: m.services.iter().any(|s| s == "s3"),
            },
            None => Services::ALL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_name_ranges_do_not_overlap_or_overflow() {
        assert_eq!(worker_names(0), 1_000_000_001..=2_000_000_000);
        assert_eq!(worker_names(1), 2_000_000_001..=3_000_000_000);
        // A hostile index is bounded, never an overflow.
        assert_eq!(worker_names(u64::MAX), worker_names(MAX_WORKER_INDEX));
        assert!(worker_names(MAX_WORKER_INDEX).end() < &u64::MAX);
    }

    #[test]
    fn run_ids_fit_bucket_names_and_parse_back() {
        for _ in 0..100 {
            let id = RunId::new();
            assert_eq!(id.len(), 8);
            assert!(id.chars().next().unwrap().is_ascii_lowercase());
            assert_eq!(RunId::parse(&id).unwrap(), id);
        }
        for bad in ["", "Abc", "a-b", "a_b", &"a".repeat(33), "ü"] {
            assert!(RunId::parse(bad).is_err(), "{bad}");
        }
        assert!(RunId::parse(&"a".repeat(32)).is_ok());
    }

    #[test]
    fn run_names_match_exactly() {
        let run = RunId::parse("abcd1234").unwrap();
        assert_eq!(run.resource_name(7), "cs-abcd1234-7");
        assert!(is_run_name("cs-abcd1234-1", "abcd1234"));
        assert!(is_run_name("cs-abcd1234-42", "abcd1234"));
        assert!(!is_run_name("cs-abcd1234-", "abcd1234"));
        assert!(!is_run_name("cs-abcd1234-x", "abcd1234"));
        assert!(!is_run_name("cs-abcd12345-1", "abcd1234"));
        assert!(!is_run_name("cs-abcd1234-1", ""));
        assert!(!is_run_name("operator-data", "abcd1234"));
    }

    #[test]
    fn names_shaped_for_a_run_are_recognised_as_shapes_only() {
        let of = |n: &str| run_of_name(n).map(|r| r.to_string());
        assert_eq!(of("cs-abcd1234-1").as_deref(), Some("abcd1234"));
        assert_eq!(of("cs-k3x9q2ab-120").as_deref(), Some("k3x9q2ab"));
        // A shape is all this says: `cs-research-2024` is shaped like run
        // `research`'s; only its marker could make it one.
        assert_eq!(of("cs-research-2024").as_deref(), Some("research"));
        for other in [
            "cs-abcd1234-",                           // no number
            "cs-abcd1234-1a",                         // not a number
            "cs-abcd1234",                            // no number at all
            "cs-Abcd1234-1",                          // upper case
            "cs-abcdefghijklmnopqrstuvwxyz0123456-1", // too long for a run id
            "ops-abcd1234-1",                         // another prefix
            "cs--1",
        ] {
            assert_eq!(of(other), None, "{other}");
        }
    }

    #[test]
    fn run_meta_round_trips_and_defaults_to_both_services() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunId::parse("meta1").unwrap();
        assert_eq!(RunMeta::services_of(dir.path(), &run), Services::ALL);
        let meta = RunMeta::new(
            &run,
            Path::new("profiles/storage.toml"),
            1.5,
            serde_json::json!({"region": "us-east-1"}),
            Services {
                ec2: false,
                s3: true,
            },
        );
        std::fs::create_dir_all(run.dir(dir.path())).unwrap();
        std::fs::write(run.meta(dir.path()), serde_json::to_vec(&meta).unwrap()).unwrap();
        let text = std::fs::read_to_string(run.meta(dir.path())).unwrap();
        assert!(text.contains(r#""services":["s3"]"#), "{text}");
        assert_eq!(
            RunMeta::services_of(dir.path(), &run),
            Services {
                ec2: false,
                s3: true
            }
        );
    }
}
