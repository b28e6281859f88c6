//! `metaclf score`: applies a finished run's trust model to new (usually unlabeled) images and
//! says which predictions not to trust: `scores.csv` (one row per image, ranked), `summary.json`
//! and `review.html` (the least trustworthy images to look at). Images are read, scored and
//! summarised chunk by chunk (memory is bounded by the chunk plus one small record per image);
//! `--shard K/N` scores one of N contiguous parts and `--merge` joins the parts' outputs into
//! exactly what one unsharded run writes.

use crate::config::Config;
use crate::data::stream::{self, Chunk, ImageStream, OnError};
use crate::data::LoadCtx;
use crate::error::{Error, IoContext, Result};
use crate::features::{self, FeatureParams};
use crate::model::{Arch, Net};
use crate::runfolder::{write_atomic, Staged};
use crate::trust::Trust;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Columns of scores.csv, in order. `p_calibrated` is the CNN's top-class probability after
/// temperature scaling; `p_known` and `p_correct_if_known` are the trust model's two
/// questions (empty when it has no such head); `suspect` says which one the image fails:
/// `new-kind` (p_known below its keep95 threshold), `misclassified` (known, but
/// p_correct_if_known below its threshold of the chosen name), or empty.
pub const COLUMNS: [&str; 14] = [
    "index",
    "path",
    "label",
    "pred",
    "msp",
    "trust",
    "flag",
    "rank",
    "label_name",
    "pred_name",
    "p_calibrated",
    "p_known",
    "p_correct_if_known",
    "suspect",
];

/// Why an image is suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suspect {
    #[default]
    None,
    /// Probably not of a kind the CNN was trained on.
    NewKind,
    /// Of a known kind, but the prediction is probably wrong.
    Misclassified,
}

impl Suspect {
    pub fn as_str(self) -> &'static str {
        match self {
            Suspect::None => "",
            Suspect::NewKind => "new-kind",
            Suspect::Misclassified => "misclassified",
        }
    }
    fn parse(s: &str) -> Option<Suspect> {
        match s {
            "" => Some(Suspect::None),
            "new-kind" => Some(Suspect::NewKind),
            "misclassified" => Some(Suspect::Misclassified),
            _ => None,
        }
    }
}

/// Images at or above this msp that are flagged are "confident but not trusted".
pub const CONFIDENT: f64 = 0.9;

/// Options of `metaclf score`.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    pub run: PathBuf,
    pub data: String,
    pub out: PathBuf,
    /// Operating point (default: the run's `score.threshold`).
    pub threshold: Option<String>,
    /// Least trustworthy images in review.html (default: the run's `score.top`).
    pub top: Option<usize>,
    /// (K, N): score the K-th (0-based) of N contiguous parts.
    pub shard: Option<(usize, usize)>,
    pub force: bool,
    pub on_error: OnError,
    /// Images to draw from generated or sampled sets (0 = the set's default).
    pub count: usize,
    /// A folder's subfolders are not taken as labels.
    pub unlabeled: bool,
    /// Also write ecotaxa.tsv (see [`ecotaxa_tsv`]).
    pub ecotaxa: bool,
}

/// One scored image.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub index: usize,
    pub path: String,
    pub label: Option<u32>,
    pub pred: u32,
    pub msp: f32,
    pub trust: f64,
    pub flag: bool,
    /// The run's names of `label` (empty without a label) and `pred`.
    pub label_name: String,
    pub pred_name: String,
    /// Top-class probability after temperature scaling (msp when the run has no temperature).
    pub p_calibrated: f32,
    pub p_known: Option<f64>,
    pub p_correct: Option<f64>,
    pub suspect: Suspect,
}

/// Images and flagged images of one predicted class.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PerClass {
    pub images: usize,
    pub flagged: usize,
}

/// Which part of the data a shard scored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    pub k: usize,
    pub n: usize,
    /// Positions [start, end) of the data's `total` images.
    pub start: usize,
    pub end: usize,
    pub total: usize,
}

/// summary.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub run: String,
    pub data: String,
    pub count: usize,
    pub trust_model: String,
    pub threshold: String,
    pub threshold_value: f64,
    pub images: usize,
    pub flagged: usize,
    pub flagged_fraction: f64,
    pub flagged_by_pred: BTreeMap<u32, PerClass>,
    /// The run's name of every predicted class in `flagged_by_pred`.
    #[serde(default)]
    pub class_names: BTreeMap<u32, String>,
    /// Flagged although msp ≥ 0.9.
    pub confident_flagged: usize,
    /// Images whose p_known is below the known head's keep95 threshold (`p_known_threshold`).
    #[serde(default)]
    pub new_kind: usize,
    /// Images of a known kind whose p_correct_if_known is below its threshold.
    #[serde(default)]
    pub misclassified: usize,
    #[serde(default)]
    pub p_known_threshold: Option<f64>,
    #[serde(default)]
    pub p_correct_threshold: Option<f64>,
    pub labelled: bool,
    /// With labels: accuracy of all, kept and flagged predictions, and errors caught.
    pub accuracy: Option<f64>,
    pub kept_accuracy: Option<f64>,
    pub flagged_accuracy: Option<f64>,
    pub errors: Option<usize>,
    pub errors_flagged: Option<usize>,
    pub errors_flagged_fraction: Option<f64>,
    /// Unreadable files left out (`--on-error skip`).
    pub skipped: Vec<String>,
    /// Why the data's labels were not used (a named set of another concept than the run's).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub labels_ignored: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shard: Option<ShardInfo>,
    /// The batch's own image shapes and intensities (counts that add up over shards).
    #[serde(default)]
    pub batch: crate::data::stream::BatchStats,
    /// How the batch differs grossly from the run's training data (empty: it does not, or
    /// the run keeps no training statistics).
    #[serde(default)]
    pub mismatch: Vec<String>,
    /// ecotaxa.tsv was written (a merge writes it too), its paths relative to this folder.
    #[serde(default)]
    pub ecotaxa: Option<PathBuf>,
}

