//! The PROXY protocol header a balancer sends first: every prefix of arbitrary bytes, for each
//! accepted version set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::proxy_header::{Accept, Parsed, parse};

fuzz_target!(|data: &[u8]| {
    for accept in [Accept::V1, Accept::V2, Accept::Any] {
        for end in 0..=data.len().min(600) {
            if let Ok(Parsed::Done { len, .. }) = parse(&data[..end], accept) {
                assert!(len <= end);
            }
        }
    }
});
