//! The ONNX import against PyTorch: tests/fixtures/onnx/ holds a small residual CNN trained
//! by PyTorch on MNIST and exported three ways (the default exporter, which folds every batch
//! norm into its conv; the TorchScript exporter; and the unfolded graph written node by node,
//! batch norms, dropout and a final LogSoftmax kept), the same architecture trained by metaclf,
//! and what torch.func says about each in float64 (tests/fixtures/onnx/make_onnx_fixtures.py).
//! Per image: predictions equal, logits within 1e-5, all 7 gradient statistics of every layer
//! and of the net within 1e-4 relative (confident rows included).

mod common;

use metaclf::arch::Spec;
use metaclf::data::Shape;
use metaclf::model::{argmax_rows, Arch, Net};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

fn fixtures() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("fixtures.json")).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The fixtures' images as metaclf's MNIST reader gives them (bytes / 255).
fn images(f: &serde_json::Value) -> Vec<f32> {
    f["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as f32 / 255.0)
        .collect()
}

fn normalize(f: &serde_json::Value) -> Spec {
    Spec::Normalize {
        name: "normalize".into(),
        mean: floats(&f["normalize"]["mean"]),
        std: floats(&f["normalize"]["std"]),
    }
}

/// Compares a net with one fixture set: logits, predictions, every statistic; at least
/// `confident` rows have 1 − msp < 1e-4.
fn check(net: &Net, f: &serde_json::Value, set: &str, min_confident: usize) {
    let x = images(f);
    let n = 64;
    let k = net.arch.classes;
    let want = &f[set];
    let names: Vec<String> = want["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        net.layer_names(),
        names,
        "{set}: the layers of PyTorch's net, in its order"
    );
    let logits = net.forward(&x, n, None, false).logits;
    let (_, stats, _) = metaclf::features::grad_stats_batch(net, &x, n);
    let nl = net.layers.len() + 1;
    let rows = want["rows"].as_array().unwrap();
    assert_eq!(rows.len(), n);
    let mut confident = 0;
    for (i, r) in rows.iter().enumerate() {
        let z = floats(&r["logits"]);
        for (a, b) in logits[i * k..(i + 1) * k].iter().zip(&z) {
            assert!(
                (*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{set} row {i}: logit {a} vs PyTorch {b}"
            );
        }
        assert_eq!(
            argmax_rows(&logits[i * k..(i + 1) * k], k)[0] as u64,
            r["pred"].as_u64().unwrap(),
            "{set} row {i}: prediction"
        );
        confident += (r["one_minus_msp"].as_f64().unwrap() < 1e-4) as usize;
        for (l, s) in r["stats"].as_array().unwrap().iter().enumerate() {
            let s: [f64; 7] = std::array::from_fn(|j| s[j].as_f64().unwrap());
            let len = if l + 1 < nl {
                net.layers[l].len()
            } else {
                net.num_params()
            };
            for j in 0..7 {
                let got = stats[i * nl + l][j];
                assert!(
                    (got - s[j]).abs() <= metaclf::model::oracle::tolerance(j, &s, len),
                    "{set} row {i} layer {} stat {}: {got} vs torch.func {}",
                    names.get(l).map_or("all", |s| s.as_str()),
                    metaclf::features::GRAD_STATS[j],
                    s[j]
                );
            }
        }
    }
    assert!(
        confident >= min_confident,
        "{set}: {confident} confident rows"
    );
}

fn imported_net(f: &serde_json::Value, file: &str) -> Net {
    let path = dir().join(file);
    let imp = metaclf::onnx::load(&path).unwrap();
    assert_eq!(imp.input, (1, 28, 28));
    assert_eq!(imp.classes, 10);
    let mut specs = vec![normalize(f)];
    specs.extend(imp.specs.iter().cloned());
    let arch = Arch {
        input: Shape::new(1, 28, 28),
        classes: 10,
        specs,
    };
    Net::from_import(arch, &imp, &path).unwrap()
}

/// The default exporter's graph (batch norms folded into the convs, ReduceMean + Reshape for
/// the pooling): against torch.func on the folded net with the file's own weights.
#[test]
fn the_default_export_equals_torch_func() {
    let f = fixtures();
    check(&imported_net(&f, "small_resnet.onnx"), &f, "folded", 5);
}

/// The TorchScript exporter's graph (names only in the node names).
#[test]
fn the_torchscript_export_equals_torch_func() {
    let f = fixtures();
    let net = imported_net(&f, "small_resnet_ts.onnx");
    check(&net, &f, "folded_ts", 5);
}

/// The unfolded graph: batch norms (their γ and β as layers), dropout, a final LogSoftmax.
#[test]
fn the_unfolded_graph_equals_torch_func() {
    let f = fixtures();
    let path = dir().join("small_resnet_bn.onnx");
    let imp = metaclf::onnx::load(&path).unwrap();
    assert!(
        imp.notes.iter().any(|n| n.contains("LogSoftmax")),
        "{:?}",
        imp.notes
    );
    assert!(imp
        .specs
        .iter()
        .any(|s| matches!(s, Spec::Dropout { rate, .. } if (*rate - 0.2).abs() < 1e-6)));
    check(&imported_net(&f, "small_resnet_bn.onnx"), &f, "unfolded", 5);
}

/// The same architecture as a metaclf layer list (equivalent.toml), trained by metaclf, its
/// checkpoint loaded by PyTorch for the fixtures and by metaclf here; and with the last bias
/// of class 1 raised by 12, so that 1 − msp reaches ~1e-9.
#[test]
fn the_same_net_trained_by_metaclf_equals_torch_func() {
    let f = fixtures();
    let cfg = metaclf::Config::load(&dir().join("equivalent.toml")).unwrap();
    let arch = Arch::from_config(&cfg, 10);
    let mut net = Net::load(arch, &dir().join("metaclf_trained.safetensors")).unwrap();
    check(&net, &f, "metaclf_trained", 0);
    net.layers.last_mut().unwrap().b[1] += 12.0;
    check(&net, &f, "metaclf_trained_raised", 8);
}

/// An import written as a layer list (what `metaclf extend` does to an imported run) parses
/// back to the same layers, so the grown net keeps the import's structure and names.
#[test]
fn an_import_round_trips_as_a_layer_list() {
    for file in [
        "small_resnet.onnx",
        "small_resnet_ts.onnx",
        "small_resnet_bn.onnx",
    ] {
        let imp = metaclf::onnx::load(&dir().join(file)).unwrap();
        let raw: Vec<_> = imp.specs.iter().map(metaclf::arch::to_raw).collect();
        let text = toml::to_string(&serde_json::json!({ "layers": raw })).unwrap();
        #[derive(serde::Deserialize)]
        struct L {
            layers: Vec<metaclf::arch::RawLayer>,
        }
        let back: L = toml::from_str(&text).unwrap();
        assert_eq!(
            metaclf::arch::parse_layers(&back.layers).unwrap(),
            imp.specs,
            "{file}"
        );
    }
}

/// `metaclf check`, `run`, `score` and `features` on an imported model, from its config alone:
/// the run is not trained, keeps its own copy of the model (the original is removed after the
/// run and scoring still works), has the imported layers' gradient columns and MC columns from
/// the inserted dropout, and says in its report where the model came from.
#[test]
fn an_imported_model_runs_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(dir().join("small_resnet.onnx"), d.path().join("model.onnx")).unwrap();
    let cfg = d.path().join("imported.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\nname = \"imported\"\nseed = 3\nout_dir = \"{out}\"\n\
             [data]\ndata_dir = \"{data}\"\ntrain = \"mnist:train\"\ntest = \"mnist:test\"\n\
             train_limit = 600\ntest_limit = 400\nval_fraction = 0.5\n\
             normalize = {{ mean = [0.1307], std = [0.3081] }}\n\
             [model]\nonnx = \"model.onnx\"\n\
             [features]\nmc_samples = 8\nmc_dropout_after = [\"fc1\"]\nmc_rate = 0.2\n\
             [ood]\nsets = [\"uniform-noise\"]\ncount = 100\n\
             [meta]\nrepetitions = 2\nmodels = [\"glm\"]\n\
             groups = [\"softmax\", \"mc\", \"grad-block1\", \"grad-all\"]\n",
            out = d.path().join("reports").display(),
            data = root.join("data").display(),
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let text = common::succeeds(&common::run(&["check", cfg_s], root));
    for want in ["imported from", "block1.shortcut.0", "dropout mc_drop_fc1"] {
        assert!(text.contains(want), "check should say {want:?}: {text}");
    }
    common::succeeds(&common::run(&["run", cfg_s], root));
    std::fs::remove_file(d.path().join("model.onnx")).unwrap();
    let run = d.path().join("reports/imported");
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert!(
        run_json["test_accuracy"].as_f64().unwrap() > 0.9,
        "{run_json}"
    );
    assert_eq!(run_json["epochs"], 0);
    assert!(run_json["model_source"]
        .as_str()
        .unwrap()
        .starts_with("imported from model.onnx"));
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("onnx = \"model.onnx\""), "{resolved}");
    assert!(run.join("model.onnx").is_file());
    let header = std::fs::read_to_string(run.join("features.csv"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    for col in ["grad_block1.conv1_l2", "grad_fc1_kurt", "mc_std", "msp"] {
        assert!(header.split(',').any(|c| c == col), "{col} in {header}");
    }
    let report = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("imported from model.onnx"));
    let score = d.path().join("score");
    let run_s = run.to_str().unwrap();
    common::succeeds(&common::run(
        &[
            "score",
            "--run",
            run_s,
            "--data",
            "uniform-noise",
            "--count",
            "40",
            "--out",
            score.to_str().unwrap(),
        ],
        root,
    ));
    let rows = std::fs::read_to_string(score.join("scores.csv"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(rows, 41);
    let feats = d.path().join("f.csv");
    common::succeeds(&common::run(
        &[
            "features",
            "--run",
            run_s,
            "--data",
            "uniform-noise",
            "--count",
            "20",
            "--out",
            feats.to_str().unwrap(),
        ],
        root,
    ));
    // one row per drawn image
    let f = std::fs::read_to_string(&feats).unwrap();
    assert_eq!(f.lines().count(), 21);
}
