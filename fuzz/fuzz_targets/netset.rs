//! FireHOL netset files (blocklist feeds and `block import`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_ctl::control::netset;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let parsed = netset::parse(text);
        for e in &parsed.errors {
            let _ = e.to_string();
        }
        for w in &parsed.warnings {
            let _ = w.to_string();
        }
    }
});
