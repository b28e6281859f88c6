//! Reports: the plots (each as SVG and PNG under `plots/`) and one self-contained `report.html`,
//! built only from the run folder's files (run.json, history.csv, features.csv, metrics.json,
//! meta_scores.csv, coefficients.csv, ablation.md), so `metaclf report RUN_DIR` rebuilds them
//! without recomputing anything; and the verdicts derived from metrics.json (verdicts.json,
//! verdicts.csv). `headline` holds the first screen (verdicts, claims, heatmap).

pub mod compare;
mod curves;
mod files;
pub mod headline;
#[macro_use]
mod plots;
mod tables;

pub use curves::{kde, pr_points, quantile, rejection_curve, roc_points, silverman};
use files::*;
use plots::*;
use tables::*;
pub use tables::{esc, per_class_table};

use crate::error::{Error, Result};
use crate::eval::{self, Record};
use crate::features::FeatureTable;
use crate::runfolder::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Builds `plots/`, `report.html` and the verdicts (verdicts.json, verdicts.csv) in a finished
/// run folder.
/// The error task, then each OOD set (as (task, ood_set)), in the records' order.
fn task_list(recs: &[Record]) -> Vec<(String, Option<String>)> {
    let mut tasks: Vec<(String, Option<String>)> = vec![("error".into(), None)];
    for r in recs {
        if r.task == "ood" && !tasks.iter().any(|t| t.1 == r.ood_set) {
            tasks.push(("ood".into(), r.ood_set.clone()));
        }
    }
    tasks
}

/// The meta classifier and transform with the best mean AUROC on a task for a feature group
/// (without known unknowns), and that AUROC.
fn best_model(
    recs: &[Record],
    task: &str,
    ood: Option<&str>,
    feats: &str,
) -> Option<(String, String, f64)> {
    recs.iter()
        .filter(|r| {
            r.task == task
                && r.ood_set.as_deref() == ood
                && r.features == feats
                && !r.known_unknowns
                && r.metric == "auroc"
        })
        .max_by(|a, b| a.mean.total_cmp(&b.mean))
        .map(|r| (r.model.clone(), r.transform.clone(), r.mean))
}

/// " (log)" for a transformed scorer, "" for raw features.
fn tr_note(tr: &str) -> String {
    if tr == "none" {
        String::new()
    } else {
        format!(" ({tr})")
    }
}

/// What the report's sections read.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    dir: &'a Path,
    recs: &'a [Record],
    table: &'a FeatureTable,
    scores: &'a Scores,
    feature_groups: &'a [String],
    verdicts: &'a crate::verdicts::Verdicts,
}