impl Summary {
    /// The one line printed on stdout.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} images, {} flagged for review ({:.1}%) at {} (trust < {:.4})",
            self.images,
            self.flagged,
            100.0 * self.flagged_fraction,
            self.threshold,
            self.threshold_value
        );
        if let (Some(k), Some(f), Some(c)) = (
            self.kept_accuracy,
            self.flagged_accuracy,
            self.errors_flagged_fraction,
        ) {
            s.push_str(&format!(
                "; accuracy {:.2}% kept vs {:.2}% flagged; {:.1}% of the errors flagged",
                100.0 * k,
                100.0 * f,
                100.0 * c
            ));
        }
        if self.p_known_threshold.is_some() {
            s.push_str(&format!(
                "; {} probably of a new kind, {} probably misclassified",
                self.new_kind, self.misclassified
            ));
        }
        if !self.skipped.is_empty() {
            s.push_str(&format!(
                "; {} unreadable files skipped",
                self.skipped.len()
            ));
        }
        for m in &self.mismatch {
            s.push_str(&format!("\nwarning: {m}"));
        }
        s
    }
}

fn other(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// Parses `K/N` (0 ≤ K < N).
pub fn parse_shard(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("--shard {s:?}: write K/N with 0 ≤ K < N, e.g. 0/4");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (
        k.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || k >= n || n > 100_000 {
        return Err(bad());
    }
    Ok((k, n))
}

/// Positions [start, end) of shard `k` of `n` over `total` images: contiguous, as equal as
/// can be. (Any split will do: an image's features do not depend on its batch.)
pub fn shard_range(total: usize, k: usize, n: usize) -> (usize, usize) {
    let at = |k: usize| ((k as u128 * total as u128) / n as u128) as usize;
    (at(k), at(k + 1))
}

/// A finished run loaded for scoring: its config, CNN and trust model (checked to belong to it).
pub struct Scorer {
    pub cfg: Config,
    pub net: Net,
    pub trust: Trust,
    /// The original label of each network output.
    pub labels: Vec<u32>,
    /// Whether the run's `data.transpose` applies to the data being scored.
    pub transpose: bool,
}

impl Scorer {
    pub fn load(run: &Path) -> Result<Scorer> {
        let p = run.join("config.toml");
        if !p.is_file() || !run.join("run.json").is_file() {
            return Err(Error::Format {
                path: run.to_path_buf(),
                msg: "is not a metaclf run folder (no config.toml and run.json; give --run the folder `metaclf run` wrote)".into(),
            });
        }
        let mut cfg = Config::load(&p)?;
        if cfg.data.class_names.is_empty() {
            // a run from before class names: its training source's own names, where it still
            // has them (a built-in set, a folder that is still there)
            if let Ok(c) = crate::pipeline::resolve_classes(&cfg) {
                cfg = c;
            }
        }
        let classes = crate::pipeline::run_classes(run)?;
        let model = run.join("model.safetensors");
        let net = Net::load(Arch::from_config(&cfg, classes), &model)?;
        let trust = Trust::load(run)?;
        let info =
            crate::pipeline::net_info(classes, cfg.shape(), &features::columns(&net), &model)?;
        trust.check_net(&info, run)?;
        let labels = crate::pipeline::class_labels(&cfg, classes);
        Ok(Scorer {
            cfg,
            net,
            trust,
            labels,
            transpose: false,
        })
    }

    fn ctx(&self, count: usize, unlabeled: bool) -> LoadCtx {
        let mut c = crate::pipeline::load_ctx(&self.cfg, count, "score");
        if unlabeled {
            c.folder_labels = crate::data::render::FolderLabels::Ignore;
        }
        c
    }

    /// Features and trust of one chunk. Every row depends only on its image (MC-dropout masks
    /// are keyed by the image's content, see [`features::mc_key`]), so any chunking, sharding
    /// or batch size, and any other images in the batch, give the same values.
    pub fn score_chunk(&self, c: &Chunk) -> Result<Vec<Row>> {
        let fp = FeatureParams {
            // MC passes only when the trust model reads their columns
            mc: self.trust.columns().iter().any(|c| c.starts_with("mc_")),
            // and the backward only when it reads a gradient statistic
            grads: self.trust.columns().iter().any(|c| c.starts_with("grad_")),
            ..FeatureParams::from_config(&self.cfg)
        };
        let mut ds = crate::data::Dataset::unhashed(
            "score",
            self.cfg.shape(),
            c.images.clone(),
            c.labels.clone(),
        );
        if self.transpose {
            ds.transpose();
        }
        let (mut t, probs) = features::score_with_probs(&self.net, &ds, "score", &fp)?;
        t.map_classes(&self.labels, false)?;
        let all: Vec<usize> = (0..t.len()).collect();
        let sc = self.trust.scores_table(&t, &all)?;
        let msp = t.col("msp").expect("msp column");
        // calibrated top-class probabilities: softmax(z / T), from the probabilities the
        // features were computed with (no second forward pass)
        let p_cal: Vec<f32> = match self.trust.model.temperature {
            Some(temp) => crate::eval::tempered_top(&probs, self.net.arch.classes, temp)
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            None => (0..t.len()).map(|r| t.row(r)[msp]).collect(),
        };
        Ok((0..t.len())
            .map(|r| Row {
                index: c.index[r],
                path: c.paths[r].clone(),
                label: c.labels.as_ref().map(|l| l[r]),
                pred: t.pred[r],
                msp: t.row(r)[msp],
                trust: sc.trust[r],
                flag: false,
                p_calibrated: p_cal[r],
                p_known: sc.p_known.as_ref().map(|v| v[r]),
                p_correct: sc.p_correct.as_ref().map(|v| v[r]),
                suspect: Suspect::None,
                label_name: c
                    .labels
                    .as_ref()
                    .map(|l| crate::pipeline::label_name(&self.cfg, l[r]))
                    .unwrap_or_default(),
                pred_name: crate::pipeline::label_name(&self.cfg, t.pred[r]),
            })
            .collect())
    }
}

/// Row numbers from the least trustworthy (lowest trust, then lowest index) to the most.
pub fn by_trust(rows: &[Row]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| {
        rows[a]
            .trust
            .total_cmp(&rows[b].trust)
            .then(rows[a].index.cmp(&rows[b].index))
    });
    order
}

/// Ranks (1 = least trustworthy, as [`by_trust`]) of rows.
pub fn ranks(rows: &[Row]) -> Vec<usize> {
    let order = by_trust(rows);
    let mut rank = vec![0; rows.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r + 1;
    }
    rank
}

/// scores.csv text (csv crate: paths with commas, quotes or any characters are quoted).
pub fn scores_csv(rows: &[Row]) -> Result<Vec<u8>> {
    let rank = ranks(rows);
    let mut w = csv::Writer::from_writer(Vec::new());
    let e = |e: csv::Error| other(format!("writing scores.csv: {e}"));
    w.write_record(COLUMNS).map_err(e)?;
    for (r, row) in rows.iter().enumerate() {
        w.write_record([
            row.index.to_string(),
            row.path.clone(),
            row.label.map(|l| l.to_string()).unwrap_or_default(),
            row.pred.to_string(),
            row.msp.to_string(),
            row.trust.to_string(),
            if row.flag { "review" } else { "keep" }.to_string(),
            rank[r].to_string(),
            row.label_name.clone(),
            row.pred_name.clone(),
            row.p_calibrated.to_string(),
            row.p_known.map(|v| v.to_string()).unwrap_or_default(),
            row.p_correct.map(|v| v.to_string()).unwrap_or_default(),
            row.suspect.as_str().to_string(),
        ])
        .map_err(e)?;
    }
    w.into_inner()
        .map_err(|e| other(format!("writing scores.csv: {e}")))
}

/// Reads a scores.csv written by [`scores_csv`].
pub fn read_scores_csv(path: &Path) -> Result<Vec<Row>> {
    let bad = |line: u64, msg: String| Error::Format {
        path: path.into(),
        msg: format!("line {line}: {msg}"),
    };
    let mut r = csv::Reader::from_path(path).map_err(|e| Error::Format {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let head = r
        .headers()
        .map_err(|e| bad(1, e.to_string()))?
        .iter()
        .map(String::from)
        .collect::<Vec<_>>();
    // files from before class names end at `rank`, from before the two scores at `pred_name`
    if head != COLUMNS && head != COLUMNS[..8] && head != COLUMNS[..10] {
        return Err(bad(1, format!("header must be {}", COLUMNS.join(","))));
    }
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let ln = i as u64 + 2;
        let rec = rec.map_err(|e| bad(ln, e.to_string()))?;
        let f = |k: usize| rec.get(k).unwrap_or("");
        let num = |k: usize| -> Result<f64> {
            f(k).parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    bad(
                        ln,
                        format!("{} {:?} is not a finite number", COLUMNS[k], f(k)),
                    )
                })
        };
        let int = |k: usize| -> Result<u64> {
            f(k).parse::<u64>().map_err(|_| {
                bad(
                    ln,
                    format!("{} {:?} is not a whole number", COLUMNS[k], f(k)),
                )
            })
        };
        rows.push(Row {
            index: int(0)? as usize,
            path: f(1).to_string(),
            label: if f(2).is_empty() {
                None
            } else {
                Some(u32::try_from(int(2)?).map_err(|_| bad(ln, "label too large".into()))?)
            },
            pred: u32::try_from(int(3)?).map_err(|_| bad(ln, "pred too large".into()))?,
            msp: num(4)? as f32,
            trust: num(5)?,
            flag: match f(6) {
                "review" => true,
                "keep" => false,
                o => return Err(bad(ln, format!("flag {o:?} is neither keep nor review"))),
            },
            label_name: f(8).to_string(),
            pred_name: f(9).to_string(),
            p_calibrated: if f(10).is_empty() {
                num(4)? as f32
            } else {
                num(10)? as f32
            },
            p_known: if f(11).is_empty() {
                None
            } else {
                Some(num(11)?)
            },
            p_correct: if f(12).is_empty() {
                None
            } else {
                Some(num(12)?)
            },
            suspect: Suspect::parse(f(13)).ok_or_else(|| {
                bad(
                    ln,
                    format!("suspect {:?} is not new-kind or misclassified", f(13)),
                )
            })?,
        });
    }
    Ok(rows)
}

