//! Ollama version strings, compared as versions (`0.9.6` < `0.12.3`, which a
//! string comparison gets wrong).

use std::cmp::Ordering;

/// A parsed version: numeric `major.minor.patch`, then its kind.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
pub struct Version {
    numbers: [u64; 3],
    kind: Kind,
}

/// Release candidates sort below the release; `git describe` builds
/// (`0.5.7-3-gabc1234`) just above it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Kind {
    PreRelease(u64),
    Release,
    Build,
}

impl Version {
    /// Parses `v0.12.3`, `0.12.3-rc1`, `0.5.7-3-gabc1234`; `None` if no number leads.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches('v');
        let (core, suffix) = match s.find(['-', '+']) {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, ""),
        };
        let mut numbers = [0u64; 3];
        let mut parts = core.split('.');
        for slot in numbers.iter_mut() {
            match parts.next() {
                Some(p) => *slot = p.parse().ok()?,
                None => break,
            }
        }
        let kind = if suffix.is_empty() {
            Kind::Release
        } else if suffix.starts_with(|c: char| c.is_ascii_digit()) {
            Kind::Build
        } else {
            let n = suffix
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or(0);
            Kind::PreRelease(n)
        };
        Some(Version { numbers, kind })
    }

    /// Whether this is a development build (`0.0.0`).
    pub fn is_dev(&self) -> bool {
        self.numbers == [0, 0, 0]
    }
}

/// The lowest of the given versions, ignoring unparseable ones and dev builds
/// (`0.0.0`) unless nothing else is left.
pub fn lowest<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let parsed: Vec<(Version, &str)> = versions
        .into_iter()
        .filter_map(|s| Version::parse(s).map(|v| (v, s)))
        .collect();
    let pick = |dev: bool| {
        parsed
            .iter()
            .filter(|(v, _)| v.is_dev() == dev)
            .min_by(|a, b| a.0.cmp(&b.0).then(Ordering::Equal))
            .map(|(_, s)| *s)
    };
    pick(false).or_else(|| pick(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_not_string_order() {
        assert_eq!(lowest(["0.12.3", "0.9.6"]), Some("0.9.6"));
        assert_eq!(lowest(["0.10.0", "0.9.10"]), Some("0.9.10"));
    }

    #[test]
    fn pre_releases_and_builds() {
        assert_eq!(lowest(["0.12.3", "0.12.3-rc1"]), Some("0.12.3-rc1"));
        assert_eq!(lowest(["0.5.7-3-gabc1234", "0.5.7"]), Some("0.5.7"));
        assert!(Version::parse("0.12.3-rc1") < Version::parse("0.12.3-rc2"));
    }

    #[test]
    fn dev_builds_only_when_alone() {
        assert_eq!(lowest(["0.0.0", "0.12.3"]), Some("0.12.3"));
        assert_eq!(lowest(["0.0.0"]), Some("0.0.0"));
        assert_eq!(lowest(["garbage"]), None);
    }
}
