//! Resource tracking: every instance, volume and bucket a run creates is
//! written to the run's journal (`<state-dir>/runs/<run-id>/journal.jsonl`):
//! the intent is fsynced before the create call is sent and the id after it
//! answers, so a crash leaves enough behind to clean up. In memory the tracker
//! keeps what is alive, per kind, for the final clean-up and the reports.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::naming::{RunId, RunMeta};

/// Budget caps: the most resources of a kind a run keeps alive at once.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Caps {
    pub max_instances: u64,
    pub max_volumes: u64,
    pub max_buckets: u64,
    /// Bytes of objects held at once.
    pub max_bytes: u64,
}

impl Caps {
    /// The most of `kind` alive at once, where a cap applies (objects are
    /// capped by bytes, see `max_bytes`). Snapshots share the volumes' cap.
    pub fn of(&self, kind: Kind) -> Option<u64> {
        match kind {
            Kind::Instance => Some(self.max_instances),
            Kind::Volume | Kind::Snapshot => Some(self.max_volumes),
            Kind::Bucket => Some(self.max_buckets),
            _ => None,
        }
    }
}

/// Kinds of tracked resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Instance,
    Volume,
    Snapshot,
    Address,
    KeyPair,
    SecurityGroup,
    Bucket,
    Object,
}

impl Kind {
    /// Every kind, in clean-up order (what depends on others goes first).
    pub const ALL: [Kind; 8] = [
        Kind::Address,
        Kind::Instance,
        Kind::Volume,
        Kind::Snapshot,
        Kind::KeyPair,
        Kind::SecurityGroup,
        Kind::Bucket,
        Kind::Object,
    ];

    /// One of the kind, as error codes name it (`no-key-pair`).
    pub fn one(self) -> &'static str {
        match self {
            Kind::Instance => "instance",
            Kind::Volume => "volume",
            Kind::Snapshot => "snapshot",
            Kind::Address => "address",
            Kind::KeyPair => "key-pair",
            Kind::SecurityGroup => "security-group",
            Kind::Bucket => "bucket",
            Kind::Object => "object",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instance => "instances",
            Kind::Volume => "volumes",
            Kind::Snapshot => "snapshots",
            Kind::Address => "addresses",
            Kind::KeyPair => "key pairs",
            Kind::SecurityGroup => "security groups",
            Kind::Bucket => "buckets",
            Kind::Object => "objects",
        }
    }
}

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "ev", rename_all = "lowercase")]
pub enum JournalEvent {
    /// Written before a create call is sent.
    Intent {
        seq: u64,
        kind: Kind,
        name: Option<String>,
    },
    /// The create call answered with this id.
    Created { seq: u64, kind: Kind, id: String },
    /// The create call failed: nothing was made.
    Failed { seq: u64 },
    /// The resource is gone.
    Deleted { kind: Kind, id: String },
}

/// Counts per kind.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct KindCounts {
    pub created: u64,
    pub deleted: u64,
    pub alive: u64,
}

#[derive(Default)]
struct Inner {
    /// Alive tracked resources: kind → ids.
    alive: BTreeMap<Kind, std::collections::BTreeSet<String>>,
    /// Names the journal holds intents for (buckets, key pairs, security
    /// groups, instance labels): a resource with one of these names was made
    /// by this run, even when its id never reached the journal.
    named: std::collections::BTreeSet<(Kind, String)>,
    counts: BTreeMap<Kind, KindCounts>,
    /// Creates sent and not answered yet, per kind (they count against caps).
    pending: BTreeMap<Kind, u64>,
}

/// Objects are counted, not tracked by id (they go with their bucket). Every
/// PutObject and DeleteObject moves these, so they are atomics, not behind
/// the tracker's lock.
#[derive(Default)]
struct ObjectCounts {
    created: AtomicU64,
    deleted: AtomicU64,
    /// Bytes of objects stored (or being stored) by the run.
    bytes: AtomicU64,
}

impl ObjectCounts {
    fn counts(&self) -> KindCounts {
        let created = self.created.load(Ordering::Relaxed);
        let deleted = self.deleted.load(Ordering::Relaxed);
        KindCounts {
            created,
            deleted,
            alive: created.saturating_sub(deleted),
        }
    }
}

