//! Credentials at rest: sealing meter passwords and install codes before
//! they reach Redis, and opening them again.
//!
//! Owns the credentials key (loaded from `credentials_key` /
//! `credentials_key_file`, plus an optional old key accepted while rekeying)
//! and the sealed-value format. It never talks to Redis and never logs: the
//! registry decides where sealed values go, and the key stays inside a
//! [`CredentialKey`] whose `Debug` shows only its id.
//!
//! # Format
//!
//! A sealed value is `v1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`:
//! XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`) with a 24-byte nonce.
//! The key id is the first 8 hex digits of SHA-256 of the key, so a value
//! says which key it needs without revealing it. The associated data is
//! `<cloud id>/<field>`: a sealed value copied to another user or another
//! field does not open.
//!
//! The nonce is synthetic (the SIV construction): an HMAC-SHA-256, under a
//! subkey of its own, of the associated data and the plaintext. Distinct
//! (user, field, value) triples never share a nonce, and the same value
//! sealed twice gives the same text, which is what lets the registry's
//! one-round-trip Lua `put` still see that nothing changed (imports stay
//! re-runnable). The only thing that reveals is whether one user's password
//! is the same as it was before, which `updated_at` tells anyway. The
//! encryption and nonce subkeys are derived from the configured key with
//! HMAC-SHA-256 and distinct labels.
//!
//! A stored value that does not have this shape is plaintext, written before
//! encryption was turned on: it still reads, and `rainforest users rekey`
//! seals it.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::cloud_id::CloudId;
use crate::config::Config;
use crate::secret::Secret;

/// Prefix of every sealed value; a new format gets a new version.
const PREFIX: &str = "v1:";
/// Bytes of the synthetic nonce (XChaCha20's extended nonce).
const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag.
const TAG_LEN: usize = 16;
/// How an operator makes a key, for every message that asks for one.
pub const HOW_TO_MAKE_A_KEY: &str = "make one with `openssl rand -hex 32 > credentials.key` \
     (keep it apart from Redis backups) and set `credentials_key_file = \"credentials.key\"` \
     (or RAINFOREST_CREDENTIALS_KEY to the 64 hex characters)";

/// A problem with the credentials key or a sealed value. Messages name the
/// setting, file, key id or field, never a key or a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// A configured key is unusable: unreadable file, wrong length, not hex.
    #[error("`{setting}`: {reason}")]
    BadKey {
        /// The setting (and file) it came from.
        setting: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The value is sealed under a key that is not configured.
    #[error(
        "sealed under credentials key id {needed}, which is not configured (configured: {configured}); set credentials_key_file (or credentials_old_key_file while rekeying) to that key"
    )]
    UnknownKey {
        /// The key id the value names.
        needed: String,
        /// The ids this process holds, or `none`.
        configured: String,
    },
    /// The value names a configured key but does not open under it: it was
    /// altered, truncated, or copied from another user or field.
    #[error(
        "sealed value does not open under key id {key_id}: altered, or copied from another user or field; write the credential again"
    )]
    Tampered {
        /// The key id the value names.
        key_id: String,
    },
}

/// 32 secret bytes, and the id that names them in sealed values.
#[derive(Clone)]
pub struct CredentialKey {
    id: String,
    cipher: XChaCha20Poly1305,
    nonce_key: [u8; 32],
}

impl fmt::Debug for CredentialKey {
    /// Only the id: the key itself is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialKey({})", self.id)
    }
}

impl CredentialKey {
    /// Parses 64 hex characters (what `openssl rand -hex 32` prints),
    /// ignoring surrounding white space. `setting` names where the text came
    /// from, for the error.
    pub fn from_hex(text: &Secret, setting: &str) -> Result<CredentialKey, VaultError> {
        let trimmed = text.expose().trim();
        let bad = |reason: &str| VaultError::BadKey {
            setting: setting.to_string(),
            reason: format!("{reason}; {HOW_TO_MAKE_A_KEY}"),
        };
        if trimmed.len() != 64 {
            return Err(bad(&format!(
                "must be 64 hex characters (32 bytes), got {} characters",
                trimmed.chars().count()
            )));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(trimmed, &mut bytes).map_err(|_| bad("is not hexadecimal"))?;
        Ok(CredentialKey::from_bytes(&bytes))
    }

    /// Reads a key file: its first line, 64 hex characters.
    pub fn from_file(path: &Path, setting: &str) -> Result<CredentialKey, VaultError> {
        let shown = format!("{setting} {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| VaultError::BadKey {
            setting: shown.clone(),
            reason: format!("cannot read it ({e}); check the path and its permissions"),
        })?;
        let first = Secret::new(text.lines().next().unwrap_or_default());
        CredentialKey::from_hex(&first, &shown)
    }

    fn from_bytes(bytes: &[u8; 32]) -> CredentialKey {
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        let enc = hmac_sha256(bytes, &[b"rainforest credentials aead v1"]);
        let nonce_key = hmac_sha256(bytes, &[b"rainforest credentials nonce v1"]);
        CredentialKey {
            id,
            cipher: XChaCha20Poly1305::new(&enc.into()),
            nonce_key,
        }
    }

