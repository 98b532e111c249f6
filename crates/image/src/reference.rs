//! Image references with Docker's rules: `busybox` is
//! `docker.io/library/busybox:latest`, a first component with a dot, a colon
//! or `localhost` names a registry.

use std::fmt;

use oci_client::Reference;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    inner: Reference,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid reference format {text:?}: {reason}")]
pub struct BadReference {
    pub text: String,
    pub reason: String,
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<ImageRef, BadReference> {
        let bad = |reason: String| BadReference {
            text: text.to_string(),
            reason,
        };
        if text.bytes().any(|b| b.is_ascii_uppercase()) && !text.contains('@') && !text.contains(':') {
            return Err(bad("repository name must be lowercase".into()));
        }
        let inner: Reference = text.parse().map_err(|e: oci_client::ParseError| bad(e.to_string()))?;
        if let Some(digest) = inner.digest() {
            crate::digest::Digest::parse(digest).map_err(|e| bad(e.to_string()))?;
        }
        Ok(ImageRef { inner })
    }

    pub fn oci(&self) -> &Reference {
        &self.inner
    }

    /// The registry host as users write it (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The repository as Docker shows it: `busybox` for official Docker Hub
    /// images, `user/app` for other Hub images, `host:port/name` elsewhere.
    /// `library/` goes only before a single name, as Docker has it:
    /// `library/a/b` shown as `a/b` would name another repository.
    pub fn familiar_repository(&self) -> String {
        if self.registry() == "docker.io" {
            self.repository()
                .strip_prefix("library/")
                .filter(|name| !name.contains('/'))
                .unwrap_or(self.repository())
                .to_string()
        } else {
            format!("{}/{}", self.registry(), self.repository())
        }
    }

    /// `familiar_repository:tag`, the key under which a tag is stored.
    pub fn familiar_tagged(&self) -> Option<String> {
        self.tag().map(|tag| format!("{}:{tag}", self.familiar_repository()))
    }

    /// Whether the registry may be spoken to over plain HTTP: loopback
    /// registries, and those listed in `HULL_INSECURE_REGISTRIES`
    /// (comma-separated `host[:port]`), like Docker's insecure-registries.
    pub fn insecure_registry_allowed(&self) -> bool {
        let host = self.registry();
        let hostname = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if matches!(hostname, "localhost" | "127.0.0.1" | "[::1]") || hostname.starts_with("127.") {
            return true;
        }
        std::env::var("HULL_INSECURE_REGISTRIES")
            .map(|list| list.split(',').any(|entry| entry.trim() == host))
            .unwrap_or(false)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.familiar_repository())?;
        if let Some(tag) = self.tag() {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = self.digest() {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_reference_rules() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        assert_eq!(r.to_string(), "busybox:latest");
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "team/app", Some("v1"))
        );
        assert_eq!(r.familiar_tagged().unwrap(), "127.0.0.1:5000/team/app:v1");
        assert!(r.insecure_registry_allowed());
        let r = ImageRef::parse("user/app").unwrap();
        assert_eq!(r.to_string(), "user/app:latest");
        assert!(!r.insecure_registry_allowed());
        let pinned = format!("alpine@sha256:{}", "0".repeat(64));
        let r = ImageRef::parse(&pinned).unwrap();
        assert_eq!((r.tag(), r.digest().is_some()), (None, true));
        // Found by fuzzing: a nested official name kept its `library/`.
        let r = ImageRef::parse("docker.io/library/a/b").unwrap();
        assert_eq!(r.to_string(), "library/a/b:latest");
        assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
        for bad in ["", "Busybox", "a b", "x@sha256:00", "-x"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
