//! Golden files: each `tests/golden/NAME.input.yaml` rendered at a fixed time, with certificate
//! material redacted, must equal `tests/golden/NAME.yaml`. `PROGLOG_UPDATE_GOLDEN=1 cargo test
//! -p proglog-operator --test golden` rewrites them; review the diff before committing.

#![allow(clippy::unwrap_used)] // test helpers: a failure is the test failing

use std::path::{Path, PathBuf};

use proglog_operator::render::{RenderOptions, render_stream};
use proglog_operator::resources::OperatorSettings;

/// The time every golden file is rendered at.
const NOW: &str = "2026-06-01T12:00:00Z";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn inputs() -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".input.yaml"))
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn rendered_objects_match_the_golden_files() {
    let options = RenderOptions {
        now: NOW.parse().unwrap(),
        namespace: "default".into(),
        settings: OperatorSettings::default(),
        redact_secrets: true,
    };
    let update = std::env::var_os("PROGLOG_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let inputs = inputs();
    assert!(inputs.len() >= 3, "golden inputs missing: {inputs:?}");
    let mut stale = Vec::new();
    for input in inputs {
        let text = std::fs::read_to_string(&input).unwrap();
        let rendered = render_stream(&text, &options)
            .unwrap_or_else(|err| panic!("{}: {err}", input.display()));
        let expected_path = PathBuf::from(input.to_string_lossy().replace(".input.yaml", ".yaml"));
        if update {
            std::fs::write(&expected_path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != rendered {
            stale.push(expected_path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "golden files differ from the render: {stale:?}\nif the change is intended, rewrite \
         them with\n  PROGLOG_UPDATE_GOLDEN=1 cargo test -p proglog-operator --test golden\n\
         and review the diff"
    );
}
