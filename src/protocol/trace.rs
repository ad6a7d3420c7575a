//! `--trace-http`: each EAGLE request as a curl command an operator can
//! paste into a shell.
//!
//! Owns the one shell-quoting function ([`shell_quote`]); every part of the
//! line (URL, headers, body) goes through it, so a stored value holding
//! `'$(…)'` is printed as data, never as code. Secrets are never printed:
//! they appear as `"$VAR"` references the operator fills in.

use url::Url;

/// Quotes `s` as one POSIX shell word: single quotes, with each `'` written
/// as `'\''`. Inside single quotes the shell expands nothing.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A reference to an environment variable holding a secret. Its name is a
/// constant of this crate, so it is printed as is.
fn env_ref(var: &'static str) -> String {
    debug_assert!(
        var.bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
    );
    format!("\"${var}\"")
}

/// A curl command line under construction.
#[derive(Debug, Clone)]
pub struct Curl {
    words: Vec<String>,
}

impl Curl {
    /// `curl -sS -X POST <url>`.
    pub fn post(url: &Url) -> Curl {
        Curl {
            words: vec![
                "curl".into(),
                "-sS".into(),
                "-X".into(),
                "POST".into(),
                shell_quote(url.as_str()),
            ],
        }
    }

    /// `-H 'name: value'`.
    pub fn header(mut self, name: &str, value: &str) -> Curl {
        self.words.push("-H".into());
        self.words.push(shell_quote(&format!("{name}: {value}")));
        self
    }

    /// `-H 'name: '"$VAR"`: a secret header taken from the environment.
    pub fn header_from_env(mut self, name: &str, var: &'static str) -> Curl {
        self.words.push("-H".into());
        self.words.push(format!(
            "{}{}",
            shell_quote(&format!("{name}: ")),
            env_ref(var)
        ));
        self
    }

    /// `-u 'user:'"$VAR"`: HTTP Basic auth with the password from the
    /// environment.
    pub fn basic_auth_from_env(mut self, user: &str, var: &'static str) -> Curl {
        self.words.push("-u".into());
        self.words.push(format!(
            "{}{}",
            shell_quote(&format!("{user}:")),
            env_ref(var)
        ));
        self
    }

    /// `--data-binary '<body>'`.
    pub fn body(mut self, body: &str) -> Curl {
        self.words.push("--data-binary".into());
        self.words.push(shell_quote(body));
        self
    }

    /// The whole line.
    pub fn line(&self) -> String {
        self.words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    /// The printed line, with `curl` replaced by `printf '%s\n'`, run by a
    /// real shell: each word must come back exactly as given, and nothing
    /// may run.
    #[test]
    fn hostile_values_paste_as_data() {
        let dir = std::env::temp_dir().join(format!("rf-trace-{}", std::process::id()));
        let marker = dir.join("pwned");
        let _ = std::fs::create_dir_all(&dir);
        let evil = format!(
            "x'$(touch {})'`touch {}`\"$HOME\"\\",
            marker.display(),
            marker.display()
        );
        let url = Url::parse(&format!("http://h/cgi-bin/post_manager?q={evil}")).unwrap();
        let line = Curl::post(&url)
            .header("User", &evil)
            .header_from_env("Password", "EAGLE_PASSWORD")
            .basic_auth_from_env(&evil, "EAGLE_INSTALL_CODE")
            .body(&format!("<x>{evil}\n</x>"))
            .line();
        let script = line.replacen("curl", "printf '%s\\n'", 1);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("EAGLE_PASSWORD", "pw")
            .env("EAGLE_INSTALL_CODE", "ic")
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{script}");
        let words: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\n')
            .map(str::to_string)
            .collect();
        let body = format!("<x>{evil}");
        let expected = [
            "-sS",
            "-X",
            "POST",
            url.as_str(),
            "-H",
            &format!("User: {evil}"),
            "-H",
            "Password: pw",
            "-u",
            &format!("{evil}:ic"),
            "--data-binary",
            &body,
            "</x>",
        ];
        assert_eq!(words, expected);
        assert!(!marker.exists(), "the line ran code: {script}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
