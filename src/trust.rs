//! The trust model: one meta classifier refitted on all meta data of a run (by default the
//! grid's best for error detection), with operating thresholds chosen on out-of-fold scores of
//! the in-distribution rows. `metaclf run` saves it as `trust_model.json` (plus
//! `trust_model.safetensors` for the NN's weights); `metaclf score` loads it, checks that it
//! belongs to the run's CNN, and applies it to new images.
//!
//! Trust = the model's probability that a prediction is right and its image in-distribution
//! (the `error` task's target: 1 for a correct in-distribution prediction, 0 for a wrong one
//! and for a known unknown). A prediction is flagged for review when trust < the threshold.

use crate::config::{ScoreSection, THRESHOLDS};
use crate::data::stage_rng;
use crate::error::{Error, IoContext, Result};
use crate::eval::{design, logistic_params, MetaParams, Record};
use crate::features::FeatureTable;
use crate::meta::logistic::Logistic;
use crate::meta::nn::{Nn, NnParams};
use crate::meta::{FeatureGroup, MODELS};
use crate::runfolder::RunFolder;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `format` value of trust_model.json.
pub const FORMAT: &str = "metaclf-trust-model/2";
/// The format before the `known` and `correct` heads (one head, its fields at the top level):
/// still read.
pub const FORMAT_V1: &str = "metaclf-trust-model/1";
/// File names in the run folder.
pub const JSON_FILE: &str = "trust_model.json";
pub const NN_FILE: &str = "trust_model.safetensors";
/// The NN weight files of the `known` and `correct` heads.
pub const NN_FILE_KNOWN: &str = "trust_model_known.safetensors";
pub const NN_FILE_CORRECT: &str = "trust_model_correct.safetensors";

/// One operating point: flag a prediction when trust < `value`. The rates are measured on the
/// out-of-fold scores of the run's in-distribution test rows. For the `known` head the
/// positives are in-distribution images and the negatives OOD ones: `kept_accuracy` is then
/// the share of in-distribution images among the kept, `errors_flagged` the share of OOD
/// images flagged, `correct_kept` the share of in-distribution images kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub name: String,
    pub value: f64,
    /// How the value was chosen.
    pub rule: String,
    /// Fraction of in-distribution predictions kept (trust ≥ value).
    pub kept_fraction: f64,
    /// Accuracy of the kept predictions.
    pub kept_accuracy: f64,
    /// Fraction of the wrong predictions that are flagged.
    pub errors_flagged: f64,
    /// Fraction of the correct predictions that are kept.
    pub correct_kept: f64,
}

/// Logistic coefficients (standardised and original scale).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogisticCoefs {
    pub intercept: f64,
    /// Coefficients of the standardised columns ((x − mean) / scale; 0 where scale is 0).
    pub coef: Vec<f64>,
    pub intercept_original: f64,
    pub coef_original: Vec<f64>,
    pub lambda: f64,
}

/// What the trust model belongs to: the run's CNN and its feature columns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetInfo {
    pub classes: usize,
    /// Input shape (channels, height, width).
    pub input: [usize; 3],
    /// Every feature column the CNN's feature table has, in order.
    pub feature_columns: Vec<String>,
    /// sha256 of the run's model.safetensors.
    pub model_sha256: String,
}

/// What the trust model was fitted on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FittedOn {
    pub id_rows: usize,
    pub id_errors: usize,
    /// OOD rows (the run's OOD sets), negatives of the `known` head only.
    #[serde(default)]
    pub ood_rows: usize,
    pub known_unknown_rows: usize,
    pub folds: usize,
}

/// One fitted scorer of the trust model: the meta classifier, its columns, transform,
/// standardisation, weights and operating points.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub model: String,
    pub features: String,
    pub known_unknowns: bool,
    /// The feature transform applied before standardising (its rule and parameters per
    /// column, fitted on the head's training rows); identity when absent.
    #[serde(default)]
    pub transform: crate::meta::transform::Fitted,
    /// Why this model, feature group and setting.
    pub selection: String,
    pub columns: Vec<String>,
    /// Standardisation: column means and scales (population sd; 0 = constant column).
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    pub logistic: Option<LogisticCoefs>,
    /// The NN's weights file in the run folder (NN models only).
    pub nn_weights: Option<String>,
    /// The boosted trees (`gb` only; the means and scales are then 0 and 1: trees need no
    /// standardisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boost: Option<crate::meta::boost::Booster>,
    pub thresholds: Vec<Threshold>,
    pub fitted_on: FittedOn,
}

/// trust_model.json: three heads answering three questions, and the CNN they belong to.
/// - `trust`: is the prediction right *and* the image of a known kind (correct
///   in-distribution = 1; wrong predictions and known unknowns = 0);
/// - `known` (p_known): is the image in-distribution at all (the run's in-distribution test
///   rows = 1; its OOD sets and known unknowns = 0); absent when the run has neither;
/// - `correct` (p_correct_if_known): is the prediction right, given a known kind of image
///   (error detection on in-distribution rows only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustModel {
    pub format: String,
    pub metaclf_version: String,
    pub trust: Head,
    #[serde(default)]
    pub known: Option<Head>,
    #[serde(default)]
    pub correct: Option<Head>,
    /// The CNN's temperature (temperature scaling on the validation split), for calibrated
    /// probabilities (`p_calibrated` in scores.csv); absent for runs without calibration.
    #[serde(default)]
    pub temperature: Option<f64>,
    pub net: NetInfo,
}

enum Scorer {
    Logistic(Logistic),
    Nn(Nn),
    Gb(crate::meta::boost::Booster),
}

/// A trust model ready to score.
pub struct Trust {
    pub model: TrustModel,
    scorer: Scorer,
    known: Option<Scorer>,
    correct: Option<Scorer>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trust {{ {:?} }}", self.model)
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

fn fmt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).at(path)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn fit_scorer(model: &str, x: &[f64], y: &[f64], mp: &MetaParams, seed: u64) -> Result<Scorer> {
    if model == "gb" {
        let b = crate::meta::boost::BoostParams {
            seed,
            ..Default::default()
        }
        .fit(x, y)
        .map_err(|e| err(format!("trust model (gb): {e}")))?;
        return Ok(Scorer::Gb(b));
    }
    if model == "nn" {
        let nn = NnParams {
            seed,
            ..mp.nn.clone()
        }
        .fit(x, y)
        .map_err(|e| err(format!("trust model (nn): {e}")))?;
        Ok(Scorer::Nn(nn))
    } else {
        let m = logistic_params(model, mp, seed)
            .fit(x, y)
            .map_err(|e| err(format!("trust model ({model}): {e}")))?;
        Ok(Scorer::Logistic(m))
    }
}