/// The summary of scored rows.
fn summarise(rows: &[Row], base: &Summary) -> Summary {
    let n = rows.len();
    let flagged = rows.iter().filter(|r| r.flag).count();
    let mut by: BTreeMap<u32, PerClass> = BTreeMap::new();
    let mut names = BTreeMap::new();
    for r in rows {
        let e = by.entry(r.pred).or_default();
        e.images += 1;
        e.flagged += r.flag as usize;
        if !r.pred_name.is_empty() {
            names.insert(r.pred, r.pred_name.clone());
        }
    }
    let labelled = n > 0 && rows.iter().all(|r| r.label.is_some());
    let acc = |sel: &dyn Fn(&Row) -> bool| -> Option<f64> {
        let s: Vec<&Row> = rows.iter().filter(|r| sel(r)).collect();
        (labelled && !s.is_empty())
            .then(|| s.iter().filter(|r| r.label == Some(r.pred)).count() as f64 / s.len() as f64)
    };
    let errors = labelled.then(|| rows.iter().filter(|r| r.label != Some(r.pred)).count());
    let errors_flagged = labelled.then(|| {
        rows.iter()
            .filter(|r| r.flag && r.label != Some(r.pred))
            .count()
    });
    Summary {
        images: n,
        flagged,
        flagged_fraction: if n == 0 {
            0.0
        } else {
            flagged as f64 / n as f64
        },
        flagged_by_pred: by,
        class_names: names,
        confident_flagged: rows
            .iter()
            .filter(|r| r.flag && r.msp as f64 >= CONFIDENT)
            .count(),
        new_kind: rows
            .iter()
            .filter(|r| r.suspect == Suspect::NewKind)
            .count(),
        misclassified: rows
            .iter()
            .filter(|r| r.suspect == Suspect::Misclassified)
            .count(),
        labelled,
        accuracy: acc(&|_| true),
        kept_accuracy: acc(&|r| !r.flag),
        flagged_accuracy: acc(&|r| r.flag),
        errors,
        errors_flagged,
        errors_flagged_fraction: match (errors, errors_flagged) {
            (Some(e), Some(f)) if e > 0 => Some(f as f64 / e as f64),
            _ => None,
        },
        ..base.clone()
    }
}

