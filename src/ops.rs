//! The op catalogue: every op a profile can name (`ec2:RunInstances`,
//! `ec2:instance-running`...), its service, and what kind of entry it is in
//! the stats (an API request, or a provisioning wait); and the entries that
//! are not ops of their own (the requests an op makes besides its own call,
//! timings inside one). Depends on nothing.

/// The services ops belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ec2,
    S3,
}

/// What an entry of the stats measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// One API request: counts in the aggregate and per-request metrics.
    Request,
    /// A provisioning wait (time from a call's answer to a state).
    Wait,
    /// A part of a request's time (time to first byte): its own row only.
    Timing,
}

macro_rules! ops {
    ($($variant:ident => $name:literal, $svc:ident, $kind:ident;)*) => {
        /// Every op a profile can name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op { $($variant),* }
        impl Op {
            /// All ops, in the order `check` lists them.
            pub fn all() -> &'static [Op] { &[$(Op::$variant),*] }
            /// The name profiles and reports use.
            pub fn name(self) -> &'static str { match self { $(Op::$variant => $name),* } }
            pub fn service(self) -> Service { match self { $(Op::$variant => Service::$svc),* } }
            /// What the op's own entry measures.
            pub fn kind(self) -> EntryKind { match self { $(Op::$variant => EntryKind::$kind),* } }
            pub fn from_name(s: &str) -> Option<Op> {
                match s { $($name => Some(Op::$variant),)* _ => None }
            }
        }
    };
}

ops! {
    RunInstances => "ec2:RunInstances", Ec2, Request;
    DescribeInstances => "ec2:DescribeInstances", Ec2, Request;
    TerminateInstances => "ec2:TerminateInstances", Ec2, Request;
    StopInstances => "ec2:StopInstances", Ec2, Request;
    StartInstances => "ec2:StartInstances", Ec2, Request;
    RebootInstances => "ec2:RebootInstances", Ec2, Request;
    InstanceRunning => "ec2:instance-running", Ec2, Wait;
    InstanceStopped => "ec2:instance-stopped", Ec2, Wait;
    InstanceTerminated => "ec2:instance-terminated", Ec2, Wait;
    CreateVolume => "ec2:CreateVolume", Ec2, Request;
    AttachVolume => "ec2:AttachVolume", Ec2, Request;
    DetachVolume => "ec2:DetachVolume", Ec2, Request;
    DescribeVolumes => "ec2:DescribeVolumes", Ec2, Request;
    DeleteVolume => "ec2:DeleteVolume", Ec2, Request;
    VolumeAvailable => "ec2:volume-available", Ec2, Wait;
    VolumeInUse => "ec2:volume-in-use", Ec2, Wait;
    CreateSnapshot => "ec2:CreateSnapshot", Ec2, Request;
    DeleteSnapshot => "ec2:DeleteSnapshot", Ec2, Request;
    SnapshotCompleted => "ec2:snapshot-completed", Ec2, Wait;
    AllocateAddress => "ec2:AllocateAddress", Ec2, Request;
    AssociateAddress => "ec2:AssociateAddress", Ec2, Request;
    DisassociateAddress => "ec2:DisassociateAddress", Ec2, Request;
    ReleaseAddress => "ec2:ReleaseAddress", Ec2, Request;
    CreateKeyPair => "ec2:CreateKeyPair", Ec2, Request;
    DeleteKeyPair => "ec2:DeleteKeyPair", Ec2, Request;
    CreateSecurityGroup => "ec2:CreateSecurityGroup", Ec2, Request;
    AuthorizeSecurityGroupIngress => "ec2:AuthorizeSecurityGroupIngress", Ec2, Request;
    DeleteSecurityGroup => "ec2:DeleteSecurityGroup", Ec2, Request;
    DescribeImages => "ec2:DescribeImages", Ec2, Request;
    DescribeAvailabilityZones => "ec2:DescribeAvailabilityZones", Ec2, Request;
    CreateBucket => "s3:CreateBucket", S3, Request;
    DeleteBucket => "s3:DeleteBucket", S3, Request;
    ListBuckets => "s3:ListBuckets", S3, Request;
    HeadBucket => "s3:HeadBucket", S3, Request;
    PutObject => "s3:PutObject", S3, Request;
    GetObject => "s3:GetObject", S3, Request;
    HeadObject => "s3:HeadObject", S3, Request;
    ListObjects => "s3:ListObjects", S3, Request;
    DeleteObject => "s3:DeleteObject", S3, Request;
    DeleteObjects => "s3:DeleteObjects", S3, Request;
    MultipartUpload => "s3:MultipartUpload", S3, Request;
}

