//! `rainforest users export`: every user as a users file that `users
//! import` reads back unchanged, for backups and moving to a new host.
//!
//! Owns the two pure conversions between a [`User`] as the registry holds it
//! and as a backup file holds it: [`seal_for_file`] (credentials sealed under
//! the current credentials key, the same `v1:` text Redis stores, since
//! sealing is deterministic) and [`open_from_file`] (the reverse, applied to
//! every imported line, so a sealed backup loads where the key is
//! configured). Reading the registry and writing the file are the CLI's.
//! It must not print or log a credential.

use crate::registry::{LocalSource, User};
use crate::secret::Secret;
use crate::vault::{self, Vault, VaultError};

/// How credentials go into an export.
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    /// Sealed under this vault's current key: the file is as safe as a
    /// Redis backup, and opens only where the key is configured.
    Sealed(&'a Vault),
    /// In clear (`--decrypt`): the file is a credential store; for moving
    /// to a deployment with a different key, or none.
    Clear,
}

/// Why a line of a backup cannot be loaded here.
#[derive(Debug, thiserror::Error)]
#[error(
    "field `{field}`: {source}; import where that credentials key is configured (e.g. `docker compose exec -T server rainforest users import ...`), or export with --decrypt"
)]
pub struct OpenError {
    /// `user_pw` or `local.install_code`.
    pub field: &'static str,
    /// What the vault said.
    #[source]
    pub source: VaultError,
}

/// `user` with its credentials as a backup file holds them.
pub fn seal_for_file(user: &User, credentials: Credentials<'_>) -> User {
    let seal = |field: &str, value: &Secret| match credentials {
        // An empty password (a local user) stays empty, as in Redis.
        Credentials::Sealed(v) if !value.is_empty() => {
            Secret::new(v.seal(user.cloud_id, field, value))
        }
        _ => value.clone(),
    };
    User {
        user_pw: seal("user_pw", &user.user_pw),
        local: user.local.as_ref().map(|l| LocalSource {
            host: l.host.clone(),
            install_code: seal("install_code", &l.install_code),
        }),
        ..user.clone()
    }
}

/// `user` read from a file with its sealed credentials opened by `vault`;
/// credentials in clear pass through as they are.
pub fn open_from_file(user: User, vault: Option<&Vault>) -> Result<User, OpenError> {
    let open = |field: &'static str, label: &'static str, value: &Secret| {
        vault::open(vault, user.cloud_id, field, value.expose())
            .map(|(secret, _)| secret)
            .map_err(|source| OpenError {
                field: label,
                source,
            })
    };
    let user_pw = open("user_pw", "user_pw", &user.user_pw)?;
    let local = match &user.local {
        Some(l) => Some(LocalSource {
            host: l.host.clone(),
            install_code: open("install_code", "local.install_code", &l.install_code)?,
        }),
        None => None,
    };
    Ok(User {
        user_pw,
        local,
        ..user
    })
}

/// The users file for `users` (sorted as given), one line each, with a
/// trailing newline.
pub fn export_text(users: &[User], credentials: Credentials<'_>) -> String {
    let mut out = String::new();
    for user in users {
        out.push_str(&seal_for_file(user, credentials).to_file_line());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud_id::CloudId;
    use crate::vault::CredentialKey;

    fn vault(byte: char) -> Vault {
        let hex = byte.to_string().repeat(64);
        Vault::new(
            CredentialKey::from_hex(&Secret::new(hex), "test").unwrap(),
            vec![],
        )
    }

    fn users() -> Vec<User> {
        vec![
            User {
                cloud_id: CloudId::parse("00ce69").unwrap(),
                user_email: "a@example.org".into(),
                user_pw: Secret::new("relay-pw"),
                active: true,
                local: None,
                cadence: Default::default(),
            },
            User {
                cloud_id: CloudId::parse("00ce6a").unwrap(),
                user_email: "b@example.org".into(),
                user_pw: Secret::new(""),
                active: false,
                local: Some(LocalSource {
                    host: "192.168.1.20".into(),
                    install_code: Secret::new("install-code"),
                }),
                cadence: Default::default(),
            },
        ]
    }

    fn parse(text: &str) -> Vec<User> {
        text.lines()
            .map(|l| User::from_json_line(l).unwrap())
            .collect()
    }

    #[test]
    fn a_sealed_export_hides_every_credential_and_opens_back_unchanged() {
        let v = vault('a');
        let text = export_text(&users(), Credentials::Sealed(&v));
        assert!(
            !text.contains("relay-pw") && !text.contains("install-code"),
            "{text}"
        );
        assert_eq!(text.matches("\"v1:").count(), 2, "{text}");
        let back: Vec<User> = parse(&text)
            .into_iter()
            .map(|u| open_from_file(u, Some(&v)).unwrap())
            .collect();
        assert_eq!(back, users());
    }

    #[test]
    fn sealing_is_deterministic_so_a_second_export_is_identical() {
        let v = vault('a');
        assert_eq!(
            export_text(&users(), Credentials::Sealed(&v)),
            export_text(&users(), Credentials::Sealed(&v))
        );
    }

    #[test]
    fn a_clear_export_reads_back_without_a_key() {
        let text = export_text(&users(), Credentials::Clear);
        assert!(text.contains("relay-pw"), "{text}");
        let back: Vec<User> = parse(&text)
            .into_iter()
            .map(|u| open_from_file(u, None).unwrap())
            .collect();
        assert_eq!(back, users());
    }

    #[test]
    fn a_sealed_line_under_another_key_fails_naming_the_field_and_the_way_out() {
        let text = export_text(&users()[..1], Credentials::Sealed(&vault('a')));
        let user = parse(&text).remove(0);
        let err = open_from_file(user, Some(&vault('b'))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("user_pw") && msg.contains("--decrypt"),
            "{msg}"
        );
        assert!(!msg.contains("relay-pw"), "{msg}");
    }
}