/// The rows review.html shows (row numbers): the `top` least known of the new-kind suspects,
/// then the `top` least likely right of the misclassified ones (lowest trust without a
/// `correct` head).
fn review_rows(rows: &[Row], top: usize) -> (Vec<usize>, Vec<usize>) {
    let pick = |kind: Suspect, key: &dyn Fn(&Row) -> f64| {
        let mut v: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].suspect == kind)
            .collect();
        v.sort_by(|&a, &b| {
            key(&rows[a])
                .total_cmp(&key(&rows[b]))
                .then(rows[a].index.cmp(&rows[b].index))
        });
        v.truncate(top);
        v
    };
    (
        pick(Suspect::NewKind, &|r| r.p_known.unwrap_or(r.trust)),
        pick(Suspect::Misclassified, &|r| r.p_correct.unwrap_or(r.trust)),
    )
}

/// The new-kind cards grouped by similarity: k-means on the CNN's penultimate activations
/// (dropout off) of their images, k in 2..=8 by silhouette (see [`crate::cluster`]).
fn similarity_groups(
    cards: Vec<crate::review::Card>,
    scorer: &Scorer,
) -> (Vec<crate::review::Group>, String) {
    use crate::review::Group;
    let (with, without): (Vec<_>, Vec<_>) = cards.into_iter().partition(|c| c.pixels.is_some());
    let mut groups = Vec::new();
    let mut how = String::from("One group: too few images to split.");
    if !with.is_empty() {
        let px: Vec<f32> = with
            .iter()
            .flat_map(|c| c.pixels.clone().unwrap_or_default())
            .collect();
        let mut ds = crate::data::Dataset::unhashed("review", scorer.cfg.shape(), px, None);
        if scorer.transpose {
            ds.transpose();
        }
        let net = &scorer.net;
        let emb = net.embed(&ds.images, with.len());
        let d = emb.len() / with.len();
        let x: Vec<f64> = emb.iter().map(|&v| v as f64).collect();
        let (labels, k, sil) = crate::cluster::groups(&x, d, 8, scorer.cfg.raw.run.seed);
        if k > 1 {
            how = format!(
                "Grouped by visual similarity: k-means on the CNN's {d} penultimate activations, k = {k} of 2–8 by the best mean silhouette ({sil:.2}); label a whole group with its \"select all\"."
            );
        } else if with.len() >= 6 {
            how = "One group: no split into 2–8 groups reaches a mean silhouette of 0.25 (k-means on the CNN's penultimate activations).".into();
        }
        let mut by: Vec<Vec<crate::review::Card>> = vec![Vec::new(); k];
        for (c, l) in with.into_iter().zip(labels) {
            by[l].push(c);
        }
        for (i, cards) in by.into_iter().enumerate() {
            groups.push(Group {
                title: if k > 1 {
                    format!("Group {} of {k}", i + 1)
                } else {
                    "All".into()
                },
                cards,
            });
        }
    }
    if !without.is_empty() {
        groups.push(Group {
            title: "Images that could not be read again".into(),
            cards: without,
        });
    }
    (groups, how)
}

/// Writes scores.csv, summary.json and review.html for `rows` into `dir`.
fn write_outputs(
    dir: &Path,
    rows: &[Row],
    summary: &Summary,
    scorer: &Scorer,
    images: &HashMap<usize, Vec<f32>>,
    top: usize,
) -> Result<()> {
    write_atomic(&dir.join("scores.csv"), &scores_csv(rows)?)?;
    if let Some(out) = &summary.ecotaxa {
        write_atomic(&dir.join("ecotaxa.tsv"), ecotaxa_tsv(rows, out)?.as_bytes())?;
    }
    let text = serde_json::to_string_pretty(summary).map_err(|e| other(e.to_string()))?;
    write_atomic(&dir.join("summary.json"), (text + "\n").as_bytes())?;
    let html = crate::review::page(&page_input(rows, summary, scorer, images, top)?);
    write_atomic(&dir.join("review.html"), html.as_bytes())
}