/// The run's record of what it created.
#[derive(Clone)]
pub struct Tracker {
    run_id: RunId,
    dir: PathBuf,
    /// None for a run with no journal on this machine (found in the cloud by
    /// its tag or marker): its deletes are not written anywhere.
    journal: Arc<Mutex<Option<File>>>,
    seq: Arc<AtomicU64>,
    inner: Arc<Mutex<Inner>>,
    objects: Arc<ObjectCounts>,
    /// The numbers of the names this tracker may claim by tag or marker
    /// (a worker of a run shared with other workers); None: the whole run.
    /// Shared by the clones: a worker told to sweep for a missing one
    /// widens it for its session's clean-up.
    scope: Arc<Mutex<Option<Vec<RangeInclusive<u64>>>>>,
}

impl Tracker {
    /// Creates the run's state directory, its `run.json` and its journal.
    pub fn create(state_dir: &Path, run_id: &RunId, meta: &RunMeta) -> Result<Tracker> {
        let dir = run_id.dir(state_dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let meta_path = run_id.meta(state_dir);
        std::fs::write(&meta_path, serde_json::to_vec_pretty(meta)?)
            .with_context(|| format!("cannot write {}", meta_path.display()))?;
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_id.journal(state_dir))
            .with_context(|| format!("cannot open journal in {}", dir.display()))?;
        journal.sync_all()?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(Tracker {
            run_id: run_id.clone(),
            dir,
            journal: Arc::new(Mutex::new(Some(journal))),
            seq: Arc::new(AtomicU64::new(0)),
            inner: Arc::default(),
            objects: Arc::default(),
            scope: Arc::default(),
        })
    }

    /// Opens a run's journal to append to, e.g. for `cloudswarm cleanup`.
    /// Creates nothing: a run with no journal here (found in the cloud by its
    /// tag or marker) gets a tracker that records in memory only.
    pub fn open(state_dir: &Path, run_id: &RunId) -> Result<Tracker> {
        let dir = run_id.dir(state_dir);
        let path = run_id.journal(state_dir);
        let journal = if path.exists() {
            Some(
                OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open journal {}", path.display()))?,
            )
        } else {
            None
        };
        Ok(Tracker {
            run_id: run_id.clone(),
            dir,
            journal: Arc::new(Mutex::new(journal)),
            seq: Arc::new(AtomicU64::new(1_000_000_000)),
            inner: Arc::default(),
            objects: Arc::default(),
            scope: Arc::default(),
        })
    }

    /// Limits what this tracker claims by the run's tag or marker to the
    /// resources named `cs-<runid>-<n>` with `n` in `names`: a worker's
    /// clean-up must not take what other workers of the same run still
    /// use. What the journal names stays claimed whatever its name.
    pub fn scoped(self, names: RangeInclusive<u64>) -> Tracker {
        *self.scope.lock().unwrap_or_else(|p| p.into_inner()) = Some(vec![names]);
        self
    }

