//! The whole run, stage by stage (data → train → features → meta → eval → report), passing typed
//! values between stages and writing the run folder at the edges.

use crate::config::Config;
use crate::data::{self, stage_rng, Dataset, LoadCtx, Source};
use crate::error::{Error, IoContext, Result};
use crate::eval::{self, MetaParams};
use crate::features::{self, FeatureParams, FeatureTable};
use crate::meta::nn::NnParams;
use crate::meta::FeatureGroup;
use crate::model::{evaluate, Arch, Net, TrainParams, Trained};
use crate::runfolder::{RunFolder, Staged};
use rand::seq::SliceRandom;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `metaclf run` beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub out: Option<PathBuf>,
    pub force: bool,
}

/// What a run reports back.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub folder: PathBuf,
    pub test_accuracy: f64,
    pub epochs: usize,
    pub stage_seconds: Vec<(String, f64)>,
}

/// Train/validation/test data as the config describes it.
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
    /// The test images of `data.unknown_classes` (original labels), if any.
    pub unknown: Option<Dataset>,
    /// The original label of each of the network's classes (0..k-1), when the config selects
    /// or holds out classes; empty = the labels are the network's indices.
    pub class_labels: Vec<u32>,
}

/// The loading context of a run's config: its data folder, seed and preprocessing.
/// The loading context of a run's config: its data folder, seed and preprocessing; image
/// folders labelled by the run's class names (`ood_load_ctx` for sets of other classes).
pub fn load_ctx(cfg: &Config, count: usize, stage: &str) -> LoadCtx {
    LoadCtx {
        data_dir: cfg.data.data_dir.clone(),
        seed: cfg.run.seed,
        count,
        stage: stage.into(),
        prep: cfg.prep(),
        folder_labels: if cfg.data.class_names.is_empty() {
            crate::data::render::FolderLabels::Own
        } else {
            crate::data::render::FolderLabels::ByName(cfg.data.class_names.clone())
        },
    }
}

/// [`load_ctx`] for out-of-distribution sets: a folder's subfolders are its own classes, not
/// the run's.
pub fn ood_load_ctx(cfg: &Config, count: usize, stage: &str) -> LoadCtx {
    LoadCtx {
        folder_labels: crate::data::render::FolderLabels::Own,
        ..load_ctx(cfg, count, stage)
    }
}

/// The original label of each of the network's `classes` outputs: `data.classes` (resolved
/// by the run when classes are held out), else 0..classes.
pub fn class_labels(cfg: &Config, classes: usize) -> Vec<u32> {
    if cfg.data.classes.is_empty() {
        (0..classes as u32).collect()
    } else {
        crate::config::class_ids(&cfg.data.classes)
    }
}

/// The name of original label `label`: `data.class_names[label]`, else the number.
pub fn label_name(cfg: &Config, label: u32) -> String {
    cfg.data
        .class_names
        .get(label as usize)
        .cloned()
        .unwrap_or_else(|| label.to_string())
}

/// The name of each of the network's `classes` outputs, in output order.
pub fn class_names(cfg: &Config, classes: usize) -> Vec<String> {
    class_labels(cfg, classes)
        .into_iter()
        .map(|l| label_name(cfg, l))
        .collect()
}

/// Resolves the run's classes: `data.class_names` (as given, else the training source's own
/// names: a folder's subfolders, a built-in set's classes) and `data.classes` /
/// `data.unknown_classes` as label indices (names looked up in that list). Reads no image.
pub fn resolve_classes(cfg: &Config) -> Result<Config> {
    use crate::config::ClassRef;
    let d = &cfg.data;
    let names: Vec<String> = if d.class_names.is_empty() {
        data::source_class_names(&d.train)?.unwrap_or_default()
    } else {
        d.class_names.clone()
    };
    let resolve = |key: &str, v: &[ClassRef]| -> Result<Vec<ClassRef>> {
        v.iter()
            .map(|c| match c {
                ClassRef::Index(i) => Ok(ClassRef::Index(*i)),
                ClassRef::Name(n) => names
                    .iter()
                    .position(|x| x == n)
                    .map(|k| ClassRef::Index(k as u32))
                    .ok_or_else(|| {
                        crate::error::cfg(
                            key,
                            if names.is_empty() {
                                format!(
                                    "{n:?}: {} has no class names; name its labels in data.class_names or give label indices",
                                    d.train
                                )
                            } else {
                                format!(
                                    "{n:?} is not a class of {} (its classes: {})",
                                    d.train,
                                    names.join(", ")
                                )
                            },
                        )
                    }),
            })
            .collect()
    };
    let mut raw = cfg.raw.clone();
    raw.data.classes = resolve("data.classes", &d.classes)?;
    raw.data.unknown_classes = resolve("data.unknown_classes", &d.unknown_classes)?;
    raw.data.class_names = names;
    if raw == cfg.raw {
        return Ok(cfg.clone());
    }
    // validated again: a class named once by name and once by index is listed twice
    cfg.revalidate(raw)
}

