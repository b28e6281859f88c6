//! Evaluation: detection metrics (AUROC, AUPR-In, AUPR-Out, FPR@95%TPR), calibration (ECE, MCE),
//! the repeated meta-train/meta-test splits with every meta classifier × feature group ×
//! known-unknowns setting, and the records and ablation tables built from them.

use crate::data::stage_rng;
use crate::features::FeatureTable;
use crate::meta::logistic::LogisticParams;
use crate::meta::nn::NnParams;
use crate::meta::FeatureGroup;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The metric definitions, stated in metrics.json and the report.
pub const DEFINITIONS: &str = "Score s = the meta classifier's probability that the prediction can be trusted \
(target 1 = in-distribution image predicted correctly), or a baseline's signed raw score (higher = more trustworthy: \
msp, mc_pmax as they are; entropy, mc_entropy, grad_all_l2 negated). Error detection: in-distribution meta-test rows, \
positive = correct prediction. OOD detection per set: in-distribution meta-test rows (positive) vs that set's rows \
(negative). auroc = area under the ROC curve (ties count half; sklearn roc_auc_score). aupr_in = average precision with \
the positives as the class of interest (sklearn average_precision_score(positive, s)). aupr_out = average precision \
with the negatives as the class of interest and -s as the score. fpr95 = fraction of negatives with s >= the largest \
threshold that keeps >= 95% of positives. meta_acc = accuracy of the meta classifier at 0.5 on its targets. \
cnn_acc = the CNN's accuracy on the meta-test rows. Mean and std (population, ddof 0) over repetitions.";

/// Area under the ROC curve (Mann–Whitney, ties count half). `None` without both classes.
pub fn auroc(pos: &[bool], s: &[f64]) -> Option<f64> {
    let np = pos.iter().filter(|&&p| p).count();
    let nn = pos.len() - np;
    if np == 0 || nn == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && s[idx[j + 1]] == s[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if pos[k] {
                rank_sum += avg;
            }
        }
        i = j + 1;
    }
    Some((rank_sum - (np * (np + 1)) as f64 / 2.0) / (np as f64 * nn as f64))
}

/// Cumulative (true positives, false positives) at each distinct score threshold, from the
/// highest score down (tied scores form one step): the walk behind ROC, PR and AP.
pub fn threshold_steps(pos: &[bool], s: &[f64]) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
    let (mut tp, mut fp) = (0f64, 0f64);
    let mut steps = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && s[idx[j + 1]] == s[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            if pos[k] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
        }
        steps.push((tp, fp));
        i = j + 1;
    }
    steps
}

/// Average precision as sklearn computes it: Σ (R_k − R_{k−1}) P_k over distinct thresholds.
pub fn average_precision(pos: &[bool], s: &[f64]) -> Option<f64> {
    let np = pos.iter().filter(|&&p| p).count();
    if np == 0 {
        return None;
    }
    let (mut ap, mut last_r) = (0f64, 0f64);
    for (tp, fp) in threshold_steps(pos, s) {
        let r = tp / np as f64;
        ap += (r - last_r) * tp / (tp + fp);
        last_r = r;
    }
    Some(ap)
}

/// Fraction of negatives scoring ≥ the largest threshold that keeps ≥ 95% of the positives.
pub fn fpr_at_95(pos: &[bool], s: &[f64]) -> Option<f64> {
    let mut ps: Vec<f64> = s
        .iter()
        .zip(pos)
        .filter(|(_, &p)| p)
        .map(|(v, _)| *v)
        .collect();
    let nn = pos.len() - ps.len();
    if ps.is_empty() || nn == 0 {
        return None;
    }
    ps.sort_by(|a, b| b.total_cmp(a));
    let k = ((0.95 * ps.len() as f64) - 1e-9).ceil() as usize;
    let t = ps[k.max(1) - 1];
    let fp = s.iter().zip(pos).filter(|(v, &p)| !p && **v >= t).count();
    Some(fp as f64 / nn as f64)
}

