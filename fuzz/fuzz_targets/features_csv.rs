//! features.csv: parsing, and writing back what was read.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| metaclf::fuzzing::features_csv(data));
