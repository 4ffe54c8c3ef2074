//! Image references in Docker's syntax: `[registry[:port]/]repo[:tag][@digest]`.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry name Docker Hub images use.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// The tag used when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Errors from parsing a reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Empty string.
    #[error("invalid reference format: empty")]
    Empty,
    /// The reference is longer than Docker allows.
    #[error("invalid reference format: repository name must not be longer than 255 characters")]
    TooLong,
    /// Upper-case letters in the repository path.
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    /// Some other syntax error.
    #[error("invalid reference format: {0:?}")]
    Invalid(String),
    /// The tag is malformed.
    #[error("invalid reference format: invalid tag {0:?}")]
    InvalidTag(String),
    /// The `@digest` part is malformed.
    #[error("invalid reference format: bad digest")]
    Digest(#[source] DigestError),
}

/// A fully-qualified image reference.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Reference {
    /// Registry host, with optional port: `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path inside the registry: `library/alpine`.
    pub repository: String,
    /// Tag, if given (a reference with neither tag nor digest gets `latest`).
    pub tag: Option<String>,
    /// Digest, if given.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference, applying Docker's defaults.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        s.parse()
    }

    /// `registry/repository` with no tag or digest: `docker.io/library/alpine`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name as Docker shows it: `alpine`, `user/app`, `127.0.0.1:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.registry == DOCKER_HUB {
            match self.repository.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            self.name()
        }
    }

    /// The host:port to talk to (Docker Hub's API lives on another host).
    pub fn endpoint(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest if there is one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// This reference with the digest dropped, as stored in the tag index (`name:tag`).
    /// `None` when the reference is by digest only.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{}", self.name(), t))
    }

    /// The `familiar_name:tag` or `familiar_name@digest` form Docker prints in status lines.
    pub fn familiar(&self) -> String {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => format!("{}@{}", self.familiar_name(), d),
            (Some(t), None) => format!("{}:{}", self.familiar_name(), t),
            (None, None) => format!("{}:{}", self.familiar_name(), DEFAULT_TAG),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether `input` names neither tag nor digest, so `latest` is implied (Docker then
/// prints `Using default tag: latest`).
pub fn uses_default_tag(input: &str) -> bool {
    !input.contains('@') && !input.rsplit('/').next().unwrap_or(input).contains(':')
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() > 512 {
            return Err(ReferenceError::TooLong);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(ReferenceError::Digest)?),
            ),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(ReferenceError::InvalidTag(t.chars().take(130).collect()));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if !valid_domain(&registry) {
            return Err(ReferenceError::Invalid(s.chars().take(200).collect()));
        }
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if path.len() > 255 {
            return Err(ReferenceError::TooLong);
        }
        if path.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(path));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(ReferenceError::Invalid(s.chars().take(200).collect()));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository: path,
            tag,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults() {
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r.endpoint(), "registry-1.docker.io");
        assert_eq!(r.familiar(), "alpine:latest");
        let r = Reference::parse("user/app:1.2").unwrap();
        assert_eq!(r.to_string(), "docker.io/user/app:1.2");
        assert_eq!(r.familiar_name(), "user/app");
        let r = Reference::parse("index.docker.io/library/busybox:1").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:1");
        assert_eq!(r.familiar_name(), "busybox");
    }

    #[test]
    fn registries_ports_digests() {
        let r = Reference::parse("127.0.0.1:5000/a/b:t").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("t"));
        let d = Digest::of(b"x");
        let r = Reference::parse(&format!("localhost/app@{d}")).unwrap();
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), d.to_string());
        let r = Reference::parse(&format!("localhost:5000/app:v1@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_reference(), d.to_string());
        assert_eq!(
            Reference::parse("localhost:5000/app")
                .unwrap()
                .tag
                .as_deref(),
            Some("latest")
        );
    }

    #[test]
    fn default_tag_detection() {
        assert!(uses_default_tag("alpine"));
        assert!(uses_default_tag("localhost:5000/app"));
        assert!(!uses_default_tag("alpine:3"));
        assert!(!uses_default_tag("localhost:5000/app:v1"));
        assert!(!uses_default_tag(&format!("alpine@{}", Digest::of(b""))));
    }

    #[test]
    fn rejects_bad() {
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "alpine:-x",
            "a//b",
            "a/../b",
            "-a",
            "alpine@sha256:xyz",
            "host:port/x",
            "a b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(Reference::parse(&"a".repeat(300)).is_err());
    }
}
