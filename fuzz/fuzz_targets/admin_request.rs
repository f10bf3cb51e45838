//! A JSON request line on the admin socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_ctl::control::{Request, server::summary};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let _ = summary(&request);
        let _ = request.is_change();
    }
});
