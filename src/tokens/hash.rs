//! Token secrets and their hashes: what is generated, what is stored.
//!
//! A token is 256 random bits, shown once when created and stored only as
//! its SHA-256 hash, so a copy of Redis does not let anyone in. A fast hash
//! is enough here (unlike for human passwords): nobody can brute-force 256
//! random bits, and a slow hash would slow down every request. Nothing here
//! does I/O.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// Prefix of generated tokens, so secret scanners and people recognise them.
pub const TOKEN_PREFIX: &str = "rft_";
/// Random bytes per generated token (256 bits).
pub(crate) const TOKEN_BYTES: usize = 32;

/// The SHA-256 of a token: what is stored and compared, never the token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a presented or generated token.
    pub fn of(token: &str) -> TokenHash {
        let digest = Sha256::digest(token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&digest);
        TokenHash(out)
    }

    /// 64 lower-case hex digits, as stored in Redis.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Constant-time equality, so response times do not reveal how much of
    /// a guess matched.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    /// Redacted: a hash in a log is one step closer to an offline attack.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash([redacted])")
    }
}

/// A fresh random token: [`TOKEN_PREFIX`] and 64 hex digits (256 bits from
/// the operating system-seeded CSPRNG).
pub fn generate() -> Secret {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::fill(&mut bytes[..]);
    Secret::new(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_random_and_prefixed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
        assert_eq!(format!("{a:?}"), "[redacted]");
    }

    #[test]
    fn hash_is_sha256_hex_and_compares_in_constant_time() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(h.ct_eq(&TokenHash::of("abc")));
        assert!(!h.ct_eq(&TokenHash::of("abd")));
        assert_eq!(format!("{h:?}"), "TokenHash([redacted])");
    }
}
