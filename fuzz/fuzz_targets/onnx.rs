//! The ONNX import: model bytes into a layer list and its weights.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| metaclf::fuzzing::onnx(data));
