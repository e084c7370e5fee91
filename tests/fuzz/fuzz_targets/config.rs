//! Any text as a configuration file: a configuration or an error naming the key.
#![no_main]

use busbridge::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(c) = Config::from_toml_str(s) {
        assert_eq!(Config::from_toml_str(&c.to_toml()).ok(), Some(c));
    }
});