pub fn build(dir: &Path) -> Result<()> {
    register_font();
    let t0 = std::time::Instant::now();
    let files = read_run(dir)?;
    let verdicts = verdicts_of(dir, &files);
    let RunFiles { run, metrics, recs } = files;
    let table = FeatureTable::read_csv(&dir.join("features.csv"))?;
    let scores = read_scores(dir)?;
    let mut plots: Vec<(String, Vec<Plot>)> = Vec::new();

    let recs = &recs[..];
    let feature_groups: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for r in recs {
            if !eval::BASELINES.iter().any(|b| b.0 == r.model) && !v.contains(&r.features) {
                v.push(r.features.clone());
            }
        }
        v
    };
    let inputs = Inputs {
        dir,
        recs,
        table: &table,
        scores: &scores,
        feature_groups: &feature_groups,
        verdicts: &verdicts,
    };
    if let Some(s) = training_section(dir)? {
        plots.push(s);
    }
    plots.push(violin_section(&inputs)?);
    plots.push(curve_section(&inputs)?);
    plots.push(calibration_section(&inputs)?);
    plots.push(model_section(&inputs)?);

    // the page
    let mut html = String::from("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>metaclf report</title><style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}svg{max-width:100%;height:auto}.plot{margin:1em 0;border-top:1px solid #ddd}.how{color:#555;font-size:0.9em}table{border-collapse:collapse;font-size:0.8em}td,th{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}td.best{font-weight:bold;background:#e8f3ff}ul.verdicts li.better{color:#0a5}ul.verdicts li.worse{color:#b22}table.heat td{text-align:right}.scroll{overflow-x:auto}code{background:#f4f4f4}</style></head><body>");
    html.push_str("<h1>metaclf report</h1>");
    write_atomic(
        &dir.join("verdicts.json"),
        (serde_json::to_string_pretty(&verdicts).map_err(|e| Error::Other(e.to_string()))? + "\n")
            .as_bytes(),
    )?;
    write_atomic(
        &dir.join("verdicts.csv"),
        crate::verdicts::to_csv(&verdicts).as_bytes(),
    )?;
    if let Some(ext) = std::fs::read_to_string(dir.join("extend.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        html.push_str(&extend_section(&ext));
    }
    html.push_str(&headline::block(&verdicts));
    html.push_str(&headline::heatmap(recs));
    let g = |k: &str| {
        run[k]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| run[k].to_string())
    };
    html.push_str(&format!(
        "<h2>Run summary</h2><table><tr><th>metaclf version</th><td>{}</td></tr><tr><th>seed</th><td>{}</td></tr><tr><th>test accuracy</th><td>{}</td></tr><tr><th>epochs (best)</th><td>{} ({})</td></tr><tr><th>parameters</th><td>{}</td></tr><tr><th>model</th><td>{}</td></tr><tr><th>wall time per stage (s)</th><td>{}</td></tr></table>",
        esc(&g("metaclf_version")),
        esc(&g("seed")),
        run["test_accuracy"].as_f64().map(|a| match run["test_accuracy_ci"].as_array() {
            Some(ci) if ci.len() == 2 => format!("{:.2}% [{:.2}%, {:.2}%] (95% Wilson interval over {} images)", 100.0 * a, 100.0 * ci[0].as_f64().unwrap_or(0.0), 100.0 * ci[1].as_f64().unwrap_or(0.0), run["test_images"]),
            _ => format!("{:.4}", a),
        }).unwrap_or_default(),
        esc(&g("epochs")),
        esc(&g("best_epoch")),
        esc(&g("parameters")),
        esc(&format!(
            "{}{}",
            run["model_source"].as_str().unwrap_or("trained by metaclf"),
            if run["dropout_layers"].as_u64() == Some(0) {
                ". The net has no dropout layer, so the MC-dropout features are left out (an imported model can have dropout inserted for MC passes: features.mc_dropout_after)"
            } else {
                ""
            }
        )),
        esc(&run["stage_seconds"].as_object().map(|o| o.iter().map(|(k, v)| format!("{k} {:.1}", v.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join(", ")).unwrap_or_default()),
    ));
    html.push_str(&format!(
        "<h3>Data</h3><p class=\"how\">Input {}.</p><table><tr><th>role</th><th>source</th><th>images</th><th>preprocessing</th><th>sha256</th></tr>",
        esc(run["input"].as_str().unwrap_or("28×28×1"))
    ));
    for d in run["data"].as_array().cloned().unwrap_or_default() {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&match d["accuracy"].as_f64() {
                Some(a) => format!(
                    "{} (CNN accuracy {:.4})",
                    d["role"].as_str().unwrap_or(""),
                    a
                ),
                None => d["role"].as_str().unwrap_or("").to_string(),
            }),
            esc(d["spec"].as_str().unwrap_or("")),
            d["images"],
            esc(d["prep"].as_str().unwrap_or("")),
            esc(&d["sha256"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(16)
                .collect::<String>())
        ));
    }
    html.push_str("</table>");
    html.push_str(&per_class_table(
        &table,
        &crate::report::files::label_names(&run),
    ));
    html.push_str(&format!(
        "<h2>Metric definitions</h2><p class=\"how\">{}</p>",
        esc(metrics["definitions"].as_str().unwrap_or(""))
    ));
    html.push_str("<h2>Ablation: which feature groups detect errors and unknown inputs</h2><p class=\"how\">How to read: one table per task; rows are the baselines (a raw score each), then the feature groups with and without known unknowns in meta training; columns are the meta classifiers; a cell is the mean AUROC over repetitions (hover for its spread, AUPR-In, AUPR-Out and FPR95); the best cell of each table is highlighted. Every metric of every cell: ablation.csv and ablation.md.</p>");
    html.push_str(&ablation_by_task(recs));
    let single: Vec<Record> =
        serde_json::from_value(metrics["single_metrics"].clone()).unwrap_or_default();
    html.push_str(&single_table(&single));
    html.push_str(&selective_table(recs));
    for (section, ps) in &plots {
        html.push_str(&format!("<h2>{}</h2>", esc(section)));
        for p in ps {
            html.push_str(&format!(
                "<div class=\"plot\" id=\"{}\"><h3>{}</h3><p class=\"how\">{}</p>{}</div>",
                esc(&p.name),
                esc(&p.title),
                esc(&p.how),
                p.svg
            ));
        }
    }
    html.push_str(&format!("<p class=\"how\">Report built in {:.1} s from the files of this run folder.</p></body></html>", t0.elapsed().as_secs_f64()));
    write_atomic(&dir.join("report.html"), html.as_bytes())
}

