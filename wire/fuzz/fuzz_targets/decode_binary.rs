#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wire_fuzz::check_binary(data));