/// What `metaclf check` says beyond the config's own validity: the input shape, the classes
/// (name ↔ output map), and for every image folder of the run the images per class and the
/// files that cannot be read (each decoded, as the run would).
pub fn check_lines(cfg: &Config) -> Result<Vec<String>> {
    let cfg = &resolve_classes(cfg)?;
    let d = &cfg.data;
    let mut out = vec![format!("input: {} (resize {})", cfg.shape(), d.resize)];
    let prep = cfg.prep();
    let mut specs: Vec<(String, LoadCtx)> = vec![
        (d.train.clone(), load_ctx(cfg, 0, "check")),
        (d.test.clone(), load_ctx(cfg, 0, "check")),
    ];
    for s in &cfg.ood.sets {
        specs.push((s.clone(), ood_load_ctx(cfg, 0, "check")));
    }
    let mut seen = std::collections::HashSet::new();
    for (spec, ctx) in specs {
        let path = match Source::parse(&spec) {
            Ok(Source::Folder(p) | Source::FolderFlat(p)) => p,
            _ => continue,
        };
        if !seen.insert(spec.clone()) {
            continue;
        }
        let (files, labels, names) = match Source::parse(&spec) {
            Ok(Source::FolderFlat(_)) => (data::render::flat_files(&path)?.1, None, vec![]),
            _ => {
                let (_, f, l) = data::render::folder_files(&path, &ctx.folder_labels)?;
                let names = match &ctx.folder_labels {
                    data::render::FolderLabels::ByName(n) => n.clone(),
                    _ => data::render::subfolder_names(&path)?,
                };
                (f, l, names)
            }
        };
        let mut bad = Vec::new();
        for f in &files {
            if let Err(e) = data::render::convert_file(f, &prep) {
                bad.push(e.to_string());
            }
        }
        let mut line = format!("{spec}: {} image files", files.len());
        if let Some(l) = &labels {
            let mut per: std::collections::BTreeMap<u32, usize> = Default::default();
            for &v in l {
                *per.entry(v).or_default() += 1;
            }
            let parts: Vec<String> = per
                .iter()
                .map(|(k, n)| {
                    let name = names.get(*k as usize).cloned().unwrap_or(k.to_string());
                    format!("{name} {n}")
                })
                .collect();
            line.push_str(&format!(" ({})", parts.join(", ")));
        }
        if bad.is_empty() {
            line.push_str(", all readable");
        } else {
            line.push_str(&format!(", {} unreadable", bad.len()));
        }
        out.push(line);
        for b in bad.iter().take(20) {
            out.push(format!("  unreadable: {b}"));
        }
        if bad.len() > 20 {
            out.push(format!("  … and {} more", bad.len() - 20));
        }
    }
    if d.class_names.is_empty() {
        out.push(format!(
            "classes: the label numbers of {} (name them with data.class_names)",
            d.train
        ));
    } else {
        let all: Vec<u32> = (0..d.class_names.len() as u32).collect();
        let unknown = crate::config::class_ids(&d.unknown_classes);
        let known: Vec<u32> = if d.classes.is_empty() {
            all.iter()
                .copied()
                .filter(|c| !unknown.contains(c))
                .collect()
        } else {
            crate::config::class_ids(&d.classes)
        };
        let mut raw = cfg.raw.clone();
        raw.data.classes = known
            .iter()
            .map(|&c| crate::config::ClassRef::Index(c))
            .collect();
        let shown = Config {
            raw,
            onnx: cfg.onnx.clone(),
        };
        out.push(format!(
            "classes (network output = name): {}",
            class_map_line(&shown, known.len())
        ));
        if !unknown.is_empty() {
            let names: Vec<String> = unknown.iter().map(|&u| label_name(cfg, u)).collect();
            out.push(format!(
                "held out (the OOD set unknown-classes): {}",
                names.join(", ")
            ));
        }
    }
    // the network on the run's input with the number of classes the data has (where known):
    // shapes, parameters and the layers whose gradient statistics become columns
    let arch = Arch::from_config(cfg, 2);
    let i = arch.input;
    let plan = crate::arch::plan_for(&arch.specs, (i.c, i.h, i.w), cfg.known_class_count())
        .map_err(|(i, m)| crate::error::cfg(&format!("model.layers[{i}]"), m))?;
    let (c, h, w) = *plan.dims.last().unwrap_or(&(0, 0, 0));
    out.push(format!(
        "model: {} layers, {} parameters, output {c}×{h}×{w}; gradient statistics of {}",
        arch.specs.len(),
        plan.n_params,
        plan.params.join(", ")
    ));
    if let Some((imp, p)) = cfg.imported() {
        out.push(format!(
            "imported from {} ({}; input {:?}, output {:?}), as these layers:",
            p.display(),
            imp.producer,
            imp.input_name,
            imp.output_name
        ));
        out.extend(crate::arch::outline(
            &arch.specs,
            (i.c, i.h, i.w),
            plan.dims.last().map_or(2, |d| d.0),
        ));
        out.extend(imp.notes.iter().cloned());
    }
    if crate::arch::count_dropout(&arch.specs) == 0 {
        out.push(
            "MC dropout: the net has no dropout layer, so the MC-dropout features are left out \
             (an imported model can have some inserted: features.mc_dropout_after)"
                .into(),
        );
    }
    Ok(out)
}

