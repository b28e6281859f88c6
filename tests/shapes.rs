//! Integration tests: images of other sizes and channel counts (NumPy arrays, IDX with a channel
//! dimension, TIFF stacks) through the whole pipeline, the held-out-class experiment, and the
//! errors for bad shapes.

mod common;

use common::*;
use ndarray::{Array1, Array4};
use ndarray_npy::WriteNpyExt;
use std::path::{Path, PathBuf};

const H: usize = 24;
const W: usize = 20;

/// A generated two-channel set whose classes differ in structure per channel: class k has a
/// horizontal bar in channel 0 at a row set by k % 2, and a vertical bar in channel 1 at a
/// column set by k / 2 (so neither channel alone tells the 4 classes apart), plus noise.
/// Returned channels-last (N, H, W, 2), as NumPy users hold images.
fn two_channel(n: usize, seed: u32) -> (Array4<u8>, Vec<u8>) {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(7);
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    let mut a = Array4::<u8>::zeros((n, H, W, 2));
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let k = (next() % 4) as usize;
        labels[i] = k as u8;
        let row = 5 + 10 * (k % 2);
        let col = 4 + 9 * (k / 2);
        for c in 2..W - 2 {
            a[[i, row, c, 0]] = 180 + (next() % 70) as u8;
            a[[i, row + 1, c, 0]] = 140;
        }
        for r in 2..H - 2 {
            a[[i, r, col, 1]] = 180 + (next() % 70) as u8;
            a[[i, r, col + 1, 1]] = 140;
        }
        for _ in 0..40 {
            let (r, c, ch) = (
                (next() % H as u32) as usize,
                (next() % W as u32) as usize,
                (next() % 2) as usize,
            );
            a[[i, r, c, ch]] = (next() % 100) as u8;
        }
    }
    (a, labels)
}

fn write_npy(dir: &Path, name: &str, n: usize, seed: u32) -> (PathBuf, PathBuf) {
    let (a, l) = two_channel(n, seed);
    let ip = dir.join(format!("{name}-images.npy"));
    let lp = dir.join(format!("{name}-labels.npy"));
    a.write_npy(std::fs::File::create(&ip).unwrap()).unwrap();
    Array1::from(l.iter().map(|&v| v as i64).collect::<Vec<_>>())
        .write_npy(std::fs::File::create(&lp).unwrap())
        .unwrap();
    (ip, lp)
}

/// Writes image `i` of `a` as a TIFF stack, one 8-bit gray page per channel.
fn write_tiff_stack(p: &Path, a: &Array4<u8>, i: usize, pages: usize) {
    let f = std::fs::File::create(p).unwrap();
    let mut enc = tiff::encoder::TiffEncoder::new(f).unwrap();
    for ch in 0..pages {
        let page: Vec<u8> = (0..H * W).map(|j| a[[i, j / W, j % W, ch % 2]]).collect();
        enc.write_image::<tiff::encoder::colortype::Gray8>(W as u32, H as u32, &page)
            .unwrap();
    }
}

