//! How the layers of the configuration go onto the embedded defaults: a file's table merged
//! key by key (unknown keys and values of the wrong type refused, naming the file, the key
//! and what it expects), then the `FLUXGATE_<SECTION>_<KEY>` variables (an unknown one refused
//! by name, with the nearest real one).

use super::ConfigError;

/// Overlays `over` on `base`, refusing keys `base` does not have.
pub(super) fn merge(base: &mut toml::Table, over: toml::Table, prefix: &str, source: &str) -> Result<(), ConfigError> {
    for (k, v) in over {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (None, _) => {
                return Err(ConfigError::UnknownKey {
                    key: path,
                    source_name: source.to_string(),
                })
            }
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o, &path, source)?,
            (Some(toml::Value::Table(_)), _) => {
                return Err(ConfigError::Parse {
                    path: source.to_string(),
                    msg: format!("`{path}` must be a table"),
                })
            }
            (Some(slot), v) => {
                same_type(slot, &v).map_err(|expected| ConfigError::Type {
                    source_name: source.to_string(),
                    key: path.clone(),
                    expected,
                    found: shown(&v),
                })?;
                *slot = v
            }
        }
    }
    Ok(())
}

/// `Ok` when `given` may replace `default` (same TOML type; a list holds strings); `Err`
/// says what was expected, with the default as an example.
fn same_type(default: &toml::Value, given: &toml::Value) -> Result<(), String> {
    use toml::Value as V;
    let ok = match (default, given) {
        (V::String(_), V::String(_)) | (V::Integer(_), V::Integer(_)) | (V::Boolean(_), V::Boolean(_)) => true,
        (V::Float(_), V::Float(_) | V::Integer(_)) => true,
        (V::Array(_), V::Array(items)) => items.iter().all(|i| i.is_str()),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(match default {
        V::String(s) => format!("a string (like {})", toml::Value::String(s.clone())),
        V::Integer(i) => format!("an integer (like {i})"),
        V::Float(f) => format!("a number (like {f})"),
        V::Boolean(_) => "true or false".to_string(),
        V::Array(_) => "a list of strings (like [\"a\", \"b\"])".to_string(),
        other => format!("a {}", other.type_str()),
    })
}

/// A given value as an error message shows it.
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::Array(_) => format!("the list {v}"),
        toml::Value::Table(_) => "a table".to_string(),
        other => format!("{} {other}", other.type_str()),
    }
}

/// `FLUXGATE_` variables that are not configuration keys but are read elsewhere: the CLI's
/// server and config file, and the test suite's (a server started by a test inherits them).
const OTHER_VARS: &[&str] = &[
    "FLUXGATE_URL",
    "FLUXGATE_CLI_CONFIG",
    "FLUXGATE_TEST_DATABASE_URL",
    "FLUXGATE_REQUIRE_PEERS",
    "FLUXGATE_SCREENSHOTS",
    "FLUXGATE_PAHO_DIR",
    "FLUXGATE_REQUIRE_PAHO",
    "FLUXGATE_BENCH_ROLE",
    "FLUXGATE_BENCH_SPEC",
    "FLUXGATE_BENCH_ADDR",
];

/// Every `FLUXGATE_…` name a configuration key is read from.
fn env_names(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let var = format!("{prefix}_{}", k.to_ascii_uppercase());
        match v {
            toml::Value::Table(t) => env_names(t, &var, out),
            _ => out.push(var),
        }
    }
}

/// Refuses a `FLUXGATE_` variable that names no key (a typo would otherwise be ignored),
/// suggesting the nearest name.
pub(super) fn check_env_names(
    table: &toml::Table,
    env: &std::collections::HashMap<String, String>,
) -> Result<(), ConfigError> {
    let mut known = Vec::new();
    env_names(table, "FLUXGATE", &mut known);
    let mut unknown: Vec<&String> = env
        .keys()
        .filter(|k| !known.contains(k) && !OTHER_VARS.contains(&k.as_str()))
        .collect();
    unknown.sort();
    let Some(var) = unknown.first() else { return Ok(()) };
    let nearest = known
        .iter()
        .map(|k| (edit_distance(k, var), k))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_else(|| " (`fluxgate config default` lists the keys; FLUXGATE_SECTION_KEY sets one)".into());
    Err(ConfigError::UnknownEnv {
        var: var.to_string(),
        hint: nearest,
    })
}

/// Levenshtein distance (short names only; also the CLI's suggestions).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Sets every leaf `a.b` from `FLUXGATE_A_B` when that variable is present, parsed as the
/// type of the default.
pub(super) fn apply_env(
    table: &mut toml::Table,
    prefix: &str,
    env: &std::collections::HashMap<String, String>,
) -> Result<(), ConfigError> {
    for (k, v) in table.iter_mut() {
        let var = format!("{prefix}_{}", k.to_ascii_uppercase());
        match v {
            toml::Value::Table(t) => apply_env(t, &var, env)?,
            leaf => {
                if let Some(raw) = env.get(&var) {
                    let bad = |msg: &str| ConfigError::Env {
                        var: var.clone(),
                        msg: msg.to_string(),
                    };
                    *leaf = match leaf {
                        toml::Value::Integer(_) => {
                            toml::Value::Integer(raw.trim().parse().map_err(|_| bad("expected an integer"))?)
                        }
                        toml::Value::Boolean(_) => {
                            toml::Value::Boolean(raw.trim().parse().map_err(|_| bad("expected true or false"))?)
                        }
                        // A list of strings: comma-separated.
                        toml::Value::Array(_) => toml::Value::Array(
                            raw.split(',')
                                .map(str::trim)
                                .filter(|s| !s.is_empty())
                                .map(|s| toml::Value::String(s.to_string()))
                                .collect(),
                        ),
                        _ => toml::Value::String(raw.clone()),
                    };
                }
            }
        }
    }
    Ok(())
}