fn predict(s: &Scorer, x: &[f64]) -> Result<Vec<f64>> {
    match s {
        Scorer::Logistic(m) => Ok(m.predict(x)),
        Scorer::Nn(m) => m
            .predict(x)
            .map_err(|e| err(format!("trust model (nn): {e}"))),
        Scorer::Gb(b) => Ok(b.predict(x)),
    }
}

/// The model, feature group and known-unknowns setting: those `[score]` names, the rest the
/// best mean error-detection AUROC among the grid's entries that fit them (ties: simpler model
/// in [`MODELS`] order, then fewer columns, then without known unknowns).
fn select(
    records: &[Record],
    mp: &MetaParams,
    sc: &ScoreSection,
    convs: &[String],
    have_ku: bool,
) -> Result<(String, FeatureGroup, bool, String, String)> {
    let tr_ok = |tr: &str| sc.transform.is_empty() || sc.transform == tr;
    let ku_ok = |ku: bool| match sc.known_unknowns.as_str() {
        "with" => ku,
        "without" => !ku,
        _ => true,
    };
    if sc.known_unknowns == "with" && !have_ku {
        return Err(err(
            "score.known_unknowns = \"with\", but the run has no known unknowns (known_unknowns.source)",
        ));
    }
    let mut best: Option<(&Record, usize, usize)> = None;
    let tri = |r: &Record| {
        crate::columns::TRANSFORMS
            .iter()
            .position(|t| *t == r.transform)
    };
    for r in records {
        if r.task != "error" || r.metric != "auroc" || !r.mean.is_finite() {
            continue;
        }
        let Some(mi) = MODELS.iter().position(|m| *m == r.model) else {
            continue; // baselines are single columns, not trust models
        };
        let Some(g) = mp.groups.iter().find(|g| g.name == r.features) else {
            continue;
        };
        if (!sc.model.is_empty() && sc.model != r.model)
            || (!sc.features.is_empty() && sc.features != r.features)
            || !ku_ok(r.known_unknowns)
            || !tr_ok(&r.transform)
        {
            continue;
        }
        let better = match best {
            None => true,
            Some((b, bmi, bcols)) => {
                if (r.mean - b.mean).abs() > 1e-12 {
                    r.mean > b.mean
                } else {
                    (mi, g.columns.len(), r.known_unknowns, tri(r))
                        < (bmi, bcols, b.known_unknowns, tri(b))
                }
            }
        };
        if better {
            best = Some((r, mi, g.columns.len()));
        }
    }
    if let Some((r, _, _)) = best {
        let g = mp
            .groups
            .iter()
            .find(|g| g.name == r.features)
            .cloned()
            .expect("group found above");
        let how = if sc.model.is_empty() || sc.features.is_empty() {
            "the best mean error-detection AUROC of the grid"
        } else {
            "set in [score]"
        };
        let why = format!(
            "{how}: {} on {}{}{}, AUROC {:.4} ± {:.4} over {} repetitions",
            r.model,
            r.features,
            if r.transform == "none" {
                String::new()
            } else {
                format!(" ({} features)", r.transform)
            },
            if r.known_unknowns {
                " with known unknowns"
            } else {
                ""
            },
            r.mean,
            r.std,
            r.values.len()
        );
        return Ok((
            r.model.clone(),
            g,
            r.known_unknowns,
            r.transform.clone(),
            why,
        ));
    }
    // nothing in the grid fits: [score] named a model/group outside it
    if sc.model.is_empty() || sc.features.is_empty() {
        return Err(Error::NoTrustModel(
            "no meta classifier of the grid has an error-detection AUROC to choose by (meta.models, \
             meta.groups; a test set without wrong predictions has none), and [score] does not name \
             both model and features"
                .into(),
        ));
    }
    let g = FeatureGroup::parse(&sc.features, convs)
        .map_err(|e| crate::error::cfg("score.features", e))?;
    Ok((
        sc.model.clone(),
        g,
        sc.known_unknowns == "with",
        if sc.transform.is_empty() {
            "none".into()
        } else {
            sc.transform.clone()
        },
        "set in [score] (not in the grid)".into(),
    ))
}

/// Flag rule trust < t; rates over the id rows' out-of-fold scores.
fn rates(name: &str, rule: String, t: f64, s: &[f64], ok: &[bool]) -> Threshold {
    let n = s.len().max(1) as f64;
    let kept: Vec<usize> = (0..s.len()).filter(|&i| s[i] >= t).collect();
    let kept_ok = kept.iter().filter(|&&i| ok[i]).count();
    let n_ok = ok.iter().filter(|&&o| o).count();
    let n_bad = ok.len() - n_ok;
    let bad_flagged = (0..s.len()).filter(|&i| !ok[i] && s[i] < t).count();
    Threshold {
        name: name.into(),
        value: t,
        rule,
        kept_fraction: kept.len() as f64 / n,
        kept_accuracy: if kept.is_empty() {
            f64::NAN
        } else {
            kept_ok as f64 / kept.len() as f64
        },
        errors_flagged: if n_bad == 0 {
            0.0
        } else {
            bad_flagged as f64 / n_bad as f64
        },
        correct_kept: if n_ok == 0 {
            0.0
        } else {
            kept_ok as f64 / n_ok as f64
        },
    }
}

