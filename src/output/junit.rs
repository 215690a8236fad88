//! `run --junit FILE`: the run as a JUnit XML test report for Jenkins and
//! GitLab. One test suite per run; one test case per SLA (class `sla`)
//! and, with `--baseline`, per regression check (class `regression`); a
//! broken one carries `<failure message="...">`. A regression fails only
//! when the comparison is a gate (`--max-regression`,
//! `--max-failure-increase`), as the exit code does; otherwise the case
//! passes and its output says it regressed.

use std::fmt::Write as _;

use super::report::Report;
use super::sla::clock;

/// `s` for an XML attribute or text: the five special characters escaped,
/// control characters XML 1.0 forbids dropped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

struct Case {
    class: &'static str,
    name: String,
    failure: Option<String>,
    output: Option<String>,
}

/// The JUnit XML of a run's report.
pub fn junit(r: &Report) -> String {
    let mut cases: Vec<Case> = r
        .sla
        .iter()
        .map(|v| Case {
            class: "sla",
            name: v.sla.clone(),
            failure: (!v.held).then(|| format!("SLA {} {}", v.sla, v.describe())),
            output: Some(v.describe()),
        })
        .collect();
    if let Some(c) = &r.comparison {
        cases.extend(c.checks.iter().map(|ch| {
            Case {
                class: "regression",
                name: ch.name.clone(),
                failure: (ch.failed && c.limits.gate)
                    .then(|| format!("regressed against run {}: {}", c.base.run_id, ch.message)),
                output: Some(if ch.failed && !c.limits.gate {
                    format!(
                        "regressed (not a gate: no --max-regression or --max-failure-increase): {}",
                        ch.message
                    )
                } else {
                    ch.message.clone()
                }),
            }
        }));
    }
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let suite = format!("cloudswarm run {} ({})", r.run_id, r.profile);
    let time = format!("{:.3}", r.duration_s.max(0.0));
    let mut x = String::new();
    let _ = writeln!(x, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        x,
        r#"<testsuites name="cloudswarm" tests="{}" failures="{failures}" errors="0" time="{time}">"#,
        cases.len()
    );
    let _ = writeln!(
        x,
        r#"  <testsuite name="{}" tests="{}" failures="{failures}" errors="0" skipped="0" time="{time}" timestamp="{}">"#,
        escape(&suite),
        cases.len(),
        // JUnit's timestamp has no zone: UTC, to the second.
        clock(r.started_at).trim_end_matches('Z')
    );
    let _ = writeln!(x, "    <properties>");
    for (k, v) in [
        ("run_id", r.run_id.as_str()),
        ("profile", r.profile.as_str()),
        ("cloudswarm_version", r.cloudswarm_version.as_str()),
        ("ec2_endpoint", r.target.ec2_endpoint.as_str()),
        ("s3_endpoint", r.target.s3_endpoint.as_str()),
        ("region", r.target.region.as_str()),
    ] {
        let _ = writeln!(x, r#"      <property name="{k}" value="{}"/>"#, escape(v));
    }
    if let Some(c) = &r.comparison {
        let _ = writeln!(
            x,
            r#"      <property name="baseline_run_id" value="{}"/>"#,
            escape(&c.base.run_id)
        );
    }
    let _ = writeln!(x, "    </properties>");
    for c in &cases {
        let _ = write!(
            x,
            r#"    <testcase classname="{}" name="{}" time="0">"#,
            c.class,
            escape(&c.name)
        );
        if let Some(f) = &c.failure {
            let _ = write!(
                x,
                r#"<failure message="{}" type="{}">{}</failure>"#,
                escape(f),
                c.class,
                escape(f)
            );
        }
        if let Some(o) = &c.output {
            let _ = write!(x, "<system-out>{}</system-out>", escape(o));
        }
        let _ = writeln!(x, "</testcase>");
    }
    let _ = writeln!(x, "  </testsuite>");
    let _ = writeln!(x, "</testsuites>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::sla::Verdict;

    #[test]
    fn slas_become_test_cases_and_text_is_escaped() {
        let r = Report {
            schema: Some(1),
            run_id: "abc".into(),
            profile: "a&b".into(),
            sla: vec![
                Verdict {
                    sla: "p95(s3:PutObject)<2s".into(),
                    held: true,
                    actual: "12.0ms".into(),
                    window_s: None,
                    first_breach_at: None,
                    breached_seconds: 0,
                },
                Verdict {
                    sla: "failure_rate<1%".into(),
                    held: false,
                    actual: "5.00% \u{1}\"x\"".into(),
                    window_s: None,
                    first_breach_at: Some(10.0),
                    breached_seconds: 3,
                },
            ],
            ..Default::default()
        };
        let x = junit(&r);
        assert!(x.contains(r#"tests="2" failures="1""#), "{x}");
        assert!(x.contains(r#"name="cloudswarm run abc (a&amp;b)""#), "{x}");
        assert!(
            x.contains(
                r#"<testcase classname="sla" name="p95(s3:PutObject)&lt;2s" time="0"><system-out>"#
            ),
            "{x}"
        );
        assert!(x.contains(r#"<failure message="SLA failure_rate&lt;1% FAILED (actual 5.00% &quot;x&quot;; first broke"#), "{x}");
        assert!(!x.contains('\u{1}'));
    }
}
