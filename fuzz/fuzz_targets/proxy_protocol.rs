//! The PROXY protocol v1/v2 header parser.
//!
//! Invariants: never panics; a parsed header lies inside the input and is
//! self-delimiting: the same bytes with nothing after them give the same answer
//! (the server peeks at more than the header, so what follows must not matter).
#![no_main]

use cartguard::proxy_protocol::{parse, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Done(len, addr)) = parse(data) {
        assert!(len > 0 && len <= data.len(), "header length {len} of {}", data.len());
        assert_eq!(parse(&data[..len]), Ok(Parsed::Done(len, addr)), "depends on the bytes after the header");
    }
});
