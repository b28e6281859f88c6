//! `metaclf extend RUN --labels labels.csv --data SPEC --out NEW_RUN`: closes the annotation
//! loop. The user's labels (review.html's labels.csv, or the `validated` rows of an EcoTaxa
//! export) name images of SPEC; labels that are not classes of RUN become new classes,
//! appended after RUN's (no existing class is renumbered). The CNN is warm-started from RUN's
//! weights with its output layer grown (old logits unchanged, see `Net::grow`) and fine-tuned
//! on RUN's own training images plus the labelled ones; then features, meta classifiers, trust
//! model and report are made as for a run, and `extend.json` (in the report too) compares
//! NEW_RUN with RUN: accuracy per class with Wilson intervals, before and after, and the OOD
//! detection of the sets both have.
//!
//! Forgetting: the old classes are rehearsed with *all* of RUN's training images in every
//! epoch (joint fine-tuning, the strongest rehearsal), the labelled images are repeated so
//! that each new class weighs about as much as an old one (at most 50 times), and the learning
//! rate is 0.3 × `train.lr`. Early stopping and plateau cuts watch RUN's validation images.

use crate::config::ClassRef;
use crate::data::stream::{self, OnError, TrainStats};
use crate::data::{stage_rng, Dataset};
use crate::error::{Error, IoContext, Result};
use crate::model::TrainParams;
use crate::pipeline::{self, Finish, Splits};
use crate::score::Scorer;
use rand::seq::SliceRandom;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `metaclf extend`.
#[derive(Debug, Clone)]
pub struct ExtendOptions {
    pub run: PathBuf,
    pub labels: PathBuf,
    pub data: String,
    pub out: PathBuf,
    /// Fine-tuning epochs.
    pub epochs: usize,
    /// Share of each new class's labelled images kept for testing (when RUN's test set has no
    /// images of that class among its held-out classes).
    pub test_fraction: f64,
    pub force: bool,
}

/// One label the user gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// Line in the labels file (1-based), for messages.
    pub line: usize,
    /// The image's path as the file gives it ("" when it names the image by index).
    pub path: String,
    pub index: Option<usize>,
    pub label: String,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads labels: review.html's `labels.csv` (`path,index,label,source`; `label` required, one
/// of `path` or `index`) or an EcoTaxa export TSV (its `validated` rows: `img_file_name`
/// relative to the TSV's folder, `object_annotation_category`), recognised by its header.
pub fn read_labels(path: &Path) -> Result<Vec<Label>> {
    let text = std::fs::read_to_string(path).at(path)?;
    let first = text.lines().next().unwrap_or("");
    let ecotaxa = first.contains('\t') && first.contains("object_annotation_category");
    let mut r = csv::ReaderBuilder::new()
        .delimiter(if ecotaxa { b'\t' } else { b',' })
        .flexible(false)
        .from_reader(text.as_bytes());
    let head: Vec<String> = r
        .headers()
        .map_err(|e| bad(path, format!("line 1: {e}")))?
        .iter()
        .map(String::from)
        .collect();
    let col = |name: &str| head.iter().position(|h| h == name);
    let mut out = Vec::new();
    if ecotaxa {
        let (Some(f), Some(c), Some(s)) = (
            col("img_file_name"),
            col("object_annotation_category"),
            col("object_annotation_status"),
        ) else {
            return Err(bad(
                path,
                "an EcoTaxa table needs img_file_name, object_annotation_category and object_annotation_status",
            ));
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        for (i, rec) in r.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| bad(path, format!("line {line}: {e}")))?;
            let get = |k: usize| rec.get(k).unwrap_or("").trim();
            if get(0).starts_with('[') {
                continue; // the type row
            }
            if get(s) != "validated" {
                continue;
            }
            if get(f).is_empty() || get(c).is_empty() {
                return Err(bad(
                    path,
                    format!("line {line}: a validated row needs img_file_name and object_annotation_category"),
                ));
            }
            out.push(Label {
                line,
                path: dir.join(get(f)).display().to_string(),
                index: None,
                label: get(c).to_string(),
            });
        }
    } else {
        let (Some(p), Some(ix), Some(l)) = (col("path"), col("index"), col("label")) else {
            return Err(bad(
                path,
                format!(
                    "line 1: header must have path, index and label (review.html writes path,index,label,source); got {}",
                    head.join(",")
                ),
            ));
        };
        for (i, rec) in r.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| bad(path, format!("line {line}: {e}")))?;
            let get = |k: usize| rec.get(k).unwrap_or("");
            let label = get(l).trim().to_string();
            if label.is_empty() {
                return Err(bad(path, format!("line {line}: empty label")));
            }
            let index = match get(ix).trim() {
                "" => None,
                v => Some(v.parse::<usize>().map_err(|_| {
                    bad(
                        path,
                        format!("line {line}: index {v:?} is not a whole number"),
                    )
                })?),
            };
            if get(p).is_empty() && index.is_none() {
                return Err(bad(path, format!("line {line}: neither path nor index")));
            }
            out.push(Label {
                line,
                path: get(p).to_string(),
                index,
                label,
            });
        }
    }
    if out.is_empty() {
        return Err(bad(
            path,
            if ecotaxa {
                "no validated rows: nothing to extend the classifier with"
            } else {
                "no labels: nothing to extend the classifier with"
            },
        ));
    }
    Ok(out)
}

