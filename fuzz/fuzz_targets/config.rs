//! The operator's TOML configuration file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_ctl::config::{Config, Origin};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Config::parse(text, Origin::Embedded) {
            // Rendering the message must not panic either (line/column arithmetic).
            let _ = e.to_string();
        }
    }
});
