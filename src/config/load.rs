//! Loading: the embedded defaults, then the file, then `CONFAB_<SECTION>_<KEY>`
//! variables, each layer type-checked against the defaults before validation.

use super::raw::Raw;
use super::*;

impl Config {
    /// Defaults, then `path` (if any), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = match path {
            Some(p) => Some((
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
            )),
            None => None,
        };
        Self::from_layers(file.as_ref().map(|(p, s)| (p.as_str(), s.as_str())), &env)
    }

    /// The embedded defaults alone (tests start from this and adjust fields).
    // The embedded file is compiled in and covered by tests: it cannot fail at run time.
    #[allow(clippy::expect_used)]
    pub fn defaults() -> Config {
        Self::from_layers(None, &[]).expect("embedded config/confab.toml is valid")
    }

    pub fn from_layers(
        file: Option<(&str, &str)>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            DEFAULT_TOML
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: "<embedded>".into(),
                    msg: e.to_string(),
                })?;
        if let Some((path, text)) = file {
            let over: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Syntax {
                        path: path.into(),
                        msg: e.message().to_string(),
                    })?;
            merge(&mut table, over);
        }
        apply_env(&mut table, env)?;
        check_types(&mut table)?;
        let raw: Raw = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Shape(e.message().to_string()))?;
        raw.validate()
    }
}

/// Deep-merge `over` into `base` (tables merge, everything else replaces).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("CONFAB_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS.iter().find(|s| {
            rest.len() > s.len() && rest.starts_with(*s) && rest.as_bytes()[s.len()] == b'_'
        }) else {
            continue;
        };
        let key = &rest[section.len() + 1..];
        // Read the value as TOML (numbers, booleans, arrays); anything else is a string.
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let sec = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match sec {
            toml::Value::Table(t) => {
                // A string key whose default is a string stays a string even if it looks
                // like a number (e.g. CONFAB_AUTH_JWT_SECRET=123456).
                let v = match (t.get(key), parsed) {
                    (Some(toml::Value::String(_)), p) if !p.is_str() => {
                        toml::Value::String(value.clone())
                    }
                    (_, p) => p,
                };
                t.insert(key.to_string(), v);
            }
            _ => return Err(ConfigError::Shape(format!("[{section}] is not a table"))),
        }
    }
    Ok(())
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// Every documented key has a default of the right type: compare against it, so that a
/// mistyped value is reported with its full key name (serde's message would not say).
/// Integer keys read as u64 (durations and file-sized byte counts); the rest are u32.
fn is_u64_key(key: &str) -> bool {
    key.ends_with("_ms")
        || key.ends_with("_s")
        || matches!(key, "max_file_bytes" | "download_memory_bytes")
}

fn check_types(table: &mut toml::Table) -> Result<(), ConfigError> {
    let defaults: toml::Table = DEFAULT_TOML
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Shape(e.to_string()))?;
    for section in SECTIONS {
        let Some(toml::Value::Table(dt)) = defaults.get(*section) else {
            continue;
        };
        match table.get_mut(*section) {
            Some(toml::Value::Table(t)) => {
                for (key, v) in t.iter_mut() {
                    let Some(d) = dt.get(key) else {
                        return Err(ConfigError::Shape(format!("unknown key `{section}.{key}`")));
                    };
                    match (d, &*v) {
                        (toml::Value::Float(_), toml::Value::Integer(i)) => {
                            *v = toml::Value::Float(*i as f64)
                        }
                        // Every integer key is a count, a size or a duration: unsigned, and
                        // 32-bit unless it is a duration or a file-sized byte count. Checked
                        // here so the message names the key (serde's does not).
                        (toml::Value::Integer(_), toml::Value::Integer(i)) if *i < 0 => {
                            return Err(ConfigError::Shape(format!(
                                "key `{section}.{key}` must not be negative (got {i})"
                            )))
                        }
                        (toml::Value::Integer(_), toml::Value::Integer(i))
                            if *i > i64::from(u32::MAX) && !is_u64_key(key) =>
                        {
                            return Err(ConfigError::Shape(format!(
                                "key `{section}.{key}` must be at most {} (got {i})",
                                u32::MAX
                            )))
                        }
                        (d, v) if std::mem::discriminant(d) == std::mem::discriminant(v) => {}
                        (d, v) => {
                            return Err(ConfigError::Shape(format!(
                                "key `{section}.{key}` must be {}, not {} ({v})",
                                type_name(d),
                                type_name(v)
                            )))
                        }
                    }
                }
            }
            Some(other) => {
                return Err(ConfigError::Shape(format!(
                    "`{section}` must be a table, not {}",
                    type_name(other)
                )))
            }
            None => {}
        }
    }
    Ok(())
}
