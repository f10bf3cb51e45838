//! What the middle-proxy leg parses from peers: frames and RPC messages from a middle proxy
//! (plaintext and CBC phases), a client's framing in each of its three forms, and the proxy
//! list text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::{
    ProtoTag,
    middle::{ClientDecoder, FrameReader, FromMe, ProxyConfig},
};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(chunk).max(1);

    let _ = ProxyConfig::parse(&String::from_utf8_lossy(stream));

    for encrypted in [false, true] {
        let mut reader = FrameReader::new();
        if encrypted {
            reader.decrypt(&[1; 32], &[2; 16]);
        }
        'frames: for piece in stream.chunks(step) {
            reader.push(piece);
            loop {
                match reader.next_frame() {
                    Ok(Some(frame)) => {
                        let _ = FromMe::decode(frame);
                    }
                    Ok(None) => break,
                    Err(_) => break 'frames,
                }
            }
        }
    }

    for tag in [
        ProtoTag::Abridged,
        ProtoTag::Intermediate,
        ProtoTag::PaddedIntermediate,
    ] {
        let mut decoder = ClientDecoder::new(tag, 1 << 16);
        'messages: for piece in stream.chunks(step) {
            decoder.push(piece);
            loop {
                match decoder.next_message() {
                    Ok(Some(m)) => assert!(!m.message.is_empty() && m.message.len() % 4 == 0),
                    Ok(None) => break,
                    Err(_) => break 'messages,
                }
            }
        }
    }
});