/// What review.html shows.
fn page_input(
    rows: &[Row],
    s: &Summary,
    scorer: &Scorer,
    images: &HashMap<usize, Vec<f32>>,
    top: usize,
) -> Result<crate::review::PageInput> {
    use sha2::{Digest, Sha256};
    let rank = ranks(rows);
    let card = |i: usize| {
        let r = &rows[i];
        crate::review::Card {
            index: r.index,
            path: r.path.clone(),
            rank: rank[i],
            pred_name: if r.pred_name.is_empty() {
                r.pred.to_string()
            } else {
                r.pred_name.clone()
            },
            label: r.label.map(|l| {
                (
                    if r.label_name.is_empty() {
                        l.to_string()
                    } else {
                        r.label_name.clone()
                    },
                    l == r.pred,
                )
            }),
            msp: r.msp,
            trust: r.trust,
            p_known: r.p_known,
            p_correct: r.p_correct,
            flag: r.flag,
            pixels: images.get(&r.index).cloned(),
        }
    };
    let (nk, mc) = review_rows(rows, top);
    let (new_kind, grouping) = similarity_groups(nk.iter().map(|&i| card(i)).collect(), scorer);
    let th = scorer.trust.threshold(&s.threshold).ok();
    let labelled = s.labelled;
    let curve = labelled.then(|| {
        let correct: Vec<bool> = rows.iter().map(|r| r.label == Some(r.pred)).collect();
        let trust: Vec<f64> = rows.iter().map(|r| r.trust).collect();
        crate::report::rejection_curve(&correct, &trust, 200)
    });
    let classes = crate::pipeline::class_names(&scorer.cfg, scorer.net.arch.classes);
    Ok(crate::review::PageInput {
        run: s.run.clone(),
        data: s.data.clone(),
        key: hex::encode(&Sha256::digest(format!("{}\n{}", s.run, s.data).as_bytes())[..8]),
        images: s.images,
        flagged: s.flagged,
        flagged_fraction: s.flagged_fraction,
        threshold: s.threshold.clone(),
        threshold_value: s.threshold_value,
        threshold_note: th
            .map(|t| {
                format!(
                    " On the run's held-out test images this threshold {}: it kept {:.1}% of them at {:.2}% accuracy and flagged {:.1}% of the wrong predictions.",
                    t.rule,
                    100.0 * t.kept_fraction,
                    100.0 * t.kept_accuracy,
                    100.0 * t.errors_flagged
                )
            })
            .unwrap_or_default(),
        trust_model: s.trust_model.clone(),
        selection: scorer.trust.model.trust.selection.clone(),
        accuracy: s.accuracy,
        kept_accuracy: s.kept_accuracy,
        flagged_accuracy: s.flagged_accuracy,
        errors: s.errors,
        errors_flagged: s.errors_flagged,
        confident_flagged: s.confident_flagged,
        labels_ignored: s.labels_ignored.clone(),
        skipped: s.skipped.clone(),
        class_names: classes,
        new_kind,
        new_kind_total: s.new_kind,
        p_known_threshold: s.p_known_threshold,
        grouping,
        misclassified: mc.iter().map(|&i| card(i)).collect(),
        misclassified_total: s.misclassified,
        p_correct_threshold: s.p_correct_threshold,
        by_class: s
            .flagged_by_pred
            .iter()
            .map(|(c, pc)| {
                (
                    s.class_names.get(c).cloned().unwrap_or(c.to_string()),
                    pc.images,
                    pc.flagged,
                )
            })
            .collect(),
        curve,
        shape: Some(scorer.cfg.shape()),
    })
}

/// The rows review.html shows (their indices).
fn review_indices(rows: &[Row], top: usize) -> HashSet<usize> {
    let (a, b) = review_rows(rows, top);
    a.into_iter().chain(b).map(|i| rows[i].index).collect()
}

/// Reads the images of `want` (source indices) from positions [start, end) of a stream.
fn fetch_images(
    s: &mut dyn ImageStream,
    start: usize,
    end: usize,
    want: &HashSet<usize>,
    chunk: usize,
) -> Result<HashMap<usize, Vec<f32>>> {
    let mut out = HashMap::new();
    stream::for_each_chunk(s, start, end, chunk, |c, _, _| {
        let len = c.images.len() / c.len().max(1);
        for (i, idx) in c.index.iter().enumerate() {
            if want.contains(idx) {
                out.insert(*idx, c.images[i * len..(i + 1) * len].to_vec());
            }
        }
        Ok(())
    })?;
    Ok(out)
}

fn output_folder(out: &Path, force: bool) -> Result<Staged> {
    Staged::for_folder(out, force, &["summary.json"], "a metaclf score folder")
}

