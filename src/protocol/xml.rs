//! A forgiving XML reader for EAGLE fragments.
//!
//! The relay and the EAGLE-200 speak small, loosely formed XML: element names
//! in any case, CRLF or LF, code page 1252 text, one-or-many lists, extra
//! elements. Rather than fight serde over every quirk, the bytes are read once
//! into a tiny element tree with lower-cased names, and the typed parsers in
//! [`super::parse`] pick what they need from it. This module owns only that
//! tree; it must never panic, whatever bytes arrive.

use quick_xml::Reader;
use quick_xml::events::Event;

/// Deeper nesting than this is not an EAGLE answer; stopping early bounds the
/// work an adversarial body can cause.
const MAX_DEPTH: usize = 16;
/// Likewise for the number of elements in one fragment (a full history answer
/// holds a few hundred).
const MAX_ELEMENTS: usize = 20_000;

/// One XML element: lower-cased name, trimmed text, children in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    /// Element name, lower-cased (the device treats names case-insensitively).
    pub name: String,
    /// Concatenated text content, surrounding whitespace trimmed.
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<Element>,
}

impl Element {
    /// First child with this (lower-case) name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this (lower-case) name, for one-or-many lists.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Text of the first child with this name, if present and non-empty.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name)
            .map(|c| c.text.as_str())
            .filter(|t| !t.is_empty())
    }
}

/// Why a body is not a usable XML fragment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// Nothing but whitespace.
    #[error("empty body")]
    Empty,
    /// The reader rejected the bytes (bad syntax, HTML, binary garbage).
    #[error("not well-formed XML: {0}")]
    Syntax(String),
    /// The document ended before its root element closed.
    #[error("truncated body: element <{0}> never closed")]
    Truncated(String),
    /// Nesting or size beyond anything an EAGLE sends.
    #[error("fragment too large or too deeply nested")]
    TooLarge,
}

/// Parses the first root element of `bytes` into a tree.
///
/// Bytes are decoded leniently (invalid UTF-8, such as code page 1252 accents,
/// becomes U+FFFD) because the relay does not promise an encoding.
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let text = String::from_utf8_lossy(bytes);
    if text.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let mut reader = Reader::from_str(&text);
    let mut stack: Vec<Element> = Vec::new();
    let mut count = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Syntax(e.to_string()))?;
        match event {
            Event::Start(start) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(XmlError::TooLarge);
                }
                let name = start.name().as_ref().to_lowercase();
                stack.push(Element {
                    name,
                    ..Element::default()
                });
            }
            Event::Empty(start) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError::TooLarge);
                }
                let el = Element {
                    name: start.name().as_ref().to_lowercase(),
                    ..Element::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                // quick-xml checks that end tags match start tags by default.
                let Some(mut done) = stack.pop() else {
                    return Err(XmlError::Syntax("unexpected closing tag".into()));
                };
                done.text = done.text.trim().to_string();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                } else if !t.as_ref().trim().is_empty() {
                    return Err(XmlError::Syntax("text outside any element".into()));
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(c.as_ref());
                }
            }
            Event::GeneralRef(r) => {
                if let Some(top) = stack.last_mut() {
                    let name = r.as_ref().to_string();
                    top.text.push_str(&resolve_entity(&name));
                }
            }
            Event::Eof => {
                return match stack.pop() {
                    Some(open) => Err(XmlError::Truncated(open.name)),
                    None => Err(XmlError::Empty),
                };
            }
            // Declarations, comments, processing instructions, doctypes.
            _ => {}
        }
    }
}

/// Resolves `&name;` references; unknown ones are kept verbatim rather than
/// dropped, so an odd relay message still reads sensibly in an error.
fn resolve_entity(name: &str) -> String {
    let known = match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    };
    if let Some(c) = known {
        return c.to_string();
    }
    let code = if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if let Some(dec) = name.strip_prefix('#') {
        dec.parse().ok()
    } else {
        None
    };
    code.and_then(char::from_u32)
        .map(String::from)
        .unwrap_or_else(|| format!("&{name};"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercased_and_text_trimmed() {
        let el = parse(b"\r\n <Foo>\r\n <BaR> x &amp; y </BaR><bar>2</bar></Foo>\r\n").unwrap();
        assert_eq!(el.name, "foo");
        assert_eq!(el.child_text("bar"), Some("x & y"));
        assert_eq!(el.children_named("bar").count(), 2);
    }

    #[test]
    fn truncated_and_empty_are_distinct() {
        assert_eq!(parse(b"  \r\n"), Err(XmlError::Empty));
        assert!(matches!(parse(b"<a><b>1</b>"), Err(XmlError::Truncated(_))));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let body = "<a>".repeat(100);
        assert_eq!(parse(body.as_bytes()), Err(XmlError::TooLarge));
    }
}
