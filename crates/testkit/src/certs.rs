//! Certificates for tests, made with the openssl CLI: a CA of the test's
//! own (`ca.pem`) and certificates it signs (`NAME-cert.pem`,
//! `NAME-key.pem`): for a host, one naming its IP address, good as a
//! server's and as a client's (as hullds moving containers use them).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

pub struct Certs {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output()?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A new P-256 key and a request for a certificate of `name`.
fn key_and_request(dir: &Path, name: &str, subject: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    )
}

impl Certs {
    /// A CA in `dir` (made if missing).
    pub fn new(dir: &Path) -> Result<Certs> {
        std::fs::create_dir_all(dir)?;
        key_and_request(dir, "ca", "/CN=hull test CA")?;
        std::fs::write(
            dir.join("ca.ext"),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign\n",
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "ca.csr",
                "-signkey",
                "ca-key.pem",
                "-days",
                "2",
                "-extfile",
                "ca.ext",
                "-out",
                "ca.pem",
            ],
        )?;
        Ok(Certs { dir: dir.to_path_buf() })
    }

    /// A certificate for host `name` at `ip`, signed by the CA.
    pub fn host(&self, name: &str, ip: &str) -> Result<()> {
        self.issue(
            name,
            &format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )
    }

    /// A certificate for `name` with `extensions` (openssl extfile lines),
    /// signed by the CA.
    pub fn issue(&self, name: &str, extensions: &str) -> Result<()> {
        key_and_request(&self.dir, name, &format!("/CN={name}"))?;
        std::fs::write(self.dir.join(format!("{name}.ext")), extensions)?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}-cert.pem"),
            ],
        )
    }

    /// hulld's arguments for host `name`'s certificate and the CA.
    pub fn hulld_args(&self, name: &str) -> Vec<String> {
        let path = |file: String| self.dir.join(file).display().to_string();
        vec![
            "--tlscacert".into(),
            path("ca.pem".into()),
            "--tlscert".into(),
            path(format!("{name}-cert.pem")),
            "--tlskey".into(),
            path(format!("{name}-key.pem")),
        ]
    }
}
