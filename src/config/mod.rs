//! Configuration: the TOML file model turned into a validated [`Config`].
//!
//! Two layers, as in river and sozu: [`file::FileConfig`] mirrors the file (serde, unknown
//! keys refused), and `Config::try_from(Source)` checks every value and fills the defaults
//! (the `DEFAULT_*` constants of [`model`]). [`Config::load`] resolves upstream names, once,
//! at start; [`Config::check`] (what `check-config` runs) only checks their syntax, so its
//! answer does not depend on the machine it runs on. The rest of the code only ever sees a [`Config`].
//! Every error names the file and the key path, e.g.
//! `sluice.toml: services[1].canary_weight: must be between 0 and 100 (got 150)`.

pub mod docker;
pub mod file;
pub mod model;
pub mod notify;
pub mod tls;
pub mod validate;

use std::path::{Path, PathBuf};

use file::FileConfig;

pub use model::*;
pub use validate::service::{discovered_service, parse_upstreams, validate_name};

/// One problem found in a file: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `services[1].cutback.min_requests`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has a key of the wrong type or an unknown key.
    #[error("{file}: {}{message}{}", if path.is_empty() { String::new() } else { format!("{path}: ") }, line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        /// The file.
        file: String,
        /// Key path where parsing stopped ("" at the top level).
        path: String,
        /// The parser's message.
        message: String,
        /// Line number, when known.
        line: Option<usize>,
    },
    /// The file parsed but some values are not acceptable.
    #[error("{}", render_problems(file, problems))]
    Invalid {
        /// The file.
        file: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The key paths named by this error (empty for I/O errors).
    pub fn paths(&self) -> Vec<String> {
        match self {
            ConfigError::Io { .. } => vec![],
            ConfigError::Parse { path, .. } => vec![path.clone()],
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(|p| p.path.clone()).collect()
            }
        }
    }
}

fn render_problems(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{file}: {}: {}", p.path, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether validation resolves upstream names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Resolve each name once (start, reload): the config is about to serve.
    Resolve,
    /// Check `host:port` syntax only (`check-config`): names keep `0.0.0.0:port`.
    SyntaxOnly,
}

/// What a config is made from: the text, the file it came from (for messages), the directory
/// relative paths start from, and whether names are resolved.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// TOML text.
    pub text: &'a str,
    /// File name, used in messages.
    pub file: &'a str,
    /// Relative paths (scripts, volumes, spools) are relative to this.
    pub base: &'a Path,
    /// Resolve upstream names or only check them.
    pub lookup: Lookup,
}

impl TryFrom<Source<'_>> for Config {
    type Error = ConfigError;

    fn try_from(source: Source<'_>) -> Result<Config, ConfigError> {
        let model = parse_model(source.text, source.file)?;
        validate::validate(model, source.file, source.base, source.lookup)
    }
}

impl Config {
    /// Reads, parses and validates a file, resolving upstream names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::read(path, Lookup::Resolve)
    }

    /// Reads, parses and validates a file without resolving names (`check-config`).
    pub fn check(path: &Path) -> Result<Config, ConfigError> {
        Config::read(path, Lookup::SyntaxOnly)
    }

    fn read(path: &Path, lookup: Lookup) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")));
        let mut config = Config::try_from(Source {
            text: &text,
            file: &file,
            base: &base,
            lookup,
        })?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates TOML text; `file` is only used in messages; relative paths are
    /// relative to the current directory.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Config::parse_in(text, file, &base)
    }

    /// Same, with relative paths resolved against `base`.
    pub fn parse_in(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        Config::try_from(Source {
            text,
            file,
            base,
            lookup: Lookup::Resolve,
        })
    }
}

fn parse_model(text: &str, file: &str) -> Result<FileConfig, ConfigError> {
    let parse_err = |path: String, e: &toml::de::Error| ConfigError::Parse {
        file: file.to_string(),
        path,
        message: e.message().trim().to_string(),
        line: e.span().map(|s| line_of(text, s.start)),
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| parse_err(String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        parse_err(path, e.inner())
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|s| s.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests;
