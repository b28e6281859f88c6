//! Replays the fuzzers' seeds (`fuzz/seeds/<target>/`) and every input a fuzzer crashed on
//! (`tests/fuzz_regressions/<target>/`, committed when found and fixed) through the fuzz
//! targets' entry points: none may panic, and what a reader accepts must keep its invariants.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut v = Vec::new();
    for dir in [
        root.join("fuzz/seeds").join(target),
        root.join("tests/fuzz_regressions").join(target),
    ] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            v.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    v.sort();
    v
}

fn replay(target: &str, f: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no seeds for {target}");
    for p in files {
        eprintln!("{target}: {}", p.display());
        f(&std::fs::read(&p).unwrap());
    }
}

#[test]
fn idx_inputs() {
    replay("idx", metaclf::fuzzing::idx);
}

#[test]
fn config_inputs() {
    replay("config", metaclf::fuzzing::config);
}

#[test]
fn safetensors_inputs() {
    replay("safetensors", metaclf::fuzzing::safetensors);
}

#[test]
fn features_csv_inputs() {
    replay("features_csv", metaclf::fuzzing::features_csv);
}

#[test]
fn image_folder_inputs() {
    let d = tempfile::tempdir().unwrap();
    replay("image_folder", |b| {
        metaclf::fuzzing::image_folder(b, &d.path().join("f"))
    });
}

#[test]
fn npy_inputs() {
    let d = tempfile::tempdir().unwrap();
    replay("npy", |b| metaclf::fuzzing::npy(b, &d.path().join("n")));
}

#[test]
fn onnx_inputs() {
    replay("onnx", metaclf::fuzzing::onnx);
}

/// The seeds are real inputs: each reader accepts its main seed (so the fuzzers start from
/// valid files, and a reader that rejected everything would show here).
#[test]
fn main_seeds_are_accepted() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let b = std::fs::read(seeds.join("idx/images.gz")).unwrap();
    assert_eq!(
        metaclf::data::idx::read_images_from(&b[1..], b.len() as u64 - 1, Path::new("s"))
            .unwrap()
            .1,
        1
    );
    let b = std::fs::read(seeds.join("idx/images4")).unwrap();
    let (_, n, shape) =
        metaclf::data::idx::read_images_shaped(&b[1..], b.len() as u64 - 1, Path::new("s"))
            .unwrap();
    assert_eq!((n, shape), (2, metaclf::data::Shape::new(3, 6, 5)));
    for (f, want) in [("u8.npy", (2, 1, 4, 3)), ("f32.npy", (1, 2, 3, 2))] {
        let (_, n, s) = metaclf::data::npy::read_images(&seeds.join("npy").join(f)).unwrap();
        assert_eq!((n, s.c, s.h, s.w), want, "{f}");
    }
    let stack = std::fs::read(seeds.join("image_folder/stack")).unwrap();
    let tif = &stack[stack.windows(3).rposition(|w| w == b"|||").unwrap() + 3..];
    let img = metaclf::data::prep::decode(tif, Path::new("stack.tif"), 2).unwrap();
    assert_eq!(img.shape, metaclf::data::Shape::new(2, 9, 13));
    let b = std::fs::read(seeds.join("safetensors/model.safetensors")).unwrap();
    metaclf::model::Net::from_safetensors(metaclf::model::Arch::paper(), &b, Path::new("s"))
        .unwrap();
    let t = std::fs::read_to_string(seeds.join("features_csv/features.csv")).unwrap();
    assert_eq!(
        metaclf::features::FeatureTable::parse_csv(&t, Path::new("s"))
            .unwrap()
            .len(),
        4
    );
    for f in [
        "small_resnet.onnx",
        "small_resnet_ts.onnx",
        "small_resnet_bn.onnx",
    ] {
        let imp =
            metaclf::onnx::import(&std::fs::read(seeds.join("onnx").join(f)).unwrap()).unwrap();
        assert_eq!((imp.input, imp.classes), ((1, 28, 28), 10), "{f}");
    }
    let t = std::fs::read_to_string(seeds.join("config/small.toml")).unwrap();
    metaclf::Config::parse(&t, Path::new("s")).unwrap();
    let d = tempfile::tempdir().unwrap();
    let b = std::fs::read(seeds.join("image_folder/three")).unwrap();
    // the three files parse as images (blank ones are refused, so check the gray one alone)
    let g = std::fs::read(seeds.join("image_folder/gray")).unwrap();
    metaclf::data::render::convert_bytes(&g, Path::new("g.png"), &metaclf::data::Prep::MNIST)
        .unwrap();
    metaclf::fuzzing::image_folder(&b, &d.path().join("f"));
}
