#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzz::bucket_manifest(data));