    /// The key's id: the first 8 hex digits of SHA-256 of the key.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// HMAC-SHA-256 of the concatenated `parts` under `key`: the subkeys and
/// the synthetic nonce.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// What a stored credential turned out to be, so `rekey` can count and
/// re-seal only what needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// Stored in clear (written before encryption was turned on).
    Plaintext,
    /// Sealed under the key new values are sealed with.
    Current,
    /// Sealed under an older key this process still accepts.
    Old,
}

/// The keys of one process: the one new values are sealed with, and any
/// older ones still accepted for reading while a rekey runs.
#[derive(Debug, Clone)]
pub struct Vault {
    current: CredentialKey,
    old: Vec<CredentialKey>,
}

impl Vault {
    /// A vault that seals with `current` and also opens values sealed under
    /// any of `old`.
    pub fn new(current: CredentialKey, old: Vec<CredentialKey>) -> Vault {
        let old = old.into_iter().filter(|k| k.id != current.id).collect();
        Vault { current, old }
    }

    /// The keys the configuration names, or `None` when it names none.
    /// Reads the key files; an old key without a current one is an error,
    /// since there would be nothing to seal with.
    pub fn from_config(config: &Config) -> Result<Option<Vault>, VaultError> {
        let current = load_key(
            config.credentials_key.as_ref(),
            config.credentials_key_file.as_deref(),
            "credentials_key",
        )?;
        let old = load_key(
            config.credentials_old_key.as_ref(),
            config.credentials_old_key_file.as_deref(),
            "credentials_old_key",
        )?;
        match (current, old) {
            (Some(current), old) => Ok(Some(Vault::new(current, old.into_iter().collect()))),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(VaultError::BadKey {
                setting: "credentials_old_key".into(),
                reason: "is set but credentials_key is not: set the key new values are sealed with"
                    .into(),
            }),
        }
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// This vault sealing with `key` instead, still opening values under
    /// every key it held (for `rekey --new-key-file`).
    pub fn rotated_to(&self, key: CredentialKey) -> Vault {
        let mut old = self.old.clone();
        old.push(self.current.clone());
        Vault::new(key, old)
    }

    /// Seals `plaintext`, the `field` of user `id`.
    pub fn seal(&self, id: CloudId, field: &str, plaintext: &Secret) -> String {
        let key = &self.current;
        let aad = associated_data(id, field);
        let nonce = synthetic_nonce(key, &aad, plaintext.expose().as_bytes());
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.expose().as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 seals any credential length"));
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", key.id, STANDARD_NO_PAD.encode(blob))
    }

    /// Opens a stored value (see [`open`]).
    pub fn open(
        &self,
        id: CloudId,
        field: &str,
        stored: &str,
    ) -> Result<(Secret, Sealing), VaultError> {
        open(Some(self), id, field, stored)
    }

    fn key(&self, key_id: &str) -> Option<(&CredentialKey, Sealing)> {
        if self.current.id == key_id {
            return Some((&self.current, Sealing::Current));
        }
        self.old
            .iter()
            .find(|k| k.id == key_id)
            .map(|k| (k, Sealing::Old))
    }

    fn ids(&self) -> String {
        std::iter::once(&self.current)
            .chain(&self.old)
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Opens a stored credential, the `field` of user `id`: plaintext reads as
/// itself; a sealed value needs `vault` to hold its key.
pub fn open(
    vault: Option<&Vault>,
    id: CloudId,
    field: &str,
    stored: &str,
) -> Result<(Secret, Sealing), VaultError> {
    let Some((key_id, blob)) = parse_sealed(stored) else {
        return Ok((Secret::new(stored), Sealing::Plaintext));
    };
    let unknown = || VaultError::UnknownKey {
        needed: key_id.to_string(),
        configured: vault.map_or_else(|| "none".to_string(), Vault::ids),
    };
    let (key, sealing) = vault.and_then(|v| v.key(key_id)).ok_or_else(unknown)?;
    let tampered = || VaultError::Tampered {
        key_id: key_id.to_string(),
    };
    let (nonce, sealed) = blob.split_at(NONCE_LEN);
    let aad = associated_data(id, field);
    let plain = key
        .cipher
        .decrypt(
            &XNonce::try_from(nonce).map_err(|_| tampered())?,
            Payload {
                msg: sealed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| tampered())?;
    let text = String::from_utf8(plain).map_err(|_| tampered())?;
    Ok((Secret::new(text), sealing))
}

/// The key id and decoded blob of a sealed value, or `None` for anything
/// else (plaintext). A password that merely starts with `v1:` is plaintext
/// unless the rest is an 8-hex id and base64 long enough to hold a nonce
/// and a tag.
fn parse_sealed(stored: &str) -> Option<(&str, Vec<u8>)> {
    let rest = stored.strip_prefix(PREFIX)?;
    let (key_id, b64) = rest.split_once(':')?;
    let is_id = key_id.len() == 8 && key_id.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_id {
        return None;
    }
    let blob = STANDARD_NO_PAD.decode(b64).ok()?;
    (blob.len() >= NONCE_LEN + TAG_LEN).then_some((key_id, blob))
}

fn associated_data(id: CloudId, field: &str) -> String {
    format!("{}/{field}", id.as_str())
}

fn synthetic_nonce(key: &CredentialKey, aad: &str, plaintext: &[u8]) -> XNonce {
    // Length-prefixed so (aad, plaintext) pairs cannot run into each other.
    let len = (aad.len() as u64).to_be_bytes();
    let digest = hmac_sha256(&key.nonce_key, &[&len, aad.as_bytes(), plaintext]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&digest[..NONCE_LEN]);
    XNonce::from(nonce)
}

fn load_key(
    inline: Option<&Secret>,
    file: Option<&Path>,
    setting: &str,
) -> Result<Option<CredentialKey>, VaultError> {
    match (inline, file) {
        (Some(_), Some(path)) => Err(VaultError::BadKey {
            setting: setting.to_string(),
            reason: format!(
                "both {setting} and {setting}_file ({}) are set; keep one",
                path.display()
            ),
        }),
        (Some(text), None) => CredentialKey::from_hex(text, setting).map(Some),
        (None, Some(path)) => CredentialKey::from_file(path, &format!("{setting}_file")).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn key(hex: &str) -> CredentialKey {
        CredentialKey::from_hex(&Secret::new(hex), "test").unwrap()
    }

    fn id(s: &str) -> CloudId {
        CloudId::parse(s).unwrap()
    }

    #[test]
    fn sealed_values_open_and_hide_the_plaintext() {
        let v = Vault::new(key(K1), vec![]);
        let pw = Secret::new("hunter2-password");
        let sealed = v.seal(id("00ce69"), "user_pw", &pw);
        assert!(
            sealed.starts_with(&format!("v1:{}:", v.current_id())),
            "{sealed}"
        );
        assert!(!sealed.contains("hunter2"));
        let (open, how) = v.open(id("00ce69"), "user_pw", &sealed).unwrap();
        assert_eq!(open, pw);
        assert_eq!(how, Sealing::Current);
        // Deterministic: the registry's put sees an unchanged credential.
        assert_eq!(sealed, v.seal(id("00ce69"), "user_pw", &pw));
    }

    #[test]
    fn a_value_moved_to_another_user_or_field_does_not_open() {
        let v = Vault::new(key(K1), vec![]);
        let sealed = v.seal(id("00ce69"), "user_pw", &Secret::new("pw"));
        for (who, field) in [("00ce6a", "user_pw"), ("00ce69", "install_code")] {
            let e = v.open(id(who), field, &sealed).unwrap_err();
            assert!(matches!(e, VaultError::Tampered { .. }), "{e}");
        }
        // The same password for two users gives two different values.
        assert_ne!(sealed, v.seal(id("00ce6a"), "user_pw", &Secret::new("pw")));
    }

    #[test]
    fn plaintext_reads_and_a_foreign_key_is_named() {
        let v1 = Vault::new(key(K1), vec![]);
        let (pw, how) = v1.open(id("00ce69"), "user_pw", "legacy-pw").unwrap();
        assert_eq!((pw.expose(), how), ("legacy-pw", Sealing::Plaintext));
        let v2 = Vault::new(key(K2), vec![]);
        let sealed = v2.seal(id("00ce69"), "user_pw", &Secret::new("pw"));
        let text = v1
            .open(id("00ce69"), "user_pw", &sealed)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(v2.current_id()) && text.contains(v1.current_id()),
            "{text}"
        );
        assert!(!text.contains("pw\""), "{text}");
        let none = open(None, id("00ce69"), "user_pw", &sealed).unwrap_err();
        assert!(none.to_string().contains("configured: none"), "{none}");
    }

    #[test]
    fn an_old_key_opens_while_the_new_one_seals() {
        let old = Vault::new(key(K1), vec![]);
        let sealed = old.seal(id("00ce69"), "user_pw", &Secret::new("pw"));
        let both = old.rotated_to(key(K2));
        assert_ne!(both.current_id(), old.current_id());
        let (pw, how) = both.open(id("00ce69"), "user_pw", &sealed).unwrap();
        assert_eq!((pw.expose(), how), ("pw", Sealing::Old));
    }

    #[test]
    fn bad_keys_are_explained_without_echoing_them() {
        for text in ["abc", &"zz".repeat(32)] {
            let e = CredentialKey::from_hex(&Secret::new(text), "credentials_key").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("openssl rand -hex 32") && !msg.contains("zzzz"),
                "{msg}"
            );
        }
        assert!(format!("{:?}", key(K1)).starts_with("CredentialKey("));
        assert!(!format!("{:?}", key(K1)).contains("0001020304"));
    }

    #[test]
    fn tampered_values_do_not_open() {
        let v = Vault::new(key(K1), vec![]);
        let sealed = v.seal(id("00ce69"), "user_pw", &Secret::new("pw"));
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert!(v.open(id("00ce69"), "user_pw", &altered).is_err());
    }
}
