//! `migration/configuration.md` is the one configuration reference: every key the code
//! accepts is in it, nothing else is, and each default is the code's.

use busbridge::config::{AccessRule, Config, TlsConfig};
use std::collections::BTreeMap;

/// Dotted key -> TOML value, for every leaf of `value`.
fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        v => {
            out.insert(prefix.to_owned(), v.clone());
        }
    }
}

fn leaves(config: &Config) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    flatten("", &toml::Value::try_from(config).unwrap(), &mut out);
    out
}

/// A configuration with every optional part present, so that every key shows.
fn full() -> Config {
    let tls = TlsConfig {
        cert: "c".into(),
        key: "k".into(),
        ca: "a".into(),
    };
    let mut c = Config::default();
    c.transport.tcp_listen = Some("127.0.0.1:1".into());
    c.transport.tls_listen = Some("127.0.0.1:2".into());
    c.transport.socket_group = Some("g".into());
    c.transport.socket_mode = Some("0660".into());
    c.client.connect = Some("inproc://".into());
    c.client.name = Some("n".into());
    c.client.tls = Some(tls.clone());
    c.bus.channel_capacity = Some(1);
    c.bus.backpressure_strategy = Some(Default::default());
    c.tls = Some(tls);
    c.metrics.listen = Some("127.0.0.1:9464".into());
    c.access.insert("CLIENT".into(), AccessRule::default());
    c.uplink = Some(busbridge::config::UplinkConfig {
        host: Some("h".into()),
        spool_dir: Some("s".into()),
        credentials: Some("c".into()),
        tls: Some(TlsConfig {
            cert: "c".into(),
            key: "k".into(),
            ca: "a".into(),
        }),
        ..Default::default()
    });
    c
}

fn render(v: &toml::Value) -> String {
    v.to_string()
}

/// (key, default cell) rows of the reference's tables.
fn documented() -> BTreeMap<String, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migration/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `key` | type | default | effect |
        if cells.len() >= 6 && cells[1].starts_with('`') && cells[1] != "`key`" {
            let key = cells[1].trim_matches('`').to_owned();
            assert!(
                rows.insert(key.clone(), cells[3].to_owned()).is_none(),
                "{key} documented twice"
            );
        }
    }
    rows
}

#[test]
fn every_key_is_documented_with_its_default() {
    let keys = leaves(&full());
    // An optional section's defaults are those it takes when present.
    let defaults = leaves(&Config {
        uplink: Some(Default::default()),
        ..Config::default()
    });
    let docs = documented();
    let mut problems = Vec::new();
    for key in keys.keys() {
        if key == "phase" && !cfg!(feature = "legacy") {
            continue; // the default is the build's (documented as "0 (4 without legacy)")
        }
        let want = defaults
            .get(key)
            .map(render)
            .unwrap_or_else(|| "unset".into());
        match docs.get(key) {
            None => problems.push(format!("missing: | `{key}` | ? | {want} | ? |")),
            Some(cell) => {
                // The first backticked value, or the cell's first word ("unset (…)").
                let first = match cell.strip_prefix('`') {
                    Some(rest) => rest.split('`').next().unwrap_or_default(),
                    None => cell.split(" (").next().unwrap_or_default(),
                };
                if first != want {
                    problems.push(format!("{key}: documented default {cell}, code {want}"));
                }
            }
        }
    }
    for key in docs.keys() {
        if !keys.contains_key(key) {
            problems.push(format!("documented but not a key: {key}"));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let e = Config::from_toml_str("[bus]\nbatch_maximum = 2").unwrap_err();
    assert!(e.to_string().contains("batch_maximum"), "{e}");
}
