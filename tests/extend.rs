//! The annotation loop end to end on MNIST, as a user runs it: a run that never saw digits
//! 7–9 scores a batch, the images it doubts are labelled with their true digits (simulating
//! the user on review.html), and `metaclf extend` adds the new classes. Checks that 7, 8, 9
//! become classes after 0–6 (nothing renumbered), that the old classes are not forgotten,
//! that the new ones are learnt, and that the extended run scores new batches.
//!
//! `METACLF_EXTEND_CONFIG=configs/mnist-unknown.toml METACLF_EXTEND_BATCH=2000 cargo test
//! --release --test extend -- --nocapture` runs the full-size experiment and prints its
//! figures (default: configs/mnist-7to9-quick.toml, 600 images).

mod common;

use common::{run, succeeds};
use std::path::Path;

#[test]
fn label_the_doubted_images_and_extend_mnist_with_7_to_9() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::env::var("METACLF_EXTEND_CONFIG")
        .unwrap_or_else(|_| "configs/mnist-7to9-quick.toml".into());
    let batch_n: usize = std::env::var("METACLF_EXTEND_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    succeeds(&run(
        &["run", &config, "--out", base.to_str().unwrap()],
        root,
    ));

    // a batch: the last images of MNIST's training file, as PNG files (digits 0–9)
    let cfg = metaclf::config::Config::load(&root.join(&config)).unwrap();
    let mut ctx = metaclf::pipeline::load_ctx(&cfg, 0, "test");
    ctx.data_dir = root.join(&cfg.data.data_dir);
    let train = metaclf::data::load("mnist:train", &ctx).unwrap();
    let labels = train.labels.clone().unwrap();
    let batch = d.path().join("batch");
    std::fs::create_dir_all(&batch).unwrap();
    let mut truth = std::collections::BTreeMap::new();
    for (i, &label) in labels.iter().enumerate().skip(train.len() - batch_n) {
        let px: Vec<u8> = train
            .image(i)
            .iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect();
        let p = batch.join(format!("img{i:05}.png"));
        image::GrayImage::from_raw(28, 28, px)
            .unwrap()
            .save(&p)
            .unwrap();
        truth.insert(p.display().to_string(), label);
    }
    let spec = format!("folder-flat:{}", batch.display());
    let scored = d.path().join("scored");
    succeeds(&run(
        &[
            "score",
            "--run",
            base.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            scored.to_str().unwrap(),
        ],
        root,
    ));

    // the user labels every suspect image (new kind or misclassified) with its true digit
    let rows = metaclf::score::read_scores_csv(&scored.join("scores.csv")).unwrap();
    let mut csv = String::from("path,index,label,source\n");
    let (mut n_labels, mut n_new_kind, mut n_789) = (0, 0, 0);
    for r in &rows {
        if r.suspect == metaclf::score::Suspect::None {
            continue;
        }
        let t = truth[&r.path];
        csv.push_str(&format!("{},{},{t},user\n", r.path, r.index));
        n_labels += 1;
        n_new_kind += (r.suspect == metaclf::score::Suspect::NewKind) as usize;
        n_789 += (t >= 7) as usize;
    }
    let in_batch_789 = truth.values().filter(|&&t| t >= 7).count();
    let caught_789 = rows
        .iter()
        .filter(|r| truth[&r.path] >= 7 && r.suspect == metaclf::score::Suspect::NewKind)
        .count();
    let lp = d.path().join("labels.csv");
    std::fs::write(&lp, &csv).unwrap();
    let ext = d.path().join("extended");
    let out = succeeds(&run(
        &[
            "extend",
            base.to_str().unwrap(),
            "--labels",
            lp.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            ext.to_str().unwrap(),
            "--epochs",
            "2",
        ],
        root,
    ));
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ext.join("extend.json")).unwrap()).unwrap();
    println!(
        "batch {batch_n} images ({in_batch_789} of 7–9); {n_labels} labels given ({n_new_kind} new-kind, \
         {n_789} of them 7–9); 7–9 flagged new-kind: {caught_789} of {in_batch_789}\n{out}\n{}",
        serde_json::to_string_pretty(&e["classes"]).unwrap()
    );
    // 7, 8, 9 appended after 0–6: nothing renumbered
    let names: Vec<String> = e["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&names[..7], ["0", "1", "2", "3", "4", "5", "6"]);
    let new: Vec<&str> = e["new_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !new.is_empty() && new.iter().all(|n| ["7", "8", "9"].contains(n)),
        "{new:?}"
    );
    assert_eq!(e["labels"], n_labels);
    // not forgotten, and learnt (tested on MNIST's own test images of 7–9, never trained on)
    let before = e["old_classes"]["before"].as_f64().unwrap();
    let after = e["old_classes"]["after"].as_f64().unwrap();
    assert!(after > before - 0.05, "old classes {before} → {after}");
    let new_acc = e["new_classes_accuracy"]["after"].as_f64().unwrap();
    assert!(new_acc > 0.5, "new classes {new_acc}");
    assert!(e["new_classes_accuracy"]["images"].as_u64().unwrap() > 100);
    // the extended run is a run: its report shows the comparison, and it scores new batches
    let html = std::fs::read_to_string(ext.join("report.html")).unwrap();
    assert!(html.contains("<h2>Extended from"));
    let rj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ext.join("run.json")).unwrap()).unwrap();
    assert_eq!(rj["classes"], 7 + new.len());
    let s2 = d.path().join("scored2");
    succeeds(&run(
        &[
            "score",
            "--run",
            ext.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            s2.to_str().unwrap(),
        ],
        root,
    ));
    let rows2 = metaclf::score::read_scores_csv(&s2.join("scores.csv")).unwrap();
    let right_789 = rows2
        .iter()
        .filter(|r| truth[&r.path] >= 7 && r.pred_name == truth[&r.path].to_string())
        .count();
    println!("after extending, {right_789} of the batch's {in_batch_789} 7–9 predicted right");
    assert!(right_789 > 0);
}