    /// Adds `names` to a scoped tracker's (see [`Tracker::scoped`]): the
    /// range of a worker of the same run that went missing, whose
    /// resources this one's clean-up is to take too. No-op when unscoped.
    pub fn widen_scope(&self, names: RangeInclusive<u64>) {
        if let Some(v) = self
            .scope
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            v.push(names);
        }
    }

    /// True when a resource named `name` (None: no name) that proves to be
    /// the run's by its tag or marker is this tracker's to claim.
    pub fn in_scope(&self, name: Option<&str>) -> bool {
        match &*self.scope.lock().unwrap_or_else(|p| p.into_inner()) {
            None => true,
            Some(ranges) => name
                .and_then(|n| crate::naming::name_number(n, self.run_id.as_str()))
                .is_some_and(|n| ranges.iter().any(|r| r.contains(&n))),
        }
    }

    /// Takes over a resource found alive (in a journal or in the cloud) without journaling it again.
    pub fn adopt(&self, kind: Kind, id: &str) {
        let mut g = self.lock();
        if g.alive.entry(kind).or_default().insert(id.to_string()) {
            g.counts.entry(kind).or_default().alive += 1;
        }
    }

    /// Takes over a name the journal holds an intent for.
    pub fn adopt_name(&self, kind: Kind, name: &str) {
        self.lock().named.insert((kind, name.to_string()));
    }

    /// True when the journal proves `id_or_name` is this run's: it is alive
    /// in the tracker, or an intent of this run named it.
    pub fn knows(&self, kind: Kind, id_or_name: &str) -> bool {
        let g = self.lock();
        g.alive.get(&kind).is_some_and(|s| s.contains(id_or_name))
            || g.named.contains(&(kind, id_or_name.to_string()))
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The journal's path.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(crate::naming::JOURNAL)
    }

    async fn write(&self, ev: JournalEvent, sync: bool) -> Result<(), String> {
        let journal = self.journal.clone();
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut line = serde_json::to_vec(&ev).expect("journal event serialises");
            line.push(b'\n');
            let mut f = journal.lock().unwrap_or_else(|p| p.into_inner());
            let Some(f) = f.as_mut() else {
                return Ok(());
            };
            f.write_all(&line)?;
            if sync {
                f.sync_data()?;
            }
            Ok(())
        })
        .await;
        match res.map_err(std::io::Error::other) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => {
                let msg = format!(
                    "cannot write the resource journal in {}: {e}",
                    self.dir.display()
                );
                tracing::error!("{msg}");
                Err(msg)
            }
        }
    }

    /// Reserves room for `n` resources of a kind under `cap`; false when the
    /// cap would be exceeded. A reservation ends with `created` or `failed`.
    pub fn reserve(&self, kind: Kind, n: u64, cap: u64) -> bool {
        let mut g = self.lock();
        let alive = g.counts.get(&kind).map_or(0, |c| c.alive);
        let pending = g.pending.entry(kind).or_default();
        if alive + *pending + n > cap {
            return false;
        }
        *pending += n;
        true
    }

    /// Records (durably) that a create call is about to be sent. An error
    /// means the intent is not on disk: the create must not be sent.
    pub async fn intent(&self, kind: Kind, name: Option<&str>) -> Result<u64, String> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(n) = name {
            self.adopt_name(kind, n);
        }
        self.write(
            JournalEvent::Intent {
                seq,
                kind,
                name: name.map(str::to_string),
            },
            true,
        )
        .await?;
        Ok(seq)
    }

    /// Creates of a kind sent and not answered yet.
    pub fn pending(&self, kind: Kind) -> u64 {
        self.lock().pending.get(&kind).copied().unwrap_or(0)
    }

    /// Gives back a reservation whose create was never sent.
    pub fn release(&self, kind: Kind, n: u64) {
        if let Some(p) = self.lock().pending.get_mut(&kind) {
            *p = p.saturating_sub(n);
        }
    }

    /// Records (durably) that a create call answered with `id`.
    pub async fn created(&self, seq: u64, kind: Kind, id: &str) {
        {
            let mut g = self.lock();
            if let Some(p) = g.pending.get_mut(&kind) {
                *p = p.saturating_sub(1);
            }
            // An id the answer repeats is one resource: counted once.
            if g.alive.entry(kind).or_default().insert(id.to_string()) {
                let c = g.counts.entry(kind).or_default();
                c.created += 1;
                c.alive += 1;
            }
        }
        self.write(
            JournalEvent::Created {
                seq,
                kind,
                id: id.to_string(),
            },
            true,
        )
        .await
        .ok();
    }

    /// Records that a create call failed (it had reserved `n`).
    pub async fn failed(&self, seq: u64, kind: Kind, n: u64) {
        if let Some(p) = self.lock().pending.get_mut(&kind) {
            *p = p.saturating_sub(n);
        }
        self.write(JournalEvent::Failed { seq }, false).await.ok();
    }

    /// Records that a resource was deleted.
    pub async fn deleted(&self, kind: Kind, id: &str) {
        let was_alive = {
            let mut g = self.lock();
            let removed = g.alive.get_mut(&kind).is_some_and(|s| s.remove(id));
            if removed {
                let c = g.counts.entry(kind).or_default();
                c.deleted += 1;
                c.alive -= 1;
            }
            removed
        };
        if was_alive {
            self.write(
                JournalEvent::Deleted {
                    kind,
                    id: id.to_string(),
                },
                false,
            )
            .await
            .ok();
        }
    }

    /// Reserves `n` bytes of object storage under `cap`; false when it would exceed it.
    pub fn reserve_bytes(&self, n: u64, cap: u64) -> bool {
        self.objects
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b.saturating_add(n) <= cap).then(|| b + n)
            })
            .is_ok()
    }

    /// Gives back object bytes (an upload failed, or objects were deleted).
    pub fn release_bytes(&self, n: u64) {
        let _ = self
            .objects
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n))
            });
    }

    /// Bytes of objects the run holds.
    pub fn object_bytes(&self) -> u64 {
        self.objects.bytes.load(Ordering::Relaxed)
    }

    /// Counts untracked-by-id resources such as objects (they go with their bucket).
    pub fn count_objects(&self, created: i64) {
        if created >= 0 {
            self.objects
                .created
                .fetch_add(created as u64, Ordering::Relaxed);
        } else {
            self.objects
                .deleted
                .fetch_add(created.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Forgets all objects of a deleted bucket.
    pub fn objects_gone(&self, n: u64) {
        self.count_objects(-(n as i64));
    }

    /// Ids of the alive resources of a kind.
    pub fn alive(&self, kind: Kind) -> Vec<String> {
        self.lock()
            .alive
            .get(&kind)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_alive(&self, kind: Kind, id: &str) -> bool {
        self.lock().alive.get(&kind).is_some_and(|s| s.contains(id))
    }

    /// Counts per kind.
    pub fn counts(&self) -> BTreeMap<Kind, KindCounts> {
        let mut counts = self.lock().counts.clone();
        let objects = self.objects.counts();
        if objects != KindCounts::default() {
            counts.insert(Kind::Object, objects);
        }
        counts
    }

    /// How many of a kind are alive now.
    pub fn alive_count(&self, kind: Kind) -> u64 {
        if kind == Kind::Object {
            return self.objects.counts().alive;
        }
        self.lock().counts.get(&kind).map_or(0, |c| c.alive)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a journal says, read back.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Ids created and not deleted, per kind.
    pub alive: BTreeMap<Kind, Vec<String>>,
    /// Intents that never got an answer (their resource may exist untracked).
    pub unanswered: usize,
    /// Every name an intent gave (kind, name): proof that a resource with
    /// that name is the run's.
    pub named: Vec<(Kind, String)>,
    /// Line numbers (from 1) that could not be read: not UTF-8, not JSON, or
    /// cut short by a crash. They are skipped; the rest still counts.
    pub unreadable: Vec<usize>,
}

/// Reads a journal back. Fails only when the file cannot be read at all.
pub fn replay(path: &Path) -> Result<Replayed> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read journal {}", path.display()))?;
    let mut out = Replayed::default();
    let mut open = std::collections::BTreeSet::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(ev) = serde_json::from_slice::<JournalEvent>(line) else {
            out.unreadable.push(i + 1);
            continue;
        };
        match ev {
            JournalEvent::Intent { seq, kind, name } => {
                open.insert(seq);
                if let Some(n) = name {
                    out.named.push((kind, n));
                }
            }
            JournalEvent::Created { seq, kind, id } => {
                open.remove(&seq);
                out.alive.entry(kind).or_default().push(id);
            }
            JournalEvent::Failed { seq } => {
                open.remove(&seq);
            }
            JournalEvent::Deleted { kind, id } => {
                if let Some(v) = out.alive.get_mut(&kind) {
                    v.retain(|x| x != &id);
                }
            }
        }
    }
    out.unanswered = open.len();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_meta() -> RunMeta {
        RunMeta::new(
            &RunId::parse("abc").unwrap(),
            Path::new("p.toml"),
            0.0,
            serde_json::json!({}),
            crate::naming::Services::ALL,
        )
    }

    #[test]
    fn object_bytes_stay_under_the_cap_and_objects_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path(), &RunId::parse("objs").unwrap()).unwrap();
        assert!(
            !t.counts().contains_key(&Kind::Object),
            "no object moved yet"
        );
        assert!(t.reserve_bytes(600, 1000));
        assert!(!t.reserve_bytes(401, 1000), "600 + 401 is over the cap");
        assert!(t.reserve_bytes(400, 1000));
        assert_eq!(t.object_bytes(), 1000);
        t.release_bytes(300);
        t.release_bytes(5000);
        assert_eq!(t.object_bytes(), 0, "releasing more than held stops at 0");
        t.count_objects(3);
        t.count_objects(-1);
        t.objects_gone(1);
        let want = KindCounts {
            created: 3,
            deleted: 2,
            alive: 1,
        };
        assert_eq!(t.counts()[&Kind::Object], want);
        assert_eq!(t.alive_count(Kind::Object), 1);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_intent_that_cannot_reach_disk_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("runs").join("full");
        std::fs::create_dir_all(&run).unwrap();
        // Every write to /dev/full fails with "no space left on device".
        std::os::unix::fs::symlink("/dev/full", run.join("journal.jsonl")).unwrap();
        let t = Tracker::open(dir.path(), &RunId::parse("full").unwrap()).unwrap();
        let e = t
            .intent(Kind::Instance, Some("cs-full-1"))
            .await
            .unwrap_err();
        assert!(e.contains("journal"), "{e}");
        assert!(t.reserve(Kind::Instance, 1, 1));
        t.release(Kind::Instance, 1);
        assert!(
            t.reserve(Kind::Instance, 1, 1),
            "released room can be reserved again"
        );
    }

    #[tokio::test]
    async fn journal_records_intent_before_id_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::create(dir.path(), &RunId::parse("abc").unwrap(), &test_meta()).unwrap();
        let s1 = t.intent(Kind::Instance, None).await.unwrap();
        // The intent is on disk before the create call would be sent.
        let r = replay(&t.journal_path()).unwrap();
        assert_eq!(r.unanswered, 1);
        t.created(s1, Kind::Instance, "i-1").await;
        let s2 = t.intent(Kind::Bucket, Some("cs-abc-1")).await.unwrap();
        t.created(s2, Kind::Bucket, "cs-abc-1").await;
        let s3 = t.intent(Kind::Volume, None).await.unwrap();
        t.failed(s3, Kind::Volume, 1).await;
        let _s4 = t.intent(Kind::Volume, None).await.unwrap(); // crash before the answer
        t.deleted(Kind::Instance, "i-1").await;
        let r = replay(&t.journal_path()).unwrap();
        assert_eq!(r.alive.get(&Kind::Instance).map(Vec::len), Some(0));
        assert_eq!(r.alive[&Kind::Bucket], vec!["cs-abc-1".to_string()]);
        assert_eq!(r.unanswered, 1);
        assert_eq!(r.named, vec![(Kind::Bucket, "cs-abc-1".to_string())]);
        assert!(r.unreadable.is_empty());
        assert!(t.knows(Kind::Bucket, "cs-abc-1"));
        assert!(!t.knows(Kind::Bucket, "cs-abc-2"));
        assert!(t.reserve(Kind::Volume, 1, 2));
        assert!(t.reserve(Kind::Volume, 1, 2));
        assert!(
            !t.reserve(Kind::Volume, 1, 2),
            "cap of 2 holds with 2 pending"
        );
        t.failed(9, Kind::Volume, 1).await;
        assert!(
            t.reserve(Kind::Volume, 1, 2),
            "a failed create frees its room"
        );
        let c = t.counts();
        assert_eq!(
            c[&Kind::Instance],
            KindCounts {
                created: 1,
                deleted: 1,
                alive: 0
            }
        );
        assert_eq!(t.alive(Kind::Bucket), vec!["cs-abc-1".to_string()]);
    }

    #[test]
    fn unreadable_journal_lines_are_skipped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut text = Vec::new();
        text.extend_from_slice(
            b"{\"ev\":\"intent\",\"seq\":1,\"kind\":\"bucket\",\"name\":\"cs-abc-1\"}\n",
        );
        text.extend_from_slice(b"\xff\xfe not utf-8 \x80\n");
        text.extend_from_slice(
            b"{\"ev\":\"created\",\"seq\":1,\"kind\":\"bucket\",\"id\":\"cs-abc-1\"}\n",
        );
        text.extend_from_slice(
            b"{\"ev\":\"intent\",\"seq\":2,\"kind\":\"instance\",\"name\":\"cs-abc-2\"}\n",
        );
        text.extend_from_slice(b"{\"ev\":\"created\",\"seq\":2,\"kind\":\"instance\",\"id\":\"i-1");
        std::fs::write(&path, text).unwrap();
        let r = replay(&path).unwrap();
        assert_eq!(r.alive[&Kind::Bucket], vec!["cs-abc-1".to_string()]);
        assert_eq!(
            r.unreadable,
            vec![2, 5],
            "the bad line and the cut-short last line"
        );
        assert_eq!(r.unanswered, 1, "the instance's answer was cut short");
        assert_eq!(r.named.len(), 2);
    }

    #[tokio::test]
    async fn opening_a_run_with_no_journal_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path(), &RunId::parse("abcd1234").unwrap()).unwrap();
        t.adopt(Kind::Bucket, "cs-abcd1234-1");
        t.deleted(Kind::Bucket, "cs-abcd1234-1").await;
        assert!(
            !dir.path().join("runs").exists(),
            "no folder for a run with no journal"
        );
        assert!(t.alive(Kind::Bucket).is_empty());
    }
}
