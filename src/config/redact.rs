//! Hiding the credentials in URLs before they are shown anywhere.
//!
//! Owns one function, [`redact_url`], used wherever a URL reaches a log
//! line, an error message or `rainforest config`. It works on the text, not
//! on a parsed URL, so a URL that does not parse (`redis://:s3cr#t@redis/0`,
//! where `#` starts a fragment) is hidden as well.

use crate::secret::REDACTED;

/// The URL with its userinfo (user name and password) replaced by
/// `[redacted]`: everything between `://` and the last `@` before the first
/// `/` after it. Text without `://` or `@` there is returned as is.
pub fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let authority = rest.find('/').map_or(rest, |end| &rest[..end]);
    match authority.rfind('@') {
        Some(at) => format!("{}{REDACTED}{}", &url[..start], &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_hidden_whether_or_not_the_url_parses() {
        for (url, shown) in [
            ("redis://:hunter2@h:6379/0", "redis://[redacted]@h:6379/0"),
            ("redis://:s3cr#t@redis/0", "redis://[redacted]@redis/0"),
            ("rediss://app:p@ss@h/1", "rediss://[redacted]@h/1"),
            ("http://u:p@h", "http://[redacted]@h"),
            ("redis://h:6379/0", "redis://h:6379/0"),
            ("http://h/a@b", "http://h/a@b"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
