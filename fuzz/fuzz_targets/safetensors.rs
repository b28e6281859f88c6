//! The model loader: safetensors bytes into the default architecture.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| metaclf::fuzzing::safetensors(data));
