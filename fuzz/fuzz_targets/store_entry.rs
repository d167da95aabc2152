#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzz::store_entry(data));
