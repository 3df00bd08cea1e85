//! The sidecar's config parser on arbitrary text: never panics, and whatever it accepts it
//! can describe without printing a secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redrive_sidecar::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The environment is part of the input: lines `REDRIVE_X=v` after a `%%` line.
    let (file, env) = text.split_once("\n%%\n").unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match Config::parse(file, "fuzz.toml", env) {
        Ok(config) => {
            let described = config.describe();
            for (k, v) in &config.kafka.0 {
                if redrive_sidecar::config::is_secret(k) && v.len() >= 4 {
                    assert!(
                        !described.contains(&format!("{k} = {v}")),
                        "secret {k} printed"
                    );
                }
            }
            let _ = format!("{config:?}");
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            let _ = errors.to_string();
        }
    }
});
