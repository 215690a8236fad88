//! The layout's import rules, checked: `src/` follows the data flow, so a
//! module may use only modules of a lower layer (ARCHITECTURE.md draws the
//! map). A new module must be given a layer here; an import that points up
//! (or a circle) fails with the file and the import named.

use std::collections::BTreeMap;
use std::path::Path;

/// Layers from the bottom; `metrics` is two units (the hot-path sink sits
/// below the tasks, the exporter above the engine).
const LAYERS: &[&[&str]] = &[
    &[
        "error",
        "signals",
        "naming",
        "units",
        "failure",
        "ops",
        "tls",
        "endpoint",
        "httpd",
        "cluster::msgpack",
    ],
    &["profile", "stats", "resources", "target"],
    &[
        "metrics::sink",
        "cleanup",
        "cluster::wire",
        "cluster::locustfile",
    ],
    &["tasks"],
    &["engine"],
    &["metrics::exporter", "session", "output", "cluster::master"],
    &["capacity"],
    &["run", "reclaim", "results", "web", "cluster::worker"],
    &["cli"],
];

fn layer_of(unit: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&unit))
}

/// The unit a path under `src/` belongs to.
fn unit_of(rel: &Path) -> String {
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        // mod.rs only re-exports the exporter's functions.
        [m, sub] if m == "metrics" && sub == "mod" => "metrics::exporter".into(),
        [m, sub] if m == "metrics" => format!("metrics::{sub}"),
        // cluster/mod.rs only declares its modules.
        [m, sub] if m == "cluster" && sub == "mod" => "cluster::wire".into(),
        [m, sub] if m == "cluster" => format!("cluster::{sub}"),
        [m, ..] => m.clone(),
        [] => String::new(),
    }
}

/// The units a file's code (not its doc comments, not its tests) names
/// through `crate::`.
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for line in code.lines() {
        let l = line.trim_start();
        if l.starts_with("//") {
            continue;
        }
        for (i, _) in l.match_indices("crate::") {
            if i > 0 && l[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue; // `cloudswarm::` or another crate's path
            }
            let rest = &l[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let unit = if name == "cluster" {
                let sub: String = rest["cluster".len()..]
                    .trim_start_matches("::")
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                format!("cluster::{sub}")
            } else if name == "metrics" {
                let sub = &rest["metrics".len()..];
                if sub.starts_with("::sink") {
                    "metrics::sink".to_string()
                } else {
                    "metrics::exporter".to_string()
                }
            } else {
                name
            };
            out.push(unit);
        }
    }
    out
}

#[test]
fn imports_point_down_the_data_flow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut bad = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let unit = unit_of(rel);
        if unit == "lib" || unit == "main" {
            continue;
        }
        let Some(mine) = layer_of(&unit) else {
            bad.push(format!(
                "{}: module `{unit}` has no layer in tests/layout.rs",
                rel.display()
            ));
            continue;
        };
        seen.insert(unit.clone(), mine);
        let text = std::fs::read_to_string(f).unwrap();
        for used in uses(&text) {
            if used == unit {
                continue;
            }
            match layer_of(&used) {
                Some(theirs) if theirs < mine => {}
                Some(_) => bad.push(format!(
                    "{}: `{unit}` (layer {mine}) uses `crate::{used}`, which is not below it",
                    rel.display()
                )),
                None => bad.push(format!("{}: uses unknown module `{used}`", rel.display())),
            }
        }
    }
    assert!(seen.len() > 20, "found the modules: {seen:?}");
    assert!(
        bad.is_empty(),
        "imports that break the layout:\n{}",
        bad.join("\n")
    );
}
