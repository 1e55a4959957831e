//! Placeholder: being written.
use super::Config;
use std::path::Path;

/// Every problem found in a config file.
#[derive(Debug)]
pub struct ConfigError {
    pub errors: Vec<String>,
}

pub fn load(_path: &Path) -> Result<Config, ConfigError> {
    Err(ConfigError {
        errors: vec!["not implemented".into()],
    })
}

pub fn load_str(
    _text: &str,
    _source: &Path,
    _env: &std::collections::HashMap<String, String>,
) -> Result<Config, ConfigError> {
    Err(ConfigError {
        errors: vec!["not implemented".into()],
    })
}