/// Time to the first byte of a GetObject's answer.
pub const GET_OBJECT_TTFB: &str = "s3:GetObject:ttfb";
/// The requests of `s3:MultipartUpload` (which has no row of its own).
pub const CREATE_MULTIPART_UPLOAD: &str = "s3:CreateMultipartUpload";
pub const UPLOAD_PART: &str = "s3:UploadPart";
pub const COMPLETE_MULTIPART_UPLOAD: &str = "s3:CompleteMultipartUpload";
pub const ABORT_MULTIPART_UPLOAD: &str = "s3:AbortMultipartUpload";
/// The PutObject of a bucket's marker (see [`crate::naming::MARKER_KEY`]),
/// right after s3:CreateBucket.
pub const PUT_RUN_MARKER: &str = "s3:PutRunMarker";
/// The DeleteObject of a bucket's marker, right before s3:DeleteBucket.
pub const DELETE_RUN_MARKER: &str = "s3:DeleteRunMarker";

/// The Describe calls a provisioning wait polls with, one row each: every
/// poll is a request the cloud's API serves.
pub const INSTANCES_POLL: &str = "ec2:DescribeInstances:poll";
pub const VOLUMES_POLL: &str = "ec2:DescribeVolumes:poll";
pub const SNAPSHOTS_POLL: &str = "ec2:DescribeSnapshots:poll";

/// Entries recorded that are not ops of their own, with what they measure.
pub const SUB_ENTRIES: [(&str, EntryKind); 10] = [
    (GET_OBJECT_TTFB, EntryKind::Timing),
    (CREATE_MULTIPART_UPLOAD, EntryKind::Request),
    (UPLOAD_PART, EntryKind::Request),
    (COMPLETE_MULTIPART_UPLOAD, EntryKind::Request),
    (ABORT_MULTIPART_UPLOAD, EntryKind::Request),
    (PUT_RUN_MARKER, EntryKind::Request),
    (DELETE_RUN_MARKER, EntryKind::Request),
    (INSTANCES_POLL, EntryKind::Request),
    (VOLUMES_POLL, EntryKind::Request),
    (SNAPSHOTS_POLL, EntryKind::Request),
];

/// The prefix of an open class's arrival entry, `arrival:<class>`: one
/// row per class whose count is the task starts and whose times are each
/// start's lateness (actual start minus scheduled arrival). A timing, not a
/// request.
pub const ARRIVAL_PREFIX: &str = "arrival:";

/// The arrival entry of open class `class`.
pub fn arrival_entry(class: &str) -> String {
    format!("{ARRIVAL_PREFIX}{class}")
}

/// What an entry measures, if the catalogue knows it.
pub fn entry_kind(name: &str) -> Option<EntryKind> {
    Op::from_name(name).map(Op::kind).or_else(|| {
        SUB_ENTRIES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| *k)
            .or_else(|| {
                name.starts_with(ARRIVAL_PREFIX)
                    .then_some(EntryKind::Timing)
            })
    })
}

/// True for a name reports can carry (an op or a sub-entry).
pub fn is_known_entry(name: &str) -> bool {
    entry_kind(name).is_some()
}

/// True when an entry counts as requests: the catalogue's requests, and any
/// name it does not know (a request from another load generator, such as a
/// Locust worker's `GET /`).
pub fn is_request(name: &str) -> bool {
    entry_kind(name).is_none_or(|k| k == EntryKind::Request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_says_what_each_entry_is() {
        assert_eq!(entry_kind("s3:PutObject"), Some(EntryKind::Request));
        assert_eq!(entry_kind("ec2:volume-available"), Some(EntryKind::Wait));
        assert_eq!(entry_kind(GET_OBJECT_TTFB), Some(EntryKind::Timing));
        assert_eq!(entry_kind(PUT_RUN_MARKER), Some(EntryKind::Request));
        assert!(is_request("s3:UploadPart"));
        assert!(
            is_request(INSTANCES_POLL),
            "polls are requests the cloud serves"
        );
        assert!(!is_request("ec2:instance-running"));
        assert!(!is_request(GET_OBJECT_TTFB));
        assert!(is_request("GET /index.html"), "unknown names are requests");
        assert_eq!(entry_kind(&arrival_entry("web")), Some(EntryKind::Timing));
        assert!(!is_request("arrival:web"));
        for op in Op::all() {
            assert_eq!(Op::from_name(op.name()), Some(*op));
            let lower = op
                .name()
                .split(':')
                .nth(1)
                .unwrap()
                .starts_with(char::is_lowercase);
            assert_eq!(op.kind() == EntryKind::Wait, lower, "{}", op.name());
        }
    }
}
