//! The layers of the service depend one way: `http` (the request path) on
//! `domain` and `jobs` may use `domain`, never the reverse, so no import
//! cycle runs through the request path.

#![allow(clippy::expect_used)]

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn uses_of(layer: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer);
    let mut files = Vec::new();
    sources(&root, &mut files).expect("the layer's folder is readable");
    assert!(!files.is_empty(), "{layer} has sources");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a source file is readable");
        for (n, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_domain_knows_nothing_of_the_request_path_or_the_jobs() {
    let found = uses_of("domain", &["crate::http", "crate::jobs"]);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_jobs_do_not_reach_into_the_request_path() {
    let found = uses_of("jobs", &["crate::http"]);
    assert!(found.is_empty(), "{}", found.join("\n"));
}
