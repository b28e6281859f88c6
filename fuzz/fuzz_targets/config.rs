//! The config loader: TOML parsing and validation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| metaclf::fuzzing::config(data));
