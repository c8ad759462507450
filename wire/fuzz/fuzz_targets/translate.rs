#![no_main]

#[path = "../src/translate.rs"]
mod translate;

libfuzzer_sys::fuzz_target!(|data: &[u8]| translate::check_translate(data));
