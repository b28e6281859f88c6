//! The NumPy reader (see `metaclf::fuzzing::npy`).
#![no_main]
use std::path::PathBuf;

fn scratch() -> PathBuf {
    std::env::var_os("FUZZ_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("metaclf-fuzz-npy-{}", std::process::id()))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| metaclf::fuzzing::npy(data, &scratch()));
