//! The results table and the ratios issue 3 asks for, from the JSON lines `--results` writes.
//!
//! Ratios are computed for every proglog label in the file (say `proglog-interval` and
//! `proglog-always`) against the `nats` and `echo` targets of the same file, so they always
//! compare systems measured in the same run.
//!
//! `--against LABEL` (the cluster comparison of `bench/cluster.sh`) pairs every proglog row
//! with the row of LABEL of the same case, size and concurrency instead, and summarizes the
//! failover rows `proglog-loadgen failover` writes (`"kind":"failover"`).

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// One case's line, as printed while the run goes on.
pub fn format_line(row: &Value) -> String {
    format!(
        "{:<17} {:<15} {:>5} {:<12} {:>11} {:>8} {:>9} {:>9} {:>9}",
        text(row, "label"),
        text(row, "case"),
        num(row, "size"),
        shape(row),
        format!("{:.0}", float(row, "msgs_per_s").unwrap_or(0.0)),
        format!("{:.1}", float(row, "mb_per_s").unwrap_or(0.0)),
        micros(row, "p50_us"),
        micros(row, "p99_us"),
        micros(row, "p999_us"),
    )
}

/// `c=64`, `c=1 w=1024` or `c=4 b=100`.
fn shape(row: &Value) -> String {
    match (row["window"].as_u64(), row["batch"].as_u64()) {
        (Some(window), _) => format!("c={} w={window}", num(row, "concurrency")),
        (_, Some(batch)) => format!("c={} b={batch}", num(row, "concurrency")),
        _ => format!("c={}", num(row, "concurrency")),
    }
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

/// The case rows and the failover rows of a results file.
fn read_rows(path: &Path) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let rows = content
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()
        .with_context(|| format!("parse {}", path.display()))?;
    Ok(rows
        .into_iter()
        .partition(|row| row["kind"].as_str() != Some("failover")))
}

fn print_table(rows: &[Value]) {
    println!(
        "{:<17} {:<15} {:>5} {:<12} {:>11} {:>8} {:>9} {:>9} {:>9}",
        "target", "case", "bytes", "shape", "msgs/s", "MB/s", "p50 us", "p99 us", "p99.9 us"
    );
    for row in rows {
        println!("{}", format_line(row));
    }
    println!();
}

/// Prints the table of `path` and the ratios.
pub fn print(path: &Path) -> anyhow::Result<()> {
    let (rows, failovers) = read_rows(path)?;
    print_table(&rows);
    print_ratios(&rows);
    if !failovers.is_empty() {
        println!();
        print_failovers(&failovers);
    }
    Ok(())
}

/// Prints the table of `path`, every proglog row against `baseline`'s row of the same shape,
/// and the failover summary.
pub fn print_against(path: &Path, baseline: &str) -> anyhow::Result<()> {
    let (rows, failovers) = read_rows(path)?;
    print_table(&rows);
    println!(
        "PROGLOG vs {baseline} (same run; ratio = msgs/s of proglog / msgs/s of {baseline}; \
         produce-batch is compared with {baseline}'s produce-stream)"
    );
    println!(
        "{:<17} {:<15} {:>5} {:<12} {:>11} {:>11} {:>7} {:>11} {:>11}",
        "proglog",
        "case",
        "bytes",
        "shape",
        "msgs/s",
        "base msgs/s",
        "ratio",
        "p99 us",
        "base p99 us"
    );
    for row in rows.iter().filter(|row| text(row, "target") == "proglog") {
        let case = text(row, "case");
        let (base_case, base_concurrency) = if case == "produce-batch" {
            ("produce-stream", 1)
        } else {
            (case, num(row, "concurrency"))
        };
        let Some(base) = rows.iter().find(|other| {
            text(other, "label") == baseline
                && text(other, "case") == base_case
                && num(other, "size") == num(row, "size")
                && num(other, "concurrency") == base_concurrency
        }) else {
            continue;
        };
        let (Some(ours), Some(theirs)) = (float(row, "msgs_per_s"), float(base, "msgs_per_s"))
        else {
            continue;
        };
        println!(
            "{:<17} {:<15} {:>5} {:<12} {:>11.0} {:>11.0} {:>6.2}x {:>11} {:>11}",
            text(row, "label"),
            case,
            num(row, "size"),
            shape(row),
            ours,
            theirs,
            ours / theirs.max(1e-9),
            micros(row, "p99_us"),
            micros(base, "p99_us"),
        );
    }
    if !failovers.is_empty() {
        println!();
        print_failovers(&failovers);
    }
    Ok(())
}

/// One failover measurement, as `proglog-loadgen failover` prints it.
pub fn format_failover(row: &Value) -> String {
    let seen = float(row, "leader_seen_ms").map_or_else(|| "-".into(), |ms| format!("{ms:.0} ms"));
    format!(
        "{:<17} failover: kill -9 {} ({}) -> first produce acknowledged by {} after {:.0} ms \
         (new leader seen after {seen}; {} calls failed; before the kill {} acked, p50 {} us, p99 {} us)",
        text(row, "label"),
        text(row, "killed_id"),
        text(row, "killed_addr"),
        text(row, "new_leader_id"),
        float(row, "failover_ms").unwrap_or(f64::NAN),
        num(row, "failed_calls"),
        num(row, "acked_before_kill"),
        micros(row, "before_p50_us"),
        micros(row, "before_p99_us"),
    )
}

/// Goal of issue 4: a committed produce on the new leader within this long of the kill.
const FAILOVER_GOAL_MS: f64 = 3000.0;

fn print_failovers(rows: &[Value]) {
    println!("FAILOVER (kill -9 of the leader to the first produce acknowledged by the new one)");
    let mut labels: Vec<&str> = Vec::new();
    for row in rows {
        if !labels.contains(&text(row, "label")) {
            labels.push(text(row, "label"));
        }
    }
    for label in labels {
        let mut times: Vec<f64> = Vec::new();
        for row in rows.iter().filter(|row| text(row, "label") == label) {
            println!("  {}", format_failover(row));
            times.extend(float(row, "failover_ms"));
        }
        times.sort_by(f64::total_cmp);
        let Some(median) = median(&times) else {
            continue;
        };
        let verdict = if median < FAILOVER_GOAL_MS {
            "meets"
        } else {
            "ABOVE"
        };
        let each = times
            .iter()
            .map(|ms| format!("{ms:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  {label:<17} median {median:.0} ms of {} runs ({each} ms); goal < {FAILOVER_GOAL_MS:.0} ms: {verdict}",
            times.len()
        );
    }
}

/// The median of sorted values.
fn median(sorted: &[f64]) -> Option<f64> {
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
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