/// The four detection metrics, in the order of [`METRICS`].
pub fn detection_metrics(pos: &[bool], s: &[f64]) -> Option<[f64; 4]> {
    let neg: Vec<bool> = pos.iter().map(|p| !p).collect();
    let ns: Vec<f64> = s.iter().map(|v| -v).collect();
    Some([
        auroc(pos, s)?,
        average_precision(pos, s)?,
        average_precision(&neg, &ns)?,
        fpr_at_95(pos, s)?,
    ])
}

pub const METRICS: [&str; 4] = ["auroc", "aupr_in", "aupr_out", "fpr95"];

/// Expected and maximum calibration error over `bins` equal-width confidence bins:
/// ECE = Σ_b (n_b/N)|acc_b − conf_b|, MCE = max_b |acc_b − conf_b| over non-empty bins.
pub fn calibration(
    conf: &[f64],
    correct: &[bool],
    bins: usize,
) -> (f64, f64, Vec<(f64, f64, usize)>) {
    let mut acc = vec![(0f64, 0f64, 0usize); bins];
    for (c, ok) in conf.iter().zip(correct) {
        let b = ((c * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        acc[b].0 += *c;
        acc[b].1 += *ok as u8 as f64;
        acc[b].2 += 1;
    }
    let n = conf.len().max(1) as f64;
    let (mut ece, mut mce) = (0f64, 0f64);
    let mut table = Vec::new();
    for (sc, sa, k) in acc {
        if k == 0 {
            table.push((f64::NAN, f64::NAN, 0));
            continue;
        }
        let (cf, ac) = (sc / k as f64, sa / k as f64);
        ece += k as f64 / n * (ac - cf).abs();
        mce = mce.max((ac - cf).abs());
        table.push((cf, ac, k));
    }
    (ece, mce, table)
}

/// One result: a metric over repetitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub task: String,
    pub ood_set: Option<String>,
    pub model: String,
    pub features: String,
    pub known_unknowns: bool,
    /// Feature transform of a fitted model ("none" or "log"; baselines "none").
    #[serde(default = "none")]
    pub transform: String,
    pub metric: String,
    pub mean: f64,
    pub std: f64,
    pub values: Vec<f64>,
}

fn none() -> String {
    "none".into()
}

/// One scored row of one fitted (or baseline) scorer.
#[derive(Debug, Clone)]
pub struct ScoreRow {
    pub rep: usize,
    pub model: String,
    pub features: String,
    pub known_unknowns: bool,
    pub transform: String,
    pub row: usize,
    pub target: u8,
    pub score: f64,
}

/// One coefficient line.
#[derive(Debug, Clone)]
pub struct CoefRow {
    pub rep: usize,
    pub model: String,
    pub features: String,
    pub known_unknowns: bool,
    pub transform: String,
    pub term: String,
    pub original: f64,
    pub standardized: f64,
    pub lambda: f64,
}

/// Settings of the meta experiment.
#[derive(Debug, Clone)]
pub struct MetaParams {
    pub repetitions: usize,
    pub test_fraction: f64,
    pub models: Vec<String>,
    pub groups: Vec<FeatureGroup>,
    /// Feature transforms ("none", "log"), each a grid dimension of the fitted models.
    pub transforms: Vec<String>,
    pub alpha: f64,
    pub lambda: Option<f64>,
    pub cv_folds: usize,
    pub n_lambda: usize,
    pub nn: NnParams,
    pub seed: u64,
    /// Known-unknown set name (rows `known-unknown-<name>`), if any.
    pub known_unknowns: Option<String>,
    /// Repetitions whose per-row scores are kept (scores of every rep are large).
    pub keep_scores: usize,
}

/// Baselines: (name, column, sign).
pub const BASELINES: [(&str, &str, f64); 9] = [
    ("msp", "msp", 1.0),
    ("entropy", "entropy", -1.0),
    ("mc_pmax", "mc_pmax", 1.0),
    ("mc_entropy", "mc_entropy", -1.0),
    ("energy", "energy", 1.0),
    ("max_logit", "max_logit", 1.0),
    ("gradnorm", "gradnorm", 1.0),
    ("exgrad_fc", "exgrad_fc", -1.0),
    ("grad_all_l2", "grad_all_l2", -1.0),
];

/// Everything the meta experiment produced.
#[derive(Debug, Clone, Default)]
pub struct MetaResults {
    pub records: Vec<Record>,
    pub scores: Vec<ScoreRow>,
    pub coefs: Vec<CoefRow>,
    pub warnings: Vec<String>,
    /// The single-metric table: every feature column as a threshold classifier (model
    /// `single`, features = the column; metric `sign` = the sign fixed on each repetition's
    /// meta-train rows), on the same meta-test rows as the grid.
    pub single: Vec<Record>,
}

/// (task, ood_set, model, features, known_unknowns, transform, metric)
type Key = (String, Option<String>, String, String, bool, String, String);

struct RepOut {
    /// (task, ood_set, model, features, ku, metric) → value
    values: Vec<(Key, f64)>,
    /// The same for the single-metric threshold classifiers.
    single: Vec<(Key, f64)>,
    scores: Vec<ScoreRow>,
    coefs: Vec<CoefRow>,
    warnings: Vec<String>,
}

/// Rows of `t` × columns `cols` as a row-major f64 design matrix.
pub(crate) fn design(t: &FeatureTable, rows: &[usize], cols: &[usize]) -> Vec<f64> {
    let mut x = Vec::with_capacity(rows.len() * cols.len());
    for &r in rows {
        let row = t.row(r);
        for &c in cols {
            x.push(row[c] as f64);
        }
    }
    x
}

/// The logistic fit settings of a meta model name (`glm` = λ 0, `lasso` = α 1, `ridge` = α 0,
/// `elastic-net` = `meta.alpha`).
pub fn logistic_params(model: &str, p: &MetaParams, seed: u64) -> LogisticParams {
    let (alpha, lambda) = match model {
        "glm" => (1.0, Some(0.0)),
        "lasso" => (1.0, p.lambda),
        "ridge" => (0.0, p.lambda),
        _ => (p.alpha, p.lambda),
    };
    LogisticParams {
        n_lambda: p.n_lambda,
        cv_folds: p.cv_folds,
        seed,
        ..LogisticParams::new(alpha, lambda)
    }
}

/// Runs the whole grid over repetitions (in parallel) and summarises it.
pub fn run_meta(t: &FeatureTable, p: &MetaParams) -> Result<MetaResults, String> {
    let id_rows: Vec<usize> = (0..t.len()).filter(|&r| t.set[r] == "id-test").collect();
    if id_rows.len() < 4 {
        return Err(format!(
            "only {} in-distribution rows; need at least 4",
            id_rows.len()
        ));
    }
    let mut ood_sets: Vec<String> = Vec::new();
    for s in &t.set {
        if let Some(name) = s.strip_prefix("ood-") {
            if !ood_sets.iter().any(|o| o == name) {
                ood_sets.push(name.to_string());
            }
        }
    }
    let ood_rows: Vec<(String, Vec<usize>)> = ood_sets
        .iter()
        .map(|o| {
            (
                o.clone(),
                (0..t.len())
                    .filter(|&r| t.set[r] == format!("ood-{o}"))
                    .collect(),
            )
        })
        .collect();
    let mut shift_sets: Vec<String> = Vec::new();
    for s in &t.set {
        if s.starts_with("shift-") && !shift_sets.contains(s) {
            shift_sets.push(s.clone());
        }
    }
    let shift_rows: Vec<(String, Vec<usize>)> = shift_sets
        .iter()
        .map(|s| {
            (
                s.clone(),
                (0..t.len())
                    .filter(|&r| &t.set[r] == s && t.correct(r).is_some())
                    .collect(),
            )
        })
        .collect();
    let ku_rows: Vec<usize> = match &p.known_unknowns {
        Some(k) => (0..t.len())
            .filter(|&r| t.set[r] == format!("known-unknown-{k}"))
            .collect(),
        None => vec![],
    };
    for g in &p.groups {
        for c in &g.columns {
            if t.col(c).is_none() {
                return Err(format!(
                    "feature group {} needs column {c}, which the feature table lacks",
                    g.name
                ));
            }
        }
    }
    let outs: Vec<Result<RepOut, String>> = (0..p.repetitions)
        .into_par_iter()
        .map(|rep| one_rep(t, p, rep, &id_rows, &ood_rows, &shift_rows, &ku_rows))
        .collect();
    let mut res = MetaResults::default();
    let mut keys: Vec<Key> = Vec::new();
    let mut vals: std::collections::HashMap<Key, Vec<f64>> = Default::default();
    let mut skeys: Vec<Key> = Vec::new();
    let mut svals: std::collections::HashMap<Key, Vec<f64>> = Default::default();
    for o in outs {
        let o = o?;
        for (k, v) in o.values {
            if !vals.contains_key(&k) {
                keys.push(k.clone());
            }
            vals.entry(k).or_default().push(v);
        }
        for (k, v) in o.single {
            if !svals.contains_key(&k) {
                skeys.push(k.clone());
            }
            svals.entry(k).or_default().push(v);
        }
        res.scores.extend(o.scores);
        res.coefs.extend(o.coefs);
        for w in o.warnings {
            if !res.warnings.contains(&w) {
                res.warnings.push(w);
            }
        }
    }
    res.records = summarise(keys, vals);
    res.single = summarise(skeys, svals);
    Ok(res)
}

/// Records (mean and population sd over repetitions) of the values per key, in key order.
fn summarise(keys: Vec<Key>, mut vals: std::collections::HashMap<Key, Vec<f64>>) -> Vec<Record> {
    keys.into_iter()
        .map(|k| {
            let v = vals.remove(&k).unwrap_or_default();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            Record {
                task: k.0,
                ood_set: k.1,
                model: k.2,
                features: k.3,
                known_unknowns: k.4,
                transform: k.5,
                metric: k.6,
                mean,
                std,
                values: v,
            }
        })
        .collect()
}

/// single_metrics.csv: per task and column, mean ± sd over repetitions of AUROC, AUPR-In,
/// AUPR-Out and FPR95, and the sign (+1: larger values mean trustworthy; the mean of the
/// per-repetition signs).
pub fn single_metrics_csv(single: &[Record]) -> String {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in single {
        let k = (crate::verdicts::task_of(r), r.features.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let get = |task: &str, col: &str, metric: &str| {
        single.iter().find(|r| {
            crate::verdicts::task_of(r) == task && r.features == col && r.metric == metric
        })
    };
    let mut head = vec!["task".to_string(), "column".into(), "sign".into()];
    for m in METRICS {
        head.push(format!("{m}_mean"));
        head.push(format!("{m}_sd"));
    }
    head.push("repetitions".into());
    let rows = keys
        .iter()
        .filter(|(t, c)| get(t, c, "auroc").is_some())
        .map(|(t, c)| {
            let mut row = vec![
                t.clone(),
                c.clone(),
                get("error", c, "sign")
                    .map(|r| r.mean.to_string())
                    .unwrap_or_default(),
            ];
            for m in METRICS {
                match get(t, c, m) {
                    Some(r) => {
                        row.push(r.mean.to_string());
                        row.push(r.std.to_string());
                    }
                    None => row.extend([String::new(), String::new()]),
                }
            }
            row.push(get(t, c, "auroc").map_or(0, |r| r.values.len()).to_string());
            row
        });
    crate::runfolder::csv_text(&head, rows)
}

fn one_rep(
    t: &FeatureTable,
    p: &MetaParams,
    rep: usize,
    id_rows: &[usize],
    ood_rows: &[(String, Vec<usize>)],
    shift_rows: &[(String, Vec<usize>)],
    ku_rows: &[usize],
) -> Result<RepOut, String> {
    let mut rng = stage_rng(p.seed, &format!("meta/split/{rep}"));
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for ok in [true, false] {
        let mut rows: Vec<usize> = id_rows
            .iter()
            .cloned()
            .filter(|&r| t.correct(r) == Some(ok))
            .collect();
        rows.shuffle(&mut rng);
        let nt = ((rows.len() as f64) * p.test_fraction).round() as usize;
        test.extend_from_slice(&rows[..nt]);
        train.extend_from_slice(&rows[nt..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    let mut out = RepOut {
        values: Vec::new(),
        single: Vec::new(),
        scores: Vec::new(),
        coefs: Vec::new(),
        warnings: Vec::new(),
    };
    // each repetition evaluates a random `test_fraction` of every shift set (right and wrong
    // predictions split alike), as it does the in-distribution rows: otherwise the baselines
    // would score the very same rows every time and their spread would be 0
    let shift_rows: Vec<(String, Vec<usize>)> = shift_rows
        .iter()
        .map(|(name, rows)| {
            let mut rng = stage_rng(p.seed, &format!("meta/shift/{name}/{rep}"));
            let mut keep = Vec::new();
            for ok in [true, false] {
                let mut r: Vec<usize> = rows
                    .iter()
                    .cloned()
                    .filter(|&x| t.correct(x) == Some(ok))
                    .collect();
                r.shuffle(&mut rng);
                let nt = ((r.len() as f64) * p.test_fraction).round() as usize;
                keep.extend_from_slice(&r[..nt]);
            }
            keep.sort_unstable();
            (name.clone(), keep)
        })
        .collect();
    let shift_rows = &shift_rows[..];
    let eval_rows: Vec<usize> = test
        .iter()
        .cloned()
        .chain(ood_rows.iter().flat_map(|(_, r)| r.iter().cloned()))
        .chain(shift_rows.iter().flat_map(|(_, r)| r.iter().cloned()))
        .collect();
    let target = |r: usize| -> u8 { (t.correct(r) == Some(true)) as u8 };
    let cnn_acc = test.iter().filter(|&&r| t.correct(r) == Some(true)).count() as f64
        / test.len().max(1) as f64;
    let emit = |out: &mut RepOut,
                model: &str,
                feats: &str,
                ku: bool,
                tr: &str,
                s_eval: &[f64],
                single: bool| {
        let mut vals: Vec<(Key, f64)> = Vec::new();
        let key = |task: &str, o: Option<&str>, m: &str| {
            (
                task.to_string(),
                o.map(String::from),
                model.to_string(),
                feats.to_string(),
                ku,
                tr.to_string(),
                m.to_string(),
            )
        };
        // s_eval follows eval_rows: the meta-test rows, then each OOD set's rows in order
        let s_test = &s_eval[..test.len()];
        let pos: Vec<bool> = test.iter().map(|&r| target(r) == 1).collect();
        if let Some(m) = detection_metrics(&pos, s_test) {
            for (name, v) in METRICS.iter().zip(m) {
                vals.push((key("error", None, name), v));
            }
        }
        if !single && !BASELINES.iter().any(|b| b.0 == model) {
            let acc = pos
                .iter()
                .zip(s_test)
                .filter(|(p, s)| (**s >= 0.5) == **p)
                .count() as f64
                / pos.len().max(1) as f64;
            vals.push((key("error", None, "meta_acc"), acc));
        }
        vals.push((key("error", None, "cnn_acc"), cnn_acc));
        let mut start = test.len();
        for (name, rows) in ood_rows {
            let mut pos = vec![true; test.len()];
            pos.extend(std::iter::repeat_n(false, rows.len()));
            let s: Vec<f64> = s_test
                .iter()
                .chain(&s_eval[start..start + rows.len()])
                .cloned()
                .collect();
            start += rows.len();
            if let Some(m) = detection_metrics(&pos, &s) {
                for (mn, v) in METRICS.iter().zip(m) {
                    vals.push((key("ood", Some(name), mn), v));
                }
            }
        }
        // error detection under shift: the shifted set's own right and wrong predictions,
        // scored by the meta classifier fitted on unshifted meta-train rows
        for (name, rows) in shift_rows {
            let s = &s_eval[start..start + rows.len()];
            start += rows.len();
            let pos: Vec<bool> = rows.iter().map(|&r| target(r) == 1).collect();
            if let Some(m) = detection_metrics(&pos, s) {
                for (mn, v) in METRICS.iter().zip(m) {
                    vals.push((key(name, None, mn), v));
                }
            }
        }
        if single {
            out.single.extend(vals);
            return;
        }
        out.values.extend(vals);
        if rep < p.keep_scores {
            for (&r, &s) in eval_rows.iter().zip(s_eval) {
                out.scores.push(ScoreRow {
                    rep,
                    model: model.into(),
                    features: feats.into(),
                    known_unknowns: ku,
                    transform: tr.into(),
                    row: r,
                    target: target(r),
                    score: s,
                });
            }
        }
    };
    // baselines: fixed signs, no fitting
    for (name, col, sign) in BASELINES {
        let Some(c) = t.col(col) else { continue };
        let s_eval: Vec<f64> = eval_rows
            .iter()
            .map(|&r| sign * t.row(r)[c] as f64)
            .collect();
        emit(&mut out, name, name, false, "none", &s_eval, false);
    }
    // the single-metric table: each feature column as a threshold classifier, its sign (does
    // larger mean trustworthy?) fixed on the meta-train rows of the error task
    let train_pos: Vec<bool> = train.iter().map(|&r| target(r) == 1).collect();
    for (c, name) in t.columns.iter().enumerate() {
        let xs: Vec<f64> = train.iter().map(|&r| t.row(r)[c] as f64).collect();
        let sign = match auroc(&train_pos, &xs) {
            Some(a) if a < 0.5 => -1.0,
            _ => 1.0,
        };
        let s_eval: Vec<f64> = eval_rows
            .iter()
            .map(|&r| sign * t.row(r)[c] as f64)
            .collect();
        emit(&mut out, "single", name, false, "none", &s_eval, true);
        out.single.push((
            (
                "error".into(),
                None,
                "single".into(),
                name.clone(),
                false,
                "none".into(),
                "sign".into(),
            ),
            sign,
        ));
    }
    let ku_options: Vec<bool> = if ku_rows.is_empty() {
        vec![false]
    } else {
        vec![false, true]
    };
    for &ku in &ku_options {
        let fit_rows: Vec<usize> = train
            .iter()
            .cloned()
            .chain(if ku { ku_rows.to_vec() } else { vec![] })
            .collect();
        let y: Vec<f64> = fit_rows.iter().map(|&r| target(r) as f64).collect();
        for g in &p.groups {
            let cols: Vec<usize> = g.columns.iter().map(|c| t.col(c).unwrap()).collect();
            let x_raw = design(t, &fit_rows, &cols);
            let xe_raw = design(t, &eval_rows, &cols);
            for tr in &p.transforms {
                // fitted on the meta-train rows only, applied to every evaluated row
                let f = crate::meta::transform::Fitted::fit(tr, &g.columns, &x_raw)?;
                let (x, xe) = (f.apply(&x_raw), f.apply(&xe_raw));
                for model in &p.models {
                    let s_eval: Vec<f64> = if model == "nn" {
                        let nn = NnParams {
                            seed: p.seed ^ (rep as u64 + 1),
                            ..p.nn.clone()
                        }
                        .fit(&x, &y)
                        .map_err(|e| format!("nn meta classifier: {e}"))?;
                        nn.predict(&xe)
                            .map_err(|e| format!("nn meta classifier: {e}"))?
                    } else {
                        let m = logistic_params(model, p, p.seed ^ (rep as u64 + 1)).fit(&x, &y)?;
                        for w in &m.warnings {
                            out.warnings.push(format!(
                                "{model} on {}{} ({tr}): {w}",
                                g.name,
                                if ku { " with known unknowns" } else { "" }
                            ));
                        }
                        let (b0, orig) = m.original();
                        let mut push = |term: &str, o: f64, s: f64| {
                            out.coefs.push(CoefRow {
                                rep,
                                model: model.clone(),
                                features: g.name.clone(),
                                known_unknowns: ku,
                                transform: tr.clone(),
                                term: term.into(),
                                original: o,
                                standardized: s,
                                lambda: m.lambda,
                            })
                        };
                        push("(intercept)", b0, m.intercept);
                        for (j, c) in g.columns.iter().enumerate() {
                            push(c, orig[j], m.coef[j]);
                        }
                        m.predict(&xe)
                    };
                    emit(&mut out, model, &g.name, ku, tr, &s_eval, false);
                }
            }
        }
    }
    Ok(out)
}

/// Pools the repetitions of another CNN's results into `a` (same grid): values are appended,
/// mean and std recomputed. Scores and coefficients of `a` are kept as they are.
pub fn pool(a: &mut MetaResults, b: MetaResults) {
    pool_records(&mut a.records, b.records);
    pool_records(&mut a.single, b.single);
    for w in b.warnings {
        if !a.warnings.contains(&w) {
            a.warnings.push(w);
        }
    }
}

fn pool_records(a: &mut Vec<Record>, b: Vec<Record>) {
    for rb in b {
        match a.iter_mut().find(|r| {
            r.task == rb.task
                && r.ood_set == rb.ood_set
                && r.model == rb.model
                && r.features == rb.features
                && r.known_unknowns == rb.known_unknowns
                && r.transform == rb.transform
                && r.metric == rb.metric
        }) {
            Some(r) => {
                r.values.extend(rb.values);
                let n = r.values.len() as f64;
                r.mean = r.values.iter().sum::<f64>() / n;
                r.std = (r.values.iter().map(|x| (x - r.mean).powi(2)).sum::<f64>() / n).sqrt();
            }
            None => a.push(rb),
        }
    }
}

/// Records as CSV (values joined by ';').
pub fn records_csv(records: &[Record]) -> String {
    crate::runfolder::csv_text(
        &[
            "task",
            "ood_set",
            "model",
            "features",
            "known_unknowns",
            "transform",
            "metric",
            "mean",
            "std",
            "values",
        ],
        records.iter().map(|r| {
            let vals: Vec<String> = r.values.iter().map(|v| v.to_string()).collect();
            vec![
                r.task.clone(),
                r.ood_set.clone().unwrap_or_default(),
                r.model.clone(),
                r.features.clone(),
                r.known_unknowns.to_string(),
                r.transform.clone(),
                r.metric.clone(),
                r.mean.to_string(),
                r.std.to_string(),
                vals.join(";"),
            ]
        }),
    )
}

/// Ablation tables: per model and known-unknowns setting, rows = feature groups, columns =
/// task × metric, mean ± std; the best value of each column is marked. Returns (csv, markdown).
pub fn ablation(records: &[Record]) -> (String, String) {
    let mut cols: Vec<(String, Option<String>, String)> = Vec::new();
    for r in records {
        if !METRICS.contains(&r.metric.as_str()) {
            continue;
        }
        let c = (r.task.clone(), r.ood_set.clone(), r.metric.clone());
        if !cols.contains(&c) {
            cols.push(c);
        }
    }
    let col_name = |c: &(String, Option<String>, String)| match &c.1 {
        Some(o) => format!("ood-{o}:{}", c.2),
        None => format!("{}:{}", c.0, c.2),
    };
    let mut tables: Vec<(String, bool, String)> = Vec::new();
    for r in records {
        let k = (r.model.clone(), r.known_unknowns, r.transform.clone());
        if !tables.contains(&k) && !BASELINES.iter().any(|b| b.0 == r.model) {
            tables.push(k);
        }
    }
    tables.insert(0, ("baseline".into(), false, "none".into()));
    let find =
        |model: &str, feats: &str, ku: bool, tr: &str, c: &(String, Option<String>, String)| {
            records.iter().find(|r| {
                r.model == model
                    && r.features == feats
                    && r.known_unknowns == ku
                    && r.transform == tr
                    && r.task == c.0
                    && r.ood_set == c.1
                    && r.metric == c.2
            })
        };
    let csv_head: Vec<String> = ["model", "known_unknowns", "transform", "features"]
        .iter()
        .map(|s| s.to_string())
        .chain(cols.iter().map(&col_name))
        .collect();
    let mut csv_rows: Vec<Vec<String>> = Vec::new();
    let mut md = String::from("# Ablation: feature groups\n\nMean ± std over repetitions; **bold** = best in its column within the table (lowest for fpr95, highest otherwise).\n");
    for (model, ku, tr) in &tables {
        let rows: Vec<(String, String)> = if model == "baseline" {
            BASELINES
                .iter()
                .map(|b| (b.0.to_string(), b.0.to_string()))
                .collect()
        } else {
            let mut v: Vec<(String, String)> = Vec::new();
            for r in records
                .iter()
                .filter(|r| &r.model == model && r.known_unknowns == *ku && &r.transform == tr)
            {
                if !v.iter().any(|x| x.1 == r.features) {
                    v.push((model.clone(), r.features.clone()));
                }
            }
            v
        };
        md.push_str(&format!(
            "\n## {model}{}{}\n\n| features | {} |\n|---|{}\n",
            if *ku { " (with known unknowns)" } else { "" },
            if tr == "none" {
                String::new()
            } else {
                format!(", {tr} features")
            },
            cols.iter().map(&col_name).collect::<Vec<_>>().join(" | "),
            "---|".repeat(cols.len())
        ));
        let best: Vec<Option<f64>> = cols
            .iter()
            .map(|c| {
                let it = rows
                    .iter()
                    .filter_map(|(m, f)| find(m, f, *ku, tr, c).map(|r| r.mean));
                if c.2 == "fpr95" {
                    it.min_by(f64::total_cmp)
                } else {
                    it.max_by(f64::total_cmp)
                }
            })
            .collect();
        for (m, f) in &rows {
            let mut cells_csv = Vec::new();
            let mut cells_md = Vec::new();
            for (c, b) in cols.iter().zip(&best) {
                match find(m, f, *ku, tr, c) {
                    Some(r) => {
                        let cell = format!("{:.4} ± {:.4}", r.mean, r.std);
                        let is_best = b.is_some_and(|b| b == r.mean);
                        cells_md.push(if is_best {
                            format!("**{cell}**")
                        } else {
                            cell.clone()
                        });
                        cells_csv.push(if is_best { format!("{cell} *") } else { cell });
                    }
                    None => {
                        cells_md.push("–".into());
                        cells_csv.push(String::new());
                    }
                }
            }
            csv_rows.push(
                [m.clone(), ku.to_string(), tr.clone(), f.clone()]
                    .into_iter()
                    .chain(cells_csv)
                    .collect(),
            );
            md.push_str(&format!("| {f} | {} |\n", cells_md.join(" | ")));
        }
    }
    (crate::runfolder::csv_text(&csv_head, csv_rows), md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        // scores 0.1 0.4 0.35 0.8, positives 0 0 1 1 → sklearn: auc 0.75, ap 0.8333
        let pos = [false, false, true, true];
        let s = [0.1, 0.4, 0.35, 0.8];
        assert!((auroc(&pos, &s).unwrap() - 0.75).abs() < 1e-12);
        assert!(
            (average_precision(&pos, &s).unwrap() - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-12
        );
        // ties count half
        assert!((auroc(&[true, false], &[1.0, 1.0]).unwrap() - 0.5).abs() < 1e-12);
        // fpr95 with 20 positives: keep 19 → threshold = 19th highest positive
        let mut pos = vec![true; 20];
        let mut s: Vec<f64> = (1..=20).map(|i| i as f64).collect();
        pos.extend([false, false, false, false]);
        s.extend([1.5, 2.0, 2.5, 30.0]);
        // threshold = 2.0 → negatives ≥ 2: 2.0, 2.5, 30 → 3/4
        assert!((fpr_at_95(&pos, &s).unwrap() - 0.75).abs() < 1e-12);
        assert!(auroc(&[true, true], &[0.1, 0.2]).is_none());
    }

    #[test]
    fn pooling_appends_values() {
        let rec = |v: Vec<f64>| Record {
            task: "error".into(),
            ood_set: None,
            model: "glm".into(),
            features: "softmax".into(),
            known_unknowns: false,
            transform: "none".into(),
            metric: "auroc".into(),
            mean: 0.0,
            std: 0.0,
            values: v,
        };
        let mut a = MetaResults {
            records: vec![rec(vec![0.5, 0.7])],
            ..Default::default()
        };
        pool(
            &mut a,
            MetaResults {
                records: vec![rec(vec![0.9])],
                ..Default::default()
            },
        );
        assert_eq!(a.records[0].values, vec![0.5, 0.7, 0.9]);
        assert!((a.records[0].mean - 0.7).abs() < 1e-12);
        assert!((a.records[0].std - (0.08f64 / 3.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn calibration_by_hand() {
        let conf = [0.95, 0.95, 0.55, 0.45];
        let ok = [true, false, true, true];
        let (ece, mce, _) = calibration(&conf, &ok, 10);
        // bins: 0.9–1.0: conf .95 acc .5 (n=2); 0.5–0.6: .55 vs 1 (n=1); 0.4–0.5: .45 vs 1 (n=1)
        let e = 0.5 * 0.45 + 0.25 * 0.45 + 0.25 * 0.55;
        assert!((ece - e).abs() < 1e-12, "{ece} vs {e}");
        assert!((mce - 0.55).abs() < 1e-12);
    }
}