/// The three operating points from out-of-fold scores `s` of id rows (`ok` = correct).
pub fn thresholds(s: &[f64], ok: &[bool], sc: &ScoreSection) -> Vec<Threshold> {
    let mut sorted: Vec<f64> = s.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mut out = Vec::new();
    // keep95: 95% of the correct predictions have trust ≥ t
    let mut good: Vec<f64> = (0..n).filter(|&i| ok[i]).map(|i| s[i]).collect();
    good.sort_by(f64::total_cmp);
    let t = if good.is_empty() {
        0.0
    } else {
        good[((good.len() as f64) * 0.05).floor() as usize]
    };
    out.push(rates(
        "keep95",
        "keeps 95% of the correct in-distribution predictions".into(),
        t,
        s,
        ok,
    ));
    // reject_fraction: the lowest fraction r of all id predictions is flagged
    let k = ((n as f64) * sc.reject_fraction).round() as usize;
    let t = sorted
        .get(k.min(n.saturating_sub(1)))
        .cloned()
        .unwrap_or(0.0);
    out.push(rates(
        "reject_fraction",
        format!(
            "flags the {:.1}% least trustworthy in-distribution predictions",
            100.0 * sc.reject_fraction
        ),
        t,
        s,
        ok,
    ));
    // target_accuracy: the fewest rejections after which the kept accuracy reaches the target
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    let mut right = ok.iter().filter(|&&o| o).count();
    let mut t = f64::INFINITY;
    for k in 0..n {
        let kept = n - k;
        if (right as f64) >= sc.target_accuracy * kept as f64
            && (k == 0 || s[order[k]] > s[order[k - 1]])
        {
            t = s[order[k]];
            break;
        }
        if ok[order[k]] {
            right -= 1;
        }
    }
    let reached = t.is_finite();
    if !reached {
        t = sorted.last().cloned().unwrap_or(0.0);
    }
    out.push(rates(
        "target_accuracy",
        if reached {
            format!(
                "the fewest rejections after which kept predictions are {:.2}% accurate",
                100.0 * sc.target_accuracy
            )
        } else {
            format!(
                "{:.2}% accuracy is not reached by any threshold; keeps only the most trusted",
                100.0 * sc.target_accuracy
            )
        },
        t,
        s,
        ok,
    ));
    out
}

/// What one head is fitted on.
struct HeadSpec<'a> {
    model: String,
    group: FeatureGroup,
    ku: bool,
    transform: String,
    selection: String,
    /// Rows scored out of fold (the thresholds are measured on them) and their targets.
    rows: Vec<usize>,
    target: Vec<bool>,
    /// Rows always in training, with target 0 (the trust head's known unknowns).
    extra: &'a [usize],
    /// All of [`THRESHOLDS`], or `keep95` only.
    all_thresholds: bool,
    nn_file: &'static str,
    /// The name of its fold draws and the seed of its fits.
    stream: &'static str,
    seed: u64,
    fitted_on: FittedOn,
}

/// Fits one head: `folds`-fold out-of-fold scores of `rows` (stratified by target, seeded) for
/// its thresholds, then the scorer on every row.
fn fit_head(
    table: &FeatureTable,
    mp: &MetaParams,
    sc: &ScoreSection,
    h: HeadSpec,
) -> Result<(Head, Scorer)> {
    // the transform is fitted on the rows each scorer is fitted on
    let fit_tr = |x: &[f64]| {
        crate::meta::transform::Fitted::fit(&h.transform, &h.group.columns, x)
            .map_err(|e| err(format!("trust model: {e}")))
    };
    let cols: Vec<usize> = h
        .group
        .columns
        .iter()
        .map(|c| {
            table
                .col(c)
                .ok_or_else(|| err(format!("trust model: the feature table has no column {c}")))
        })
        .collect::<Result<_>>()?;
    let (rows, ok) = (&h.rows, &h.target);
    let mut fold = vec![0usize; rows.len()];
    let mut rng = stage_rng(mp.seed, h.stream);
    for want in [true, false] {
        let mut idx: Vec<usize> = (0..rows.len()).filter(|&i| ok[i] == want).collect();
        idx.shuffle(&mut rng);
        for (j, &i) in idx.iter().enumerate() {
            fold[i] = j % sc.folds;
        }
    }
    let mut oof = vec![0f64; rows.len()];
    for f in 0..sc.folds {
        let tr: Vec<usize> = (0..rows.len()).filter(|&i| fold[i] != f).collect();
        let te: Vec<usize> = (0..rows.len()).filter(|&i| fold[i] == f).collect();
        let fit_rows: Vec<usize> = tr
            .iter()
            .map(|&i| rows[i])
            .chain(h.extra.iter().cloned())
            .collect();
        let y: Vec<f64> = tr
            .iter()
            .map(|&i| ok[i] as u8 as f64)
            .chain(h.extra.iter().map(|_| 0.0))
            .collect();
        let x = design(table, &fit_rows, &cols);
        let tf = fit_tr(&x)?;
        let m = fit_scorer(&h.model, &tf.apply(&x), &y, mp, h.seed ^ (f as u64 + 1))?;
        let te_rows: Vec<usize> = te.iter().map(|&i| rows[i]).collect();
        for (k, v) in predict(&m, &tf.apply(&design(table, &te_rows, &cols)))?
            .into_iter()
            .enumerate()
        {
            oof[te[k]] = v;
        }
    }
    let mut thresholds = thresholds(&oof, ok, sc);
    if !h.all_thresholds {
        thresholds.retain(|t| t.name == "keep95");
    }
    // the model itself, on everything
    let all: Vec<usize> = rows
        .iter()
        .cloned()
        .chain(h.extra.iter().cloned())
        .collect();
    let y: Vec<f64> = ok
        .iter()
        .map(|&o| o as u8 as f64)
        .chain(h.extra.iter().map(|_| 0.0))
        .collect();
    let x = design(table, &all, &cols);
    let transform = fit_tr(&x)?;
    let scorer = fit_scorer(&h.model, &transform.apply(&x), &y, mp, h.seed)?;
    let p = h.group.columns.len();
    let (mean, scale, logistic, nn_weights) = match &scorer {
        Scorer::Gb(_) => (vec![0.0; p], vec![1.0; p], None, None),
        Scorer::Logistic(m) => {
            let (b0, orig) = m.original();
            (
                m.mean.clone(),
                m.scale.clone(),
                Some(LogisticCoefs {
                    intercept: m.intercept,
                    coef: m.coef.clone(),
                    intercept_original: b0,
                    coef_original: orig,
                    lambda: m.lambda,
                }),
                None,
            )
        }
        Scorer::Nn(m) => (
            m.mean.clone(),
            m.scale.clone(),
            None,
            Some(h.nn_file.to_string()),
        ),
    };
    let head = Head {
        model: h.model,
        features: h.group.name.clone(),
        known_unknowns: h.ku,
        transform,
        selection: h.selection,
        columns: h.group.columns.clone(),
        mean,
        scale,
        logistic,
        nn_weights,
        boost: match &scorer {
            Scorer::Gb(b) => Some(b.clone()),
            _ => None,
        },
        thresholds,
        fitted_on: h.fitted_on,
    };
    Ok((head, scorer))
}

