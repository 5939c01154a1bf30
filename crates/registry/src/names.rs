//! Validation of user-supplied names and version references.

use crate::error::{RegistryError, Result};

/// Model and alias names: the contract's rule (`evergreen_proto::names`).
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    evergreen_proto::names::check_name(field, name).map_err(RegistryError::InvalidArgument)
}

/// Aliases follow the model-name rule and must not be all digits, so that
/// `name@3` can never be confused with version 3.
pub fn validate_alias(alias: &str) -> Result<()> {
    validate_name("alias", alias)?;
    if alias.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RegistryError::InvalidArgument(format!(
            "invalid alias {alias:?}: an alias must contain a non-digit (numbers name versions)"
        )));
    }
    Ok(())
}

/// Which version a caller means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Version(u64),
    Alias(String),
}

/// A parsed `VersionRef`: `model` may itself carry the selector as
/// `name@alias` or `name/3`; an explicit selector field wins over neither and
/// both at once is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSpec {
    pub model: String,
    pub selector: Selector,
}

impl VersionSpec {
    pub fn parse(model: &str, selector: Option<Selector>) -> Result<Self> {
        let (name, inline) = if let Some((name, alias)) = model.split_once('@') {
            (name, Some(Selector::Alias(alias.to_string())))
        } else if let Some((name, v)) = model.split_once('/') {
            let v = v.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                RegistryError::InvalidArgument(format!(
                    "invalid version reference {model:?}: expected name/N with N a positive integer"
                ))
            })?;
            (name, Some(Selector::Version(v)))
        } else {
            (model, None)
        };
        validate_name("model name", name)?;
        let selector = match (inline, selector) {
            (Some(_), Some(_)) => {
                return Err(RegistryError::InvalidArgument(format!(
                    "version reference {model:?} names its version twice: use either name@alias / name/N or the version/alias field"
                )))
            }
            (Some(s), None) | (None, Some(s)) => s,
            (None, None) => {
                return Err(RegistryError::InvalidArgument(format!(
                    "version reference {model:?} names no version: expected name@alias, name/N, or the version/alias field"
                )))
            }
        };
        match &selector {
            Selector::Version(0) => {
                return Err(RegistryError::InvalidArgument(
                    "version must be a positive integer, got 0".into(),
                ))
            }
            Selector::Alias(a) => validate_alias(a)?,
            Selector::Version(_) => {}
        }
        Ok(Self {
            model: name.to_string(),
            selector,
        })
    }
}

impl std::fmt::Display for VersionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            Selector::Version(v) => write!(f, "{}/{}", self.model, v),
            Selector::Alias(a) => write!(f, "{}@{}", self.model, a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["churn", "a", "A-1.b_c", &"x".repeat(128)] {
            validate_name("model name", ok).unwrap();
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "a@b", &"x".repeat(129), "é"] {
            let e = validate_name("model name", bad).unwrap_err().to_string();
            assert!(e.contains("model name"), "{e}");
        }
        assert!(validate_alias("123").is_err());
        validate_alias("prod-2").unwrap();
    }

    #[test]
    fn version_specs() {
        let s = VersionSpec::parse("churn@production", None).unwrap();
        assert_eq!(s.selector, Selector::Alias("production".into()));
        let s = VersionSpec::parse("churn/7", None).unwrap();
        assert_eq!(
            (s.model.as_str(), s.selector),
            ("churn", Selector::Version(7))
        );
        let s = VersionSpec::parse("churn", Some(Selector::Version(2))).unwrap();
        assert_eq!(s.to_string(), "churn/2");
        assert!(VersionSpec::parse("churn", None).is_err());
        assert!(VersionSpec::parse("churn/x", None).is_err());
        assert!(VersionSpec::parse("churn/0", None).is_err());
        assert!(VersionSpec::parse("churn@a", Some(Selector::Version(1))).is_err());
    }
}
