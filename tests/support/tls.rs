//! A throwaway certificate authority for TLS tests, made with the `openssl`
//! command at test time so no key material lives in the repository.
//!
//! [`TestCa::new`] writes a CA and one server certificate for `localhost`
//! and `127.0.0.1` into a temporary directory: the HTTPS server and the
//! TLS `redis-server` ([`super::RedisServer::start_secured`]) present it,
//! and clients trust [`TestCa::ca_pem`].

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a server certificate signed by it; deleted when dropped.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// Generates the CA and the server certificate (P-256, valid two days).
    /// Panics naming the step when `openssl` fails.
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir for certificates");
        let ca = TestCa { dir };
        std::fs::write(
            ca.path("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        ca.openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=rainforest test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        ca.openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        ca.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        ca
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (needed for TLS tests): {e}"));
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The CA certificate clients trust.
    pub fn ca_pem(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The server's certificate (signed by the CA).
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }

    /// The server's private key.
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