/// `metaclf score`: scores `opts.data` with the run's trust model and writes the folder.
pub fn score(opts: &ScoreOptions) -> Result<Summary> {
    let mut sc = Scorer::load(&opts.run)?;
    sc.transpose = crate::pipeline::transposes(&sc.cfg, &opts.data);
    let th_name = opts
        .threshold
        .clone()
        .unwrap_or_else(|| sc.cfg.score.threshold.clone());
    let th = sc.trust.threshold(&th_name)?.clone();
    let top = opts.top.unwrap_or(sc.cfg.score.top);
    if opts.ecotaxa
        && !matches!(
            crate::data::Source::parse(&opts.data),
            Ok(crate::data::Source::Folder(_) | crate::data::Source::FolderFlat(_))
        )
    {
        return Err(other(format!(
            "--ecotaxa needs image files (folder:PATH or folder-flat:PATH); {} has none to point at",
            opts.data
        )));
    }
    let staged = output_folder(&opts.out, opts.force)?;
    let ctx = sc.ctx(opts.count, opts.unlabeled);
    let mut s = stream::open(&opts.data, &ctx, opts.on_error)?;
    let total = s.len();
    let bs = sc.cfg.features.batch_size;
    let (start, end, shard) = match opts.shard {
        Some((k, n)) => {
            let (a, b) = shard_range(total, k, n);
            (
                a,
                b,
                Some(ShardInfo {
                    k,
                    n,
                    start: a,
                    end: b,
                    total,
                }),
            )
        }
        None => (0, total, None),
    };
    let chunk = sc.cfg.score.chunk.div_ceil(bs) * bs;
    let pb = indicatif::ProgressBar::new((end - start) as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "score {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // a named set of another concept (e.g. Fashion-MNIST for an MNIST run) has labels, but not
    // of the run's classes: its images are all "unknown", so its labels are not used
    let foreign = foreign_labels(&sc.cfg.data.train, &opts.data);
    let train = train_stats(&opts.run);
    let range = train
        .as_ref()
        .map(|t| (t.image_mean_quantiles[0], t.image_mean_quantiles[2]));
    let len = sc.cfg.shape().len();
    let mut batch = crate::data::stream::BatchStats::default();
    let mut rows: Vec<Row> = Vec::new();
    stream::for_each_chunk(&mut *s, start, end, chunk, |c, _, pos| {
        batch.add(&c.images, len, &c.native, range);
        let mut scored = sc.score_chunk(&c)?;
        if foreign.is_some() {
            scored.iter_mut().for_each(|r| r.label = None);
        }
        rows.extend(scored);
        pb.set_position((pos - start) as u64);
        Ok(())
    })?;
    pb.finish_and_clear();
    let tk = sc.trust.known_threshold().map(|t| t.value);
    let tc = sc.trust.correct_threshold(&th_name).map(|t| t.value);
    for r in rows.iter_mut() {
        r.flag = r.trust < th.value;
        r.suspect = suspect(r, tk, tc);
    }
    let base = Summary {
        run: opts.run.display().to_string(),
        data: opts.data.clone(),
        count: opts.count,
        trust_model: describe(&sc.trust),
        threshold: th_name,
        threshold_value: th.value,
        p_known_threshold: tk,
        p_correct_threshold: tc,
        batch,
        ecotaxa: if opts.ecotaxa {
            Some(std::path::absolute(&opts.out).at(&opts.out)?)
        } else {
            None
        },
        skipped: s.skipped(),
        labels_ignored: foreign,
        shard,
        ..Default::default()
    };
    let mut summary = summarise(&rows, &base);
    summary.mismatch = mismatch_of(&summary, train.as_ref(), sc.cfg.shape());
    for m in &summary.mismatch {
        tracing::warn!("{m}");
    }
    let want = review_indices(&rows, top);
    let mut s2 = stream::open(&opts.data, &ctx, OnError::Skip)?;
    let images = fetch_images(&mut *s2, start, end, &want, chunk)?;
    write_outputs(&staged.folder.path, &rows, &summary, &sc, &images, top)?;
    staged.commit()?;
    Ok(summary)
}

/// Columns of ecotaxa.tsv, with their EcoTaxa types (`[t]` text, `[f]` float).
pub const ECOTAXA_COLUMNS: [(&str, &str); 12] = [
    ("img_file_name", "[t]"),
    ("object_id", "[t]"),
    ("object_annotation_category", "[t]"),
    ("object_annotation_status", "[t]"),
    ("object_metaclf_trust", "[f]"),
    ("object_metaclf_msp", "[f]"),
    ("object_metaclf_p_calibrated", "[f]"),
    ("object_metaclf_p_known", "[f]"),
    ("object_metaclf_p_correct_if_known", "[f]"),
    ("object_metaclf_rank", "[f]"),
    ("object_metaclf_flag", "[f]"),
    ("object_metaclf_suspect", "[t]"),
];

/// `path` relative to the folder `base` (both made absolute; `..` where they part).
fn relative_to(path: &Path, base: &Path) -> String {
    let (Ok(p), Ok(b)) = (std::path::absolute(path), std::path::absolute(base)) else {
        return path.display().to_string();
    };
    let (pc, bc): (Vec<_>, Vec<_>) = (p.components().collect(), b.components().collect());
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c);
    }
    out.to_string_lossy().replace('\\', "/")
}

/// An EcoTaxa import table of scored image files (layout in the README): one row per image,
/// the type row second, `object_annotation_category` = the predicted class's name,
/// `object_annotation_status` = `predicted`, metaclf's scores as `object_metaclf_*`
/// (`flag` 1 = review), image paths relative to the folder the table is written to (`out`).
pub fn ecotaxa_tsv(rows: &[Row], out: &Path) -> Result<String> {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let rank = ranks(rows);
    let mut t = String::new();
    t.push_str(&ECOTAXA_COLUMNS.map(|c| c.0).join("\t"));
    t.push('\n');
    t.push_str(&ECOTAXA_COLUMNS.map(|c| c.1).join("\t"));
    t.push('\n');
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for (i, r) in rows.iter().enumerate() {
        if r.path.is_empty() {
            return Err(other(format!(
                "ecotaxa.tsv: image {} has no file to point at",
                r.index
            )));
        }
        let p = Path::new(&r.path);
        let category = if r.pred_name.is_empty() {
            r.pred.to_string()
        } else {
            r.pred_name.clone()
        };
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        t.push_str(
            &[
                clean(&relative_to(p, out)),
                clean(&format!("{stem}_{}", r.index)),
                clean(&category),
                "predicted".into(),
                r.trust.to_string(),
                r.msp.to_string(),
                r.p_calibrated.to_string(),
                opt(r.p_known),
                opt(r.p_correct),
                rank[i].to_string(),
                (r.flag as u8).to_string(),
                r.suspect.as_str().to_string(),
            ]
            .join("\t"),
        );
        t.push('\n');
    }
    Ok(t)
}

