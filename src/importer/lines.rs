//! Importing JSON lines in the old format (`rainforest users import FILE`):
//! parsing with line numbers, and sending users a few at a time.

use std::collections::HashMap;

use futures::StreamExt;

use super::export::open_from_file;
use super::{CONCURRENCY, Failure, Report, Reporter, Summary, Target};
use crate::cloud_id::CloudId;
use crate::registry::User;
use crate::vault::Vault;

/// One parsed line: a user, or why the line is not one.
pub(super) enum Parsed {
    User(usize, User),
    Bad(usize, String),
}

/// Parses JSON lines in the old format; blank lines and `#` comments are
/// skipped, as in the users file. A cloud id seen on an earlier line makes
/// the later line fail, since which of two lines wins would otherwise depend
/// on timing.
pub(super) fn parse_lines(text: &str) -> Vec<Parsed> {
    let mut seen: HashMap<CloudId, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match User::from_json_line(trimmed) {
            Ok(user) => match seen.get(&user.cloud_id) {
                Some(first) => out.push(Parsed::Bad(
                    number,
                    format!(
                        "cloud id {} already appeared on line {first}; keep one line per meter",
                        user.cloud_id
                    ),
                )),
                None => {
                    seen.insert(user.cloud_id, number);
                    out.push(Parsed::User(number, user));
                }
            },
            Err(e) => out.push(Parsed::Bad(number, e.to_string())),
        }
    }
    out
}

/// Counts the lines [`import_lines`] will handle, for the progress bar.
pub fn count_lines(text: &str) -> u64 {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count() as u64
}

/// Imports JSON lines in the old format (`cloud_id`, `user_email`,
/// `user_pw`, optional `active` and `local`; the old statistics fields are
/// ignored) into `target`. Credentials sealed by `users export` are opened
/// with `vault` first, so a sealed backup loads where its key is configured.
pub async fn import_lines(
    text: &str,
    target: &Target,
    vault: Option<&Vault>,
    reporter: &Reporter,
) -> Report {
    let mut summary = Summary::default();
    let mut users = Vec::new();
    for parsed in parse_lines(text) {
        let parsed = match parsed {
            Parsed::User(n, u) => match open_from_file(u, vault) {
                Ok(u) => Parsed::User(n, u),
                Err(e) => Parsed::Bad(n, e.to_string()),
            },
            bad => bad,
        };
        match parsed {
            Parsed::User(n, u) => users.push((n, u)),
            Parsed::Bad(n, reason) => {
                summary.failed += 1;
                reporter.failure(&format!("line {n}"), &reason);
                reporter.advance(&summary);
            }
        }
    }
    let mut results = futures::stream::iter(users)
        .map(|(n, user)| async move { (n, user.cloud_id, target.put(&user).await) })
        .buffer_unordered(CONCURRENCY);
    while let Some((n, id, result)) = results.next().await {
        match result {
            Ok(outcome) => summary.count(outcome),
            Err(Failure::Line(reason)) => {
                summary.failed += 1;
                reporter.failure(&format!("line {n} ({id})"), &reason);
            }
            Err(Failure::Fatal(e) | Failure::Retry(e)) => {
                return Report {
                    summary,
                    aborted: Some(e),
                };
            }
        }
        reporter.advance(&summary);
    }
    Report {
        summary,
        aborted: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_comments_skipped_and_duplicates_refused() {
        let text = "# users\n\n{\"cloud_id\": \"00ce69\", \"user_email\": \"a@b.org\", \"user_pw\": \"x\"}\n\
                    {\"cloud_id\": \"00ce6\", \"user_email\": \"a@b.org\", \"user_pw\": \"x\"}\n\
                    {\"cloud_id\": \"00CE69\", \"user_email\": \"c@b.org\", \"user_pw\": \"y\"}\n";
        let parsed = parse_lines(text);
        assert_eq!(parsed.len(), 3);
        assert!(matches!(parsed[0], Parsed::User(3, _)));
        assert!(matches!(&parsed[1], Parsed::Bad(4, r) if r.contains("cloud_id")));
        assert!(matches!(&parsed[2], Parsed::Bad(5, r) if r.contains("line 3")));
        assert_eq!(count_lines(text), 3);
    }
}
