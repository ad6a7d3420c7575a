//! One line of text for an error and its sources, for log fields and
//! messages meant for people.
//!
//! Client libraries (reqwest, the AWS SDK, redis) wrap the useful cause a
//! few layers deep, and their `Debug` output is a screenful; `Display`
//! alone often says only "error sending request". This is the one place
//! that walks the chain.

/// `err` and each of its sources, joined by `": "`. A message that a
/// wrapper repeats from its source is kept once.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to 127.0.0.1:9")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("request failed: connection refused")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn sources_are_joined_and_repeats_dropped() {
        let io =
            || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            super::chain(&Outer(io())),
            "cannot connect to 127.0.0.1:9: connection refused"
        );
        assert_eq!(
            super::chain(&Repeats(io())),
            "request failed: connection refused"
        );
    }
}
