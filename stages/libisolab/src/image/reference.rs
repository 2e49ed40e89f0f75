//! Image references: `alpine:3.19`, `localhost:5000/team/app:v1`, `app@sha256:…`.
//!
//! What `run`, `tag`, `save` and friends take to name an image, parsed with docker's grammar
//! (distribution's `reference/regexp.go`, which `docker` and `skopeo` share):
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ registry "/" ] component ( "/" component )*
//! registry   := host [ ":" port ]             the first part, if it has '.' or ':' or is localhost
//! component  := [a-z0-9]+ ( separator [a-z0-9]+ )*
//! separator  := "." | "_" | "__" | "-"+
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := "sha256:" 64 lowercase hex digits
//! ```
//!
//! Unlike docker, a short name is not rewritten to `docker.io/library/…`: the name a user typed
//! is the name `index.json` keeps. The other way round, `docker.io/library/busybox` (what docker
//! and skopeo write into their archives) is read as `busybox`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The tag a reference without one means, as docker decides.
const DEFAULT_TAG: &str = "latest";

/// Distribution's limit on a name (registry and repository) in characters.
const NAME_MAX: usize = 255;

/// An image reference, as parsed from `[registry[:port]/]repo/path[:tag][@sha256:hex]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `localhost:5000`, `ghcr.io`; `None` for a name without one.
    pub registry: Option<String>,
    /// `team/app`: one or more lowercase components joined by `/`.
    pub repository: String,
    /// `v1`; `None` means `latest` ([`Reference::tag_or_latest`]).
    pub tag: Option<String>,
    /// `@sha256:…`: names the manifest itself, whatever the tag says now.
    pub digest: Option<Digest>,
}

impl Reference {
    /// The tag, or `latest` when none was given (docker's default).
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// `repo:tag`, with the registry in front if there is one, and `latest` for a reference
    /// without a tag: the value stored in `index.json`'s `org.opencontainers.image.ref.name`
    /// annotation. The digest is not part of it: a tag names whatever manifest it points at.
    pub fn name(&self) -> String {
        format!("{}:{}", self.full_repository(), self.tag_or_latest())
    }

    /// `registry/repository`, or `repository` alone.
    fn full_repository(&self) -> String {
        match &self.registry {
            Some(registry) => format!("{registry}/{}", self.repository),
            None => self.repository.clone(),
        }
    }
}

impl fmt::Display for Reference {
    /// Writes back what was parsed: `[registry/]repository[:tag][@digest]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full_repository())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(text: &str) -> Result<Reference> {
        let refuse = |what: String| {
            Error::Invalid(format!(
                "image reference {text:?}: {what} (a good one looks like alpine:3.19, \
                 localhost:5000/team/app:v1 or app@sha256:<64 hex digits>)"
            ))
        };
        if text.is_empty() {
            return Err(refuse("is empty".into()));
        }

        // The digest comes last and a name never contains '@', so the first '@' splits it off.
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest.parse::<Digest>().map_err(|error| refuse(error.to_string()))?;
                (rest, Some(digest))
            }
            None => (text, None),
        };

        // A ':' after the last '/' starts the tag; one before it is a registry's port
        // (`localhost:5000/app` has no tag).
        let last_slash = rest.rfind('/').map_or(0, |index| index + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            None => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(refuse)?;
        }
        if name.is_empty() {
            return Err(refuse("has no repository name before the tag".into()));
        }
        if name.len() > NAME_MAX {
            return Err(refuse(format!("name is longer than {NAME_MAX} characters")));
        }

        // Docker's rule for the registry: the first part is one when there is more than one
        // part and it looks like a host (a dot, a port) or is `localhost`.
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                check_registry(first).map_err(refuse)?;
                (Some(first.to_string()), rest)
            }
            _ => (None, name),
        };
        for component in repository.split('/') {
            check_component(component).map_err(refuse)?;
        }
        // Docker Hub's own spelling of a short name (`docker.io/library/busybox`, what docker
        // and skopeo write in their archives) is the short name: `busybox`.
        let (registry, repository) = match registry.as_deref() {
            Some("docker.io" | "index.docker.io") => {
                (None, repository.strip_prefix("library/").unwrap_or(repository))
            }
            _ => (registry, repository),
        };

        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let Some(first) = tag.chars().next() else {
        return Err("has an empty tag after ':'".into());
    };
    if !word(first) {
        return Err(format!("tag {tag:?} must start with a letter, digit or '_'"));
    }
    if tag.len() > 128 {
        return Err(format!("tag {tag:?} is longer than 128 characters"));
    }
    if let Some(bad) = tag.chars().find(|&c| !(word(c) || c == '.' || c == '-')) {
        return Err(format!("tag {tag:?} has {bad:?} (letters, digits, '_', '.' and '-' only)"));
    }
    Ok(())
}

