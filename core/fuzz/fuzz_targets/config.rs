//! `config::parse` (and `check-config`'s `extract_config_document`) on
//! arbitrary bytes, as UTF-8 where they are valid and lossily converted where
//! not: never panics, and whatever is accepted holds to the config's limits.
#![no_main]

use ferrolb_core::config::{self, MAX_POOL_NAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = config::parse(&text) {
        for p in &c.pools {
            assert!(!p.name.is_empty() && p.name.chars().count() <= MAX_POOL_NAME);
            assert!(!p.ranges.is_empty());
        }
    }
    if let Ok(doc) = config::extract_config_document(&text) {
        let _ = config::parse(&doc);
    }
});
