//! Any bytes through every decoder: a typed error or an envelope, never a panic; what decodes
//! re-encodes and decodes to the same envelope.
#![no_main]

use busbridge::codec::{Codec, CodecKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let codec = Codec::default();
    if let Ok(envs) = codec.decode_frame(data) {
        for env in envs {
            for kind in [CodecKind::Protobuf, CodecKind::Json] {
                let c = Codec::new(kind, usize::MAX);
                if let Ok(bytes) = c.encode(&env) {
                    assert_eq!(c.decode(&bytes).ok().as_ref(), Some(&env));
                }
            }
        }
    }
});
