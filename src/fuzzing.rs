//! Entry points of the fuzz targets (`fuzz/`): each feeds arbitrary bytes to one reader the way
//! a user's file would reach it, and asserts what must hold for whatever the reader accepts.
//! `tests/fuzz_regressions.rs` replays the seeds and every input a fuzzer ever crashed on
//! through the same functions in `cargo test`.

use crate::features::FeatureTable;
use crate::model::{Arch, Net};
use std::path::Path;

/// IDX images (first byte even) or labels (odd), plain or gzip.
pub fn idx(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let p = Path::new("fuzz.idx");
    if which & 1 == 0 {
        if let Ok((px, n)) = crate::data::idx::read_images_from(rest, rest.len() as u64, p) {
            assert_eq!(px.len(), n * crate::data::PIXELS);
        }
    } else {
        let _ = crate::data::idx::read_labels_from(rest, rest.len() as u64, p);
    }
}

/// The config loader; a config it accepts round-trips through its resolved form.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = crate::Config::parse(text, Path::new("fuzz.toml")) {
        let again = crate::Config::parse(&c.to_toml(), Path::new("resolved.toml"))
            .expect("the resolved form of a valid config is valid");
        assert_eq!(c.raw, again.raw);
    }
}

/// The model loader, into the default architecture; what it accepts is finite.
pub fn safetensors(data: &[u8]) {
    if let Ok(net) = Net::from_safetensors(Arch::paper(), data, Path::new("fuzz.safetensors")) {
        for l in &net.layers {
            assert!(l.w.iter().chain(&l.b).all(|v| v.is_finite()));
        }
    }
}

/// features.csv; what it accepts is finite and survives a write and a read.
pub fn features_csv(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let p = Path::new("fuzz.csv");
    if let Ok(t) = FeatureTable::parse_csv(text, p) {
        assert!(t.values.iter().all(|v| v.is_finite()));
        let again = FeatureTable::parse_csv(&t.to_csv(), p).expect("its own output parses");
        assert_eq!(t, again);
    }
}

/// The image-folder reader: `data` is split into up to three files at the bytes "|||", written
/// into class folders `a/` and `b/` under `scratch` (emptied first), and read as a data set.
pub fn image_folder(data: &[u8], scratch: &Path) {
    let _ = std::fs::remove_dir_all(scratch);
    for sub in ["a", "b"] {
        std::fs::create_dir_all(scratch.join(sub)).expect("scratch folder");
    }
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < 2 {
        match rest.windows(3).position(|w| w == b"|||") {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + 3..];
            }
            None => break,
        }
    }
    parts.push(rest);
    for (i, part) in parts.iter().enumerate() {
        let sub = if i == 1 { "b" } else { "a" };
        let ext = ["png", "jpg", "jpeg"][i % 3];
        std::fs::write(scratch.join(sub).join(format!("{i}.{ext}")), part).expect("scratch file");
    }
    if let Ok(ds) = crate::data::render::folder(scratch, &crate::data::Prep::MNIST) {
        assert_eq!(ds.images.len(), ds.len() * crate::data::PIXELS);
        assert!(ds.images.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