/// The training curves (loss and error per epoch, learning-rate cuts) from history.csv.
fn training_section(dir: &Path) -> Result<Option<(String, Vec<Plot>)>> {
    // training curves
    let hist_path = dir.join("history.csv");
    let (hist_head, hist) = read_csv(&hist_path)?;
    if hist_head.len() < 6 {
        return Err(Error::Format {
            path: hist_path,
            msg: "header must be epoch,lr,train_loss,train_acc,val_loss,val_acc,...".into(),
        });
    }
    let h: Vec<Vec<f64>> = (0..hist.len())
        .map(|i| {
            (0..hist_head.len())
                .map(|c| num(&hist_path, &hist_head, &hist, i, c))
                .collect::<Result<Vec<f64>>>()
        })
        .collect::<Result<_>>()?;
    if !h.is_empty() {
        let ep = h.len() as f64;
        let maxl = h.iter().flat_map(|r| [r[2], r[4]]).fold(0.0, f64::max) * 1.05;
        let mut series = vec![
            (
                "train loss".to_string(),
                h.iter().map(|r| (r[0], r[2])).collect::<Vec<_>>(),
                false,
            ),
            (
                "validation loss".to_string(),
                h.iter().map(|r| (r[0], r[4])).collect(),
                false,
            ),
            (
                "train error (1 − acc)".to_string(),
                h.iter().map(|r| (r[0], 1.0 - r[3])).collect(),
                false,
            ),
            (
                "validation error (1 − acc)".to_string(),
                h.iter().map(|r| (r[0], 1.0 - r[5])).collect(),
                false,
            ),
        ];
        for w in h.windows(2) {
            if w[1][1] < w[0][1] {
                series.push((
                    format!("lr cut → {:.1e} (epoch {})", w[1][1], w[1][0]),
                    vec![(w[1][0], 0.0), (w[1][0], maxl)],
                    true,
                ));
            }
        }
        let svg = both!(dir, "training", |root| {
            lines(
                &root,
                "Training curves",
                "epoch",
                "cross-entropy loss (nats) / error rate",
                (0.5, ep + 0.5),
                (0.0, maxl.max(0.05)),
                &series,
                SeriesLabelPosition::UpperRight,
            )
        });
        return Ok(Some(("Training".into(), vec![Plot { name: "training".into(), title: "Loss and error per epoch".into(), how: "Validation loss should fall and flatten; dashed lines mark learning-rate cuts on plateaus. The weights of the best validation epoch are kept.".into(), svg }])));
    }

    Ok(None)
}

/// How a violin panel shows a column: magnitudes (gradient l1, l2, max; −min; entropy-like
/// scores spanning decades) on a log10 axis, signed statistics (mean, skew, kurt) on asinh, the
/// rest as they are.
fn violin_scale(col: &str) -> (&'static str, fn(f64) -> f64) {
    let stat = col.rsplit('_').next().unwrap_or("");
    if col.starts_with("grad_") {
        match stat {
            "l1" | "l2" | "max" => ("log10", |v: f64| v.max(1e-30).log10()),
            "min" => ("log10 −", |v: f64| (-v).max(1e-30).log10()),
            _ => ("asinh", f64::asinh),
        }
    } else if matches!(col, "gradnorm" | "exgrad_fc") {
        ("log10", |v: f64| v.max(1e-30).log10())
    } else {
        ("", |v: f64| v)
    }
}