/// The run's training statistics (run.json `train_stats`), if it keeps them.
fn train_stats(run: &Path) -> Option<crate::data::stream::TrainStats> {
    let v = crate::pipeline::read_run_json(run).ok()?;
    serde_json::from_value(v.get("train_stats")?.clone()).ok()
}

/// The batch's gross differences from the training data (see [`stream::mismatch`]).
fn mismatch_of(
    s: &Summary,
    train: Option<&crate::data::stream::TrainStats>,
    shape: crate::data::Shape,
) -> Vec<String> {
    let Some(train) = train else {
        return Vec::new();
    };
    let share = s
        .p_known_threshold
        .map(|_| s.new_kind as f64 / s.images.max(1) as f64);
    stream::mismatch(train, &s.batch, shape, share)
}

/// Which question an image fails: unknown kind when p_known < `tk`; else misclassified when
/// p_correct_if_known < `tc` (without that head: when trust flags it).
pub fn suspect(r: &Row, tk: Option<f64>, tc: Option<f64>) -> Suspect {
    if let (Some(p), Some(t)) = (r.p_known, tk) {
        if p < t {
            return Suspect::NewKind;
        }
    }
    match (r.p_correct, tc) {
        (Some(p), Some(t)) if p < t => Suspect::Misclassified,
        (Some(_), Some(_)) => Suspect::None,
        _ if r.flag => Suspect::Misclassified,
        _ => Suspect::None,
    }
}

/// Why the labels of `data` are not the run's classes, if it is a named set other than the
/// run's training source.
fn foreign_labels(train: &str, data: &str) -> Option<String> {
    use crate::data::Source;
    let (Ok(t), Ok(d)) = (Source::parse(train), Source::parse(data)) else {
        return None;
    };
    let kind = |s: &Source| -> Option<String> {
        match s {
            Source::Mnist(_) => Some("mnist".into()),
            Source::FashionMnist(_) => Some("fashion-mnist".into()),
            Source::Emnist(v, _) => Some(format!("emnist-{v}")),
            Source::Letters => Some("letters".into()),
            _ => None,
        }
    };
    match (kind(&t), kind(&d)) {
        (Some(a), Some(b)) if a != b => Some(format!(
            "{b}'s labels are not classes of the run (trained on {a}): every image is of an unknown class"
        )),
        _ => None,
    }
}

fn describe(t: &Trust) -> String {
    format!(
        "{} on {}{}{}",
        t.model.trust.model,
        t.model.trust.features,
        if t.model.trust.transform.name == "log" {
            " (log features)"
        } else {
            ""
        },
        if t.model.trust.known_unknowns {
            " with known unknowns"
        } else {
            ""
        }
    )
}