/// The name ↔ output map of a resolved config, one line (`check` and the run log).
pub fn class_map_line(cfg: &Config, classes: usize) -> String {
    class_labels(cfg, classes)
        .iter()
        .enumerate()
        .map(|(k, &l)| {
            let n = label_name(cfg, l);
            if l as usize == k {
                format!("{k} = {n}")
            } else {
                format!("{k} = {n} (label {l})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `data.transpose` of a run applies to `spec`: it does to the run's own training and
/// test sources (the same source with either split).
pub fn transposes(cfg: &Config, spec: &str) -> bool {
    let base = |s: &str| match Source::parse(s) {
        Ok(Source::Mnist(_)) => "mnist".to_string(),
        Ok(Source::FashionMnist(_)) => "fashion-mnist".to_string(),
        _ => s.to_string(),
    };
    cfg.data.transpose
        && (base(spec) == base(&cfg.data.train) || base(spec) == base(&cfg.data.test))
}

/// How a set's images were brought to the run's shape, for the report's data table.
pub fn prep_note(cfg: &Config, spec: &str) -> String {
    let p = cfg.prep();
    let s = p.shape;
    let builtin = |t: &str| {
        if s == crate::data::Shape::MNIST {
            format!("{t}28×28×1 as stored")
        } else {
            format!(
                "{t}28×28 resized to {}×{} ({}){}",
                s.h,
                s.w,
                p.resize.name(),
                if s.c > 1 {
                    format!(", gray replicated to {} channels", s.c)
                } else {
                    String::new()
                }
            )
        }
    };
    match Source::parse(spec) {
        Ok(Source::UniformNoise | Source::NormalNoise) => format!("generated at {s}"),
        Ok(Source::Emnist(..)) => builtin("transposed (EMNIST storage), "),
        Ok(Source::Mnist(_) | Source::FashionMnist(_) | Source::Letters | Source::GrayNatural) => {
            builtin("")
        }
        _ => format!("brought to {s} ({})", p.resize.name()),
    }
}

/// The known classes when `data.unknown_classes` holds some out: `data.classes` if given, else
/// every label of the training and test sets except the unknown ones, sorted.
fn known_classes(cfg: &Config, train: &Dataset, test: &Dataset) -> Result<Vec<u32>> {
    let d = &cfg.data;
    let (classes, unknown) = (
        crate::config::class_ids(&d.classes),
        crate::config::class_ids(&d.unknown_classes),
    );
    if !classes.is_empty() || unknown.is_empty() {
        return Ok(classes);
    }
    let mut all: Vec<u32> = train
        .labels
        .iter()
        .chain(test.labels.iter())
        .flatten()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for u in &unknown {
        if !all.contains(u) {
            return Err(crate::error::cfg(
                "data.unknown_classes",
                format!(
                    "class {u} has no images in {} or {} (their classes: {all:?})",
                    d.train, d.test
                ),
            ));
        }
    }
    all.retain(|c| !unknown.contains(c));
    if all.len() < 2 {
        return Err(crate::error::cfg(
            "data.unknown_classes",
            format!(
                "{:?} leaves {} known class{}; a classifier needs at least 2",
                d.unknown_classes,
                all.len(),
                if all.len() == 1 { "" } else { "es" }
            ),
        ));
    }
    Ok(all)
}

/// Loads the in-distribution data: class subset, held-out classes, transpose, limits,
/// validation split.
pub fn load_splits(cfg: &Config) -> Result<Splits> {
    let cfg = &resolve_classes(cfg)?;
    let d = &cfg.data;
    let unknown_ids = crate::config::class_ids(&d.unknown_classes);
    let ctx = load_ctx(cfg, 0, "data");
    let mut train = data::load(&d.train, &ctx)?;
    let mut test = data::load(&d.test, &ctx)?;
    for ds in [&train, &test] {
        if ds.labels.is_none() {
            return Err(Error::Data {
                name: ds.name.clone(),
                msg: "in-distribution data needs labels (data.train, data.test)".into(),
            });
        }
        let max = ds.labels.iter().flatten().max().copied().unwrap_or(0);
        if !d.class_names.is_empty() && max as usize >= d.class_names.len() {
            return Err(crate::error::cfg(
                "data.class_names",
                format!(
                    "names {} classes, but {} has label {max}",
                    d.class_names.len(),
                    ds.name
                ),
            ));
        }
    }
    let known = known_classes(cfg, &train, &test)?;
    let unknown = if d.unknown_classes.is_empty() {
        None
    } else {
        let labels = test.labels.as_ref().expect("checked");
        let rows: Vec<usize> = (0..test.len())
            .filter(|&i| unknown_ids.contains(&labels[i]))
            .collect();
        if rows.is_empty() {
            return Err(crate::error::cfg(
                "data.unknown_classes",
                format!(
                    "{:?} has no images in the test set {}",
                    d.unknown_classes, d.test
                ),
            ));
        }
        let mut u = test.select(&rows);
        u.name = "unknown-classes".into();
        if d.transpose {
            u.transpose();
        }
        Some(u)
    };
    for (ds, role, spec) in [
        (&mut train, "training", &d.train),
        (&mut test, "test", &d.test),
    ] {
        if !known.is_empty() {
            *ds = ds.keep_classes(&known)?;
            data::check_classes_present(ds, &known, role, spec)?;
        }
        if d.transpose {
            ds.transpose();
        }
    }
    let mut rng = stage_rng(cfg.run.seed, "data/split");
    let mut idx: Vec<usize> = (0..train.len()).collect();
    idx.shuffle(&mut rng);
    if d.train_limit > 0 && d.train_limit < idx.len() {
        idx.truncate(d.train_limit);
    }
    let nv = ((idx.len() as f64) * d.val_fraction).round() as usize;
    let (mut v, mut t) = (idx[..nv].to_vec(), idx[nv..].to_vec());
    v.sort_unstable();
    t.sort_unstable();
    let val = train.select(&v);
    let train = train.select(&t);
    if d.test_limit > 0 && d.test_limit < test.len() {
        test = test.select(&(0..d.test_limit).collect::<Vec<_>>());
    }
    if train.is_empty() || test.is_empty() {
        return Err(Error::Data {
            name: d.train.clone(),
            msg: "no training or test images left after data.classes / limits".into(),
        });
    }
    Ok(Splits {
        train,
        val,
        test,
        unknown,
        class_labels: known,
    })
}

/// The number of classes of the classifier.
pub fn num_classes(_cfg: &Config, s: &Splits) -> usize {
    if s.class_labels.is_empty() {
        s.train.num_classes().max(s.test.num_classes())
    } else {
        s.class_labels.len()
    }
}

/// History as CSV.
pub fn history_csv(t: &Trained) -> String {
    crate::runfolder::csv_text(
        &[
            "epoch",
            "lr",
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "seconds",
        ],
        t.history.iter().map(|r| {
            vec![
                r.epoch.to_string(),
                r.lr.to_string(),
                r.train_loss.to_string(),
                r.train_acc.to_string(),
                r.val_loss.to_string(),
                r.val_acc.to_string(),
                format!("{:.3}", r.seconds),
            ]
        }),
    )
}

/// Scores the test set, every OOD set (the held-out classes' test images first, when there are
/// any) and the known unknowns; labels and predictions are written as the original labels.
pub fn score_all(
    cfg: &Config,
    net: &Net,
    splits: &Splits,
    sets: &mut Vec<serde_json::Value>,
) -> Result<FeatureTable> {
    let fp = FeatureParams::from_config(cfg);
    let labels = class_labels(cfg, net.arch.classes);
    let mut table = features::score(net, &splits.test, "id-test", &fp)?;
    if let Some(u) = &splits.unknown {
        let u = if cfg.ood.count > 0 && u.len() > cfg.ood.count {
            u.select(&(0..cfg.ood.count).collect::<Vec<_>>())
        } else {
            u.clone()
        };
        let set = "ood-unknown-classes";
        tracing::info!("scoring {set}: {} images", u.len());
        sets.push(json!({"role": set, "spec": format!("{} classes {}", cfg.data.test, crate::config::class_ids(&cfg.data.unknown_classes).iter().map(|&u| label_name(cfg, u)).collect::<Vec<_>>().join(", ")), "images": u.len(), "sha256": u.sha256, "prep": prep_note(cfg, &cfg.data.test)}));
        table.append(features::score(net, &u, set, &fp)?.into_ood())?;
    }
    let mut extra: Vec<(String, String, usize, &str)> = cfg
        .ood
        .sets
        .iter()
        .map(|s| {
            (
                format!("ood-{}", Source::short_name(s)),
                s.clone(),
                cfg.ood.count,
                "ood",
            )
        })
        .collect();
    if !cfg.known_unknowns.source.is_empty() {
        let s = &cfg.known_unknowns.source;
        extra.push((
            format!("known-unknown-{}", Source::short_name(s)),
            s.clone(),
            cfg.known_unknowns.count,
            "known-unknowns",
        ));
    }
    for (set, spec, count, stage) in extra {
        let ctx = ood_load_ctx(cfg, count, stage);
        let ds = data::load(&spec, &ctx)?;
        let ds = if count > 0 && ds.len() > count {
            ds.select(&(0..count).collect::<Vec<_>>())
        } else {
            ds
        };
        tracing::info!("scoring {set}: {} images", ds.len());
        sets.push(json!({"role": set, "spec": spec, "images": ds.len(), "sha256": ds.sha256, "prep": prep_note(cfg, &spec)}));
        // OOD rows: the source's own classes are not the known concept's, so they go to
        // `source_label` and `label`/`correct` stay empty
        table.append(features::score(net, &ds, &set, &fp)?.into_ood())?;
    }
    for s in &cfg.shift.sets {
        let (set, ds) = shift_set(cfg, splits, s, net.arch.classes)?;
        let (_, acc) = evaluate(net, &ds, 512)?;
        tracing::info!("scoring {set}: {} images, CNN accuracy {acc:.4}", ds.len());
        sets.push(json!({"role": set, "spec": s, "images": ds.len(), "sha256": ds.sha256, "accuracy": acc, "prep": format!("{}, then shifted ({s})", prep_note(cfg, if s.starts_with("test@") || s == "test" { &cfg.data.test } else { s }))}));
        table.append(features::score(net, &ds, &set, &fp)?)?;
    }
    table.map_classes(&labels, true)?;
    Ok(table)
}

/// A `[shift] sets` entry loaded and transformed: its set name (`shift-<name>`) and images with
/// the network's class indices as labels (images of other classes left out).
pub fn shift_set(
    cfg: &Config,
    splits: &Splits,
    s: &str,
    classes: usize,
) -> Result<(String, Dataset)> {
    let sh = crate::data::transform::ShiftSpec::parse(s)
        .map_err(|m| crate::error::cfg("shift.sets", m))?;
    let mut ds = if sh.spec == "test" {
        splits.test.clone()
    } else {
        let d = data::load(&sh.spec, &load_ctx(cfg, 0, "shift"))?;
        if d.labels.is_none() {
            return Err(crate::error::cfg(
                "shift.sets",
                format!("{s:?}: {} has no labels; a shift set needs them", sh.spec),
            ));
        }
        let known: Vec<u32> = if splits.class_labels.is_empty() {
            (0..classes as u32).collect()
        } else {
            splits.class_labels.clone()
        };
        let mut d = d.keep_classes(&known)?;
        if d.is_empty() {
            return Err(crate::error::cfg(
                "shift.sets",
                format!("{s:?}: no images of the known classes {known:?}"),
            ));
        }
        if transposes(cfg, &sh.spec) {
            d.transpose();
        }
        d
    };
    let mut images = std::mem::take(&mut ds.images);
    crate::data::transform::apply(&mut images, ds.shape, &sh.transforms);
    let set = format!("shift-{}", sh.name);
    let mut out = Dataset::new(set.clone(), ds.shape, images, ds.labels.take());
    out.index = ds.index;
    Ok((set, out))
}

/// Meta-experiment settings from the config.
pub fn meta_params(cfg: &Config) -> Result<MetaParams> {
    let m = &cfg.meta;
    let convs = cfg.layer_names();
    let groups = m
        .groups
        .iter()
        .map(|g| FeatureGroup::parse(g, &convs).map_err(|e| crate::error::cfg("meta.groups", e)))
        .collect::<Result<Vec<_>>>()?;
    // a net without dropout has no MC-dropout columns: the groups go without them
    let groups = if crate::arch::count_dropout(&cfg.layer_specs()) > 0 {
        groups
    } else {
        groups
            .into_iter()
            .filter_map(|mut g| {
                g.columns.retain(|c| !c.starts_with("mc_"));
                (!g.columns.is_empty()).then_some(g)
            })
            .collect()
    };
    Ok(MetaParams {
        repetitions: m.repetitions,
        test_fraction: m.test_fraction,
        models: m.models.clone(),
        groups,
        transforms: m.transforms.clone(),
        alpha: m.alpha,
        lambda: if m.lambda < 0.0 { None } else { Some(m.lambda) },
        cv_folds: m.cv_folds,
        n_lambda: m.n_lambda,
        nn: NnParams {
            hidden: m.nn_hidden,
            epochs: m.nn_epochs,
            lr: m.nn_lr,
            weight_decay: m.nn_weight_decay,
            patience: 10,
            seed: cfg.run.seed,
        },
        seed: cfg.run.seed,
        known_unknowns: (!cfg.known_unknowns.source.is_empty())
            .then(|| Source::short_name(&cfg.known_unknowns.source)),
        keep_scores: m.score_repetitions,
    })
}

/// The CNN's accuracy on each labelled set of the feature table (`id-test` and every
/// `shift-<name>`), from its rows' `correct`.
pub fn cnn_accuracy(t: &FeatureTable) -> serde_json::Map<String, serde_json::Value> {
    let mut sets: Vec<&String> = Vec::new();
    for (r, s) in t.set.iter().enumerate() {
        if (s == "id-test" || s.starts_with("shift-"))
            && t.correct(r).is_some()
            && !sets.contains(&s)
        {
            sets.push(s);
        }
    }
    sets.into_iter()
        .map(|s| {
            let rows: Vec<bool> = (0..t.len())
                .filter(|&r| &t.set[r] == s)
                .filter_map(|r| t.correct(r))
                .collect();
            let acc = rows.iter().filter(|&&c| c).count() as f64 / rows.len().max(1) as f64;
            (s.clone(), json!(acc))
        })
        .collect()
}

/// Temperature scaling (Guo et al. 2017) fitted on the validation split, and the test set's
/// calibration before and after it: ECE, MCE and the 15-bin reliability table.
pub fn calibrate(net: &Net, s: &Splits) -> Result<serde_json::Value> {
    let k = net.arch.classes;
    let labels = |d: &Dataset| d.labels.clone().unwrap_or_default();
    let (vy, ty) = (labels(&s.val), labels(&s.test));
    let vz = crate::model::logits(net, &s.val, 512)?;
    let tz = crate::model::logits(net, &s.test, 512)?;
    let t = eval::fit_temperature(&vz, &vy, k);
    let side = |temp: f64| {
        let (conf, ok) = eval::confidences(&tz, &ty, k, temp);
        let (ece, mce, bins) = eval::calibration(&conf, &ok, 15);
        json!({
            "ece": ece,
            "mce": mce,
            "test_nll": eval::nll_at(&tz, &ty, k, temp),
            "bins": bins.iter().filter(|b| b.2 > 0).map(|b| json!({"confidence": b.0, "accuracy": b.1, "images": b.2})).collect::<Vec<_>>(),
        })
    };
    tracing::info!(
        "temperature scaling on {} validation images: T = {t:.4}",
        vy.len()
    );
    Ok(json!({
        "method": "temperature scaling (Guo et al. 2017): T minimises the mean NLL of softmax(logits / T) on the validation split; ECE/MCE over 15 equal-width confidence bins of the test set",
        "temperature": t,
        "validation_images": vy.len(),
        "validation_nll_before": eval::nll_at(&vz, &vy, k, 1.0),
        "validation_nll_after": eval::nll_at(&vz, &vy, k, t),
        "before": side(1.0),
        "after": side(t),
    }))
}

/// Writes the meta results into the run folder.
pub fn write_meta(folder: &RunFolder, t: &FeatureTable, r: &eval::MetaResults) -> Result<()> {
    // the CNN's calibration (temperature scaling), written by the training stage
    let calibration: serde_json::Value = std::fs::read_to_string(folder.file("calibration.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let metrics = json!({
        "definitions": eval::DEFINITIONS,
        "calibration": calibration,
        "cnn_accuracy": cnn_accuracy(t),
        "results": r.records,
        "single_metrics": r.single,
        "warnings": r.warnings,
    });
    folder.write(
        "metrics.json",
        serde_json::to_string_pretty(&metrics).map_err(|e| Error::Other(e.to_string()))?,
    )?;
    folder.write("metrics.csv", eval::records_csv(&r.records))?;
    folder.write("single_metrics.csv", eval::single_metrics_csv(&r.single))?;
    crate::runfolder::write_csv_atomic(
        &folder.file("meta_scores.csv"),
        &[
            "rep",
            "model",
            "features",
            "known_unknowns",
            "set",
            "index",
            "target",
            "score",
            "transform",
        ],
        r.scores
            .iter()
            .flat_map(|b| b.rows.iter().map(move |x| (b, x)))
            .map(|(b, x)| {
                let (sc, row) = (&b.scorer, x.row as usize);
                vec![
                    b.rep.to_string(),
                    sc.model.clone(),
                    sc.features.clone(),
                    sc.known_unknowns.to_string(),
                    t.set[row].clone(),
                    t.index[row].to_string(),
                    x.target.to_string(),
                    x.score.to_string(),
                    sc.transform.clone(),
                ]
            }),
    )?;
    let c = crate::runfolder::csv_text(
        &[
            "rep",
            "model",
            "features",
            "known_unknowns",
            "term",
            "coef_original",
            "coef_standardized",
            "lambda",
            "transform",
        ],
        r.coefs.iter().map(|x| {
            vec![
                x.rep.to_string(),
                x.model.clone(),
                x.features.clone(),
                x.known_unknowns.to_string(),
                x.term.clone(),
                x.original.to_string(),
                x.standardized.to_string(),
                x.lambda.to_string(),
                x.transform.clone(),
            ]
        }),
    );
    folder.write("coefficients.csv", c)?;
    let (csv, md) = eval::ablation(&r.records);
    folder.write("ablation.csv", csv)?;
    folder.write("ablation.md", md)
}

/// What the trust model belongs to: the CNN's classes, input and feature columns, and the sha256
/// of its model.safetensors.
pub fn net_info(
    classes: usize,
    input: crate::data::Shape,
    columns: &[String],
    model: &Path,
) -> Result<crate::trust::NetInfo> {
    Ok(crate::trust::NetInfo {
        classes,
        input: [input.c, input.h, input.w],
        feature_columns: columns.to_vec(),
        model_sha256: crate::trust::file_sha256(model)?,
    })
}

/// Fits the trust model on the run's meta data and writes it into the run folder.
pub fn fit_trust(
    cfg: &Config,
    folder: &RunFolder,
    table: &FeatureTable,
    mp: &MetaParams,
    records: &[eval::Record],
    classes: usize,
) -> Result<()> {
    let info = net_info(
        classes,
        cfg.shape(),
        &table.columns,
        &folder.file("model.safetensors"),
    )?;
    let trust = match crate::trust::fit(table, mp, records, &cfg.score, &cfg.layer_names(), info) {
        Ok(t) => t,
        Err(Error::NoTrustModel(why)) => {
            // e.g. a test set without wrong predictions: nothing to learn trust from
            tracing::warn!("no trust model: {why}");
            let _ = std::fs::remove_file(folder.file(crate::trust::JSON_FILE));
            for f in [
                crate::trust::NN_FILE,
                crate::trust::NN_FILE_KNOWN,
                crate::trust::NN_FILE_CORRECT,
            ] {
                let _ = std::fs::remove_file(folder.file(f));
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut trust = trust;
    // calibrated probabilities for scores.csv: the training stage's temperature
    trust.model.temperature = std::fs::read_to_string(folder.file("calibration.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["temperature"].as_f64())
        .filter(|t| t.is_finite() && *t > 0.0);
    for (what, h) in [
        ("trust", Some(&trust.model.trust)),
        ("p_known", trust.model.known.as_ref()),
        ("p_correct_if_known", trust.model.correct.as_ref()),
    ] {
        let Some(h) = h else {
            tracing::info!("no {what} head (the run has no OOD or known-unknown images)");
            continue;
        };
        for th in &h.thresholds {
            tracing::info!(
                "{what}: {} on {} ({} features): {} < {:.4} flags; keeps {:.1}% at {:.2}% {}, catches {:.1}% of {}",
                h.model,
                h.features,
                if h.transform.name.is_empty() { "none" } else { &h.transform.name },
                th.name,
                th.value,
                100.0 * th.kept_fraction,
                100.0 * th.kept_accuracy,
                if what == "p_known" { "in-distribution" } else { "accuracy" },
                100.0 * th.errors_flagged,
                if what == "p_known" { "OOD images" } else { "errors" },
            );
        }
    }
    trust.save(folder)
}

/// Runs the whole pipeline and writes the run folder.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<RunSummary> {
    let t_all = Instant::now();
    let dir = opts
        .out
        .clone()
        .unwrap_or_else(|| cfg.run.out_dir.join(&cfg.run.name));
    // Written into a temporary sibling folder and swapped in only when finished: a failed run
    // leaves an existing run folder byte-identical and removes what it wrote.
    let (mut summary, folder) =
        Staged::new(&dir, opts.force)?.run_logged(|f| run_in(cfg, f, t_all))?;
    summary.folder = folder;
    Ok(summary)
}

fn run_in(cfg: &Config, folder: &RunFolder, t_all: Instant) -> Result<RunSummary> {
    let mut times: Vec<(String, f64)> = Vec::new();
    let t = Instant::now();
    let named = resolve_classes(cfg)?;
    let cfg = &named;
    let splits = load_splits(cfg)?;
    // held-out classes: the known ones become data.classes of the resolved config, so every
    // later reader of the run (features, score) maps the network's outputs back to them
    let resolved;
    let cfg = if cfg.data.classes.is_empty() && !splits.class_labels.is_empty() {
        let mut raw = cfg.raw.clone();
        raw.data.classes = splits
            .class_labels
            .iter()
            .map(|&c| crate::config::ClassRef::Index(c))
            .collect();
        resolved = cfg.revalidate(raw)?;
        &resolved
    } else {
        cfg
    };
    folder.write("config.toml", run_config_toml(cfg, folder)?)?;
    let run_json = json!({
        "metaclf_version": env!("CARGO_PKG_VERSION"),
        "seed": cfg.run.seed,
        "status": "running",
    });
    folder.write(
        "run.json",
        serde_json::to_string_pretty(&run_json).unwrap_or_default(),
    )?;

    let classes = num_classes(cfg, &splits);
    let train_stats = train_stats(cfg, &splits);
    times.push(("data".into(), t.elapsed().as_secs_f64()));
    tracing::info!(
        "data: {} train, {} validation, {} test images, {classes} classes",
        splits.train.len(),
        splits.val.len(),
        splits.test.len()
    );
    tracing::info!(
        "classes (network output = name): {}",
        class_map_line(cfg, classes)
    );

    let t = Instant::now();
    let arch = Arch::from_config(cfg, classes);
    let trained = match cfg.imported() {
        Some((imp, path)) => {
            if classes != imp.classes {
                return Err(crate::error::cfg(
                    "data.classes",
                    format!(
                        "the data has {classes} classes; the ONNX model {} outputs {} (name the classes it was trained on, in its output order, with data.classes or data.class_names)",
                        path.display(),
                        imp.classes
                    ),
                ));
            }
            let net = Net::from_import(arch, imp, path)?;
            tracing::info!(
                "model: imported from {} ({}): {} parameters, layers {}; not trained",
                path.display(),
                imp.producer,
                net.num_params(),
                net.describe()
            );
            for n in &imp.notes {
                tracing::info!("import: {n}");
            }
            Trained {
                net,
                history: Vec::new(),
                best_epoch: 0,
            }
        }
        _ => {
            let net = Net::new(arch, &mut stage_rng(cfg.run.seed, "init"))?;
            tracing::info!(
                "model: {} parameters, layers {}",
                net.num_params(),
                net.describe()
            );
            TrainParams::from_config(cfg).fit(net, &splits.train, &splits.val)?
        }
    };
    if trained.net.dropout_layers() == 0 {
        tracing::info!(
            "MC dropout: the net has no dropout layer, so the MC-dropout features are left out"
        );
    }
    times.push(("train".into(), t.elapsed().as_secs_f64()));
    finish_run(
        cfg,
        folder,
        splits,
        trained,
        Finish {
            classes,
            times,
            t_all,
            train_stats,
            extra_seeds: true,
            extra_json: serde_json::Map::new(),
        },
    )
}

/// The run's resolved config as written to its folder. With an imported model, the ONNX file
/// is copied into the folder as `model.onnx` and the config names that copy (relative to the
/// folder), so the run stays usable when the original moves.
pub fn run_config_toml(cfg: &Config, folder: &RunFolder) -> Result<String> {
    let Some((_, src)) = cfg.imported() else {
        return Ok(cfg.to_toml());
    };
    let dst = folder.file("model.onnx");
    let same = match (std::fs::canonicalize(src), std::fs::canonicalize(&dst)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        let bytes = std::fs::read(src).at(src)?;
        crate::runfolder::write_atomic(&dst, &bytes)?;
    }
    let mut raw = cfg.raw.clone();
    raw.model.onnx = "model.onnx".into();
    Ok(Config {
        raw,
        onnx: cfg.onnx.clone(),
    }
    .to_toml())
}

/// What [`finish_run`] needs beside the data and the trained CNN.
pub struct Finish {
    pub classes: usize,
    /// Stage times so far (data, train).
    pub times: Vec<(String, f64)>,
    pub t_all: Instant,
    pub train_stats: crate::data::stream::TrainStats,
    /// Train `meta.cnn_seeds − 1` more CNNs from scratch and pool their repetitions.
    pub extra_seeds: bool,
    /// More keys for run.json (e.g. `extended_from`).
    pub extra_json: serde_json::Map<String, serde_json::Value>,
}

/// Everything of a run after training: model.safetensors, history, calibration, features,
/// meta classifiers, trust model, run.json and the report.
pub fn finish_run(
    cfg: &Config,
    folder: &RunFolder,
    splits: Splits,
    trained: Trained,
    f: Finish,
) -> Result<RunSummary> {
    let Finish {
        classes,
        mut times,
        t_all,
        train_stats,
        extra_seeds,
        extra_json,
    } = f;
    trained.net.save(&folder.file("model.safetensors"))?;
    folder.write("history.csv", history_csv(&trained))?;
    let (test_loss, test_acc) = evaluate(&trained.net, &splits.test, 512)?;
    tracing::info!(
        "test accuracy {test_acc:.4} (loss {test_loss:.4}), best epoch {}",
        trained.best_epoch
    );
    let calibration = calibrate(&trained.net, &splits)?;
    folder.write(
        "calibration.json",
        serde_json::to_string_pretty(&calibration).unwrap_or_default() + "\n",
    )?;

    let t = Instant::now();
    let mut sets = vec![
        json!({"role": "train", "spec": cfg.data.train, "images": splits.train.len(), "sha256": splits.train.sha256, "prep": prep_note(cfg, &cfg.data.train)}),
        json!({"role": "validation", "spec": cfg.data.train, "images": splits.val.len(), "sha256": splits.val.sha256, "prep": prep_note(cfg, &cfg.data.train)}),
        json!({"role": "id-test", "spec": cfg.data.test, "images": splits.test.len(), "sha256": splits.test.sha256, "prep": prep_note(cfg, &cfg.data.test)}),
    ];
    let table = score_all(cfg, &trained.net, &splits, &mut sets)?;
    // the images are not needed past here: the meta stage holds only the feature table
    let n_test = splits.test.len();
    drop(splits);
    folder.write("features.csv", table.to_csv())?;
    times.push(("features".into(), t.elapsed().as_secs_f64()));

    let t = Instant::now();
    let mp = meta_params(cfg)?;
    let mut results =
        eval::run_meta(&table, &mp).map_err(|e| Error::Other(format!("meta classifiers: {e}")))?;
    // more CNNs: retrain with the next seeds, score, fit, and pool the repetitions
    let mut extra_acc = Vec::new();
    for k in 1..if extra_seeds { cfg.meta.cnn_seeds } else { 1 } {
        let mut raw = cfg.raw.clone();
        raw.run.seed = cfg.run.seed.wrapping_add(k as u64);
        let c2 = cfg.revalidate(raw)?;
        tracing::info!(
            "CNN {} of {}: seed {}",
            k + 1,
            cfg.meta.cnn_seeds,
            c2.run.seed
        );
        let s2 = load_splits(&c2)?;
        let net2 = Net::new(
            Arch::from_config(&c2, classes),
            &mut stage_rng(c2.run.seed, "init"),
        )?;
        let t2 = TrainParams::from_config(&c2).fit(net2, &s2.train, &s2.val)?;
        extra_acc.push(evaluate(&t2.net, &s2.test, 512)?.1);
        let table2 = score_all(&c2, &t2.net, &s2, &mut Vec::new())?;
        let r2 = eval::run_meta(&table2, &meta_params(&c2)?)
            .map_err(|e| Error::Other(format!("meta classifiers (seed {}): {e}", c2.run.seed)))?;
        eval::pool(&mut results, r2);
    }
    for w in &results.warnings {
        tracing::warn!("{w}");
    }
    write_meta(folder, &table, &results)?;
    fit_trust(cfg, folder, &table, &mp, &results.records, classes)?;
    times.push(("meta".into(), t.elapsed().as_secs_f64()));

    let acc_ci = {
        let k = (test_acc * n_test as f64).round() as usize;
        let (lo, hi) = crate::stats::wilson(k, n_test);
        vec![lo, hi]
    };
    let mut run_json = json!({
        "metaclf_version": env!("CARGO_PKG_VERSION"),
        "status": "done",
        "seed": cfg.run.seed,
        "data": sets,
        "classes": classes,
        "class_labels": class_labels(cfg, classes),
        "class_names": class_names(cfg, classes),
        "input": format!("{} (C×H×W {}×{}×{}), resize {}", cfg.shape(), cfg.shape().c, cfg.shape().h, cfg.shape().w, cfg.data.resize),
        "parameters": trained.net.num_params(),
        "model_source": match cfg.imported() {
            Some((imp, p)) => format!(
                "imported from {} ({}), not trained{}",
                p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                imp.producer,
                imp.notes.iter().map(|n| format!("; {n}")).collect::<String>()
            ),
            _ => "trained by metaclf".to_string(),
        },
        "dropout_layers": trained.net.dropout_layers(),
        "epochs": trained.history.len(),
        "best_epoch": trained.best_epoch,
        "test_accuracy": test_acc,
        "test_images": n_test,
        "test_accuracy_ci": acc_ci,
        "temperature": calibration["temperature"],
        "ece_before": calibration["before"]["ece"],
        "ece_after": calibration["after"]["ece"],
        "test_loss": test_loss,
        "extra_cnn_test_accuracy": extra_acc,
        "train_stats": serde_json::to_value(&train_stats).unwrap_or_default(),
        "stage_seconds": times.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "total_seconds": t_all.elapsed().as_secs_f64(),
    });
    for (k, v) in extra_json {
        run_json[k] = v;
    }
    folder.write(
        "run.json",
        serde_json::to_string_pretty(&run_json).unwrap_or_default(),
    )?;

    let t = Instant::now();
    crate::report::build(&folder.path)?;
    times.push(("report".into(), t.elapsed().as_secs_f64()));
    run_json["stage_seconds"]["report"] = json!(times.last().map(|x| x.1));
    run_json["total_seconds"] = json!(t_all.elapsed().as_secs_f64());
    folder.write(
        "run.json",
        serde_json::to_string_pretty(&run_json).unwrap_or_default(),
    )?;
    Ok(RunSummary {
        folder: folder.path.clone(),
        test_accuracy: test_acc,
        epochs: trained.history.len(),
        stage_seconds: times,
    })
}

/// The training data's [`TrainStats`]: mean intensities of every training image, own shapes
/// of up to 500 images sampled evenly from the training source (for `score`'s mismatch
/// warnings).
fn train_stats(cfg: &Config, splits: &Splits) -> crate::data::stream::TrainStats {
    use crate::data::stream::{open, OnError};
    let mut native = Vec::new();
    if let Ok(mut s) = open(
        &cfg.data.train,
        &load_ctx(cfg, 0, "train-stats"),
        OnError::Skip,
    ) {
        let n = s.len();
        let k = n.min(500);
        let step = n.checked_div(k).unwrap_or(1);
        for _ in 0..k {
            match s.next_chunk(1) {
                Ok(Some(c)) => native.extend(c.native),
                _ => break,
            }
            if s.skip(step.saturating_sub(1)).is_err() {
                break;
            }
        }
    }
    crate::data::stream::TrainStats::of(&splits.train.images, splits.train.shape.len(), &native)
}

/// A run folder's run.json.
pub fn read_run_json(run_dir: &Path) -> Result<serde_json::Value> {
    let p = run_dir.join("run.json");
    serde_json::from_str(&std::fs::read_to_string(&p).map_err(|source| Error::Io {
        path: p.clone(),
        source,
    })?)
    .map_err(|e| Error::Format {
        path: p,
        msg: e.to_string(),
    })
}

/// The number of classes of a finished run (from its run.json).
pub fn run_classes(run_dir: &Path) -> Result<usize> {
    let run = read_run_json(run_dir)?;
    run["classes"]
        .as_u64()
        .map(|c| c as usize)
        .ok_or_else(|| Error::Format {
            path: run_dir.join("run.json"),
            msg: "no `classes` (the run did not finish)".into(),
        })
}

/// `metaclf features`: scores a data set with a finished run's model, chunk by chunk (memory is
/// bounded by the chunk, `score.chunk` images), into a CSV written through a temporary file.
pub fn features_for(run_dir: &Path, spec: &str, out: &Path, count: usize) -> Result<usize> {
    use crate::data::stream::{self, OnError};
    let cfg = Config::load(&run_dir.join("config.toml"))?;
    let classes = run_classes(run_dir)?;
    let net = Net::load(
        Arch::from_config(&cfg, classes),
        &run_dir.join("model.safetensors"),
    )?;
    let ctx = load_ctx(&cfg, count, "features");
    let labels = class_labels(&cfg, classes);
    let transpose = transposes(&cfg, spec);
    let mut s = stream::open(spec, &ctx, OnError::Stop)?;
    let fp = FeatureParams::from_config(&cfg);
    let bs = fp.batch_size;
    let chunk = cfg.score.chunk.div_ceil(bs) * bs;
    let set = Source::short_name(spec);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::runfolder::create_dirs(dir)?;
    }
    let tmp = crate::runfolder::tmp_sibling(out);
    let mut write = || -> Result<usize> {
        let f = std::fs::File::create(&tmp).map_err(|source| Error::Io {
            path: tmp.clone(),
            source,
        })?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(f));
        let header = features::csv_header(&features::columns(&net));
        let io = |e: csv::Error| Error::Other(format!("writing {}: {e}", tmp.display()));
        w.write_record(&header).map_err(io)?;
        let mut rows = 0;
        let n = s.len();
        let pb = indicatif::ProgressBar::new(n as u64);
        stream::for_each_chunk(&mut *s, 0, n, chunk, |c, _, to| {
            let mut ds = c.dataset(&set, ctx.prep.shape);
            if transpose {
                ds.transpose();
            }
            let mut t = features::score(&net, &ds, &set, &fp)?;
            t.map_classes(&labels, false)?;
            t.write_rows(&mut w)?;
            rows += t.len();
            pb.set_position(to as u64);
            Ok(())
        })?;
        pb.finish_and_clear();
        w.flush().map_err(|source| Error::Io {
            path: tmp.clone(),
            source,
        })?;
        Ok(rows)
    };
    match write() {
        Ok(rows) => {
            std::fs::rename(&tmp, out).map_err(|source| Error::Io {
                path: out.to_path_buf(),
                source,
            })?;
            Ok(rows)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `metaclf meta`: refits the meta classifiers of a finished run from its features.csv (with the
/// `[meta]` and `[known_unknowns]` sections of `cfg`), rewriting the meta results and the report.
/// Returns the seconds the fitting took.
pub fn refit_meta(run_dir: &Path, cfg: &Config) -> Result<f64> {
    let table = FeatureTable::read_csv(&run_dir.join("features.csv"))?;
    let mp = meta_params(cfg)?;
    let t = Instant::now();
    let results =
        eval::run_meta(&table, &mp).map_err(|e| Error::Other(format!("meta classifiers: {e}")))?;
    let secs = t.elapsed().as_secs_f64();
    for w in &results.warnings {
        tracing::warn!("{w}");
    }
    let folder = RunFolder {
        path: run_dir.to_path_buf(),
    };
    write_meta(&folder, &table, &results)?;
    let classes = run_classes(run_dir)?;
    fit_trust(cfg, &folder, &table, &mp, &results.records, classes)?;
    crate::report::build(run_dir)?;
    Ok(secs)
}
