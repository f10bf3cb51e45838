//! A CrowdSec LAPI `/v1/decisions/stream` answer: any body is a stream or a typed error, and
//! never more than the decision bound is taken.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_ctl::crowdsec::api::read_stream;

fuzz_target!(|data: &[u8]| {
    let Some((&max, body)) = data.split_first() else {
        return;
    };
    let max = usize::from(max);
    if let Ok(stream) = read_stream(body, max) {
        let taken = stream.new.as_ref().map_or(0, Vec::len)
            + stream.deleted.as_ref().map_or(0, Vec::len);
        assert!(taken <= max);
    }
});
