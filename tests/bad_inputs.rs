//! Bad inputs through the real binary, one case per line of a table: the arguments, the exit
//! code, words the one-line error must contain, and the files that must stay byte-identical.
//! Every case also checks: no panic or abort, exactly one `error:` line, and no temporary or
//! half-written run folder left behind. Everything here is generated; nothing is fetched.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, bytes).unwrap();
    e.finish().unwrap()
}

fn idx_header(n: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [0x803u32, n, 28, 28] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

/// A config that trains on the toy IDX files (or `train` instead), with no OOD sets to fetch.
fn config(train: &str, extra: &str) -> String {
    format!(
        "[run]\nname = \"r\"\nout_dir = \"out\"\n[data]\ndata_dir = \"cache\"\ntrain = \"{train}\"\n\
         test = \"idx:test-images,test-labels\"\n{extra}\n[train]\nepochs = 1\n[features]\nmc_samples = 2\n\
         [ood]\nsets = []\n[known_unknowns]\nsource = \"\"\n[meta]\nrepetitions = 1\nmodels = [\"lasso\"]\n\
         groups = [\"softmax\"]\n"
    )
}

/// A folder that looks like a finished run (resolved config, run.json, a valid model of the
/// default architecture, features.csv, metrics.json).
fn fake_run(dir: &Path, features: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let o = run(&["dump-config"], dir);
    std::fs::write(dir.join("config.toml"), &o.stdout).unwrap();
    std::fs::write(
        dir.join("run.json"),
        r#"{"status": "done", "classes": 10, "test_accuracy": 0.99}"#,
    )
    .unwrap();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/safetensors/model.safetensors");
    std::fs::copy(model, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("features.csv"), features).unwrap();
    std::fs::write(dir.join("metrics.json"), "{\"old\": true}").unwrap();
}

const FEATURES_HEAD: &str = "set,index,label,pred,correct,source_label,msp,entropy\n";

fn setup(d: &Path) {
    let w = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    toy(d, "train", 300, 1);
    toy(d, "test", 100, 2);
    let images = std::fs::read(d.join("train-images")).unwrap();
    let labels = std::fs::read(d.join("train-labels")).unwrap();
    // configs
    w("cfg/unknown-key.toml", b"[train]\nepoch = 3\n");
    w("cfg/wrong-type.toml", b"[train]\nepochs = \"ten\"\n");
    w("cfg/nan-lr.toml", b"[train]\nlr = nan\n");
    w("cfg/huge-count.toml", b"[ood]\ncount = 1000000000000\n");
    w(
        "cfg/class-99.toml",
        config("idx:train-images,train-labels", "classes = [0, 99]").as_bytes(),
    );
    w(
        "cfg/missing-data.toml",
        config("idx:missing-images,train-labels", "").as_bytes(),
    );
    for (name, file) in [
        ("bad-crc", "bad-crc.gz"),
        ("extra-inside", "extra-inside.gz"),
        ("huge-gz", "huge.gz"),
        ("truncated", "truncated-images"),
        ("garbled-gz", "garbled.gz"),
        ("huge-dims", "huge-dims"),
        ("wrong-magic", "train-labels"),
        ("trailing", "trailing-images"),
        ("corrupt-gz", "corrupt.gz"),
    ] {
        w(
            &format!("cfg/{name}.toml"),
            config(&format!("idx:{file},train-labels"), "").as_bytes(),
        );
    }
    w(
        "cfg/count-mismatch.toml",
        config("idx:train-images,short-labels", "").as_bytes(),
    );
    w(
        "cfg/fake-png.toml",
        config("folder:fake-png", "").as_bytes(),
    );
    w("cfg/bomb.toml", config("folder:bomb", "").as_bytes());
    w(
        "cfg/ok.toml",
        config("idx:train-images,train-labels", "").as_bytes(),
    );
    // IDX files
    let good_gz = gz(&images);
    let mut bad = good_gz.clone();
    let k = bad.len() - 8;
    bad[k] ^= 0xff;
    w("bad-crc.gz", &bad);
    let mut more = images.clone();
    more.extend_from_slice(&[0; 1000]);
    w("extra-inside.gz", &gz(&more));
    w("huge.gz", &gz(&idx_header(4_000_000)));
    w("truncated-images", &images[..images.len() - 100]);
    w("garbled.gz", &[0x1f, 0x8b, 1, 2, 3]);
    w("huge-dims", &idx_header(u32::MAX));
    let mut trailing = images.clone();
    trailing.extend_from_slice(b"junk");
    w("trailing-images", &trailing);
    let mut corrupt = good_gz.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 50] {
        *b ^= 0x5a;
    }
    w("corrupt.gz", &corrupt);
    write_idx_labels(&d.join("short-labels"), &labels[8..8 + 290]);
    // image folders
    w("fake-png/a/x.png", b"this is not a PNG");
    w("fake-png/b/y.png", b"nor this");
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr: Vec<u8> = [
        &b"IHDR"[..],
        &100_000u32.to_be_bytes(),
        &100_000u32.to_be_bytes(),
        &[8, 0, 0, 0, 0],
    ]
    .concat();
    bomb.extend_from_slice(&13u32.to_be_bytes());
    bomb.extend_from_slice(&ihdr);
    bomb.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    w("bomb/a/b.png", &bomb);
    w("bomb/b/c.png", &bomb);
    // run folders
    let good_features =
        format!("{FEATURES_HEAD}id-test,0,1,1,1,,0.9,0.1\nid-test,1,2,2,1,,0.8,0.3\n");
    fake_run(&d.join("finished"), &good_features);
    fake_run(&d.join("existing/r"), &good_features);
    fake_run(
        &d.join("nan-run"),
        &format!("{FEATURES_HEAD}id-test,0,1,1,1,,0.9,0.1\nid-test,1,2,2,1,,0.8,NaN\n"),
    );
    fake_run(
        &d.join("trunc-features"),
        &format!("{FEATURES_HEAD}id-test,0,1,1,1,,0.9,0.1\nid-test,1,2,2"),
    );
    fake_run(&d.join("trunc-model"), &good_features);
    let m = std::fs::read(d.join("trunc-model/model.safetensors")).unwrap();
    w("trunc-model/model.safetensors", &m[..m.len() / 2]);
    fake_run(&d.join("shape-model"), &good_features);
    let c = std::fs::read_to_string(d.join("shape-model/config.toml")).unwrap();
    w(
        "shape-model/config.toml",
        c.replace("channels = [\n    16,", "channels = [\n    8,")
            .as_bytes(),
    );
    fake_run(&d.join("nan-model"), &good_features);
    let mut m = std::fs::read(d.join("nan-model/model.safetensors")).unwrap();
    let n = m.len();
    m[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    w("nan-model/model.safetensors", &m);
    w("a-file", b"x");
}

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// (case, arguments, exit code, words in the error line, paths that must not change)
type Case<'a> = (&'a str, &'a [&'a str], i32, &'a [&'a str], &'a [&'a str]);

