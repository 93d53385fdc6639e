//! The results table and the ratios issue 3 asks for, from the JSON lines `--results` writes.
//!
//! Ratios are computed for every proglog label in the file (say `proglog-interval` and
//! `proglog-always`) against the `nats` and `echo` targets of the same file, so they always
//! compare systems measured in the same run.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// One case's line, as printed while the run goes on.
pub fn format_line(row: &Value) -> String {
    let shape = match (row["window"].as_u64(), row["batch"].as_u64()) {
        (Some(window), _) => format!("c={} w={window}", num(row, "concurrency")),
        (_, Some(batch)) => format!("c={} b={batch}", num(row, "concurrency")),
        _ => format!("c={}", num(row, "concurrency")),
    };
    format!(
        "{:<17} {:<15} {:>5} {:<12} {:>11} {:>8} {:>9} {:>9} {:>9}",
        text(row, "label"),
        text(row, "case"),
        num(row, "size"),
        shape,
        format!("{:.0}", float(row, "msgs_per_s").unwrap_or(0.0)),
        format!("{:.1}", float(row, "mb_per_s").unwrap_or(0.0)),
        micros(row, "p50_us"),
        micros(row, "p99_us"),
        micros(row, "p999_us"),
    )
}

fn text<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key].as_str().unwrap_or("?")
}

fn num(row: &Value, key: &str) -> u64 {
    row[key].as_u64().unwrap_or(0)
}

fn float(row: &Value, key: &str) -> Option<f64> {
    row[key].as_f64()
}

fn micros(row: &Value, key: &str) -> String {
    float(row, key).map_or_else(|| "-".into(), |us| format!("{us:.0}"))
}

/// Prints the table of `path` and the ratios.
pub fn print(path: &Path) -> anyhow::Result<()> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let rows = content
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()
        .with_context(|| format!("parse {}", path.display()))?;
    println!(
        "{:<17} {:<15} {:>5} {:<12} {:>11} {:>8} {:>9} {:>9} {:>9}",
        "target", "case", "bytes", "shape", "msgs/s", "MB/s", "p50 us", "p99 us", "p99.9 us"
    );
    for row in &rows {
        println!("{}", format_line(row));
    }
    println!();
    print_ratios(&rows);
    Ok(())
}

/// The rate of the first row matching, if any.
fn rate(rows: &[Value], label: &str, case: &str, size: u64, concurrency: u64) -> Option<f64> {
    rows.iter()
        .find(|row| {
            (text(row, "label") == label || text(row, "target") == label)
                && text(row, "case") == case
                && num(row, "size") == size
                && num(row, "concurrency") == concurrency
        })
        .and_then(|row| float(row, "msgs_per_s"))
}

struct Ratio {
    what: &'static str,
    case: &'static str,
    baseline: &'static str,
    baseline_case: &'static str,
    concurrency: u64,
    sizes: &'static [u64],
    goal: Option<f64>,
}

const RATIOS: &[Ratio] = &[
    Ratio {
        what: "stream produce vs JetStream pipelined publish+ack",
        case: "produce-stream",
        baseline: "nats",
        baseline_case: "produce-stream",
        concurrency: 1,
        sizes: &[1024],
        goal: Some(2.0),
    },
    Ratio {
        what: "stream produce vs JetStream pipelined publish+ack",
        case: "produce-stream",
        baseline: "nats",
        baseline_case: "produce-stream",
        concurrency: 1,
        sizes: &[100],
        goal: None,
    },
    Ratio {
        what: "consume stream vs JetStream pull read-back",
        case: "consume",
        baseline: "nats",
        baseline_case: "consume",
        concurrency: 1,
        sizes: &[100, 1024],
        goal: Some(2.0),
    },
    Ratio {
        what: "unary produce c=1 vs echo floor c=1",
        case: "produce-unary",
        baseline: "echo",
        baseline_case: "produce-unary",
        concurrency: 1,
        sizes: &[100, 1024],
        goal: Some(0.8),
    },
    Ratio {
        what: "unary produce c=64 vs echo floor c=64",
        case: "produce-unary",
        baseline: "echo",
        baseline_case: "produce-unary",
        concurrency: 64,
        sizes: &[100, 1024],
        goal: None,
    },
    Ratio {
        what: "batch produce vs JetStream pipelined publish+ack",
        case: "produce-batch",
        baseline: "nats",
        baseline_case: "produce-stream",
        concurrency: 1,
        sizes: &[100, 1024],
        goal: None,
    },
];

fn print_ratios(rows: &[Value]) {
    let mut labels: Vec<&str> = Vec::new();
    for row in rows {
        let label = text(row, "label");
        if text(row, "target") == "proglog" && !labels.contains(&label) {
            labels.push(label);
        }
    }
    println!("RATIOS (msgs/s of proglog / msgs/s of the baseline, same run)");
    for label in labels {
        for ratio in RATIOS {
            for &size in ratio.sizes {
                // Batch runs use their own concurrency; take whichever was run.
                let ours = if ratio.case == "produce-batch" {
                    rows.iter()
                        .find(|row| {
                            text(row, "label") == label
                                && text(row, "case") == ratio.case
                                && num(row, "size") == size
                        })
                        .and_then(|row| float(row, "msgs_per_s"))
                } else {
                    rate(rows, label, ratio.case, size, ratio.concurrency)
                };
                let theirs = rate(
                    rows,
                    ratio.baseline,
                    ratio.baseline_case,
                    size,
                    ratio.concurrency,
                );
                let (Some(ours), Some(theirs)) = (ours, theirs) else {
                    continue;
                };
                let value = ours / theirs.max(1e-9);
                let verdict = match ratio.goal {
                    Some(goal) if value >= goal => format!("goal >= {goal:.2}x: meets"),
                    Some(goal) => format!("goal >= {goal:.2}x: BELOW"),
                    None => "(for information)".into(),
                };
                println!(
                    "  {label:<17} {:<50} {size:>5} B  {value:>6.2}x  {verdict}",
                    ratio.what
                );
            }
        }
    }
}