/// A path component: lowercase letters and digits, separated by one `.`, one `_`, `__` or
/// any number of `-`, starting and ending with a letter or digit.
fn check_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("has an empty path component (two '/' in a row, or one at an end)".into());
    }
    if component.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository name {component:?} must be lowercase"));
    }
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if let Some(bad) = component.chars().find(|&c| !(alphanumeric(c) || "._-".contains(c))) {
        return Err(format!(
            "repository name {component:?} has {bad:?} (lowercase letters, digits and \
             separators '.', '_', '__', '-' only)"
        ));
    }
    let bytes = component.as_bytes();
    if !alphanumeric(bytes[0] as char) || !alphanumeric(bytes[bytes.len() - 1] as char) {
        return Err(format!(
            "repository name {component:?} must start and end with a letter or digit"
        ));
    }
    // Runs of separators: only "__" and dashes may repeat, and no two kinds mix.
    for run in component.split(alphanumeric).filter(|run| !run.is_empty()) {
        let fine = matches!(run, "." | "_" | "__") || run.chars().all(|c| c == '-');
        if !fine {
            return Err(format!(
                "repository name {component:?} has the separator {run:?} (one '.', one '_', \
                 '__' or dashes)"
            ));
        }
    }
    Ok(())
}

/// `host[:port]`: host parts of letters, digits and inner dashes joined by dots, a numeric
/// port. (Docker also takes `[ipv6]`; isolab, which never dials a registry, does not.)
fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let part_ok = |part: &str| {
        !part.is_empty()
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    };
    if !host.split('.').all(part_ok) {
        return Err(format!("registry {registry:?} is not a host name"));
    }
    if let Some(port) = port {
        if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("registry {registry:?} has a port that is not a number"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Reference {
        text.parse().unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn good_references_parse_into_their_parts() {
        let digest = Digest::of(b"manifest");
        let table: &[(&str, Option<&str>, &str, Option<&str>)] = &[
            ("alpine", None, "alpine", None),
            ("alpine:3.19", None, "alpine", Some("3.19")),
            ("team/app:v1", None, "team/app", Some("v1")),
            ("localhost/app", Some("localhost"), "app", None),
            ("localhost:5000/team/app:v1", Some("localhost:5000"), "team/app", Some("v1")),
            (
                "ghcr.io/owner/my_app__x.y-z--w:Tag_1.0-rc",
                Some("ghcr.io"),
                "owner/my_app__x.y-z--w",
                Some("Tag_1.0-rc"),
            ),
            // A single part with a ':' is a repository and a tag, as in docker.
            ("localhost:5000", None, "localhost", Some("5000")),
        ];
        for &(text, registry, repository, tag) in table {
            let reference = parse(text);
            assert_eq!(reference.registry.as_deref(), registry, "{text}");
            assert_eq!(reference.repository, repository, "{text}");
            assert_eq!(reference.tag.as_deref(), tag, "{text}");
            assert_eq!(reference.digest, None, "{text}");
            assert_eq!(reference.to_string(), text, "round trip");
        }

        let text = format!("localhost:5000/app:v2@{digest}");
        let reference = parse(&text);
        assert_eq!(reference.digest, Some(digest));
        assert_eq!(reference.tag.as_deref(), Some("v2"));
        assert_eq!(reference.to_string(), text);
        let by_digest = parse(&format!("app@{digest}"));
        assert_eq!((by_digest.tag.as_deref(), by_digest.digest), (None, Some(digest)));
    }

    #[test]
    fn name_is_what_index_json_keeps() {
        assert_eq!(parse("alpine").name(), "alpine:latest");
        assert_eq!(parse("alpine").tag_or_latest(), "latest");
        assert_eq!(parse("localhost:5000/team/app:v1").name(), "localhost:5000/team/app:v1");
        let digest = Digest::of(b"manifest");
        assert_eq!(parse(&format!("app:v1@{digest}")).name(), "app:v1");
    }

    #[test]
    fn malformed_references_are_refused_saying_why() {
        for (text, says) in [
            ("", "is empty"),
            ("UPPER:tag", "must be lowercase"),
            ("a:", "empty tag"),
            (":tag", "no repository name"),
            ("a//b", "empty path component"),
            ("a/", "empty path component"),
            ("a@sha256:short", "has 5 hex digits, not 64"),
            ("a@md5:abc", "not sha256"),
            ("a:-tag", "must start with a letter, digit or '_'"),
            ("a:t/g", "port that is not a number"),
            ("app!:v1", "has '!'"),
            ("-app", "must start and end"),
            ("a..b", "separator \"..\""),
            ("a___b", "separator \"___\""),
            ("a._b", "separator \"._\""),
            ("local_host:5000/app", "not a host name"),
            ("localhost:50a0/app", "port that is not a number"),
            ("my-.registry.io/app", "not a host name"),
        ] {
            let error = match text.parse::<Reference>() {
                Ok(reference) => panic!("{text:?} parsed as {reference:?}"),
                Err(error) => error.to_string(),
            };
            assert!(error.contains(says), "{text:?}: {error}");
            assert!(error.contains("a good one looks like alpine:3.19"), "{error}");
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(long_tag.parse::<Reference>().unwrap_err().to_string().contains("longer than 128"));
    }
}
