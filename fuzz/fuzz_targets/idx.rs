//! IDX images and labels, plain and gzip (the first byte picks which reader sees the rest).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| metaclf::fuzzing::idx(data));