#[test]
fn bad_inputs_give_one_clear_line_and_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    setup(d);
    let feats = [
        "features",
        "--data",
        "uniform-noise",
        "--count",
        "5",
        "--out",
        "f.csv",
        "--run",
    ];
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // (case, arguments, exit code, words in the error line, paths that must not change)
        ("force over a finished run, data fails", &["run", "cfg/missing-data.toml", "--force", "--out", "finished"], 1, &["metaclf run cfg/missing-data.toml failed: missing-images: No such file"], &["finished"]),
        ("failed new run leaves no half folder", &["run", "cfg/missing-data.toml", "--out", "newrun"], 1, &["missing-images"], &[]),
        ("NaN in features.csv", &["meta", "nan-run"], 1, &["features.csv", "line 3", "column entropy", "not finite"], &["nan-run"]),
        ("gzip with a wrong CRC", &["run", "cfg/bad-crc.toml"], 1, &["bad-crc.gz", "gzip"], &["bad-crc.gz"]),
        ("gzip with extra bytes inside the stream", &["run", "cfg/extra-inside.toml"], 1, &["extra-inside.gz", "1000 bytes inside the gzip stream"], &[]),
        ("features --count 10^12", &[feats[0], feats[1], feats[2], feats[3], "1000000000000", feats[5], feats[6], feats[7], "finished"], 1, &["count 1000000000000 is too large", "uniform-noise"], &["finished"]),
        ("data.classes names a class without images", &["run", "cfg/class-99.toml"], 1, &["data.classes", "class 99", "no images in the training set idx:train-images,train-labels"], &[]),
        ("gzip header claims 4 million images", &["run", "cfg/huge-gz.toml"], 1, &["huge.gz", "truncated", "more than a gzip file of"], &[]),
        ("unknown config key", &["run", "cfg/unknown-key.toml"], 1, &["unknown-key.toml", "epoch"], &[]),
        ("wrong value type", &["check", "cfg/wrong-type.toml"], 1, &["wrong-type.toml", "epochs"], &[]),
        ("NaN in the config", &["check", "cfg/nan-lr.toml"], 1, &["train.lr", "NaN"], &[]),
        ("huge count in the config", &["check", "cfg/huge-count.toml"], 1, &["ood.count", "limit"], &[]),
        ("truncated IDX", &["run", "cfg/truncated.toml"], 1, &["truncated-images", "truncated"], &[]),
        ("garbled gzip", &["run", "cfg/garbled-gz.toml"], 1, &["garbled.gz"], &[]),
        ("corrupt gzip", &["run", "cfg/corrupt-gz.toml"], 1, &["corrupt.gz"], &[]),
        ("huge header dims", &["run", "cfg/huge-dims.toml"], 1, &["huge-dims", "truncated: header promises 3367254359296 bytes, file has 16"], &[]),
        ("trailing garbage", &["run", "cfg/trailing.toml"], 1, &["trailing-images", "trailing garbage"], &[]),
        ("label/image count mismatch", &["run", "cfg/count-mismatch.toml"], 1, &["short-labels", "290 labels for 300 images"], &[]),
        ("wrong magic", &["run", "cfg/wrong-magic.toml"], 1, &["train-labels", "wrong magic"], &[]),
        ("fake PNG", &["run", "cfg/fake-png.toml"], 1, &["x.png"], &["fake-png"]),
        ("image bomb", &["run", "cfg/bomb.toml"], 1, &["b.png"], &["bomb"]),
        ("existing run folder", &["run", "cfg/ok.toml", "--out", "existing/r"], 1, &["already exists", "--force"], &["existing"]),
        ("output under a regular file", &["run", "cfg/ok.toml", "--out", "a-file/r"], 1, &["a-file is a file"], &["a-file"]),
        ("truncated safetensors", &[feats[0], feats[1], feats[2], feats[3], feats[4], feats[5], feats[6], feats[7], "trunc-model"], 1, &["model.safetensors", "safetensors"], &["trunc-model"]),
        ("wrong-shape safetensors", &[feats[0], feats[1], feats[2], feats[3], feats[4], feats[5], feats[6], feats[7], "shape-model"], 1, &["model.safetensors", "conv1.weight", "shape"], &["shape-model"]),
        ("NaN weight in safetensors", &[feats[0], feats[1], feats[2], feats[3], feats[4], feats[5], feats[6], feats[7], "nan-model"], 1, &["model.safetensors", "NaN"], &["nan-model"]),
        ("truncated features.csv", &["meta", "trunc-features"], 1, &["features.csv", "line 3"], &["trunc-features"]),
        ("features output under a regular file", &[feats[0], feats[1], feats[2], feats[3], feats[4], feats[5], "a-file/f.csv", feats[7], "finished"], 1, &["a-file is a file"], &["a-file", "finished"]),
    ];
    let mut failures = Vec::new();
    for (name, args, code, words, unchanged) in cases {
        let before: Vec<_> = unchanged
            .iter()
            .map(|p| {
                let p = d.join(p);
                if p.is_dir() {
                    snapshot(&p)
                } else {
                    BTreeMap::from([(String::new(), std::fs::read(&p).unwrap())])
                }
            })
            .collect();
        let top_before: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let o = run(args, d);
        let err = stderr(&o);
        let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        eprintln!("{name}: {}", error_lines.join(" | "));
        let mut why = Vec::new();
        if o.status.code() != Some(*code) {
            why.push(format!("exit {:?}, wanted {code}", o.status.code()));
        }
        if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
            why.push("panic".into());
        }
        if error_lines.len() != 1 {
            why.push(format!("{} error lines", error_lines.len()));
        }
        for w in *words {
            if !error_lines.iter().any(|l| l.contains(w)) {
                why.push(format!("no {w:?} in the error line"));
            }
        }
        for (p, b) in unchanged.iter().zip(&before) {
            let p = d.join(p);
            let now = if p.is_dir() {
                snapshot(&p)
            } else {
                BTreeMap::from([(String::new(), std::fs::read(&p).unwrap())])
            };
            if &now != b {
                why.push(format!("{} changed", p.display()));
            }
        }
        let mut top_after: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top_after.retain(|f| !top_before.contains(f));
        if !top_after.is_empty() {
            why.push(format!("left behind {top_after:?}"));
        }
        if d.join("out").exists() && std::fs::read_dir(d.join("out")).unwrap().next().is_some() {
            why.push("left a folder under out/".into());
        }
        if !why.is_empty() {
            failures.push(format!("{name}: {} | stderr: {err}", why.join("; ")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
