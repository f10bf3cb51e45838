//! The mask site's answer to relay's probe hello (read when learning its server flight): any
//! bytes parse to a profile or a typed error, and a shape learned from a profile stays within
//! what one record may hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::tls::{
    flight::MAX_CERT_LEN,
    profile::{FlightShape, parse_flight},
};

fuzz_target!(|data: &[u8]| {
    let Ok(profile) = parse_flight(data) else {
        return;
    };
    let Some(shape) = FlightShape::learned(std::slice::from_ref(&profile)) else {
        return;
    };
    assert!(shape.cert_len.start() <= shape.cert_len.end());
    assert!(*shape.cert_len.end() <= MAX_CERT_LEN);
});
