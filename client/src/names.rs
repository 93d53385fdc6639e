//! Log names: the rules every node and client applies to the `log` field of a request.
//!
//! A name is 1 to [`MAX_LOG_NAME_LEN`] characters of `a-z`, `A-Z`, `0-9`, `.`, `_` and `-`, and
//! is neither `.` nor `..`: Kafka's rules for topic names, so names move between the two, and
//! every name is safe in a metric label, a policy line and a command line. Names are
//! case-sensitive (`Orders` and `orders` are two logs); a name that starts with `-` is given
//! to the CLI as `--log=-name`. An empty `log` field
//! means [`DEFAULT_LOG`], the log every cluster has, so clients that never set the field (the
//! Go proglog's among them) use it.

use std::fmt;

/// The log every cluster has, and the one an empty `log` field means.
pub const DEFAULT_LOG: &str = "default";

/// The longest log name, in characters (all of them ASCII): Kafka's limit for topic names.
pub const MAX_LOG_NAME_LEN: usize = 249;

/// How much of a refused name an error repeats: enough to recognise it, never a whole
/// oversized input.
const SHOWN_CHARS: usize = 64;

/// Why a log name was refused. Its message names the rule and quotes the name (escaped, and cut
/// short when long), so it is safe to show whatever the name held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogNameError {
    shown: String,
    reason: &'static str,
}

impl fmt::Display for LogNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid log name {}: {}; a log name is 1 to {MAX_LOG_NAME_LEN} characters of \
             a-z, A-Z, 0-9, '.', '_' and '-', and not '.' or '..'",
            self.shown, self.reason
        )
    }
}

impl std::error::Error for LogNameError {}

/// Checks a log name by the rules above.
pub fn check_log_name(name: &str) -> Result<(), LogNameError> {
    let refuse = |reason| {
        let mut shown: String = name.chars().take(SHOWN_CHARS).collect();
        if shown.len() < name.len() {
            shown.push('…');
        }
        Err(LogNameError {
            shown: format!("{shown:?}"),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_LOG_NAME_LEN {
        return refuse("it is too long");
    }
    if name == "." || name == ".." {
        return refuse("'.' and '..' are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return refuse("it holds a character outside the allowed ones");
    }
    Ok(())
}

/// The log a request's `log` field names: [`DEFAULT_LOG`] when it is empty, else the name once
/// [`check_log_name`] accepts it.
pub fn resolve_log_name(field: &str) -> Result<&str, LogNameError> {
    if field.is_empty() {
        return Ok(DEFAULT_LOG);
    }
    check_log_name(field)?;
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafkas_topic_rules() {
        for good in [
            "default",
            "orders",
            "a",
            "Payments.v2_eu-west",
            "..a",
            "...",
            &"x".repeat(MAX_LOG_NAME_LEN),
        ] {
            assert_eq!(check_log_name(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            (".", "reserved"),
            ("..", "reserved"),
            ("a/b", "outside"),
            ("a b", "outside"),
            ("ünïcode", "outside"),
            ("a\0b", "outside"),
            ("*", "outside"),
        ] {
            let error = check_log_name(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad:?}: {error}");
            assert!(error.contains("1 to 249 characters"), "{error}");
        }
        let long = "y".repeat(MAX_LOG_NAME_LEN + 1);
        let error = check_log_name(&long).unwrap_err().to_string();
        assert!(error.contains("too long"), "{error}");
        assert!(error.len() < 300, "a long name is cut short: {error}");
    }

    #[test]
    fn an_empty_field_means_the_default_log() {
        assert_eq!(resolve_log_name(""), Ok(DEFAULT_LOG));
        assert_eq!(resolve_log_name("default"), Ok(DEFAULT_LOG));
        assert_eq!(resolve_log_name("orders"), Ok("orders"));
        assert!(
            resolve_log_name("a\nb")
                .unwrap_err()
                .to_string()
                .contains("\"a\\nb\"")
        );
    }
}
