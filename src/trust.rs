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
pub const FORMAT: &str = "metaclf-trust-model/1";
/// File names in the run folder.
pub const JSON_FILE: &str = "trust_model.json";
pub const NN_FILE: &str = "trust_model.safetensors";

/// One operating point: flag a prediction when trust < `value`. The rates are measured on the
/// out-of-fold scores of the run's in-distribution test rows.
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
    pub known_unknown_rows: usize,
    pub folds: usize,
}

/// trust_model.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrustModel {
    pub format: String,
    pub metaclf_version: String,
    pub model: String,
    pub features: String,
    pub known_unknowns: bool,
    /// The feature transform applied before standardising (its rule and parameters per
    /// column, fitted on the trust model's training rows); identity when absent.
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

/// Fits the trust model on all meta data of `table` (`convs`: the CNN's conv layer names, for
/// a `[score]` feature group outside the grid): the id-test rows (target: correct) and,
/// when the chosen setting has them, the known unknowns (target 0). Thresholds come from
/// `sc.folds`-fold out-of-fold scores of the id rows (stratified by correctness, seeded).
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
    // the transform is fitted on the rows each scorer is fitted on
    let fit_tr = |x: &[f64]| {
        crate::meta::transform::Fitted::fit(&tr_name, &group.columns, x)
            .map_err(|e| err(format!("trust model: {e}")))
    };
    let cols: Vec<usize> = group
        .columns
        .iter()
        .map(|c| {
            table
                .col(c)
                .ok_or_else(|| err(format!("trust model: the feature table has no column {c}")))
        })
        .collect::<Result<_>>()?;
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
    let seed = mp.seed ^ 0x7275_7374;
    // out-of-fold scores of the id rows
    let mut fold = vec![0usize; id.len()];
    let mut rng = stage_rng(mp.seed, "trust/folds");
    for want in [true, false] {
        let mut idx: Vec<usize> = (0..id.len()).filter(|&i| ok[i] == want).collect();
        idx.shuffle(&mut rng);
        for (j, &i) in idx.iter().enumerate() {
            fold[i] = j % sc.folds;
        }
    }
    let mut oof = vec![0f64; id.len()];
    for f in 0..sc.folds {
        let tr: Vec<usize> = (0..id.len()).filter(|&i| fold[i] != f).collect();
        let te: Vec<usize> = (0..id.len()).filter(|&i| fold[i] == f).collect();
        let rows: Vec<usize> = tr
            .iter()
            .map(|&i| id[i])
            .chain(ku_fit.iter().cloned())
            .collect();
        let y: Vec<f64> = tr
            .iter()
            .map(|&i| ok[i] as u8 as f64)
            .chain(ku_fit.iter().map(|_| 0.0))
            .collect();
        let x = design(table, &rows, &cols);
        let tf = fit_tr(&x)?;
        let m = fit_scorer(&model, &tf.apply(&x), &y, mp, seed ^ (f as u64 + 1))?;
        let te_rows: Vec<usize> = te.iter().map(|&i| id[i]).collect();
        for (k, v) in predict(&m, &tf.apply(&design(table, &te_rows, &cols)))?
            .into_iter()
            .enumerate()
        {
            oof[te[k]] = v;
        }
    }
    let thresholds = thresholds(&oof, &ok, sc);
    // the model itself, on everything
    let rows: Vec<usize> = id.iter().cloned().chain(ku_fit.iter().cloned()).collect();
    let y: Vec<f64> = ok
        .iter()
        .map(|&o| o as u8 as f64)
        .chain(ku_fit.iter().map(|_| 0.0))
        .collect();
    let x = design(table, &rows, &cols);
    let transform = fit_tr(&x)?;
    let scorer = fit_scorer(&model, &transform.apply(&x), &y, mp, seed)?;
    let p = group.columns.len();
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
            Some(NN_FILE.to_string()),
        ),
    };
    Ok(Trust {
        model: TrustModel {
            format: FORMAT.into(),
            metaclf_version: env!("CARGO_PKG_VERSION").into(),
            model,
            features: group.name.clone(),
            known_unknowns: ku,
            transform,
            selection,
            columns: group.columns.clone(),
            mean,
            scale,
            logistic,
            nn_weights,
            boost: match &scorer {
                Scorer::Gb(b) => Some(b.clone()),
                _ => None,
            },
            thresholds,
            fitted_on: FittedOn {
                id_rows: id.len(),
                id_errors: n_err,
                known_unknown_rows: ku_fit.len(),
                folds: sc.folds,
            },
            net,
        },
        scorer,
    })
}

impl Trust {
    /// Trust of each row of a row-major design over [`TrustModel::columns`].
    pub fn predict(&self, x: &[f64]) -> Result<Vec<f64>> {
        predict(&self.scorer, &self.model.transform.apply(x))
    }

