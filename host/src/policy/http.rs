//! HTTP request policy: the methods allowed and the path prefixes allowed,
//! below the connection's base URL.
//!
//! Paths are compared segment by segment, each segment percent-decoded, as
//! a server splits and decodes them: `/api/users` never allows
//! `/api/users-evil`, and `/api/%75sers/x` is `/api/users/x`. A segment
//! holding an encoded `/` (`%2F`) stays one segment, as it does for the
//! server. The capability matches the path after URL normalisation (dot
//! segments resolved, `..` refused before that).

use std::fmt;

use serde::Deserialize;

/// The methods the WIT `http` interface offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    const ALL: [(Self, &'static str); 6] = [
        (Self::Get, "GET"),
        (Self::Head, "HEAD"),
        (Self::Post, "POST"),
        (Self::Put, "PUT"),
        (Self::Patch, "PATCH"),
        (Self::Delete, "DELETE"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(method, _)| *method == self)
            .map_or("?", |(_, name)| name)
    }
}

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::ALL
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(&text))
            .map(|(method, _)| *method)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "method {text:?} is none of GET, HEAD, POST, PUT, PATCH, DELETE"
                ))
            })
    }
}

/// A path prefix: `/api/vhosts` allows that path and every path below it;
/// with a trailing slash, `/api/vhosts/`, only the paths below it (not the
/// collection itself: `GET /api/users` lists every user's password hash,
/// `/api/users/` allows only single users). `/` allows every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix {
    text: String,
    segments: Vec<String>,
    /// Only paths with at least one more non-empty segment.
    below_only: bool,
}

impl PathPrefix {
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path prefix {text:?} must start with '/'"));
        };
        if text.contains(['?', '#', '\\']) || text.chars().any(char::is_control) {
            return Err(format!(
                "path prefix {text:?} must be a plain path (no query, fragment, backslash or control character)"
            ));
        }
        let below_only = !rest.is_empty() && rest.ends_with('/');
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let segments: Vec<String> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').map(decode).collect()
        };
        if segments.iter().any(|segment| segment.is_empty()) {
            return Err(format!("path prefix {text:?} has an empty segment ('//')"));
        }
        if segments
            .iter()
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(format!("path prefix {text:?} has '.' or '..' segments"));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
            below_only,
        })
    }

    /// Whether `path` (absolute, normalised, no query) is this prefix or
    /// below it.
    fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let segments: Vec<String> = rest.split('/').map(decode).collect();
        let count = self.segments.len();
        if segments.len() < count || segments[..count] != self.segments[..] {
            return false;
        }
        !self.below_only || segments.get(count).is_some_and(|next| !next.is_empty())
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for PathPrefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Why a request is refused: a method not in `methods`, or a path below
/// none of `paths` (each checked only when the grant sets it).
pub fn check(
    methods: Option<&[HttpMethod]>,
    paths: Option<&[PathPrefix]>,
    method: HttpMethod,
    path: &str,
) -> Result<(), String> {
    if let Some(methods) = methods
        && !methods.contains(&method)
    {
        return Err(format!(
            "method {} is not among the methods this grant allows in broker.toml",
            method.name()
        ));
    }
    if let Some(paths) = paths
        && !paths.iter().any(|prefix| prefix.matches(path))
    {
        return Err(format!(
            "{} {path} is below none of the paths this grant allows in broker.toml",
            method.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(texts: &[&str]) -> Vec<PathPrefix> {
        texts
            .iter()
            .map(|text| PathPrefix::parse(text).expect("valid"))
            .collect()
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let table: &[(&str, &str, bool)] = &[
            ("/api/vhosts/", "/api/vhosts/inst_1", true),
            ("/api/vhosts/", "/api/vhosts/%2F", true),
            ("/api/vhosts/", "/api/vhosts/a/b", true),
            ("/api/vhosts/", "/api/vhosts", false),
            ("/api/vhosts/", "/api/vhosts/", false),
            ("/api/vhosts/", "/api/vhosts-evil/x", false),
            ("/api/vhosts/", "/api/vhostsx", false),
            ("/api/vhosts/", "/api//vhosts/x", false),
            ("/api/vhosts/", "/api/vhosts%2Fx", false),
            ("/api/vhosts/", "/API/vhosts/x", false),
            // Encoded letters are the same segment for the server.
            ("/api/users/", "/api/%75sers/u_1", true),
            ("/api/users", "/api/users", true),
            ("/api/users", "/api/users/u_1", true),
            ("/api/users", "/api/users-evil", false),
            ("/api/users", "/api", false),
            ("/", "/anything/at/all", true),
            ("/", "/", true),
        ];
        for (prefix, path, expected) in table {
            let prefix = PathPrefix::parse(prefix).expect("valid");
            assert_eq!(prefix.matches(path), *expected, "{prefix} vs {path}");
        }
    }

    #[test]
    fn methods_and_paths_are_both_required() {
        let methods = [HttpMethod::Put, HttpMethod::Delete];
        let paths = prefixes(&["/api/vhosts/", "/api/users/"]);
        let check = |method, path| check(Some(&methods), Some(&paths), method, path);
        check(HttpMethod::Put, "/api/users/u_1").expect("allowed");
        check(HttpMethod::Delete, "/api/vhosts/inst_1").expect("allowed");
        let error = check(HttpMethod::Get, "/api/users/u_1").expect_err("GET");
        assert!(error.contains("method GET"), "{error}");
        let error = check(HttpMethod::Put, "/api/users").expect_err("the collection");
        assert!(error.contains("PUT /api/users is below none"), "{error}");
        assert!(check(HttpMethod::Put, "/api/definitions").is_err());
        // Unset keys restrict nothing.
        super::check(None, None, HttpMethod::Get, "/api/users").expect("no policy");
        super::check(None, Some(&paths), HttpMethod::Get, "/api/users/x").expect("any method");
    }

    #[test]
    fn prefixes_and_methods_parse() {
        for bad in [
            "api/",
            "/api//x",
            "/api/../x",
            "/api/./x",
            "/api?x",
            "/a\\b",
            "",
        ] {
            assert!(PathPrefix::parse(bad).is_err(), "{bad:?}");
        }
        let method: HttpMethod = serde_json::from_str("\"delete\"").expect("valid");
        assert_eq!(method, HttpMethod::Delete);
        assert!(serde_json::from_str::<HttpMethod>("\"TRACE\"").is_err());
    }
}