/// The `known` head's model, feature group, setting and transform: the grid's best mean
/// AUROC over the OOD sets (ties as in [`select`]); None when the grid has no OOD records.
fn select_known(
    records: &[Record],
    mp: &MetaParams,
) -> Option<(String, FeatureGroup, bool, String, String)> {
    // (model, features, ku, transform) → (sum, count)
    type Detector = (String, String, bool, String);
    let mut sums: Vec<(Detector, f64, usize)> = Vec::new();
    for r in records {
        if r.task != "ood" || r.metric != "auroc" || !r.mean.is_finite() {
            continue;
        }
        if !MODELS.contains(&r.model.as_str()) || !mp.groups.iter().any(|g| g.name == r.features) {
            continue;
        }
        let k = (
            r.model.clone(),
            r.features.clone(),
            r.known_unknowns,
            r.transform.clone(),
        );
        match sums.iter_mut().find(|s| s.0 == k) {
            Some(s) => {
                s.1 += r.mean;
                s.2 += 1;
            }
            None => sums.push((k, r.mean, 1)),
        }
    }
    let n_sets = sums.iter().map(|s| s.2).max()?;
    let rank = |k: &Detector| {
        (
            MODELS.iter().position(|m| *m == k.0).unwrap_or(usize::MAX),
            mp.groups
                .iter()
                .find(|g| g.name == k.1)
                .map(|g| g.columns.len())
                .unwrap_or(usize::MAX),
            k.2,
            crate::columns::TRANSFORMS.iter().position(|t| *t == k.3),
        )
    };
    let best = sums
        .iter()
        .filter(|s| s.2 == n_sets)
        .map(|s| (s.0.clone(), s.1 / s.2 as f64))
        .reduce(|a, b| {
            if (b.1 - a.1).abs() > 1e-12 {
                if b.1 > a.1 {
                    b
                } else {
                    a
                }
            } else if rank(&b.0) < rank(&a.0) {
                b
            } else {
                a
            }
        })?;
    let ((m, f, ku, tr), auroc) = best;
    let g = mp.groups.iter().find(|g| g.name == f)?.clone();
    let why = format!(
        "the best mean OOD AUROC of the grid over {n_sets} OOD sets: {m} on {f}{}, {auroc:.4}; \
         refitted on in-distribution vs every OOD and known-unknown image of the run",
        if tr == "none" {
            String::new()
        } else {
            format!(" ({tr} features)")
        },
    );
    Some((m, g, ku, tr, why))
}

/// Fits the trust model on all meta data of `table` (`convs`: the CNN's parameterised layer names, for
/// a `[score]` feature group outside the grid): the `trust` head on the id-test rows (target:
/// correct) and, when the chosen setting has them, the known unknowns (target 0); the
/// `correct` head on the id-test rows alone (the grid's best error detector without known
/// unknowns); the `known` head on the id-test rows (target 1) against every OOD and
/// known-unknown row (target 0). Thresholds come from `sc.folds`-fold out-of-fold scores
/// (stratified by target, seeded).
pub fn fit(
    table: &FeatureTable,
    mp: &MetaParams,
    records: &[Record],
    sc: &ScoreSection,
    convs: &[String],
    net: NetInfo,
) -> Result<Trust> {
    let ku_set = mp
        .known_unknowns
        .as_ref()
        .map(|k| format!("known-unknown-{k}"));
    let ku_rows: Vec<usize> = match &ku_set {
        Some(k) => (0..table.len()).filter(|&r| &table.set[r] == k).collect(),
        None => vec![],
    };
    let (model, group, ku, tr_name, selection) =
        select(records, mp, sc, convs, !ku_rows.is_empty())?;
    let id: Vec<usize> = (0..table.len())
        .filter(|&r| table.set[r] == "id-test" && table.label[r].is_some())
        .collect();
    let ok: Vec<bool> = id.iter().map(|&r| table.correct(r) == Some(true)).collect();
    let n_err = ok.iter().filter(|&&o| !o).count();
    if id.len() < 2 * sc.folds || n_err < 2 {
        return Err(Error::NoTrustModel(format!(
            "{} in-distribution test rows with {n_err} wrong predictions are too few for {}-fold thresholds",
            id.len(),
            sc.folds
        )));
    }
    let ku_fit: &[usize] = if ku { &ku_rows } else { &[] };
    let fitted_on = |ku: usize, ood: usize| FittedOn {
        id_rows: id.len(),
        id_errors: n_err,
        ood_rows: ood,
        known_unknown_rows: ku,
        folds: sc.folds,
    };
    let (trust, scorer) = fit_head(
        table,
        mp,
        sc,
        HeadSpec {
            model,
            group,
            ku,
            transform: tr_name,
            selection,
            rows: id.clone(),
            target: ok.clone(),
            extra: ku_fit,
            all_thresholds: true,
            nn_file: NN_FILE,
            stream: "trust/folds",
            seed: mp.seed ^ 0x7275_7374,
            fitted_on: fitted_on(ku_fit.len(), 0),
        },
    )?;
    // p_correct_if_known: the grid's best error detector without known unknowns (the user's
    // [score] model and features apply to `trust` only)
    let sc_correct = ScoreSection {
        model: String::new(),
        features: String::new(),
        transform: String::new(),
        known_unknowns: "without".into(),
        ..sc.clone()
    };
    let correct = match select(records, mp, &sc_correct, convs, false) {
        Ok((model, group, _, transform, selection)) => Some(fit_head(
            table,
            mp,
            sc,
            HeadSpec {
                model,
                group,
                ku: false,
                transform,
                selection,
                rows: id.clone(),
                target: ok.clone(),
                extra: &[],
                all_thresholds: true,
                nn_file: NN_FILE_CORRECT,
                stream: "trust/folds/correct",
                seed: mp.seed ^ 0x636f_7272,
                fitted_on: fitted_on(0, 0),
            },
        )?),
        Err(Error::NoTrustModel(_)) => None,
        Err(e) => return Err(e),
    };
    // p_known: in-distribution vs every OOD and known-unknown image the run has
    let ood_rows: Vec<usize> = (0..table.len())
        .filter(|&r| table.set[r].starts_with("ood-"))
        .collect();
    let neg: Vec<usize> = ood_rows.iter().chain(&ku_rows).cloned().collect();
    let known = if neg.len() >= sc.folds {
        let choice = select_known(records, mp).or_else(|| {
            // no OOD records in the grid (known unknowns only): the trust head's choice
            Some((
                trust.model.clone(),
                mp.groups.iter().find(|g| g.name == trust.features)?.clone(),
                true,
                trust.transform.name.clone(),
                "the trust head's model and features (the grid has no OOD sets to choose by); \
                 refitted on in-distribution vs the known unknowns"
                    .to_string(),
            ))
        });
        match choice {
            Some((model, group, ku, transform, selection)) => {
                let rows: Vec<usize> = id.iter().chain(&neg).cloned().collect();
                let target: Vec<bool> = rows.iter().map(|&r| table.set[r] == "id-test").collect();
                Some(fit_head(
                    table,
                    mp,
                    sc,
                    HeadSpec {
                        model,
                        group,
                        ku,
                        transform,
                        selection,
                        rows,
                        target,
                        extra: &[],
                        all_thresholds: false,
                        nn_file: NN_FILE_KNOWN,
                        stream: "trust/folds/known",
                        seed: mp.seed ^ 0x6b6e_6f77,
                        fitted_on: fitted_on(ku_rows.len(), ood_rows.len()),
                    },
                )?)
            }
            None => None,
        }
    } else {
        None
    };
    let (known, known_s) = known.unzip();
    let (correct, correct_s) = correct.unzip();
    Ok(Trust {
        model: TrustModel {
            format: FORMAT.into(),
            metaclf_version: env!("CARGO_PKG_VERSION").into(),
            trust,
            known,
            correct,
            temperature: None,
            net,
        },
        scorer,
        known: known_s,
        correct: correct_s,
    })
}

