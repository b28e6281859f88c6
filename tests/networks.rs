//! Networks given as layer lists, end to end with the real binary on small generated data: a
//! residual + batch-norm net with an input crop, dense layers and dropout, trained with Adam on
//! a cosine schedule with augmentation; its checkpoint in PyTorch's names, its gradient
//! columns per layer, the report, the trust model and `metaclf score`; and layer lists that do
//! not fit refused by `metaclf check` before anything runs.

mod common;

use common::*;
use std::path::Path;

const NET: &str = r#"
[[model.layers]]
kind = "crop"
size = [24, 24]
[[model.layers]]
kind = "conv"
name = "stem"
out = 6
bias = false
[[model.layers]]
kind = "batchnorm"
name = "stem_bn"
[[model.layers]]
kind = "relu"
[[model.layers]]
kind = "residual"
name = "block1"
out = 8
stride = 2
[[model.layers]]
kind = "residual"
name = "block2"
out = 8
[[model.layers]]
kind = "avgpool"
[[model.layers]]
kind = "flatten"
[[model.layers]]
kind = "linear"
name = "fc1"
out = 16
[[model.layers]]
kind = "batchnorm"
name = "bn_fc1"
[[model.layers]]
kind = "relu"
[[model.layers]]
kind = "dropout"
rate = 0.3
[[model.layers]]
kind = "linear"
name = "fc"
"#;

fn config(dir: &Path, net: &str) -> std::path::PathBuf {
    toy_run_config(
        dir,
        "net",
        5,
        160,
        &format!(
            r#"{net}
[train]
epochs = 1
batch_size = 32
optimizer = "adam"
lr = 0.002
schedule = "cosine"
[train.augment]
crop_padding = 1
rotate = 5
[features]
mc_samples = 4
batch_size = 50
[ood]
sets = ["uniform-noise"]
count = 60
[known_unknowns]
source = "normal-noise"
count = 30
[shift]
sets = ["test@rotate=30"]
[meta]
repetitions = 2
models = ["glm", "ridge"]
groups = ["softmax", "grad-block1", "grad-fc1", "grad-all", "grad+softmax"]
"#
        ),
    )
}

#[test]
fn a_residual_batch_norm_net_runs_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), NET);
    let out = succeeds(&run(&["check", cfg.to_str().unwrap()], d.path()));
    assert!(
        out.contains("gradient statistics of stem, stem_bn, block1.conv1, block1.bn1, block1.conv2, block1.bn2, block1.shortcut.0, block1.shortcut.1, block2.conv1"),
        "{out}"
    );
    succeeds(&run(&["run", cfg.to_str().unwrap()], d.path()));
    let rd = d.path().join("reports/net");
    // the checkpoint in PyTorch's names and layouts, running statistics included
    let st = std::fs::read(rd.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + header_len]).unwrap();
    for (k, shape) in [
        ("stem.weight", vec![6, 1, 3, 3]),
        ("stem_bn.running_var", vec![6]),
        ("block1.conv1.weight", vec![8, 6, 3, 3]),
        ("block1.shortcut.0.weight", vec![8, 6, 1, 1]),
        ("block1.shortcut.1.running_mean", vec![8]),
        ("block2.bn2.bias", vec![8]),
        ("fc1.weight", vec![16, 8 * 6 * 6]),
        ("bn_fc1.weight", vec![16]),
        ("fc.weight", vec![4, 16]),
    ] {
        let got: Vec<u64> = header[k]["shape"]
            .as_array()
            .unwrap_or_else(|| panic!("{k} missing"))
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            got,
            shape.iter().map(|&v| v as u64).collect::<Vec<_>>(),
            "{k}"
        );
    }
    assert!(
        header.get("stem.bias").is_none(),
        "a conv without bias saves none"
    );
    let feats = std::fs::read_to_string(rd.join("features.csv")).unwrap();
    let head = feats.lines().next().unwrap();
    for col in [
        "grad_stem_l1",
        "grad_block1.shortcut.1_kurt",
        "grad_bn_fc1_mean",
        "grad_fc_l2",
        "grad_all_skew",
        "mc_std",
    ] {
        assert!(head.split(',').any(|c| c == col), "{col} not in {head}");
    }
    let rows = feats.lines().count() - 1;
    assert_eq!(rows, 160 + 60 + 30 + 160);
    let report = std::fs::read_to_string(rd.join("report.html")).unwrap();
    assert!(
        report.contains("block1.conv1"),
        "the report shows the layers"
    );
    // MC dropout ran through the dropout layer: the MC columns vary
    let mc: Vec<f64> = feats
        .lines()
        .skip(1)
        .map(|l| {
            let i = head.split(',').position(|c| c == "mc_std").unwrap();
            l.split(',').nth(i).unwrap().parse().unwrap()
        })
        .collect();
    assert!(mc.iter().any(|v| *v > 0.0));
    // the trust model scores new images with this net
    let (si, _) = toy(d.path(), "new", 40, 9);
    let out = d.path().join("scored");
    succeeds(&run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &format!("idx:{}", si.display()),
            "--out",
            out.to_str().unwrap(),
        ],
        d.path(),
    ));
    assert_eq!(
        std::fs::read_to_string(out.join("scores.csv"))
            .unwrap()
            .lines()
            .count(),
        41
    );
}

#[test]
fn layer_lists_that_do_not_fit_are_refused_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    for (net, want) in [
        (
            NET.replace("size = [24, 24]", "size = [40, 40]"),
            vec!["model.layers[0]", "crop", "40×40", "28×28"],
        ),
        (
            NET.replace("kind = \"avgpool\"", "kind = \"maxpool\"\nkernel = 13"),
            vec!["model.layers[6]", "maxpool", "8×12×12", "13×13"],
        ),
        (
            NET.replace("[[model.layers]]\nkind = \"flatten\"\n", ""),
            vec!["model.layers[7]", "linear \"fc1\"", "flatten"],
        ),
        (
            NET.replace(
                "kind = \"relu\"\n[[model.layers]]\nkind = \"residual\"",
                "kind = \"gelu\"\n[[model.layers]]\nkind = \"residual\"",
            ),
            vec!["model.layers[3]", "gelu", "known"],
        ),
        (
            NET.replace("out = 8\nstride = 2", "out = 8\nstride = 2\nkernel = 5"),
            vec!["model.layers[4]", "\"kernel\"", "residual"],
        ),
    ] {
        let cfg = config(d.path(), &net);
        let o = run(&["check", cfg.to_str().unwrap()], d.path());
        fails_with(&o, &want.iter().map(|s| &**s).collect::<Vec<_>>());
        assert!(!stderr(&o).contains("panicked"));
    }
}