fn config(dir: &Path, train: &str, test: &str, extra_data: &str) -> PathBuf {
    let text = format!(
        r#"[run]
name = "two"
seed = 5
out_dir = "{out}"
[data]
data_dir = "{data}"
train = "{train}"
test = "{test}"
image_size = [{H}, {W}]
channels = 2
{extra_data}
[train]
epochs = 3
batch_size = 32
lr = 0.05
[features]
mc_samples = 4
[ood]
sets = ["uniform-noise", "mnist"]
count = 40
[known_unknowns]
source = "normal-noise"
count = 30
[meta]
repetitions = 2
models = ["glm", "ridge"]
groups = ["softmax", "grad-all", "grad+softmax"]
score_repetitions = 1
"#,
        out = dir.join("reports").display(),
        data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data").display(),
    );
    let p = dir.join("two.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn csv_rows(p: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(p)
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn two_channel_images_with_a_held_out_class_run_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let (ti, tl) = write_npy(d.path(), "train", 600, 1);
    let (vi, vl) = write_npy(d.path(), "test", 200, 2);
    // class 1 held out: the network's classes 0, 1, 2 are the labels 0, 2, 3
    let cfg = config(
        d.path(),
        &format!("npy:{},{}", ti.display(), tl.display()),
        &format!("npy:{},{}", vi.display(), vl.display()),
        "unknown_classes = [1]",
    );
    let o = run(&["run", cfg.to_str().unwrap()], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("reports/two");
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run_json["classes"], 3);
    let acc = run_json["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "two-channel toy accuracy {acc}");
    // the resolved config names the known classes and the resize policy
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        resolved.contains("classes = [\n    0,\n    2,\n    3,\n]")
            || resolved.contains("classes = [0, 2, 3]"),
        "{resolved}"
    );
    assert!(resolved.contains("resize = \"fit\""), "{resolved}");
    // the checkpoint has PyTorch layout for 2 channels and a 16·6·5 fc input
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let hlen = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + hlen]).unwrap();
    assert_eq!(
        header["conv1.weight"]["shape"],
        serde_json::json!([16, 2, 3, 3])
    );
    assert_eq!(
        header["fc.weight"]["shape"],
        serde_json::json!([3, 16 * 6 * 5])
    );

    // features.csv keeps the original labels; the held-out class is an OOD set
    let rows = csv_rows(&out.join("features.csv"));
    let id: Vec<_> = rows.iter().filter(|r| &r[0] == "id-test").collect();
    let unk: Vec<_> = rows
        .iter()
        .filter(|r| &r[0] == "ood-unknown-classes")
        .collect();
    assert!(!unk.is_empty());
    assert!(id.iter().all(|r| ["0", "2", "3"].contains(&&r[2])));
    assert!(id.iter().any(|r| &r[2] == "3") && id.iter().any(|r| &r[3] == "3"));
    assert!(
        rows.iter().all(|r| &r[3] != "1"),
        "class 1 is never predicted"
    );
    assert!(unk.iter().all(|r| r[2].is_empty() && &r[5] == "1"));
    let n_unknown_test = {
        let (_, l) = two_channel(200, 2);
        l.iter().filter(|&&v| v == 1).count()
    };
    assert_eq!(unk.len(), n_unknown_test.min(40));
    // metrics.json: task "ood" with ood_set "unknown-classes", like every OOD set
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let auroc = metrics["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["ood_set"] == "unknown-classes" && r["metric"] == "auroc" && r["model"] == "ridge"
        })
        .expect("unknown-classes AUROC of the ridge model");
    // (class 1 combines the bar positions of the known classes, so it need not be easy)
    assert!(
        (0.0..=1.0).contains(&auroc["mean"].as_f64().unwrap()),
        "{auroc}"
    );
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("unknown-classes"));
    assert!(report.contains("Per-class accuracy"), "per-class table");

    // metaclf features on the same test file gives the run's own id-test rows (labels as
    // stored, predictions mapped back), and the same images as TIFF stacks give the same rows
    let f1 = d.path().join("f1.csv");
    let o = run(
        &[
            "features",
            "--run",
            out.to_str().unwrap(),
            "--data",
            &format!("npy:{}", vi.display()),
            "--out",
            f1.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let f1_rows = csv_rows(&f1);
    assert_eq!(f1_rows.len(), 200);
    let id_by_index: std::collections::HashMap<String, &csv::StringRecord> =
        id.iter().map(|r| (r[1].to_string(), *r)).collect();
    for r in &f1_rows {
        if let Some(want) = id_by_index.get(&r[1]) {
            assert_eq!(&r[3], &want[3], "pred of image {}", &r[1]);
            assert_eq!(&r[6], &want[6], "msp of image {}", &r[1]);
        }
    }
    let (a, _) = two_channel(200, 2);
    let tif = d.path().join("tif");
    std::fs::create_dir_all(&tif).unwrap();
    for i in 0..12 {
        write_tiff_stack(&tif.join(format!("{i:03}.tif")), &a, i, 2);
    }
    let f2 = d.path().join("f2.csv");
    let o = run(
        &[
            "features",
            "--run",
            out.to_str().unwrap(),
            "--data",
            &format!("folder:{}", tif.display()),
            "--out",
            f2.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let f2_rows = csv_rows(&f2);
    assert_eq!(f2_rows.len(), 12);
    for (r2, r1) in f2_rows.iter().zip(&f1_rows) {
        // every column but the MC-dropout ones (their masks follow the batch's make-up)
        let keep = |r: &csv::StringRecord| {
            r.iter()
                .enumerate()
                .filter(|(i, _)| *i >= 3 && !(8..12).contains(i))
                .map(|(_, v)| v.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(keep(r2), keep(r1));
    }

    // a TIFF stack with 3 pages among 2-page ones is named
    write_tiff_stack(&tif.join("005.tif"), &a, 5, 3);
    let o = run(
        &[
            "features",
            "--run",
            out.to_str().unwrap(),
            "--data",
            &format!("folder:{}", tif.display()),
            "--out",
            d.path().join("f3.csv").to_str().unwrap(),
        ],
        d.path(),
    );
    fails_with(&o, &["005.tif", "3 pages", "data.channels"]);
    assert!(!d.path().join("f3.csv").exists());

    // scoring a new batch works at this shape too
    let sc = d.path().join("scored");
    let o = run(
        &[
            "score",
            "--run",
            out.to_str().unwrap(),
            "--data",
            &format!("npy:{},{}", vi.display(), vl.display()),
            "--out",
            sc.to_str().unwrap(),
        ],
        d.path(),
    );
    if out.join("trust_model.json").exists() {
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(sc.join("review.html").exists());
    }
}

#[test]
fn idx_with_a_channel_dimension_equals_the_npy_of_the_same_images() {
    let d = tempfile::tempdir().unwrap();
    let (a, l) = two_channel(30, 3);
    let ip = d.path().join("x.npy");
    a.write_npy(std::fs::File::create(&ip).unwrap()).unwrap();
    let idx = d.path().join("x-idx");
    metaclf::data::idx::write_images_shaped(
        &idx,
        a.as_slice().unwrap(),
        metaclf::data::Shape::new(2, H, W),
    )
    .unwrap();
    let li = d.path().join("l-idx");
    write_idx_labels(&li, &l);
    let ctx = metaclf::data::LoadCtx {
        data_dir: d.path().into(),
        seed: 1,
        count: 0,
        stage: "t".into(),
        prep: metaclf::data::Prep {
            shape: metaclf::data::Shape::new(2, H, W),
            resize: metaclf::data::Resize::Fit,
        },
        folder_labels: Default::default(),
    };
    let from_npy = metaclf::data::load(&format!("npy:{}", ip.display()), &ctx).unwrap();
    let from_idx =
        metaclf::data::load(&format!("idx:{},{}", idx.display(), li.display()), &ctx).unwrap();
    assert_eq!(from_npy.images, from_idx.images);
    assert_eq!(
        from_idx.labels.unwrap(),
        l.iter().map(|&v| v as u32).collect::<Vec<_>>()
    );
    // channel-major: image 0, channel 1 = a[0, :, :, 1]
    let ch1: Vec<f32> = (0..H * W)
        .map(|j| a[[0, j / W, j % W, 1]] as f32 / 255.0)
        .collect();
    assert_eq!(&from_npy.images[H * W..2 * H * W], &ch1[..]);
    // resized to 32×32 with each policy
    for resize in ["fit", "stretch", "center-crop"] {
        let ctx = metaclf::data::LoadCtx {
            prep: metaclf::data::Prep {
                shape: metaclf::data::Shape::new(2, 32, 32),
                resize: metaclf::data::Resize::parse(resize).unwrap(),
            },
            ..ctx.clone()
        };
        let ds = metaclf::data::load(&format!("npy:{}", ip.display()), &ctx).unwrap();
        assert_eq!(ds.images.len(), 30 * 2 * 32 * 32, "{resize}");
    }
    // one channel is not two
    let ctx1 = metaclf::data::LoadCtx {
        prep: metaclf::data::Prep::MNIST,
        ..ctx.clone()
    };
    let e = metaclf::data::load(&format!("npy:{}", ip.display()), &ctx1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.npy") && e.contains("2 channels") && e.contains("data.channels"),
        "{e}"
    );
    // built-in sets come at the run's shape, gray replicated across channels
    let noise = metaclf::data::load("uniform-noise", &ctx).unwrap();
    assert_eq!(noise.shape, metaclf::data::Shape::new(2, H, W));
    assert_eq!(noise.images.len(), 2000 * 2 * H * W);
}

#[test]
fn bad_shapes_and_held_out_classes_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let (ti, tl) = write_npy(d.path(), "train", 40, 1);
    let (vi, vl) = write_npy(d.path(), "test", 20, 2);
    let train = format!("npy:{},{}", ti.display(), tl.display());
    let test = format!("npy:{},{}", vi.display(), vl.display());
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "unknown_classes = [7]",
            vec!["data.unknown_classes", "class 7 has no images"],
        ),
        (
            "unknown_classes = [0, 1, 2]",
            vec!["data.unknown_classes", "1 known class"],
        ),
        (
            "unknown_classes = [0, 1, 2, 3]",
            vec!["data.unknown_classes"],
        ),
        ("resize = \"mnist\"", vec!["data.resize", "channels = 2"]),
    ];
    for (extra, needles) in cases {
        let cfg = config(d.path(), &train, &test, extra);
        let o = run(&["run", cfg.to_str().unwrap()], d.path());
        fails_with(&o, &needles);
        assert!(!d.path().join("reports/two").exists(), "{extra}");
    }
    // images too small for the two pools: the minimum is named
    let cfg = config(d.path(), &train, &test, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("image_size = [24, 20]", "image_size = [3, 20]");
    std::fs::write(&cfg, text).unwrap();
    let o = run(&["check", cfg.to_str().unwrap()], d.path());
    fails_with(&o, &["data.image_size", "at least 4"]);
    // an .npy of another dtype
    let bad = d.path().join("f64.npy");
    ndarray::Array3::<f64>::zeros((4, 8, 8))
        .write_npy(std::fs::File::create(&bad).unwrap())
        .unwrap();
    let cfg = config(d.path(), &format!("npy:{}", bad.display()), &test, "");
    let o = run(&["run", cfg.to_str().unwrap()], d.path());
    fails_with(&o, &["f64.npy", "uint8", "float32"]);
}

/// EMNIST's files store images transposed; the `emnist-*` sources undo it wherever they are
/// loaded, so `metaclf features` of a run on `emnist-digits:test` predicts what the run did.
#[test]
fn emnist_sources_are_transposed_in_training_and_in_features_alike() {
    let d = tempfile::tempdir().unwrap();
    let em = d.path().join("data/emnist");
    std::fs::create_dir_all(&em).unwrap();
    for (split, n, seed) in [("train", 400, 1), ("test", 120, 2)] {
        let (ip, lp) = toy(d.path(), split, n, seed);
        // the toy's class is a horizontal bar; stored transposed it is a vertical one
        let raw = std::fs::read(&ip).unwrap();
        let mut t = raw.clone();
        for i in 0..n {
            for r in 0..28 {
                for c in 0..28 {
                    t[16 + i * 784 + c * 28 + r] = raw[16 + i * 784 + r * 28 + c];
                }
            }
        }
        std::fs::write(
            em.join(format!("emnist-digits-{split}-images-idx3-ubyte")),
            t,
        )
        .unwrap();
        std::fs::copy(
            &lp,
            em.join(format!("emnist-digits-{split}-labels-idx1-ubyte")),
        )
        .unwrap();
    }
    let cfg = d.path().join("e.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[run]
name = "e"
out_dir = "{out}"
[data]
data_dir = "{data}"
train = "emnist-digits:train"
test = "emnist-digits:test"
transpose = true
[train]
epochs = 2
batch_size = 32
[features]
mc_samples = 3
[ood]
sets = ["uniform-noise"]
count = 30
[known_unknowns]
source = ""
[meta]
repetitions = 1
models = ["glm"]
groups = ["softmax"]
"#,
            out = d.path().join("reports").display(),
            data = d.path().join("data").display()
        ),
    )
    .unwrap();
    let o = run(&["run", cfg.to_str().unwrap()], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.path().join("reports/e");
    // the old configs' `transpose = true` is resolved to false for emnist sources (no double
    // transpose)
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(resolved.contains("transpose = false"), "{resolved}");
    let f = d.path().join("f.csv");
    let o = run(
        &[
            "features",
            "--run",
            out.to_str().unwrap(),
            "--data",
            "emnist-digits:test",
            "--out",
            f.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let own: Vec<_> = csv_rows(&out.join("features.csv"))
        .into_iter()
        .filter(|r| &r[0] == "id-test")
        .collect();
    let again = csv_rows(&f);
    assert_eq!(own.len(), again.len());
    for (a, b) in own.iter().zip(&again) {
        assert_eq!((&a[1], &a[2], &a[3], &a[6]), (&b[1], &b[2], &b[3], &b[6]));
    }
}
