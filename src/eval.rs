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
cnn_acc = the CNN's accuracy on the meta-test rows. aurc, eaurc, augrc = selective classification (FD-Shifts' \
definitions, 0-1 scale; FD-Shifts reports x1000): area under risk (wrong among kept / kept) over coverage, ties kept \
together; eaurc = aurc minus that of a perfect ranking; augrc uses wrong among kept / n. Task failure (FD-Shifts' \
protocol): successes = right in-distribution predictions (meta-test rows), failures = wrong ones and every OOD row; \
auroc with successes positive, aurc, augrc. Mean and std (population, ddof 0) over repetitions.";

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

/// Selective-classification metrics (FD-Shifts' definitions, 0–1 scale; FD-Shifts reports
/// ×1000): AURC, e-AURC and AUGRC of confidences `s` (higher = more trustworthy) for
/// predictions `ok` (right or wrong). Tied confidences are kept or dropped together; AURC is
/// the trapezoid area under risk = wrong among kept / kept over coverage = kept / n, from
/// (0, risk of the first point) to 1; e-AURC = AURC − the optimum r + (1 − r)·ln(1 − r) for an
/// error rate r; AUGRC uses the generalised risk wrong among kept / n and starts at (0, 0).
pub fn selective(ok: &[bool], s: &[f64]) -> Option<[f64; 3]> {
    let n = ok.len();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let steps = threshold_steps(ok, s);
    let (mut aurc, mut augrc) = (0f64, 0f64);
    let (mut c0, mut r0, mut g0) = (0f64, f64::NAN, 0f64);
    for (tp, fp) in steps {
        let kept = tp + fp;
        let (c, r, g) = (kept / nf, fp / kept, fp / nf);
        if r0.is_nan() {
            r0 = r;
        }
        aurc += (c - c0) * (r0 + r) / 2.0;
        augrc += (c - c0) * (g0 + g) / 2.0;
        (c0, r0, g0) = (c, r, g);
    }
    let rate = ok.iter().filter(|&&o| !o).count() as f64 / nf;
    let best = if rate >= 1.0 {
        1.0
    } else {
        rate + (1.0 - rate) * (1.0 - rate).ln()
    };
    Some([aurc, aurc - best, augrc])
}

/// Names of [`selective`]'s values, in order.
pub const SELECTIVE: [&str; 3] = ["aurc", "eaurc", "augrc"];

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

/// ln Σ exp(v / t) of one row of logits, stably.
fn log_sum_exp(row: &[f32], t: f64) -> f64 {
    let m = row
        .iter()
        .fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64 / t));
    m + row
        .iter()
        .map(|&v| (v as f64 / t - m).exp())
        .sum::<f64>()
        .ln()
}

/// Mean negative log-likelihood of softmax(z / t) at `labels` (z: rows × `k` logits).
pub fn nll_at(z: &[f32], labels: &[u32], k: usize, t: f64) -> f64 {
    let n = labels.len().max(1) as f64;
    z.chunks_exact(k)
        .zip(labels)
        .map(|(row, &y)| log_sum_exp(row, t) - row[y as usize] as f64 / t)
        .sum::<f64>()
        / n
}

