//! The error that exits with code 2: bad usage or configuration (a
//! malformed profile, an unknown op, a bad endpoint, wrong credentials),
//! with a message for the user. Every other error of a command exits 1 or
//! as the command says.

/// An error that exits with code 2 (usage or configuration).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A [`ConfigError`] as an `anyhow::Error`.
pub fn config_err(msg: impl Into<String>) -> anyhow::Error {
    ConfigError(msg.into()).into()
}
