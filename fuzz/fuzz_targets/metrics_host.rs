#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzz::metrics_host(data));
