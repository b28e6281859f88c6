//! The image-folder reader (see `metaclf::fuzzing::image_folder`).
#![no_main]
use std::path::PathBuf;

fn scratch() -> PathBuf {
    std::env::var_os("FUZZ_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("metaclf-fuzz-folder-{}", std::process::id()))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| metaclf::fuzzing::image_folder(data, &scratch()));
