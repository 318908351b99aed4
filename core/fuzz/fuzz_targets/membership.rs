//! `membership::decode` on arbitrary bytes: never panics. To get past the
//! authentication check (random bytes never carry a valid HMAC), the input is
//! also used as a packet body with a correct tag appended, so the parser behind
//! it is exercised too; whatever it accepts survives encode-then-decode.
#![no_main]

use ferrolb_core::membership::{MAX_PACKET, decode, encode};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const KEY: &[u8] = b"fuzzing-key";

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, KEY);
    let mut tagged = data.to_vec();
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).expect("any key length");
    mac.update(data);
    tagged.extend_from_slice(&mac.finalize().into_bytes());
    if let Ok(packet) = decode(&tagged, KEY) {
        let mut buf = [0u8; MAX_PACKET];
        let n = encode(&packet, KEY, &mut buf).expect("a decoded packet encodes");
        assert_eq!(decode(&buf[..n], KEY), Ok(packet));
    }
});