/// Violin plots by group (ID correct, ID wrong, each OOD set), one figure per feature family
/// (softmax, MC dropout, logits, gradient norms: one panel per column) and one per gradient
/// statistic (one panel per layer and the whole net), so every column is shown in few figures.
fn violin_section(i: &Inputs) -> Result<(String, Vec<Plot>)> {
    let Inputs { dir, table, .. } = *i;
    let mut groups: Vec<(String, Vec<usize>)> =
        vec![("ID correct".into(), vec![]), ("ID wrong".into(), vec![])];
    for r in 0..table.len() {
        let s = &table.set[r];
        if s == "id-test" {
            groups[if table.correct(r) == Some(true) { 0 } else { 1 }]
                .1
                .push(r);
        } else if let Some(o) = s.strip_prefix("ood-") {
            match groups.iter_mut().find(|g| g.0 == o) {
                Some(g) => g.1.push(r),
                None => groups.push((o.to_string(), vec![r])),
            }
        }
    }
    let sc = crate::features::SCORE_COLUMNS;
    let mut figures: Vec<(String, String, Vec<String>)> = [
        ("softmax", "Softmax scores", &sc[..2]),
        ("mc", "MC-dropout statistics", &sc[2..6]),
        ("logits", "Logit scores", &sc[6..8]),
        ("gradnorm", "Gradient-norm scores", &sc[8..10]),
    ]
    .iter()
    .map(|(n, t, c)| {
        (
            n.to_string(),
            t.to_string(),
            c.iter().map(|s| s.to_string()).collect(),
        )
    })
    .collect();
    let layers: Vec<String> = table
        .columns
        .iter()
        .filter_map(|c| {
            c.strip_prefix("grad_")?
                .strip_suffix("_l1")
                .map(String::from)
        })
        .collect();
    for s in crate::features::GRAD_STATS {
        figures.push((
            format!("grad_{s}"),
            format!("Gradient {s} per layer"),
            layers.iter().map(|l| format!("grad_{l}_{s}")).collect(),
        ));
    }
    let counts = groups
        .iter()
        .map(|(g, r)| format!("{g} {}", r.len()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut vplots = Vec::new();
    for (slug, title, cols) in figures {
        let panels: Vec<ViolinPanel> = cols
            .iter()
            .filter_map(|key| {
                let c = table.col(key)?;
                let (axis, f) = violin_scale(key);
                let gv = groups
                    .iter()
                    .map(|(name, rows)| {
                        let v = rows.iter().map(|&r| f(table.row(r)[c] as f64)).collect();
                        (name.clone(), v)
                    })
                    .collect();
                let yl = if axis.is_empty() {
                    key.clone()
                } else {
                    let short = match key.strip_prefix("grad_") {
                        Some(r) => r.rsplit('_').next().unwrap_or(r),
                        None => key,
                    };
                    format!("{axis} {short}")
                };
                Some((key.clone(), yl, gv))
            })
            .collect();
        if panels.is_empty() {
            continue;
        }
        let name = format!("violin_{slug}");
        let ncol = panels.len().min(3);
        let nrow = panels.len().div_ceil(ncol);
        let size = (1050, 34 + 300 * nrow as u32);
        let svg = render_sized(
            dir,
            &name,
            size,
            &|root| violin_grid(&root, &panels, ncol),
            &|root| violin_grid(&root, &panels, ncol),
        )?;
        vplots.push(Plot { name, title, how: format!("Kernel densities (Silverman bandwidth), thick line = median, thin lines = quartiles; widths are scaled per group; each violin is cut at its group's own range. Gradient magnitudes (l1, l2, max, −min, gradnorm) on log10 axes, signed statistics (mean, skew, kurt) on asinh axes. A feature separates well when the ID-correct violin sits apart from ID-wrong and OOD. Images per group: {counts}."), svg });
    }
    Ok(("Feature distributions".into(), vplots))
}

/// ROC and PR curves per task: the best meta classifier of each feature group against the baselines.
fn curve_section(i: &Inputs) -> Result<(String, Vec<Plot>)> {
    let Inputs {
        dir,
        recs,
        scores,
        feature_groups,
        ..
    } = *i;
    let tasks = task_list(recs);
    let best_for = |t: &str, o: Option<&str>, f: &str| best_model(recs, t, o, f);
    // ROC and PR per task: best meta classifier per feature group vs msp and entropy baselines
    let mut curve_plots = Vec::new();
    for (task, ood) in &tasks {
        let label = ood
            .clone()
            .map(|o| format!("OOD: {o}"))
            .unwrap_or_else(|| "error detection".into());
        // (model, features, known unknowns, transform, legend name)
        let mut scorers: Vec<(String, String, bool, String, String)> = vec![
            (
                "msp".into(),
                "msp".into(),
                false,
                "none".into(),
                "msp baseline".into(),
            ),
            (
                "entropy".into(),
                "entropy".into(),
                false,
                "none".into(),
                "entropy baseline".into(),
            ),
        ];
        // the task's best detector and its best gradient detector (as the verdicts name them,
        // known unknowns included), then the best feature groups (each with its best meta
        // classifier and transform) up to six curves, to stay readable
        let vtask = ood
            .as_ref()
            .map(|o| format!("ood-{o}"))
            .unwrap_or_else(|| "error".into());
        for role in ["best", "best gradient", "best combination"] {
            let Some(v) = i.verdicts.comparisons.iter().find(|x| {
                x.task == vtask && x.metric == "auroc" && x.role.split(", ").any(|r| r == role)
            }) else {
                continue;
            };
            let p: Vec<&str> = v.detector.split('/').collect();
            if p.len() < 3 {
                continue;
            }
            let (m, f, ku) = (p[0].to_string(), p[1].to_string(), p[2] == "with");
            let tr = p.get(3).unwrap_or(&"none").to_string();
            if scorers
                .iter()
                .any(|s| s.0 == m && s.1 == f && s.2 == ku && s.3 == tr)
            {
                continue;
            }
            let kn = if ku { ", known unknowns" } else { "" };
            let name = if m == f {
                format!("{m} ({role})")
            } else {
                format!("{m} on {f}{}{kn} ({role})", tr_note(&tr))
            };
            scorers.push((m, f, ku, tr, name));
        }
        let mut best: Vec<(String, String, String, f64)> = feature_groups
            .iter()
            .filter_map(|g| {
                best_for(task, ood.as_deref(), g).map(|(m, tr, a)| (m, g.clone(), tr, a))
            })
            .collect();
        best.sort_by(|a, b| b.3.total_cmp(&a.3));
        for (m, g, tr, _) in best {
            if scorers.len() >= 6 {
                break;
            }
            if scorers.iter().any(|s| s.1 == g) {
                continue;
            }
            let name = format!("{m} on {g}{}", tr_note(&tr));
            scorers.push((m, g, false, tr, name));
        }
        let mut roc = Vec::new();
        let mut pr = Vec::new();
        for (model, feats, ku, tr, name) in &scorers {
            let Some(rows) = scores.get(&(model.clone(), feats.clone(), *ku, tr.clone())) else {
                continue;
            };
            let id = scores.set_index("id-test");
            let oi = ood
                .as_ref()
                .and_then(|o| scores.set_index(&format!("ood-{o}")));
            let (pos, s): (Vec<bool>, Vec<f64>) = rows
                .iter()
                .filter(|r| Some(r.set) == id || (oi.is_some() && Some(r.set) == oi))
                .map(|r| {
                    (
                        if ood.is_some() {
                            Some(r.set) == id
                        } else {
                            r.target == 1
                        },
                        r.score,
                    )
                })
                .unzip();
            let auroc = find(recs, model, feats, *ku, tr, task, ood.as_deref(), "auroc")
                .map(|r| r.mean)
                .unwrap_or(f64::NAN);
            let ap = find(recs, model, feats, *ku, tr, task, ood.as_deref(), "aupr_in")
                .map(|r| r.mean)
                .unwrap_or(f64::NAN);
            roc.push((
                format!("{name} (AUROC {auroc:.3})"),
                roc_points(&pos, &s),
                false,
            ));
            pr.push((
                format!("{name} (AUPR-In {ap:.3})"),
                pr_points(&pos, &s),
                false,
            ));
        }
        let slug = ood.clone().unwrap_or_else(|| "error".into());
        let n1 = format!("roc_{slug}");
        let svg = both!(dir, &n1, |root| {
            lines(
                &root,
                &format!("ROC, {label}"),
                "false positive rate",
                "true positive rate",
                (0.0, 1.0),
                (0.0, 1.0),
                &roc,
                SeriesLabelPosition::LowerRight,
            )
        });
        curve_plots.push(Plot { name: n1, title: format!("ROC — {label}"), how: "Positive = trustworthy (correct / in-distribution). Higher and further left is better. Shown: the msp and entropy baselines, the task's best detector and its best gradient and combination detectors (as in the verdicts, known unknowns included), then the best other feature groups (each with its best meta classifier, without known unknowns) up to six curves; legend values are means over repetitions, curves are repetition 0.".into(), svg });
        let n2 = format!("pr_{slug}");
        let ymin = pr
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .fold(1.0, f64::min)
            .max(0.0);
        let svg = both!(dir, &n2, |root| {
            lines(
                &root,
                &format!("Precision–recall, {label}"),
                "recall (positives kept)",
                "precision",
                (0.0, 1.0),
                (ymin, 1.0),
                &pr,
                SeriesLabelPosition::LowerLeft,
            )
        });
        curve_plots.push(Plot {
            name: n2,
            title: format!("Precision–recall — {label}"),
            how: "Precision of the kept (trusted) images as the threshold falls.".into(),
            svg,
        });
    }
    Ok(("ROC and PR curves".into(), curve_plots))
}

/// The reliability diagram and the accuracy-vs-rejection curve.
fn calibration_section(i: &Inputs) -> Result<(String, Vec<Plot>)> {
    let Inputs {
        dir,
        recs,
        table,
        scores,
        feature_groups,
        ..
    } = *i;
    let best_for = |t: &str, o: Option<&str>, f: &str| best_model(recs, t, o, f);
    // reliability diagram: softmax and MC-dropout confidence on the ID test set
    let id_rows: Vec<usize> = (0..table.len())
        .filter(|&r| table.set[r] == "id-test")
        .collect();
    let correct: Vec<bool> = id_rows
        .iter()
        .map(|&r| table.correct(r) == Some(true))
        .collect();
    let mut rel_series = vec![(
        "perfect calibration".to_string(),
        vec![(0.0, 0.0), (1.0, 1.0)],
        true,
    )];
    let mut cal_text = Vec::new();
    for (col, name) in [("msp", "softmax"), ("mc_pmax", "MC dropout")] {
        let Some(c) = table.col(col) else { continue };
        let conf: Vec<f64> = id_rows.iter().map(|&r| table.row(r)[c] as f64).collect();
        let (ece, mce, bins) = eval::calibration(&conf, &correct, 15);
        rel_series.push((
            format!("{name}: ECE {ece:.4}, MCE {mce:.4}"),
            bins.iter()
                .filter(|b| b.2 > 0)
                .map(|b| (b.0, b.1))
                .collect(),
            false,
        ));
        cal_text.push(format!("{name}: ECE {ece:.4}, MCE {mce:.4}"));
    }
    // temperature scaling (calibration.json of the training stage)
    if let Some(c) = std::fs::read_to_string(dir.join("calibration.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
    {
        let t = c["temperature"].as_f64().unwrap_or(f64::NAN);
        let (ece, mce) = (
            c["after"]["ece"].as_f64().unwrap_or(f64::NAN),
            c["after"]["mce"].as_f64().unwrap_or(f64::NAN),
        );
        let pts: Vec<(f64, f64)> = c["after"]["bins"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|x| Some((x["confidence"].as_f64()?, x["accuracy"].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        if !pts.is_empty() {
            rel_series.push((
                format!("softmax / T (T = {t:.3}): ECE {ece:.4}, MCE {mce:.4}"),
                pts,
                false,
            ));
            cal_text.push(format!(
                "temperature scaling (T = {t:.3}, fitted on the validation split): ECE {ece:.4}, MCE {mce:.4}"
            ));
        }
    }
    let svg = both!(dir, "reliability", |root| {
        lines(
            &root,
            "Reliability diagram (15 bins, ID test set)",
            "confidence (predicted probability of the predicted class)",
            "accuracy",
            (0.0, 1.0),
            (0.0, 1.0),
            &rel_series,
            SeriesLabelPosition::UpperLeft,
        )
    });
    let mut cal_plots = vec![Plot {
        name: "reliability".into(),
        title: "Reliability diagram".into(),
        how: format!(
            "Points below the diagonal are over-confident bins. {}",
            cal_text.join("; ")
        ),
        svg,
    }];

    // accuracy vs rejection
    let mut rej = Vec::new();
    for (col, sign) in [("msp", 1.0), ("entropy", -1.0), ("mc_pmax", 1.0)] {
        if let Some(c) = table.col(col) {
            let s: Vec<f64> = id_rows
                .iter()
                .map(|&r| sign * table.row(r)[c] as f64)
                .collect();
            rej.push((col.to_string(), rejection_curve(&correct, &s, 400), false));
        }
    }
    // the three best feature groups for error detection, each with its best meta classifier
    let mut best_err: Vec<(String, String, String, f64)> = feature_groups
        .iter()
        .filter_map(|g| best_for("error", None, g).map(|(m, tr, a)| (m, g.clone(), tr, a)))
        .collect();
    best_err.sort_by(|a, b| b.3.total_cmp(&a.3));
    for (m, g, tr, _) in best_err.into_iter().take(3) {
        {
            if let Some(rows) = scores.get(&(m.clone(), g.clone(), false, tr.clone())) {
                let id = scores.set_index("id-test");
                let (ok, s): (Vec<bool>, Vec<f64>) = rows
                    .iter()
                    .filter(|r| Some(r.set) == id)
                    .map(|r| (r.target == 1, r.score))
                    .unzip();
                rej.push((
                    format!("{m} on {g}{} (meta-test half)", tr_note(&tr)),
                    rejection_curve(&ok, &s, 400),
                    false,
                ));
            }
        }
    }
    // the interesting part is the first quarter: beyond it every curve sits at 100%
    for r in rej.iter_mut() {
        r.1.retain(|p| p.0 <= 0.25);
    }
    let ymin = rej
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0, f64::min);
    let svg = both!(dir, "rejection", |root| {
        lines(
            &root,
            "Accuracy of the kept predictions vs rejected fraction",
            "fraction rejected (least trustworthy first)",
            "accuracy of kept predictions",
            (0.0, 0.25),
            (ymin.min(0.999), 1.0),
            &rej,
            SeriesLabelPosition::LowerRight,
        )
    });
    cal_plots.push(Plot { name: "rejection".into(), title: "Accuracy vs rejection".into(), how: "Reject the x% least trustworthy predictions and measure the accuracy of the rest: a steeper rise means a better trust score.".into(), svg });
    Ok(("Calibration and rejection".into(), cal_plots))
}

/// The meta classifiers: LASSO coefficients and known unknowns on/off.
fn model_section(i: &Inputs) -> Result<(String, Vec<Plot>)> {
    let Inputs {
        dir,
        recs,
        feature_groups,
        ..
    } = *i;
    let tasks = task_list(recs);
    // LASSO coefficients (mean standardised coefficient over repetitions, largest group)
    let coef_path = dir.join("coefficients.csv");
    let (coef_head, coefs) = if coef_path.exists() {
        read_csv(&coef_path)?
    } else {
        Default::default()
    };
    for i in 0..coefs.len() {
        if coefs[i].len() > 6 {
            num(&coef_path, &coef_head, &coefs, i, 6)?;
        }
    }
    let mut model_plots = Vec::new();
    let lasso_group = feature_groups
        .iter()
        .max_by_key(|g| {
            coefs
                .iter()
                .filter(|r| r.len() > 4 && r[1] == "lasso" && &r[2] == *g && r[3] == "false")
                .count()
        })
        .cloned();
    if let Some(g) = lasso_group {
        let mut terms: Vec<String> = Vec::new();
        let mut sum: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for r in coefs
            .iter()
            .filter(|r| r.len() > 6 && r[1] == "lasso" && r[2] == g && r[4] != "(intercept)")
        {
            let ku = r[3] == "true";
            let tr = r.get(8).map(String::as_str).unwrap_or("none");
            if !terms.contains(&r[4]) {
                terms.push(r[4].clone());
            }
            let e = sum.entry(format!("{}|{ku}|{tr}", r[4])).or_default();
            e.0 += r[6].parse::<f64>().unwrap_or(0.0); // checked finite above
            e.1 += 1.0;
        }
        let series: Vec<(String, Vec<f64>)> = [
            (false, "none", "without known unknowns"),
            (true, "none", "with known unknowns"),
            (false, "log", "log features, without known unknowns"),
            (true, "log", "log features, with known unknowns"),
        ]
        .iter()
        .filter(|(ku, tr, _)| sum.keys().any(|k| k.ends_with(&format!("|{ku}|{tr}"))))
        .map(|(ku, tr, name)| {
            (
                name.to_string(),
                terms
                    .iter()
                    .map(|t| {
                        sum.get(&format!("{t}|{ku}|{tr}"))
                            .map(|(s, n)| s / n)
                            .unwrap_or(f64::NAN)
                    })
                    .collect(),
            )
        })
        .collect();
        if !terms.is_empty() {
            let title = format!("LASSO coefficients on '{g}' (standardised, mean over reps)");
            let xl = "coefficient (per SD of the feature)";
            let size = (W, (16 * terms.len() as u32 + 120).max(H));
            let svg = render_sized(
                dir,
                "lasso_coefficients",
                size,
                &|root| hbars(&root, &title, xl, &terms, &series),
                &|root| hbars(&root, &title, xl, &terms, &series),
            )?;
            model_plots.push(Plot { name: "lasso_coefficients".into(), title: "LASSO coefficients".into(), how: "Features the LASSO keeps have non-zero bars; the sign says whether larger values mean more (+) or less (−) trustworthy.".into(), svg });
        }
    }
    // known unknowns on/off: OOD AUROC per set for the best group of the best model
    let ku_model = recs
        .iter()
        .filter(|r| r.known_unknowns && r.metric == "auroc" && r.task == "ood")
        .max_by(|a, b| a.mean.total_cmp(&b.mean))
        .map(|r| (r.model.clone(), r.features.clone(), r.transform.clone()));
    if let Some((m, g, tr)) = ku_model {
        let sets: Vec<String> = tasks.iter().filter_map(|t| t.1.clone()).collect();
        let series: Vec<(String, Vec<f64>)> = [false, true]
            .iter()
            .map(|&ku| {
                (
                    format!(
                        "{m} on {g}{}, known unknowns {}",
                        tr_note(&tr),
                        if ku { "on" } else { "off" }
                    ),
                    sets.iter()
                        .map(|s| {
                            find(recs, &m, &g, ku, &tr, "ood", Some(s), "auroc")
                                .map(|r| r.mean)
                                .unwrap_or(f64::NAN)
                        })
                        .collect(),
                )
            })
            .collect();
        let svg = both!(dir, "known_unknowns", |root| {
            bars(
                &root,
                "OOD AUROC with and without known unknowns",
                "AUROC",
                &sets,
                &series,
            )
        });
        model_plots.push(Plot { name: "known_unknowns".into(), title: "Known unknowns on/off".into(), how: "Does adding outside images (here the configured known-unknown source) to meta-train as untrustworthy help detect other OOD sets?".into(), svg });
    }
    Ok(("Meta classifiers".into(), model_plots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_accuracy_counts_id_test_rows_only() {
        let t = FeatureTable {
            columns: vec!["msp".into()],
            set: ["id-test", "id-test", "id-test", "ood-x", "id-test"]
                .map(String::from)
                .to_vec(),
            index: vec![0, 1, 2, 0, 3],
            label: vec![Some(7), Some(7), Some(2), None, Some(2)],
            pred: vec![7, 2, 2, 7, 2],
            source_label: vec![None; 5],
            values: vec![0.5; 5],
        };
        let names = [(7, "seven".to_string())].into_iter().collect();
        let h = per_class_table(&t, &names);
        // intervals: scipy binomtest(2, 2) and (1, 2), method="wilson"
        assert!(
            h.contains(
                "<td>2</td><td>2</td><td>2</td><td>2</td><td>100.00% [34.24%, 100.00%]</td>"
            ),
            "{h}"
        );
        assert!(
            h.contains(
                "<td>7</td><td>seven</td><td>2</td><td>1</td><td class=\"best\" title=\"lowest\">50.00% [9.45%, 90.55%]</td>"
            ),
            "{h}"
        );
    }

    #[test]
    fn kde_by_hand() {
        // data {0, 1}: sd = 0.7071, IQR = 0.5 → a = min(0.7071, 0.3731) = 0.3731; h = 0.9·a·2^-0.2
        let (y, h) = kde(&[0.0, 1.0], &[0.0, 0.5]);
        let a = 0.5f64 / 1.34;
        let he = 0.9 * a * 2f64.powf(-0.2);
        assert!((h - he).abs() < 1e-12);
        let phi = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
        assert!((y[0] - (phi(0.0) + phi(1.0 / he)) / (2.0 * he)).abs() < 1e-12);
        assert!((y[1] - 2.0 * phi(0.5 / he) / (2.0 * he)).abs() < 1e-12);
    }

    #[test]
    fn curves_agree_with_metrics() {
        let pos = [true, false, true, true, false, true, false, true];
        let s = [0.9, 0.8, 0.7, 0.7, 0.3, 0.6, 0.1, 0.2];
        // trapezoid area under the ROC points = AUROC (ties included)
        let r = roc_points(&pos, &s);
        let area: f64 = r
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - eval::auroc(&pos, &s).unwrap()).abs() < 1e-12);
        // step sum over PR points = average precision
        let p = pr_points(&pos, &s);
        let mut last = 0.0;
        let ap: f64 = p
            .iter()
            .map(|(rc, pr)| {
                let v = (rc - last) * pr;
                last = *rc;
                v
            })
            .sum();
        assert!((ap - eval::average_precision(&pos, &s).unwrap()).abs() < 1e-12);
        // rejecting nothing keeps the plain accuracy; rejecting the worst half raises it
        let c = rejection_curve(&pos, &s, 2);
        assert!((c[0].1 - 5.0 / 8.0).abs() < 1e-12);
        assert!((c[1].1 - 0.75).abs() < 1e-12);
    }
}
