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
        if let Ok((px, n, shape)) = crate::data::idx::read_images_shaped(rest, rest.len() as u64, p)
        {
            assert_eq!(px.len(), n * shape.len());
            assert_eq!(crate::data::idx::planar(&px, shape).len(), px.len());
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

/// The ONNX import; what it accepts builds its net with exactly its weights, and a small one
/// runs a forward pass.
pub fn onnx(data: &[u8]) {
    if let Ok(imp) = crate::onnx::import(data) {
        let (c, h, w) = imp.input;
        let arch = Arch {
            input: crate::data::Shape::new(c, h, w),
            classes: imp.classes,
            specs: imp.specs.clone(),
        };
        let net = Net::from_import(arch, &imp, Path::new("fuzz.onnx"))
            .expect("an accepted import builds its net");
        assert_eq!(net.num_params(), imp.n_params());
        if c * h * w <= 1 << 14 && net.num_params() <= 1 << 20 {
            let _ = net.forward(&vec![0.5; c * h * w], 1, None, false);
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
        let ext = ["png", "jpg", "tif"][i % 3];
        std::fs::write(scratch.join(sub).join(format!("{i}.{ext}")), part).expect("scratch file");
    }
    // the MNIST way, and a two-channel run at an odd size (TIFF stacks, gray+alpha PNGs)
    let two = crate::data::Prep {
        shape: crate::data::Shape::new(2, 9, 13),
        resize: crate::data::Resize::Fit,
    };
    for prep in [crate::data::Prep::MNIST, two] {
        if let Ok(ds) = crate::data::render::folder(scratch, &prep, &Default::default()) {
            assert_eq!(ds.shape, prep.shape);
            assert_eq!(ds.images.len(), ds.len() * prep.shape.len());
            assert!(ds.images.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }
}

/// A NumPy images array (`.npy`) written to `scratch` and read; what is accepted has values in
/// [0, 1] and a consistent shape, and brought to a run's shape keeps that.
pub fn npy(data: &[u8], scratch: &Path) {
    std::fs::create_dir_all(scratch).expect("scratch folder");
    let p = scratch.join("fuzz.npy");
    std::fs::write(&p, data).expect("scratch file");
    if let Ok((px, n, shape)) = crate::data::npy::read_images(&p) {
        assert_eq!(px.len(), n * shape.len());
        assert!(px.iter().all(|v| (0.0..=1.0).contains(v)));
        if n <= 64 && shape.len() <= 1 << 16 {
            let small = crate::data::Prep {
                shape: crate::data::Shape::new(shape.c, 5, 7),
                resize: crate::data::Resize::Stretch,
            };
            let out = crate::data::fit_user(px, shape, &small, &p).expect("same channels");
            assert_eq!(out.len(), n * small.shape.len());
        }
        let _ = crate::data::npy::read_labels(&p, n, &p, 10);
    }
}
