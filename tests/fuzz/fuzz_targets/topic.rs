//! Any string as a topic or pattern: an error or a value that translates both ways.
#![no_main]

use busbridge::topic::{Pattern, Topic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(t) = Topic::parse(s) {
        assert_eq!(Topic::from_busrt(&t.to_busrt()).ok(), Some(t));
    }
    if let Ok(p) = Pattern::parse(s) {
        assert_eq!(Pattern::from_busrt(&p.to_busrt()).ok(), Some(p));
    }
    let _ = Pattern::from_busrt(s);
});