/// The labelled images: each label matched to an image of `data` by path (when the label has
/// one and the data has files), else by index; an image labelled twice differently, or a
/// label matching no image, is an error naming the line.
fn match_images(
    labels: &[Label],
    file: &Path,
    images: &Dataset,
    paths: &[String],
) -> Result<Vec<(usize, String)>> {
    // the file itself where it exists (`..` and links resolved: an EcoTaxa path is relative
    // to its table), else the path made absolute
    let abs = |p: &str| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| PathBuf::from(p))
    };
    let by_path: BTreeMap<PathBuf, usize> = paths
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(i, p)| (abs(p), i))
        .collect();
    let by_index: BTreeMap<usize, usize> = images
        .index
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, i))
        .collect();
    let mut seen: BTreeMap<usize, (usize, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for l in labels {
        let row = if !l.path.is_empty() && !by_path.is_empty() {
            by_path.get(&abs(&l.path)).copied().ok_or_else(|| {
                bad(
                    file,
                    format!("line {}: no image of --data is {:?}", l.line, l.path),
                )
            })?
        } else {
            let Some(ix) = l.index else {
                return Err(bad(
                    file,
                    format!(
                        "line {}: {:?} names a file, but --data has no files (give the images' folder)",
                        l.line, l.path
                    ),
                ));
            };
            by_index.get(&ix).copied().ok_or_else(|| {
                bad(
                    file,
                    format!("line {}: --data has no image with index {ix}", l.line),
                )
            })?
        };
        match seen.get(&row) {
            Some((line, lab)) if lab != &l.label => {
                return Err(bad(
                    file,
                    format!(
                        "line {}: the image is labelled {:?} here and {lab:?} on line {line}",
                        l.line, l.label
                    ),
                ))
            }
            Some(_) => continue,
            None => {
                seen.insert(row, (l.line, l.label.clone()));
                out.push((row, l.label.clone()));
            }
        }
    }
    Ok(out)
}

/// Data sets joined (same shape; labels kept).
fn concat(name: &str, parts: &[&Dataset]) -> Dataset {
    let shape = parts[0].shape;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut index = Vec::new();
    for p in parts {
        images.extend_from_slice(&p.images);
        labels.extend(p.labels.clone().unwrap_or_default());
        index.extend_from_slice(&p.index);
    }
    let mut d = Dataset::new(name, shape, images, Some(labels));
    d.index = index;
    d
}

/// Accuracy of `pred` on the rows of `labels` equal to `class`: (right, images).
fn class_counts(pred: &[u32], labels: &[u32], class: u32) -> (usize, usize) {
    let rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
    (
        rows.iter().filter(|&&i| pred[i] == class).count(),
        rows.len(),
    )
}

fn predictions(net: &crate::model::Net, ds: &Dataset) -> Result<Vec<u32>> {
    let z = crate::model::logits(net, ds, 512)?;
    Ok(crate::model::argmax_rows(&z, net.arch.classes))
}

