//! The `CloudId` type: the one identity every other module keys on.
//!
//! A cloud id is the last six hex digits of an EAGLE's Ethernet MAC. It ends
//! up in Redis keys, file names and S3 keys, so it is validated once, here,
//! and nothing else in the crate builds one from an unchecked string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A validated cloud id: exactly six hex digits, stored in lower case with
/// leading zeros kept (`00ce69`), safe to splice into paths and keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloudId([u8; 6]);

/// Why a string is not a cloud id; the message is written for the person who
/// typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudIdError {
    /// Wrong number of characters (including empty and over-long input).
    #[error("cloud id must be exactly 6 hex digits (e.g. 00ce69), got {len} characters")]
    Length { len: usize },
    /// Right length, but a character outside `0-9a-fA-F`.
    #[error("cloud id must be exactly 6 hex digits (e.g. 00ce69), found a non-hex character")]
    NotHex,
}

impl CloudId {
    /// Parses and normalises a cloud id; see [`CloudIdError`] for what is rejected.
    pub fn parse(s: &str) -> Result<Self, CloudIdError> {
        let bytes = s.as_bytes();
        if bytes.len() != 6 {
            return Err(CloudIdError::Length {
                len: s.chars().count(),
            });
        }
        let mut out = [0u8; 6];
        for (o, b) in out.iter_mut().zip(bytes) {
            if !b.is_ascii_hexdigit() {
                return Err(CloudIdError::NotHex);
            }
            *o = b.to_ascii_lowercase();
        }
        Ok(CloudId(out))
    }

    /// Builds the cloud id for a number below 0x1000000; used by the simulator
    /// to derive ids deterministically.
    pub fn from_index(n: u32) -> Self {
        let s = format!("{:06x}", n & 0x00ff_ffff);
        // Six lower-case hex digits by construction.
        Self::parse(&s).unwrap_or(CloudId(*b"000000"))
    }

    /// The id as a `&str` (always six lower-case hex digits).
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("000000")
    }

    /// The id's numeric value, used to spread meters' phases deterministically.
    pub fn as_u32(&self) -> u32 {
        u32::from_str_radix(self.as_str(), 16).unwrap_or(0)
    }
}

impl fmt::Display for CloudId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CloudId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloudId({})", self.as_str())
    }
}

impl FromStr for CloudId {
    type Err = CloudIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CloudId::parse(s)
    }
}

impl Serialize for CloudId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CloudId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        CloudId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_leading_zeros_and_lowercases() {
        assert_eq!(CloudId::parse("00CE69").unwrap().as_str(), "00ce69");
    }

    #[test]
    fn rejects_traversal_and_odd_lengths() {
        for bad in [
            "", "../x", "%2e%2e", "00ce6", "00ce699", "00ce6g", "00/e69", "00\0e69", "ééé",
        ] {
            assert!(CloudId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn from_index_is_six_digits() {
        assert_eq!(CloudId::from_index(1).as_str(), "000001");
        assert_eq!(CloudId::from_index(0xabcdef).as_u32(), 0xabcdef);
    }
}