/// Temperature scaling (Guo et al. 2017): the T > 0 minimising the mean NLL of softmax(z / T)
/// on held-out rows (the validation split), by golden-section search on ln T ∈ [−3, 3] (the
/// NLL is convex in 1/T, so unimodal there); 1 without rows.
pub fn fit_temperature(z: &[f32], labels: &[u32], k: usize) -> f64 {
    if labels.is_empty() || k == 0 {
        return 1.0;
    }
    let f = |u: f64| nll_at(z, labels, k, u.exp());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (-3.0f64, 3.0f64);
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..200 {
        if (b - a).abs() < 1e-12 {
            break;
        }
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// The max softmax probability of each row of softmax(z / t), and whether its argmax is the
/// label.
pub fn confidences(z: &[f32], labels: &[u32], k: usize, t: f64) -> (Vec<f64>, Vec<bool>) {
    z.chunks_exact(k)
        .zip(labels)
        .map(|(row, &y)| {
            let (arg, conf) = top(row, t);
            (conf, arg as u32 == y)
        })
        .unzip()
}

/// The argmax of a row of logits and its probability under softmax(z / t).
fn top(row: &[f32], t: f64) -> (usize, f64) {
    let (arg, v) =
        row.iter().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
        );
    (arg, (v as f64 / t - log_sum_exp(row, t)).exp())
}

/// The top-class probability of softmax(z / t) for each row of softmax *probabilities*
/// `probs` (rows × `k`): softmax is shift-invariant, so ln p serves as the logits
/// (temperature scaling without the logits, e.g. from [`crate::features::score_with_probs`]).
pub fn tempered_top(probs: &[f32], k: usize, t: f64) -> Vec<f64> {
    probs
        .chunks_exact(k)
        .map(|row| {
            let lnp: Vec<f32> = row.iter().map(|p| p.ln()).collect();
            top(&lnp, t).1
        })
        .collect()
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

/// A fitted (or baseline) scorer of the grid: model, feature group, known unknowns, transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Scorer {
    pub model: String,
    pub features: String,
    pub known_unknowns: bool,
    pub transform: String,
}

/// The scored rows of one scorer in one repetition. Millions of rows are kept for
/// meta_scores.csv (every evaluated row × every scorer of the kept repetitions), so the scorer
/// and repetition are held once per block and each row takes 16 bytes.
#[derive(Debug, Clone)]
pub struct ScoreBlock {
    pub scorer: Scorer,
    pub rep: u32,
    pub rows: Vec<ScoreRow>,
}

/// One scored row: the feature table's row, its target and the score.
#[derive(Debug, Clone, Copy)]
pub struct ScoreRow {
    pub score: f64,
    pub row: u32,
    pub target: u8,
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
    pub scores: Vec<ScoreBlock>,
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
    scores: Vec<ScoreBlock>,
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
        if let Some(m) = selective(&pos, s_test) {
            for (name, v) in SELECTIVE.iter().zip(m) {
                vals.push((key("error", None, name), v));
            }
        }
        // failure detection (FD-Shifts): successes = right in-distribution predictions;
        // failures = wrong ones and every OOD image
        if !ood_rows.is_empty() {
            let n_ood: usize = ood_rows.iter().map(|(_, r)| r.len()).sum();
            let mut fpos = pos.clone();
            fpos.extend(std::iter::repeat_n(false, n_ood));
            let fs = &s_eval[..test.len() + n_ood];
            if let Some(a) = auroc(&fpos, fs) {
                vals.push((key("failure", None, "auroc"), a));
            }
            if let Some(m) = selective(&fpos, fs) {
                for (name, v) in SELECTIVE.iter().zip(m) {
                    vals.push((key("failure", None, name), v));
                }
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
            if let Some(m) = selective(&pos, s) {
                for (mn, v) in SELECTIVE.iter().zip(m) {
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
            out.scores.push(ScoreBlock {
                scorer: Scorer {
                    model: model.into(),
                    features: feats.into(),
                    known_unknowns: ku,
                    transform: tr.into(),
                },
                rep: rep as u32,
                rows: eval_rows
                    .iter()
                    .zip(s_eval)
                    .map(|(&r, &s)| ScoreRow {
                        score: s,
                        row: r as u32,
                        target: target(r),
                    })
                    .collect(),
            });
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
                    // trees only compare thresholds: a monotone transform changes nothing
                    if model == "gb" && tr != "none" && p.transforms.iter().any(|t| t == "none") {
                        continue;
                    }
                    let s_eval: Vec<f64> = if model == "gb" {
                        crate::meta::boost::BoostParams {
                            seed: p.seed ^ (rep as u64 + 1),
                            ..Default::default()
                        }
                        .fit(&x, &y)?
                        .predict(&xe)
                    } else if model == "nn" {
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
                            // name the constant features
                            let w = if w.contains("constant feature") {
                                let names: Vec<&str> = g
                                    .columns
                                    .iter()
                                    .zip(&m.scale)
                                    .filter(|(_, s)| **s == 0.0)
                                    .map(|(c, _)| c.as_str())
                                    .collect();
                                format!("{w}: {}", names.join(", "))
                            } else {
                                w.clone()
                            };
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

    /// scipy.optimize.minimize_scalar on the same logits
    /// (tests/fixtures/make_temperature_values.py).
    #[test]
    fn tempered_probabilities_equal_softmax_of_tempered_logits() {
        // rows of logits, one very confident (its small probabilities underflow f32's normal
        // range but not its meaning)
        let z: Vec<f32> = vec![2.0, -1.0, 0.5, 30.0, -60.0, 1.0, 0.0, 0.0, 0.0];
        let probs = crate::model::softmax(&z, 3);
        for t in [0.5, 1.0, 1.7] {
            let want = confidences(&z, &[0, 0, 0], 3, t).0;
            let got = tempered_top(&probs, 3, t);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "T {t}: {g} vs {w}");
            }
        }
        // by hand: T = 1 gives the msp back; equal logits give 1/3 at any T
        assert!((tempered_top(&probs, 3, 1.0)[0] - probs[0] as f64).abs() < 1e-7);
        assert!((tempered_top(&probs, 3, 2.0)[2] - 1.0 / 3.0).abs() < 1e-7);
    }

    #[test]
    fn temperature_equals_scipy() {
        let z: Vec<f32> = vec![
            0.004, 0.896, -0.822, -2.672, 2.636, -2.975, 0.18, 8.021, -1.477, 2.139, 1.47, 1.071,
            0.316, -2.791, -0.088, 2.086, -4.033, 2.627, -5.704, 0.131, -5.525, -0.705, -3.802,
            4.814, 0.47, -0.561, -7.55, -1.616, -0.146, 4.34, -4.59, -1.433, 1.064, -2.427, 7.183,
            -2.423, -0.098, 2.653, -1.751, 3.665, 0.331, 0.191, -3.675, 4.228, 4.076, -0.641,
            2.578, 0.358, -1.924, 6.001, 2.287, -3.598, 0.224, 5.73, 3.434, 2.049, -0.2, 2.002,
            8.316, -2.027, 0.609, -1.39, 0.382, 0.438, -1.738, -0.589, 2.696, 7.436, -3.971,
            -2.384, 1.941, -1.977,
        ];
        let y = [
            0, 1, 1, 0, 2, 2, 1, 2, 1, 2, 2, 1, 0, 0, 1, 0, 2, 2, 0, 1, 0, 0, 1, 2,
        ];
        let t = fit_temperature(&z, &y, 3);
        assert!((t - 2.2602322180385084).abs() < 1e-6, "{t}");
        // the f32 logits differ from numpy's f64 in the 8th digit
        assert!((nll_at(&z, &y, 3, 1.0) - 0.86195847764394).abs() < 1e-6);
        assert!((nll_at(&z, &y, 3, t) - 0.6793201749504884).abs() < 1e-6);
        let (c, ok) = confidences(&z, &y, 3, t);
        assert_eq!(c.len(), 24);
        assert!(c.iter().all(|&v| v > 1.0 / 3.0 - 1e-12 && v <= 1.0));
        assert_eq!(ok, confidences(&z, &y, 3, 1.0).1);
    }

    /// tests/fixtures/make_selective_values.py (FORMATS.md's definitions in plain Python).
    #[test]
    fn selective_equals_python() {
        let s = [0.9, 0.8, 0.8, 0.7, 0.6, 0.6, 0.6, 0.5, 0.3, 0.2];
        let ok = [1, 1, 0, 1, 1, 0, 1, 0, 1, 0].map(|v| v == 1);
        let [aurc, eaurc, augrc] = selective(&ok, &s).unwrap();
        assert!((aurc - 0.24797619047619046).abs() < 1e-12, "{aurc}");
        assert!((eaurc - 0.15447156473578488).abs() < 1e-12, "{eaurc}");
        assert!((augrc - 0.155).abs() < 1e-12, "{augrc}");
        // a perfect ranking (two tied groups): points (0, 0), (0.6, 0), (1, 0.4), so AURC =
        // 0.08 by hand, AUGRC = r²/2 = 0.08, and e-AURC = AURC − (r + (1 − r)·ln(1 − r)) (the
        // continuous optimum, which a tied discrete curve undercuts)
        let s: Vec<f64> = ok.iter().map(|&o| o as u8 as f64).collect();
        let [a, e, g] = selective(&ok, &s).unwrap();
        assert!(
            (a - 0.08).abs() < 1e-12 && (g - 0.08).abs() < 1e-12,
            "{a} {g}"
        );
        assert!(
            (e - (0.08 - (0.4 + 0.6 * 0.6f64.ln()))).abs() < 1e-12,
            "{e}"
        );
    }

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