/// `metaclf score --merge`: joins the outputs of shards 0..N of one scoring into `out`,
/// recomputing ranks, summary and review page: the same bytes one unsharded run writes.
pub fn merge(dirs: &[PathBuf], out: &Path, force: bool, top: Option<usize>) -> Result<Summary> {
    if dirs.is_empty() {
        return Err(other("--merge needs the shard folders"));
    }
    let mut parts: Vec<(Summary, PathBuf)> = Vec::new();
    for d in dirs {
        let p = d.join("summary.json");
        let text = std::fs::read_to_string(&p).at(&p)?;
        let s: Summary = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: p.clone(),
            msg: format!("not a metaclf score summary: {e}"),
        })?;
        if s.shard.is_none() {
            return Err(Error::Format {
                path: p,
                msg: "is not a shard's summary (no `shard`; was it scored with --shard K/N?)"
                    .into(),
            });
        }
        parts.push((s, d.clone()));
    }
    parts.sort_by_key(|(s, _)| s.shard.as_ref().map(|x| x.k));
    let first = parts[0].0.clone();
    let sh0 = first.shard.clone().expect("checked");
    let mut expect = 0;
    for (k, (s, d)) in parts.iter().enumerate() {
        let sh = s.shard.as_ref().expect("checked");
        let same = s.run == first.run
            && s.data == first.data
            && s.count == first.count
            && s.threshold == first.threshold
            && s.trust_model == first.trust_model
            && sh.n == sh0.n
            && sh.total == sh0.total;
        if !same {
            return Err(other(format!(
                "{} is a shard of another scoring (run, data, count, threshold or shard count differ from {})",
                d.display(),
                parts[0].1.display()
            )));
        }
        if sh.k != k || sh.start != expect {
            return Err(other(format!(
                "shards do not line up: expected shard {k} of {} starting at {expect}, {} is shard {} at {}",
                sh0.n,
                d.display(),
                sh.k,
                sh.start
            )));
        }
        expect = sh.end;
    }
    if parts.len() != sh0.n || expect != sh0.total {
        return Err(other(format!(
            "{} of {} shards given; every shard 0..{} is needed",
            parts.len(),
            sh0.n,
            sh0.n
        )));
    }
    let sc = Scorer::load(Path::new(&first.run))?;
    let top = top.unwrap_or(sc.cfg.score.top);
    let staged = output_folder(out, force)?;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (s, d) in &parts {
        rows.extend(read_scores_csv(&d.join("scores.csv"))?);
        skipped.extend(s.skipped.iter().cloned());
    }
    let mut batch = crate::data::stream::BatchStats::default();
    for (s, _) in &parts {
        batch.merge(&s.batch);
    }
    let base = Summary {
        skipped,
        shard: None,
        batch,
        ecotaxa: match &first.ecotaxa {
            Some(_) => Some(std::path::absolute(out).at(out)?),
            None => None,
        },
        ..first.clone()
    };
    let mut summary = summarise(&rows, &base);
    summary.mismatch = mismatch_of(
        &summary,
        train_stats(Path::new(&first.run)).as_ref(),
        sc.cfg.shape(),
    );
    let want = review_indices(&rows, top);
    let bs = sc.cfg.features.batch_size;
    let chunk = sc.cfg.score.chunk.div_ceil(bs) * bs;
    let mut s = stream::open(&first.data, &sc.ctx(first.count, true), OnError::Skip)?;
    let images = fetch_images(&mut *s, 0, sh0.total, &want, chunk)?;
    write_outputs(&staged.folder.path, &rows, &summary, &sc, &images, top)?;
    staged.commit()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_images_contiguously() {
        for (total, n) in [(1000, 4), (10, 3), (5, 4), (1_000_000, 7), (69, 3)] {
            let mut expect = 0;
            for k in 0..n {
                let (a, b) = shard_range(total, k, n);
                assert_eq!(a, expect);
                assert!(b - a >= total / n && b - a <= total.div_ceil(n));
                expect = b;
            }
            assert_eq!(expect, total);
        }
        assert_eq!(parse_shard("1/4").unwrap(), (1, 4));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("x").is_err());
        assert!(parse_shard("0/0").is_err());
    }

    #[test]
    fn ranks_and_csv_round_trip_with_awkward_paths() {
        let rows = vec![
            Row {
                index: 0,
                path: "a, \"quoted\"/ü.png".into(),
                label: Some(3),
                pred: 3,
                msp: 0.99,
                trust: 0.8,
                flag: false,
                label_name: "copepod".into(),
                pred_name: "copepod".into(),
                p_calibrated: 0.98,
                p_known: Some(0.9),
                p_correct: Some(0.85),
                suspect: Suspect::None,
            },
            Row {
                index: 1,
                path: "b\nc.png".into(),
                label: None,
                pred: 1,
                msp: 0.5,
                trust: 0.1,
                flag: true,
                label_name: String::new(),
                pred_name: "diatom, \"b\"".into(),
                p_calibrated: 0.5,
                p_known: Some(0.01),
                p_correct: Some(0.5),
                suspect: Suspect::NewKind,
            },
            Row {
                index: 2,
                path: String::new(),
                label: None,
                pred: 1,
                msp: 0.95,
                trust: 0.1,
                flag: true,
                label_name: String::new(),
                pred_name: "diatom, \"b\"".into(),
                p_calibrated: 0.9,
                p_known: None,
                p_correct: None,
                suspect: Suspect::Misclassified,
            },
        ];
        assert_eq!(ranks(&rows), vec![3, 1, 2]);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("scores.csv");
        std::fs::write(&p, scores_csv(&rows).unwrap()).unwrap();
        assert_eq!(read_scores_csv(&p).unwrap(), rows);
        // EcoTaxa: header, type row, one row per image; paths relative to the output folder
        let named: Vec<Row> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| Row {
                path: format!("/data/batch/{}", ["a\tb.png", "sub/c.png", "d.png"][i]),
                ..r.clone()
            })
            .collect();
        let tsv = ecotaxa_tsv(&named, Path::new("/data/scored")).unwrap();
        let lines: Vec<&str> = tsv.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("img_file_name\tobject_id\tobject_annotation_category\tobject_annotation_status\tobject_metaclf_trust"));
        assert!(lines[1].starts_with("[t]\t[t]\t[t]\t[t]\t[f]"));
        assert_eq!(
            lines[2].split('\t').take(5).collect::<Vec<_>>(),
            ["../batch/a b.png", "a b_0", "copepod", "predicted", "0.8"]
        );
        assert!(lines[3].starts_with("../batch/sub/c.png\tc_1\tdiatom, \"b\"\tpredicted\t0.1"));
        assert!(lines[3].ends_with("\t1\t1\tnew-kind"), "{}", lines[3]);
        assert!(
            ecotaxa_tsv(&rows[2..], Path::new("/x")).is_err(),
            "no file, no row"
        );
        // which question each fails: p_known below its threshold first, then p_correct
        let at = |pk: Option<f64>, pc: Option<f64>, flag: bool| Row {
            p_known: pk,
            p_correct: pc,
            flag,
            ..rows[0].clone()
        };
        let (tk, tc) = (Some(0.2), Some(0.6));
        assert_eq!(
            suspect(&at(Some(0.1), Some(0.1), true), tk, tc),
            Suspect::NewKind
        );
        assert_eq!(
            suspect(&at(Some(0.3), Some(0.5), false), tk, tc),
            Suspect::Misclassified
        );
        assert_eq!(
            suspect(&at(Some(0.3), Some(0.7), true), tk, tc),
            Suspect::None
        );
        // a trust model without the heads: trust's flag decides
        assert_eq!(
            suspect(&at(None, None, true), None, None),
            Suspect::Misclassified
        );
        assert_eq!(suspect(&at(None, None, false), None, None), Suspect::None);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("index,path,label,pred,msp,trust,flag,rank,label_name,pred_name,p_calibrated,p_known,p_correct_if_known,suspect\n")
        );
        assert!(text.contains(
            "0,\"a, \"\"quoted\"\"/ü.png\",3,3,0.99,0.8,keep,3,copepod,copepod,0.98,0.9,0.85,\n"
        ));
        let s = summarise(
            &rows,
            &Summary {
                run: "r".into(),
                data: "d".into(),
                count: 0,
                trust_model: "m".into(),
                threshold: "keep95".into(),
                threshold_value: 0.5,
                ..Default::default()
            },
        );
        assert_eq!((s.images, s.flagged, s.confident_flagged), (3, 2, 1));
        assert_eq!(
            s.flagged_by_pred[&1],
            PerClass {
                images: 2,
                flagged: 2
            }
        );
        assert!(!s.labelled && s.kept_accuracy.is_none());
    }
}
