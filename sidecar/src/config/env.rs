//! `REDRIVE_...` environment variables laid over the file's table before it is read.

use super::model::ConfigError;

/// `routes[0].retry.attempts` plus, when an environment variable set it, its name.
pub(super) fn describe_key(path: &str, origins: &[(String, String)]) -> String {
    match origins
        .iter()
        .filter(|(p, _)| path == p || path.starts_with(&format!("{p}.")))
        .max_by_key(|(p, _)| p.len())
    {
        Some((_, var)) => format!("{path} (from ${var})"),
        None => path.to_owned(),
    }
}

fn env_scalar(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = v.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if v.contains('.') {
        if let Ok(x) = v.parse::<f64>() {
            return toml::Value::Float(x);
        }
    }
    toml::Value::String(v.to_owned())
}

fn normalize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().expect("a key");
    let mut cur = table;
    for k in parents {
        let entry = cur
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a table in the file"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// `REDRIVE_X_FILE=/path` (Docker and Kubernetes secret mounts) stands for `REDRIVE_X` with
/// the file's content, trailing line breaks removed. Returns (variable, the name to show in
/// messages, value), sorted. The content is never part of a message.
fn read_file_variants(
    vars: Vec<(String, String)>,
    errors: &mut Vec<ConfigError>,
    file: &str,
) -> Vec<(String, String, String)> {
    let names: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
    let mut out = Vec::new();
    for (var, value) in vars {
        let Some(plain) = var
            .strip_suffix("_FILE")
            .filter(|p| p.len() > "REDRIVE_".len())
        else {
            out.push((var.clone(), var, value));
            continue;
        };
        let mut fail = |reason: String| {
            errors.push(ConfigError {
                file: file.to_owned(),
                key: format!("${var}"),
                reason,
            })
        };
        if names.iter().any(|n| n == plain) {
            fail(format!("${plain} is set too; set one of them"));
            continue;
        }
        match std::fs::read_to_string(&value) {
            Ok(content) => out.push((
                plain.to_owned(),
                var.clone(),
                content.trim_end_matches(['\n', '\r']).to_owned(),
            )),
            Err(e) => fail(format!("cannot read `{value}`: {e}")),
        }
    }
    out.sort();
    out
}

pub(super) fn apply_env(
    root: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    origins: &mut Vec<(String, String)>,
    errors: &mut Vec<ConfigError>,
    file: &str,
) {
    let vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("REDRIVE_"))
        .collect();
    for (var, shown, value) in read_file_variants(vars, errors, file) {
        let rest = &var["REDRIVE_".len()..];
        let var = shown;
        let lower = |s: &str| s.to_ascii_lowercase();
        let res: Result<(), String> = if let Some(prop) = rest.strip_prefix("KAFKA_") {
            let key = lower(prop).replace('_', ".");
            origins.push((format!("kafka.{key}"), var.clone()));
            set_path(
                root,
                &["kafka".into(), key],
                toml::Value::String(value.clone()),
            )
        } else if let Some(k) = rest.strip_prefix("WORKER_") {
            origins.push((format!("worker.{}", lower(k)), var.clone()));
            set_path(root, &["worker".into(), lower(k)], env_scalar(&value))
        } else if let Some(k) = rest.strip_prefix("OPS_") {
            origins.push((format!("ops.{}", lower(k)), var.clone()));
            set_path(root, &["ops".into(), lower(k)], env_scalar(&value))
        } else if let Some(spec) = rest.strip_prefix("ROUTE_") {
            let mut parts = spec.split("__");
            let name = parts.next().unwrap_or_default();
            let keys: Vec<String> = parts.map(lower).collect();
            let routes = root.get_mut("routes").and_then(toml::Value::as_array_mut);
            let found = routes.and_then(|routes| {
                routes.iter_mut().enumerate().find(|(_, r)| {
                    let n = r
                        .get("name")
                        .or_else(|| r.get("topic"))
                        .and_then(toml::Value::as_str)
                        .unwrap_or_default();
                    normalize_name(n) == name
                })
            });
            match (found, keys.is_empty()) {
                (_, true) => Err("write REDRIVE_ROUTE_<NAME>__<KEY>, e.g. REDRIVE_ROUTE_ORDERS__URL".into()),
                (None, _) => Err(format!("no route is named `{}` (names match case-insensitively, non-alphanumerics as `_`)", lower(name))),
                (Some((i, r)), false) => {
                    origins.push((format!("routes[{i}].{}", keys.join(".")), var.clone()));
                    match r.as_table_mut() {
                        Some(t) => set_path(t, &keys, env_scalar(&value)),
                        None => Err("the route is not a table".into()),
                    }
                }
            }
        } else {
            // Other REDRIVE_ variables (e.g. of the test suite) are not configuration.
            Ok(())
        };
        if let Err(reason) = res {
            errors.push(ConfigError {
                file: file.to_owned(),
                key: format!("${var}"),
                reason,
            });
        }
    }
}