/// The msp baseline's AUROC per OOD set in a run folder's metrics.json.
fn ood_msp(dir: &Path) -> BTreeMap<String, f64> {
    let v: serde_json::Value = std::fs::read_to_string(dir.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let recs: Vec<crate::eval::Record> =
        serde_json::from_value(v["results"].clone()).unwrap_or_default();
    recs.into_iter()
        .filter(|r| r.task == "ood" && r.model == "msp" && r.metric == "auroc" && !r.known_unknowns)
        .filter_map(|r| Some((r.ood_set?, r.mean)))
        .collect()
}

/// What `extend` did, for the caller to print.
#[derive(Debug, Clone)]
pub struct ExtendSummary {
    pub folder: PathBuf,
    pub labels: usize,
    pub new_classes: Vec<String>,
    /// (old classes, new classes) accuracy after; old classes before.
    pub old_before: f64,
    pub old_after: f64,
    pub new_after: Option<f64>,
}

/// `metaclf extend`.
pub fn extend(opts: &ExtendOptions) -> Result<ExtendSummary> {
    let t_all = Instant::now();
    let sc = Scorer::load(&opts.run)?;
    let cfg = &sc.cfg;
    let k_old = sc.net.arch.classes;
    let labels = read_labels(&opts.labels)?;
    // the labelled images, read whole (the labels say which; unlabelled as far as the folder
    // structure goes)
    let mut ctx = pipeline::load_ctx(cfg, 0, "extend");
    ctx.folder_labels = crate::data::render::FolderLabels::Ignore;
    let mut s = stream::open(&opts.data, &ctx, OnError::Stop)?;
    let mut px = Vec::new();
    let mut index = Vec::new();
    let mut paths = Vec::new();
    let total = s.len();
    stream::for_each_chunk(&mut *s, 0, total, 4096, |c, _, _| {
        px.extend_from_slice(&c.images);
        index.extend_from_slice(&c.index);
        paths.extend(c.paths.iter().cloned());
        Ok(())
    })?;
    let mut data = Dataset::unhashed("extend", cfg.shape(), px, None);
    data.index = index;
    if pipeline::transposes(cfg, &opts.data) {
        data.transpose();
    }
    let matched = match_images(&labels, &opts.labels, &data, &paths)?;

    // classes: RUN's outputs keep their numbers; a label that is none of them is a new output
    let old_ids = pipeline::class_labels(cfg, k_old);
    let old_names = pipeline::class_names(cfg, k_old);
    let mut names_all: Vec<String> = if cfg.data.class_names.is_empty() {
        (0..=old_ids.iter().copied().max().unwrap_or(0))
            .map(|l| l.to_string())
            .collect()
    } else {
        cfg.data.class_names.clone()
    };
    let mut new_names: Vec<String> = Vec::new();
    let mut new_ids: Vec<u32> = Vec::new();
    for (_, l) in &matched {
        if old_names.contains(l) || new_names.contains(l) {
            continue;
        }
        let id = match names_all.iter().position(|n| n == l) {
            Some(p) if !old_ids.contains(&(p as u32)) => p as u32,
            _ => {
                names_all.push(l.clone());
                (names_all.len() - 1) as u32
            }
        };
        new_names.push(l.clone());
        new_ids.push(id);
    }
    // new classes in the order of their label ids: names the run's source already has (e.g.
    // the held-out digits) by their number, then names new to it in order of appearance
    let mut order: Vec<usize> = (0..new_names.len()).collect();
    order.sort_by_key(|&i| new_ids[i]);
    let new_names: Vec<String> = order.iter().map(|&i| new_names[i].clone()).collect();
    let new_ids: Vec<u32> = order.iter().map(|&i| new_ids[i]).collect();
    let k_new = k_old + new_names.len();
    let output = |l: &str| -> u32 {
        old_names
            .iter()
            .chain(&new_names)
            .position(|n| n == l)
            .expect("every label has an output") as u32
    };
    tracing::info!(
        "{} labels: {} images of RUN's classes, new classes {} (outputs {}..{})",
        matched.len(),
        matched
            .iter()
            .filter(|(_, l)| old_names.contains(l))
            .count(),
        new_names.join(", "),
        k_old,
        k_new.saturating_sub(1)
    );

    // RUN's own data, as it was split
    let old = pipeline::load_splits(cfg)?;
    // test images of new classes: RUN's held-out test images of that class where it has them,
    // else a seeded share of the labelled images
    let mut rng = stage_rng(cfg.run.seed, "extend/split");
    // (row of the labelled data, output class)
    let mut train_rows: Vec<(usize, u32)> = Vec::new();
    let mut test_rows: Vec<(usize, u32)> = Vec::new();
    let mut from_unknown: Vec<usize> = Vec::new();
    let unknown_labels: Vec<u32> = old
        .unknown
        .as_ref()
        .and_then(|u| u.labels.clone())
        .unwrap_or_default();
    for class in 0..k_new as u32 {
        let mut rows: Vec<usize> = matched
            .iter()
            .filter(|(_, l)| output(l) == class)
            .map(|(r, _)| *r)
            .collect();
        if class < k_old as u32 {
            train_rows.extend(rows.iter().map(|&r| (r, class)));
            continue;
        }
        let id = new_ids[class as usize - k_old];
        let held: Vec<usize> = (0..unknown_labels.len())
            .filter(|&i| unknown_labels[i] == id)
            .collect();
        if !held.is_empty() {
            from_unknown.extend(&held);
            train_rows.extend(rows.iter().map(|&r| (r, class)));
        } else {
            rows.shuffle(&mut rng);
            let nt = if rows.len() >= 2 {
                ((rows.len() as f64 * opts.test_fraction).round() as usize).clamp(1, rows.len() - 1)
            } else {
                0
            };
            test_rows.extend(rows[..nt].iter().map(|&r| (r, class)));
            train_rows.extend(rows[nt..].iter().map(|&r| (r, class)));
        }
    }
    let labelled = |rows: &[(usize, u32)], name: &str| {
        let mut d = data.select(&rows.iter().map(|r| r.0).collect::<Vec<_>>());
        d.labels = Some(rows.iter().map(|r| r.1).collect());
        d.name = name.into();
        d.rehash();
        d
    };
    let lab_train = labelled(&train_rows, "labelled");
    let lab_test = labelled(&test_rows, "labelled-test");
    // the held-out test images of the new classes, their labels as outputs
    let unk_test = match &old.unknown {
        Some(u) if !from_unknown.is_empty() => {
            let mut d = u.select(&from_unknown);
            d.labels = Some(
                from_unknown
                    .iter()
                    .map(|&i| {
                        let id = unknown_labels[i];
                        (k_old + new_ids.iter().position(|&x| x == id).expect("new class")) as u32
                    })
                    .collect(),
            );
            d.rehash();
            Some(d)
        }
        _ => None,
    };
    let still_unknown: Vec<usize> = (0..unknown_labels.len())
        .filter(|&i| !new_ids.contains(&unknown_labels[i]))
        .collect();
    // rehearsal: RUN's training images, and the labelled ones repeated so that a new class
    // weighs about as much as an old one
    let n_old = old.train.len() as f64 / k_old.max(1) as f64;
    let per_new = if new_names.is_empty() {
        1.0
    } else {
        train_rows.iter().filter(|r| r.1 >= k_old as u32).count() as f64 / new_names.len() as f64
    };
    let repeat = ((n_old / per_new.max(1.0)).round() as usize).clamp(1, 50);
    let reps: Vec<&Dataset> = std::iter::once(&old.train)
        .chain(std::iter::repeat_n(&lab_train, repeat))
        .collect();
    let train = concat("train+labelled", &reps);
    let mut test_parts: Vec<&Dataset> = vec![&old.test];
    if let Some(u) = &unk_test {
        test_parts.push(u);
    }
    if !lab_test.is_empty() {
        test_parts.push(&lab_test);
    }
    let test = concat("test+new", &test_parts);
    let mut class_labels_new: Vec<u32> = old_ids.clone();
    class_labels_new.extend(&new_ids);
    let splits = Splits {
        train,
        val: old.val.clone(),
        test,
        unknown: match &old.unknown {
            Some(u) if !still_unknown.is_empty() => {
                let mut d = u.select(&still_unknown);
                d.name = "unknown-classes".into();
                Some(d)
            }
            _ => None,
        },
        class_labels: class_labels_new.clone(),
    };

    // NEW_RUN's config: RUN's, with the new classes named and no longer held out
    let mut raw = cfg.raw.clone();
    raw.data.class_names = names_all.clone();
    raw.data.classes = class_labels_new
        .iter()
        .map(|&l| ClassRef::Index(l))
        .collect();
    raw.data.unknown_classes = crate::config::class_ids(&cfg.data.unknown_classes)
        .into_iter()
        .filter(|l| !new_ids.contains(l))
        .map(ClassRef::Index)
        .collect();
    if let Some(n) = opts.out.file_name() {
        raw.run.name = n.to_string_lossy().to_string();
    }
    if cfg.onnx.is_some() {
        // the grown net is no longer the ONNX file's: the extended run names its layers
        raw.model = crate::config::imported_as_layers(cfg)?;
        raw.features.mc_dropout_after.clear();
        raw.train.epochs = opts.epochs.max(1);
    }
    let new_cfg = cfg.revalidate(raw)?;

    let t_data = t_all.elapsed().as_secs_f64();
    let staged = crate::runfolder::Staged::new(&opts.out, opts.force)?;
    let (mut summary, folder) = staged.run_logged(|folder| {
        folder.write(
            "config.toml",
            format!(
                "# Written by `metaclf extend` from {} with {} labels ({}): the classes, names and\n\
                 # settings of the extended run. `metaclf run` on it would train from scratch on [data]\n\
                 # alone, without the labelled images.\n{}",
                opts.run.display(),
                matched.len(),
                opts.labels.display(),
                new_cfg.to_toml()
            ),
        )?;
        let t = Instant::now();
        let grown = sc
            .net
            .grow(new_names.len(), &mut stage_rng(cfg.run.seed, "extend/init"))?;
        let tp = TrainParams {
            epochs: opts.epochs,
            lr: cfg.train.lr * 0.3,
            ..TrainParams::from_config(cfg)
        };
        tracing::info!(
            "fine-tuning {} epochs at lr {:.3e} on {} images ({} of RUN, {} labelled × {repeat})",
            tp.epochs,
            tp.lr,
            splits.train.len(),
            old.train.len(),
            lab_train.len()
        );
        let trained = tp.fit(grown, &splits.train, &splits.val)?;
        // before and after, per class, on NEW_RUN's test images
        let test_labels = splits.test.labels.clone().unwrap_or_default();
        let before = predictions(&sc.net, &splits.test)?;
        let after = predictions(&trained.net, &splits.test)?;
        let mut classes = Vec::new();
        let (mut ob, mut oa, mut on, mut na, mut nn) = (0usize, 0usize, 0usize, 0usize, 0usize);
        for c in 0..k_new as u32 {
            let (rb, n) = class_counts(&before, &test_labels, c);
            let (ra, _) = class_counts(&after, &test_labels, c);
            let known = c < k_old as u32;
            if known {
                ob += rb;
                oa += ra;
                on += n;
            } else {
                na += ra;
                nn += n;
            }
            let ci = |k: usize| {
                let (lo, hi) = crate::stats::wilson(k, n);
                json!([lo, hi])
            };
            let labelled_n = matched.iter().filter(|(_, l)| output(l) == c).count();
            classes.push(json!({
                "output": c,
                "name": old_names.iter().chain(&new_names).nth(c as usize),
                "status": if known { "old" } else { "new" },
                "labels": labelled_n,
                "test_images": n,
                "accuracy_before": if known && n > 0 { json!(rb as f64 / n as f64) } else { serde_json::Value::Null },
                "accuracy_before_ci": if known && n > 0 { ci(rb) } else { serde_json::Value::Null },
                "accuracy_after": if n > 0 { json!(ra as f64 / n as f64) } else { serde_json::Value::Null },
                "accuracy_after_ci": if n > 0 { ci(ra) } else { serde_json::Value::Null },
            }));
        }
        let frac = |k: usize, n: usize| k as f64 / n.max(1) as f64;
        let old_ci = |k: usize| {
            let (lo, hi) = crate::stats::wilson(k, on);
            json!([lo, hi])
        };
        let new_acc = if nn > 0 {
            let (lo, hi) = crate::stats::wilson(na, nn);
            json!({"after": frac(na, nn), "after_ci": [lo, hi], "images": nn})
        } else {
            serde_json::Value::Null
        };
        let extend_json = json!({
            "run": opts.run.display().to_string(),
            "labels_file": opts.labels.display().to_string(),
            "data": opts.data,
            "labels": matched.len(),
            "new_classes": new_names,
            "repeat": repeat,
            "epochs": opts.epochs,
            "lr": tp.lr,
            "how": "Old classes rehearsed with all of RUN's training images each epoch; labelled images repeated `repeat` times; output layer grown (old rows kept), fine-tuned from RUN's weights. Accuracy on NEW_RUN's test images: RUN's test images of the old classes, and for new classes RUN's held-out test images of that class where it had them, else a seeded share of the labelled images (never trained on). 'before' = RUN's CNN (it cannot predict a new class).",
            "old_classes": {"before": frac(ob, on), "before_ci": old_ci(ob), "after": frac(oa, on), "after_ci": old_ci(oa), "images": on},
            "new_classes_accuracy": new_acc,
            "classes": classes,
        });
        let times = vec![
            ("data".to_string(), t_data),
            ("train".to_string(), t.elapsed().as_secs_f64()),
        ];
        let train_stats = TrainStats::of(&splits.train.images, splits.train.shape.len(), &[]);
        let mut extra = serde_json::Map::new();
        extra.insert(
            "extended_from".into(),
            json!(opts.run.display().to_string()),
        );
        pipeline::finish_run(
            &new_cfg,
            folder,
            splits,
            trained,
            Finish {
                classes: k_new,
                times,
                t_all,
                train_stats,
                extra_seeds: false,
                extra_json: extra,
            },
        )?;
        // how the OOD detection changed (msp baseline, the sets both runs evaluate)
        let (a, b) = (ood_msp(&opts.run), ood_msp(&folder.path));
        let ood: Vec<serde_json::Value> = a
            .iter()
            .map(|(set, before)| {
                json!({"set": set, "msp_auroc_before": before, "msp_auroc_after": b.get(set)})
            })
            .collect();
        let mut ej = extend_json;
        ej["ood"] = json!(ood);
        folder.write(
            "extend.json",
            serde_json::to_string_pretty(&ej).unwrap_or_default() + "\n",
        )?;
        crate::report::build(&folder.path)?;
        Ok(ExtendSummary {
            folder: folder.path.clone(),
            labels: matched.len(),
            new_classes: new_names.clone(),
            old_before: frac(ob, on),
            old_after: frac(oa, on),
            new_after: (nn > 0).then(|| frac(na, nn)),
        })
    })?;
    summary.folder = folder;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_the_review_page_and_from_ecotaxa() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("labels.csv");
        std::fs::write(
            &p,
            "path,index,label,source\n\"new/a, \"\"x\"\".png\",10,pteropod,user\n,11,salp,user\n",
        )
        .unwrap();
        let l = read_labels(&p).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].path, "new/a, \"x\".png");
        assert_eq!((l[0].index, l[0].label.as_str()), (Some(10), "pteropod"));
        assert_eq!((l[1].path.as_str(), l[1].index), ("", Some(11)));
        std::fs::write(&p, "path,index,label\nx.png,zz,a\n").unwrap();
        let e = read_labels(&p).unwrap_err().to_string();
        assert!(
            e.contains("labels.csv") && e.contains("line 2") && e.contains("zz"),
            "{e}"
        );
        std::fs::write(&p, "file,name\n").unwrap();
        assert!(read_labels(&p).unwrap_err().to_string().contains("header"));
        // EcoTaxa: the type row skipped, only validated rows, paths beside the table
        let t = d.path().join("export.tsv");
        std::fs::write(
            &t,
            "img_file_name\tobject_id\tobject_annotation_category\tobject_annotation_status\n\
             [t]\t[t]\t[t]\t[t]\n\
             imgs/a.png\ta\tSalpida\tvalidated\n\
             imgs/b.png\tb\tCopepoda\tpredicted\n\
             imgs/c.png\tc\tCopepoda\tvalidated\n",
        )
        .unwrap();
        let l = read_labels(&t).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].label, "Salpida");
        assert_eq!(l[0].path, d.path().join("imgs/a.png").display().to_string());
        assert_eq!(l[1].line, 5);
    }

    #[test]
    fn labels_match_images_by_path_or_index_and_conflicts_are_named() {
        let ds = {
            let mut d = Dataset::unhashed("x", crate::data::Shape::MNIST, vec![0.0; 3 * 784], None);
            d.index = vec![5, 6, 7];
            d
        };
        let paths = vec!["b/1.png".to_string(), "b/2.png".into(), "b/3.png".into()];
        let l = |line, path: &str, index, label: &str| Label {
            line,
            path: path.into(),
            index,
            label: label.into(),
        };
        let f = Path::new("labels.csv");
        let m = match_images(
            &[l(2, "b/2.png", None, "a"), l(3, "b/2.png", Some(9), "a")],
            f,
            &ds,
            &paths,
        )
        .unwrap();
        assert_eq!(
            m,
            vec![(1, "a".to_string())],
            "the same label twice counts once"
        );
        let e = match_images(
            &[l(2, "b/2.png", None, "a"), l(4, "b/2.png", None, "b")],
            f,
            &ds,
            &paths,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 4") && e.contains("line 2"), "{e}");
        let e = match_images(&[l(2, "b/9.png", None, "a")], f, &ds, &paths)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b/9.png"), "{e}");
        // no files: by index
        let m = match_images(&[l(2, "", Some(7), "a")], f, &ds, &[]).unwrap();
        assert_eq!(m, vec![(2, "a".to_string())]);
    }
}