/// Checks one head (columns, shapes, finite numbers, its thresholds `required`) and builds
/// its scorer (reading an NN's weights from `run_dir`).
fn load_head(
    m: &Head,
    net: &NetInfo,
    run_dir: &Path,
    path: &Path,
    required: &[&str],
) -> Result<Scorer> {
    let p = m.columns.len();
    if p == 0 || m.mean.len() != p || m.scale.len() != p {
        return Err(fmt_err(
            path,
            format!(
                "{p} columns but {} means and {} scales",
                m.mean.len(),
                m.scale.len()
            ),
        ));
    }
    for c in &m.columns {
        if !net.feature_columns.contains(c) {
            return Err(fmt_err(
                path,
                format!("column {c} is not a feature of its net"),
            ));
        }
    }
    let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
    if !finite(&m.mean) || !finite(&m.scale) || m.thresholds.iter().any(|t| !t.value.is_finite()) {
        return Err(fmt_err(path, "holds a non-finite number"));
    }
    for name in required {
        if !m.thresholds.iter().any(|t| t.name == *name) {
            return Err(fmt_err(path, format!("threshold {name} is missing")));
        }
    }
    Ok(match (&m.logistic, &m.nn_weights) {
        (None, None) if m.model == "gb" => {
            let Some(b) = &m.boost else {
                return Err(fmt_err(path, "model \"gb\" needs its trees (boost)"));
            };
            let ok = b.features == p
                && b.baseline.is_finite()
                && b.trees.iter().all(|t| {
                    !t.is_empty()
                        && t.iter().enumerate().all(|(i, n)| {
                            if n.leaf {
                                n.value.is_finite()
                            } else {
                                // children after their parent: no cycle, no index outside
                                n.feature < p
                                    && !n.threshold.is_nan()
                                    && n.left > i
                                    && n.right > i
                                    && n.left < t.len()
                                    && n.right < t.len()
                            }
                        })
                });
            if !ok {
                return Err(fmt_err(
                    path,
                    format!("its boosted trees do not fit its {p} columns (a node points outside its tree, or a value is not finite)"),
                ));
            }
            Scorer::Gb(b.clone())
        }
        (Some(l), None) if m.model != "nn" && m.model != "gb" => {
            if l.coef.len() != p || !finite(&l.coef) || !l.intercept.is_finite() {
                return Err(fmt_err(
                    path,
                    format!(
                        "{} coefficients for {p} columns, or non-finite",
                        l.coef.len()
                    ),
                ));
            }
            Scorer::Logistic(Logistic {
                intercept: l.intercept,
                coef: l.coef.clone(),
                mean: m.mean.clone(),
                scale: m.scale.clone(),
                lambda: l.lambda,
                warnings: vec![],
            })
        }
        (None, Some(f)) if m.model == "nn" => {
            if f.contains(['/', '\\']) || f == ".." {
                return Err(fmt_err(
                    path,
                    format!("nn_weights {f:?} is not a file name"),
                ));
            }
            let wp = run_dir.join(f);
            let bytes = std::fs::read(&wp).at(&wp)?;
            let map = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
                .map_err(|e| fmt_err(&wp, format!("not a readable safetensors file: {e}")))?;
            Scorer::Nn(
                Nn::from_tensors(m.mean.clone(), m.scale.clone(), &map)
                    .map_err(|e| fmt_err(&wp, e))?,
            )
        }
        _ => {
            return Err(fmt_err(
                path,
                format!(
                    "model {:?} needs {}",
                    m.model,
                    if m.model == "nn" {
                        "nn_weights and no logistic"
                    } else {
                        "logistic coefficients and no nn_weights"
                    }
                ),
            ))
        }
    })
}

/// A design over a head's columns from a feature table.
fn head_design(h: &Head, t: &FeatureTable, rows: &[usize]) -> Result<Vec<f64>> {
    let cols: Vec<usize> = h
        .columns
        .iter()
        .map(|c| {
            t.col(c)
                .ok_or_else(|| err(format!("the feature table has no column {c}")))
        })
        .collect::<Result<_>>()?;
    Ok(design(t, rows, &cols))
}