    /// Trust of rows of a feature table (which must have the model's columns).
    pub fn predict_table(&self, t: &FeatureTable, rows: &[usize]) -> Result<Vec<f64>> {
        let cols: Vec<usize> = self
            .model
            .columns
            .iter()
            .map(|c| {
                t.col(c)
                    .ok_or_else(|| err(format!("the feature table has no column {c}")))
            })
            .collect::<Result<_>>()?;
        self.predict(&design(t, rows, &cols))
    }

    /// The named operating point.
    pub fn threshold(&self, name: &str) -> Result<&Threshold> {
        self.model
            .thresholds
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| {
                err(format!(
                    "unknown threshold {name:?} (the trust model has {})",
                    THRESHOLDS.join(", ")
                ))
            })
    }

    /// Writes trust_model.json (and the NN's weights) into the run folder.
    pub fn save(&self, folder: &RunFolder) -> Result<()> {
        if let Scorer::Nn(m) = &self.scorer {
            let map: std::collections::HashMap<String, candle_core::Tensor> =
                m.tensors().into_iter().collect();
            let path = folder.file(NN_FILE);
            let tmp = folder.file(&format!("{NN_FILE}.tmp"));
            candle_core::safetensors::save(&map, &tmp)?;
            std::fs::rename(&tmp, &path).at(&path)?;
        }
        let text = serde_json::to_string_pretty(&self.model).map_err(|e| err(e.to_string()))?;
        folder.write(JSON_FILE, text + "\n")
    }

    /// Loads a run's trust model and checks it: format, columns, shapes, finite numbers, and
    /// that it belongs to the run's model.safetensors (by sha256).
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
        let m: TrustModel = serde_json::from_str(&text)
            .map_err(|e| fmt_err(&path, format!("not a trust model: {e}")))?;
        if m.format != FORMAT {
            return Err(fmt_err(
                &path,
                format!("format {:?}; this metaclf reads {FORMAT:?}", m.format),
            ));
        }
        let p = m.columns.len();
        if p == 0 || m.mean.len() != p || m.scale.len() != p {
            return Err(fmt_err(
                &path,
                format!(
                    "{p} columns but {} means and {} scales",
                    m.mean.len(),
                    m.scale.len()
                ),
            ));
        }
        for c in &m.columns {
            if !m.net.feature_columns.contains(c) {
                return Err(fmt_err(
                    &path,
                    format!("column {c} is not a feature of its net"),
                ));
            }
        }
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if !finite(&m.mean)
            || !finite(&m.scale)
            || m.thresholds.iter().any(|t| !t.value.is_finite())
        {
            return Err(fmt_err(&path, "holds a non-finite number"));
        }
        for name in THRESHOLDS {
            if !m.thresholds.iter().any(|t| t.name == name) {
                return Err(fmt_err(&path, format!("threshold {name} is missing")));
            }
        }
        let scorer = match (&m.logistic, &m.nn_weights) {
            (None, None) if m.model == "gb" => {
                let Some(b) = &m.boost else {
                    return Err(fmt_err(&path, "model \"gb\" needs its trees (boost)"));
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
                        &path,
                        format!("its boosted trees do not fit its {p} columns (a node points outside its tree, or a value is not finite)"),
                    ));
                }
                Scorer::Gb(b.clone())
            }
            (Some(l), None) if m.model != "nn" && m.model != "gb" => {
                if l.coef.len() != p || !finite(&l.coef) || !l.intercept.is_finite() {
                    return Err(fmt_err(
                        &path,
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
                        &path,
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
                    &path,
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
        };
        Ok(Trust { model: m, scorer })
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
        let missing: Vec<&String> = self
            .model
            .columns
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
            let rec = Record {
                task: "error".into(),
                ood_set: None,
                model: model.into(),
                features: "softmax".into(),
                known_unknowns: false,
                transform: trn.into(),
                metric: "auroc".into(),
                mean: 0.9,
                std: 0.0,
                values: vec![0.9],
            };
            let tr = fit(&t, &params(&[model]), &[rec], &sc, &[], info(&t)).unwrap();
            assert_eq!(tr.model.model, model);
            assert_eq!(tr.model.transform.name, trn);
            if trn == "log" {
                // msp → log(1 − msp), entropy → log(entropy): parameters kept in the model
                assert!(matches!(
                    tr.model.transform.rules[..],
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
            assert_eq!(back.predict_table(&t, &rows).unwrap(), a);
            if model == "gb" {
                // a tree whose node points back at itself is refused, not followed forever
                let mut bad = back.model.clone();
                let tree = &mut bad.boost.as_mut().unwrap().trees[0];
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
        assert_eq!(tr.model.model, "ridge");
        assert_eq!(tr.model.selection, "set in [score] (not in the grid)");
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
