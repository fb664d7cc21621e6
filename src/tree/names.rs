//! Names users give: container names, image references, snapshot keys.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A container name, by Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 bytes.
pub fn validate_container_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "container name",
            name,
            "use letters, digits, '_', '.' and '-', starting with a letter or digit, at most 128 characters",
        ))
    }
}

/// A snapshot key as containerd sends them: any non-empty UTF-8 string
/// without NUL or newline, at most 4096 bytes.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 4096 || key.contains(['\0', '\n']) {
        return Err(Error::invalid(
            "snapshot key",
            key,
            "keys are non-empty, at most 4096 bytes, without NUL or newline",
        ));
    }
    Ok(())
}

/// `NAME[:TAG]`, the tag `latest` when omitted. Names are lower-case path
/// components (`[a-z0-9]+([._-][a-z0-9]+)*`) joined by `/`, optionally after a
/// registry host; tags are `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImageRef {
    pub name: String,
    pub tag: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("image reference", s, why);
        // The tag follows the last ':' that is after the last '/' (a registry port is not a tag).
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[last_slash..].rfind(':') {
            Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
            None => (s, "latest"),
        };
        if name.is_empty() || name.len() > 255 {
            return Err(bad("the name is empty or longer than 255 characters"));
        }
        let (host, path) = match name.split_once('/') {
            Some((h, p)) if h.contains(['.', ':']) || h == "localhost" => (Some(h), p),
            _ => (None, name),
        };
        if let Some(h) = host
            && (h.starts_with(['.', '-', ':'])
                || h.contains("..")
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)))
        {
            return Err(bad(
                "the registry host has characters other than letters, digits, '.', '-' and ':'",
            ));
        }
        for comp in path.split('/') {
            let ok = !comp.is_empty()
                && comp
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && comp.starts_with(|c: char| c.is_ascii_alphanumeric())
                && comp.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                return Err(bad(
                    "each name component is lower-case letters and digits, separated by '.', '_' or '-'",
                ));
            }
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !tag_ok {
            return Err(bad(
                "a tag is letters, digits, '_', '.' and '-', at most 128 characters",
            ));
        }
        Ok(ImageRef {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names() {
        for ok in ["web", "web-1", "a.b_c", "0abc"] {
            validate_container_name(ok).unwrap();
        }
        for bad in ["", "-x", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(validate_container_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_refs() {
        assert_eq!(ImageRef::parse("app").unwrap().to_string(), "app:latest");
        assert_eq!(ImageRef::parse("app:v1.2").unwrap().to_string(), "app:v1.2");
        assert_eq!(
            ImageRef::parse("localhost:5000/team/app")
                .unwrap()
                .to_string(),
            "localhost:5000/team/app:latest"
        );
        for bad in ["", "App", "app:", "app:-x", "a//b", "app_:1", "../x", "a b"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys() {
        validate_key("default/3/sha256:abc").unwrap();
        assert!(validate_key("").is_err());
        assert!(validate_key("a\0b").is_err());
    }
}