/// The named operating point of a head.
fn head_threshold<'a>(h: &'a Head, name: &str) -> Result<&'a Threshold> {
    h.thresholds.iter().find(|t| t.name == name).ok_or_else(|| {
        err(format!(
            "unknown threshold {name:?} (the trust model has {})",
            h.thresholds
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// The three scores of rows of a feature table.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub trust: Vec<f64>,
    /// `None` when the trust model has no `known` head.
    pub p_known: Option<Vec<f64>>,
    pub p_correct: Option<Vec<f64>>,
}

impl Trust {
    /// Trust of each row of a row-major design over the trust head's columns.
    pub fn predict(&self, x: &[f64]) -> Result<Vec<f64>> {
        predict(&self.scorer, &self.model.trust.transform.apply(x))
    }

    /// Trust of rows of a feature table (which must have the model's columns).
    pub fn predict_table(&self, t: &FeatureTable, rows: &[usize]) -> Result<Vec<f64>> {
        self.predict(&head_design(&self.model.trust, t, rows)?)
    }

    /// Trust, p_known and p_correct_if_known of rows of a feature table.
    pub fn scores_table(&self, t: &FeatureTable, rows: &[usize]) -> Result<Scores> {
        let side = |h: &Option<Head>, s: &Option<Scorer>| -> Result<Option<Vec<f64>>> {
            match (h, s) {
                (Some(h), Some(s)) => Ok(Some(predict(
                    s,
                    &h.transform.apply(&head_design(h, t, rows)?),
                )?)),
                _ => Ok(None),
            }
        };
        Ok(Scores {
            trust: self.predict_table(t, rows)?,
            p_known: side(&self.model.known, &self.known)?,
            p_correct: side(&self.model.correct, &self.correct)?,
        })
    }

    /// Every feature column the heads read.
    pub fn columns(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for h in self.heads() {
            for c in &h.columns {
                if !v.contains(c) {
                    v.push(c.clone());
                }
            }
        }
        v
    }

    /// The heads present: trust, then known and correct.
    pub fn heads(&self) -> Vec<&Head> {
        std::iter::once(&self.model.trust)
            .chain(self.model.known.as_ref())
            .chain(self.model.correct.as_ref())
            .collect()
    }

    /// The named operating point of the trust head.
    pub fn threshold(&self, name: &str) -> Result<&Threshold> {
        head_threshold(&self.model.trust, name)
    }

    /// The `known` head's operating point (keep95: 95% of in-distribution images count as
    /// known), if it has one.
    pub fn known_threshold(&self) -> Option<&Threshold> {
        self.model
            .known
            .as_ref()
            .and_then(|h| head_threshold(h, "keep95").ok())
    }

    /// The `correct` head's operating point of that name, if it has one.
    pub fn correct_threshold(&self, name: &str) -> Option<&Threshold> {
        self.model
            .correct
            .as_ref()
            .and_then(|h| head_threshold(h, name).ok())
    }

    /// Writes trust_model.json (and the NNs' weights) into the run folder.
    pub fn save(&self, folder: &RunFolder) -> Result<()> {
        for (s, file) in [
            (Some(&self.scorer), NN_FILE),
            (self.known.as_ref(), NN_FILE_KNOWN),
            (self.correct.as_ref(), NN_FILE_CORRECT),
        ] {
            let path = folder.file(file);
            if let Some(Scorer::Nn(m)) = s {
                let map: std::collections::HashMap<String, candle_core::Tensor> =
                    m.tensors().into_iter().collect();
                let tmp = folder.file(&format!("{file}.tmp"));
                candle_core::safetensors::save(&map, &tmp)?;
                std::fs::rename(&tmp, &path).at(&path)?;
            } else if path.exists() {
                // a stale file of an earlier fit
                std::fs::remove_file(&path).at(&path)?;
            }
        }
        let text = serde_json::to_string_pretty(&self.model).map_err(|e| err(e.to_string()))?;
        folder.write(JSON_FILE, text + "\n")
    }

    /// Loads a run's trust model and checks it: format, columns, shapes, finite numbers, and
    /// that it belongs to the run's model.safetensors (by sha256). Reads the one-head format
    /// of earlier versions too (it then has no p_known / p_correct_if_known).
    pub fn load(run_dir: &Path) -> Result<Trust> {
        let path = run_dir.join(JSON_FILE);
        if !path.exists() {
            return Err(fmt_err(
                &path,
                "no trust model in this run folder (runs made before `metaclf score` existed have none: \
                 `metaclf meta RUN` refits the meta classifiers and writes one; a run whose test set \
                 had (almost) no wrong predictions has nothing to learn trust from: see its run.log)",
            ));
        }
        let len = std::fs::metadata(&path).at(&path)?.len();
        if len > 64 << 20 {
            return Err(fmt_err(
                &path,
                format!("{len} bytes is too large for a trust model"),
            ));
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        let bad = |e: serde_json::Error| fmt_err(&path, format!("not a trust model: {e}"));
        let mut v: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
        let format = v["format"].as_str().unwrap_or("").to_string();
        let m: TrustModel = if format == FORMAT_V1 {
            let o = v
                .as_object_mut()
                .ok_or_else(|| fmt_err(&path, "not a JSON object"))?;
            let take = |o: &mut serde_json::Map<String, serde_json::Value>, k: &str| {
                o.remove(k).unwrap_or(serde_json::Value::Null)
            };
            let version = take(o, "metaclf_version");
            let net = take(o, "net");
            o.remove("format");
            TrustModel {
                format: FORMAT.into(),
                metaclf_version: serde_json::from_value(version).map_err(bad)?,
                net: serde_json::from_value(net).map_err(bad)?,
                trust: serde_json::from_value(v).map_err(bad)?,
                known: None,
                correct: None,
                temperature: None,
            }
        } else if format == FORMAT {
            serde_json::from_value(v).map_err(bad)?
        } else {
            return Err(fmt_err(
                &path,
                format!("format {format:?}; this metaclf reads {FORMAT:?} and {FORMAT_V1:?}"),
            ));
        };
        if m.temperature.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return Err(fmt_err(&path, "temperature must be a positive number"));
        }
        let scorer = load_head(&m.trust, &m.net, run_dir, &path, &THRESHOLDS)?;
        let known = match &m.known {
            Some(h) => Some(load_head(h, &m.net, run_dir, &path, &["keep95"])?),
            None => None,
        };
        let correct = match &m.correct {
            Some(h) => Some(load_head(h, &m.net, run_dir, &path, &THRESHOLDS)?),
            None => None,
        };
        Ok(Trust {
            model: m,
            scorer,
            known,
            correct,
        })
    }

    /// Refuses a trust model that does not belong to this CNN: other classes, input shape,
    /// feature columns or model file.
    pub fn check_net(&self, now: &NetInfo, run_dir: &Path) -> Result<()> {
        let was = &self.model.net;
        let path = run_dir.join(JSON_FILE);
        if was.classes != now.classes {
            return Err(fmt_err(
                &path,
                format!(
                    "was fitted for a {}-class CNN; this run's has {}",
                    was.classes, now.classes
                ),
            ));
        }
        if was.input != now.input {
            return Err(fmt_err(
                &path,
                format!(
                    "was fitted for {:?} inputs; this run's CNN takes {:?}",
                    was.input, now.input
                ),
            ));
        }
        // the columns the trust model reads must be there (a run made before newer feature
        // columns existed keeps working); any other difference in the columns is harmless
        let cols = self.columns();
        let missing: Vec<&String> = cols
            .iter()
            .filter(|c| !now.feature_columns.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(fmt_err(
                &path,
                format!(
                    "was fitted on other feature columns ({} vs {} now; gone: {})",
                    was.feature_columns.len(),
                    now.feature_columns.len(),
                    missing
                        .iter()
                        .take(3)
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if was.model_sha256 != now.model_sha256 {
            return Err(fmt_err(
                &path,
                format!(
                    "was fitted for model.safetensors with sha256 {}…, but the run's model has {}…",
                    &was.model_sha256[..was.model_sha256.len().min(12)],
                    &now.model_sha256[..now.model_sha256.len().min(12)]
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feature table where `msp` predicts correctness (with noise) and `x` is noise.
    fn table(n: usize) -> FeatureTable {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut t = FeatureTable {
            columns: vec!["msp".into(), "entropy".into()],
            ..Default::default()
        };
        for i in 0..n {
            let ok = rng.gen::<f64>() < 0.8;
            let msp = if ok {
                0.7 + 0.3 * rng.gen::<f32>()
            } else {
                0.3 + 0.5 * rng.gen::<f32>()
            };
            t.set.push("id-test".into());
            t.index.push(i);
            t.label.push(Some(1));
            t.pred.push(if ok { 1 } else { 2 });
            t.source_label.push(None);
            t.values.extend([msp, rng.gen::<f32>()]);
        }
        t
    }

    fn params(models: &[&str]) -> MetaParams {
        MetaParams {
            repetitions: 1,
            test_fraction: 0.5,
            models: models.iter().map(|m| m.to_string()).collect(),
            groups: vec![FeatureGroup::parse("softmax", &[]).unwrap()],
            transforms: vec!["none".into(), "log".into()],
            alpha: 0.5,
            lambda: None,
            cv_folds: 3,
            n_lambda: 5,
            nn: NnParams {
                hidden: 8,
                epochs: 30,
                lr: 0.03,
                weight_decay: 1e-4,
                patience: 10,
                seed: 1,
            },
            seed: 1,
            known_unknowns: None,
            keep_scores: 0,
        }
    }

    /// A grid record: `model` on softmax without known unknowns, one repetition's AUROC.
    fn auroc(task: &str, ood: Option<&str>, model: &str, transform: &str, mean: f64) -> Record {
        Record {
            task: task.into(),
            ood_set: ood.map(String::from),
            model: model.into(),
            features: "softmax".into(),
            known_unknowns: false,
            transform: transform.into(),
            metric: "auroc".into(),
            mean,
            std: 0.0,
            values: vec![mean],
        }
    }

    fn info(t: &FeatureTable) -> NetInfo {
        NetInfo {
            classes: 10,
            input: [1, 28, 28],
            feature_columns: t.columns.clone(),
            model_sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn fitted_models_save_load_and_score_the_same_and_refuse_other_nets() {
        let t = table(300);
        for (model, trn) in [
            ("lasso", "none"),
            ("nn", "none"),
            ("lasso", "log"),
            ("nn", "log"),
        ] {
            let sc = ScoreSection {
                model: model.into(),
                features: "softmax".into(),
                transform: trn.into(),
                ..Default::default()
            };
            let rec = auroc("error", None, model, trn, 0.9);
            let tr = fit(&t, &params(&[model]), &[rec], &sc, &[], info(&t)).unwrap();
            assert_eq!(tr.model.trust.model, model);
            assert_eq!(tr.model.trust.transform.name, trn);
            if trn == "log" {
                // msp → log(1 − msp), entropy → log(entropy): parameters kept in the model
                assert!(matches!(
                    tr.model.trust.transform.rules[..],
                    [
                        crate::meta::transform::Rule::LogOneMinus { .. },
                        crate::meta::transform::Rule::Log { .. }
                    ]
                ));
            }
            let rows: Vec<usize> = (0..t.len()).collect();
            let a = tr.predict_table(&t, &rows).unwrap();
            // trust follows msp: correct rows score higher on average
            let mean = |ok: bool| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|&&r| t.correct(r) == Some(ok))
                    .map(|&r| a[r])
                    .collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            assert!(mean(true) > mean(false) + 0.1, "{model}");
            let d = tempfile::tempdir().unwrap();
            let f = RunFolder {
                path: d.path().into(),
            };
            tr.save(&f).unwrap();
            assert_eq!(d.path().join(NN_FILE).exists(), model == "nn");
            let back = Trust::load(d.path()).unwrap();
            assert_eq!(back.model, tr.model);
            // the one-head format of earlier versions still loads (without the two heads)
            let mut v1 = serde_json::to_value(&tr.model.trust).unwrap();
            v1["format"] = FORMAT_V1.into();
            v1["metaclf_version"] = "0.1.0".into();
            v1["net"] = serde_json::to_value(&tr.model.net).unwrap();
            let e = tempfile::tempdir().unwrap();
            std::fs::write(e.path().join(JSON_FILE), v1.to_string()).unwrap();
            if model == "nn" {
                std::fs::copy(d.path().join(NN_FILE), e.path().join(NN_FILE)).unwrap();
            }
            let old = Trust::load(e.path()).unwrap();
            assert_eq!(old.model.trust, tr.model.trust);
            assert!(old.model.known.is_none() && old.model.correct.is_none());
            assert_eq!(old.predict_table(&t, &rows).unwrap(), a);
            assert_eq!(back.predict_table(&t, &rows).unwrap(), a);
            if model == "gb" {
                // a tree whose node points back at itself is refused, not followed forever
                let mut bad = back.model.clone();
                let tree = &mut bad.trust.boost.as_mut().unwrap().trees[0];
                let k = tree.iter().position(|n| !n.leaf).unwrap();
                tree[k].left = k;
                let text = serde_json::to_string(&bad).unwrap();
                let e = tempfile::tempdir().unwrap();
                std::fs::write(e.path().join(JSON_FILE), text).unwrap();
                let msg = Trust::load(e.path()).unwrap_err().to_string();
                assert!(msg.contains("boosted trees do not fit"), "{msg}");
            }
            back.check_net(&info(&t), d.path()).unwrap();
            let other = NetInfo {
                classes: 4,
                ..info(&t)
            };
            let e = back.check_net(&other, d.path()).unwrap_err().to_string();
            assert!(e.contains("10-class") && e.contains("has 4"), "{e}");
            let other = NetInfo {
                feature_columns: vec!["msp".into()],
                ..info(&t)
            };
            let e = back.check_net(&other, d.path()).unwrap_err().to_string();
            assert!(e.contains("gone: entropy"), "{e}");
        }
        // [score] names a model and group the grid does not have: fitted all the same
        let sc = ScoreSection {
            model: "ridge".into(),
            features: "softmax".into(),
            ..Default::default()
        };
        let tr = fit(&t, &params(&["lasso"]), &[], &sc, &[], info(&t)).unwrap();
        assert_eq!(tr.model.trust.model, "ridge");
        assert_eq!(tr.model.trust.selection, "set in [score] (not in the grid)");
        // too few errors: no trust model (not an error of the run)
        let mut t1 = table(50);
        t1.pred = vec![1; 50];
        let e = fit(&t1, &params(&["lasso"]), &[], &sc, &[], info(&t1)).unwrap_err();
        assert!(
            matches!(&e, Error::NoTrustModel(m) if m.contains("0 wrong predictions")),
            "{e}"
        );
    }

    #[test]
    fn two_questions_two_heads() {
        use rand::{Rng, SeedableRng};
        // id rows: msp tells right from wrong, entropy is noise in [0, 0.5]; OOD rows: entropy
        // in [0.4, 1] tells them apart, msp like the id rows'
        let mut t = table(300);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for r in 0..t.len() {
            t.values[2 * r + 1] *= 0.5;
        }
        for i in 0..120 {
            t.set.push("ood-blobs".into());
            t.index.push(i);
            t.label.push(None);
            t.pred.push(1);
            t.source_label.push(None);
            t.values
                .extend([0.3 + 0.7 * rng.gen::<f32>(), 0.4 + 0.6 * rng.gen::<f32>()]);
        }
        let rec = |task, ood, model, mean| auroc(task, ood, model, "none", mean);
        let recs = vec![
            rec("error", None, "lasso", 0.9),
            rec("error", None, "ridge", 0.8),
            rec("ood", Some("blobs"), "lasso", 0.7),
            rec("ood", Some("blobs"), "ridge", 0.95),
        ];
        let tr = fit(
            &t,
            &params(&["lasso", "ridge"]),
            &recs,
            &ScoreSection::default(),
            &[],
            info(&t),
        )
        .unwrap();
        let known = tr.model.known.as_ref().expect("a known head");
        let correct = tr.model.correct.as_ref().expect("a correct head");
        assert_eq!(
            (known.model.as_str(), correct.model.as_str()),
            ("ridge", "lasso")
        );
        assert_eq!(known.fitted_on.ood_rows, 120);
        assert_eq!(known.thresholds.len(), 1);
        assert_eq!(correct.thresholds.len(), THRESHOLDS.len());
        let rows: Vec<usize> = (0..t.len()).collect();
        let s = tr.scores_table(&t, &rows).unwrap();
        let (pk, pc) = (s.p_known.clone().unwrap(), s.p_correct.clone().unwrap());
        let mean = |v: &[f64], sel: &dyn Fn(usize) -> bool| {
            let x: Vec<f64> = rows.iter().filter(|&&r| sel(r)).map(|&r| v[r]).collect();
            x.iter().sum::<f64>() / x.len() as f64
        };
        let id = |r: usize| t.set[r] == "id-test";
        assert!(mean(&pk, &|r| id(r)) > mean(&pk, &|r| !id(r)) + 0.3);
        assert!(
            mean(&pc, &|r| id(r) && t.correct(r) == Some(true))
                > mean(&pc, &|r| id(r) && t.correct(r) == Some(false)) + 0.1
        );
        // keep95 of the known head keeps ~95% of the in-distribution rows, flags most OOD ones
        let th = tr.known_threshold().unwrap();
        assert!((th.correct_kept - 0.95).abs() < 0.02, "{th:?}");
        assert!(th.errors_flagged > 0.8, "{th:?}");
        let d = tempfile::tempdir().unwrap();
        tr.save(&RunFolder {
            path: d.path().into(),
        })
        .unwrap();
        let back = Trust::load(d.path()).unwrap();
        assert_eq!(back.scores_table(&t, &rows).unwrap(), s);
    }

    #[test]
    fn thresholds_by_hand() {
        // 10 id rows: trust 0.1..1.0; rows with trust 0.1, 0.2, 0.5 are wrong
        let s: Vec<f64> = (1..=10).map(|i| i as f64 / 10.0).collect();
        let ok = [
            false, false, true, true, false, true, true, true, true, true,
        ];
        let sc = ScoreSection {
            reject_fraction: 0.2,
            target_accuracy: 0.85,
            ..Default::default()
        };
        let t = thresholds(&s, &ok, &sc);
        // keep95: 7 correct (0.3,0.4,0.6,...,1.0); 5% of 7 floors to index 0 → 0.3
        assert_eq!(t[0].name, "keep95");
        assert_eq!(t[0].value, 0.3);
        assert_eq!(t[0].kept_fraction, 0.8);
        assert_eq!(t[0].errors_flagged, 2.0 / 3.0);
        assert_eq!(t[0].correct_kept, 1.0);
        assert!((t[0].kept_accuracy - 7.0 / 8.0).abs() < 1e-12);
        // reject 20%: the two lowest are flagged, threshold at the third
        assert_eq!(t[1].value, 0.3);
        // target 85%: rejecting 0.1 and 0.2 leaves 7/8 = 0.875 ≥ 0.85
        assert_eq!(t[2].value, 0.3);
        let sc = ScoreSection {
            target_accuracy: 0.9,
            ..sc
        };
        // 0.9 needs the 0.5 error gone too: keep 0.6.. → 5/5
        let t = thresholds(&s, &ok, &sc);
        assert_eq!(t[2].value, 0.6);
        assert_eq!(t[2].kept_accuracy, 1.0);
        assert_eq!(t[2].kept_fraction, 0.5);
    }
}
