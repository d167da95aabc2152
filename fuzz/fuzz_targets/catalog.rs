#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_p2p::fuzz::catalog(data));
