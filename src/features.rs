//! Uncertainty features per image: softmax (msp, entropy), MC dropout (mc_pmax, mc_entropy,
//! mc_std, mc_mi) and the per-sample gradient metrics of every layer (exact, batched: one
//! forward and backward per batch, per-sample weight gradients formed from output gradients ×
//! unfolded inputs and reduced to their statistics inside the batch), and the feature table
//! with its CSV form.

use crate::data::Dataset;
use crate::error::{Error, IoContext, Result};
pub use crate::model::moments::{linear_moments, Moments};
use crate::model::net::{argmax_rows, softmax, Masks, Net};
use crate::model::{Node, Saved};
use rayon::prelude::*;
use std::path::Path;

pub use crate::columns::{GRAD_STATS, SCORE_COLUMNS};
/// Leading identification columns. `label` and `correct` are about the known concept: empty
/// for rows of out-of-distribution sets, whose own class (if their source has one) is in
/// `source_label`.
pub const ID_COLUMNS: [&str; 6] = ["set", "index", "label", "pred", "correct", "source_label"];
/// The identification columns of feature files written before `source_label` existed.
const OLD_ID_COLUMNS: [&str; 5] = ["set", "index", "label", "pred", "correct"];

/// Scoring settings.
#[derive(Debug, Clone)]
pub struct FeatureParams {
    pub mc_samples: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Run the MC-dropout passes (off when only other features are needed: their columns are
    /// then 0).
    pub mc: bool,
    /// Run the backward for the per-sample gradient statistics (off when only other features
    /// are needed: the `grad_*` columns are then 0; the logit features, GradNorm and ExGrad
    /// included, need the forward alone).
    pub grads: bool,
}

impl FeatureParams {
    pub fn from_config(c: &crate::config::Config) -> FeatureParams {
        FeatureParams {
            mc_samples: c.features.mc_samples,
            batch_size: c.features.batch_size,
            seed: c.run.seed,
            mc: true,
            grads: true,
        }
    }
}

/// One row per scored image: identification and named f32 feature columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureTable {
    pub columns: Vec<String>,
    pub set: Vec<String>,
    pub index: Vec<usize>,
    /// The known-concept label (None for unlabeled data and for OOD rows).
    pub label: Vec<Option<u32>>,
    pub pred: Vec<u32>,
    /// The class an OOD row has in its own source (e.g. Fashion-MNIST's class), if any.
    pub source_label: Vec<Option<u32>>,
    /// Row-major values, rows × columns.
    pub values: Vec<f32>,
}

impl FeatureTable {
    pub fn len(&self) -> usize {
        self.set.len()
    }
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
    pub fn correct(&self, row: usize) -> Option<bool> {
        self.label[row].map(|l| l == self.pred[row])
    }
    pub fn col(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
    pub fn row(&self, r: usize) -> &[f32] {
        let k = self.columns.len();
        &self.values[r * k..(r + 1) * k]
    }
    /// The values of one column.
    pub fn column(&self, name: &str) -> Option<Vec<f32>> {
        let c = self.col(name)?;
        Some((0..self.len()).map(|r| self.row(r)[c]).collect())
    }

    /// Appends another table's rows (same columns).
    pub fn append(&mut self, other: FeatureTable) -> Result<()> {
        if self.columns.is_empty() {
            *self = other;
            return Ok(());
        }
        if self.columns != other.columns {
            return Err(Error::Other("feature tables with different columns".into()));
        }
        self.set.extend(other.set);
        self.index.extend(other.index);
        self.label.extend(other.label);
        self.pred.extend(other.pred);
        self.source_label.extend(other.source_label);
        self.values.extend(other.values);
        Ok(())
    }

    /// Marks every row as out-of-distribution: its label moves to `source_label`, so `label`
    /// and `correct` stay empty (they are about the known concept only).
    pub fn into_ood(mut self) -> FeatureTable {
        for (l, s) in self.label.iter_mut().zip(self.source_label.iter_mut()) {
            if let Some(v) = l.take() {
                *s = Some(v);
            }
        }
        self
    }

    /// Writes the network's class indices as the original labels `map[index]`: every
    /// prediction, and the known-concept labels too when `labels` (they are indices after
    /// `data.classes` re-indexed them; a stream's raw labels are original already).
    pub fn map_classes(&mut self, map: &[u32], labels: bool) -> Result<()> {
        if map.iter().enumerate().all(|(i, &c)| c == i as u32) {
            return Ok(());
        }
        let get = |v: u32| {
            map.get(v as usize).copied().ok_or_else(|| {
                Error::Other(format!("class index {v} outside the {} classes", map.len()))
            })
        };
        for p in self.pred.iter_mut() {
            *p = get(*p)?;
        }
        if labels {
            for l in self.label.iter_mut().flatten() {
                *l = get(*l)?;
            }
        }
        Ok(())
    }

    /// The header record of the CSV form.
    pub fn csv_header(&self) -> Vec<String> {
        csv_header(&self.columns)
    }

    /// Writes the rows (no header) as CSV records (full f32 precision: shortest round-trip
    /// decimal; the csv crate quotes any field that needs it).
    pub fn write_rows<W: std::io::Write>(&self, w: &mut csv::Writer<W>) -> Result<()> {
        let e = |e: csv::Error| Error::Other(format!("writing features CSV: {e}"));
        let mut rec: Vec<String> = Vec::with_capacity(ID_COLUMNS.len() + self.columns.len());
        for r in 0..self.len() {
            rec.clear();
            rec.push(self.set[r].clone());
            rec.push(self.index[r].to_string());
            rec.push(self.label[r].map(|l| l.to_string()).unwrap_or_default());
            rec.push(self.pred[r].to_string());
            rec.push(
                self.correct(r)
                    .map(|c| (c as u8).to_string())
                    .unwrap_or_default(),
            );
            rec.push(
                self.source_label[r]
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
            );
            rec.extend(self.row(r).iter().map(|v| v.to_string()));
            w.write_record(&rec).map_err(e)?;
        }
        Ok(())
    }

    /// The CSV text (header and rows).
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::with_capacity(self.values.len() * 12));
        let ok = w
            .write_record(self.csv_header())
            .map_err(|e| Error::Other(e.to_string()))
            .and_then(|_| self.write_rows(&mut w));
        let bytes = w.into_inner().unwrap_or_default();
        debug_assert!(ok.is_ok(), "writing CSV into memory cannot fail");
        String::from_utf8(bytes).unwrap_or_default()
    }

    /// Reads a features CSV written by [`FeatureTable::to_csv`] (also the older form without
    /// `source_label`). Every value must be a finite number: NaN or infinity is an error that
    /// names the line and the column, since a meta classifier fitted on it would be silently
    /// wrong.
    pub fn read_csv(path: &Path) -> Result<FeatureTable> {
        let bytes = std::fs::read(path).at(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| Error::Format {
            path: path.into(),
            msg: format!("not UTF-8 text ({e})"),
        })?;
        FeatureTable::parse_csv(text, path)
    }

    /// Parses the text of a features CSV; `path` names it in errors.
    pub fn parse_csv(text: &str, path: &Path) -> Result<FeatureTable> {
        let bad = |line: u64, msg: String| Error::Format {
            path: path.into(),
            msg: format!("line {line}: {msg}"),
        };
        let mut rd = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut records = rd.records();
        let head: Vec<String> = match records.next() {
            None => return Err(bad(1, "empty file".into())),
            Some(r) => r
                .map_err(|e| bad(1, e.to_string()))?
                .iter()
                .map(String::from)
                .collect(),
        };
        let nid = if head.len() >= ID_COLUMNS.len() && head[..ID_COLUMNS.len()] == ID_COLUMNS {
            ID_COLUMNS.len()
        } else if head.len() >= OLD_ID_COLUMNS.len()
            && head[..OLD_ID_COLUMNS.len()] == OLD_ID_COLUMNS
        {
            OLD_ID_COLUMNS.len()
        } else {
            return Err(bad(
                1,
                format!("header must start with {}", ID_COLUMNS.join(",")),
            ));
        };
        let mut t = FeatureTable {
            columns: head[nid..].to_vec(),
            ..Default::default()
        };
        let plain = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
        for (ci, c) in t.columns.iter().enumerate() {
            if !plain(c) || t.columns[..ci].contains(c) || ID_COLUMNS.contains(&c.as_str()) {
                return Err(bad(
                    1,
                    format!("column {c:?} is empty, repeated or holds control characters"),
                ));
            }
        }
        for rec in records {
            let rec = rec.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                bad(line, e.to_string())
            })?;
            let ln = rec.position().map_or(0, |p| p.line());
            let f: Vec<&str> = rec.iter().collect();
            if f.len() != head.len() {
                return Err(bad(
                    ln,
                    format!("{} fields, header has {}", f.len(), head.len()),
                ));
            }
            let int = |s: &str, what: &str| -> Result<u64> {
                s.parse::<u64>()
                    .map_err(|_| bad(ln, format!("{what} {s:?} is not a whole number ≥ 0")))
            };
            let class = |s: &str, what: &str| -> Result<Option<u32>> {
                if s.is_empty() {
                    return Ok(None);
                }
                let v = int(s, what)?;
                u32::try_from(v)
                    .map(Some)
                    .map_err(|_| bad(ln, format!("{what} {s:?} is too large")))
            };
            if !plain(f[0]) {
                return Err(bad(
                    ln,
                    format!("set name {:?} is empty or holds control characters", f[0]),
                ));
            }
            t.set.push(f[0].to_string());
            t.index.push(
                usize::try_from(int(f[1], "index")?)
                    .map_err(|_| bad(ln, format!("index {:?} is too large", f[1])))?,
            );
            let label = class(f[2], "label")?;
            let pred = class(f[3], "pred")?.ok_or_else(|| bad(ln, "pred is empty".into()))?;
            let want = label
                .map(|l| if l == pred { "1" } else { "0" })
                .unwrap_or("");
            if f[4] != want {
                return Err(bad(
                    ln,
                    format!(
                        "correct is {:?} but label {:?} and pred {pred} make it {want:?}",
                        f[4], f[2]
                    ),
                ));
            }
            let mut src = if nid == ID_COLUMNS.len() {
                class(f[5], "source_label")?
            } else {
                None
            };
            // older files kept an OOD source's own class in `label`
            let label = if nid < ID_COLUMNS.len() && is_ood_set(f[0]) {
                src = label;
                None
            } else {
                label
            };
            t.label.push(label);
            t.pred.push(pred);
            t.source_label.push(src);
            for (c, v) in f[nid..].iter().enumerate() {
                let x = v.parse::<f32>().map_err(|_| {
                    bad(
                        ln,
                        format!("column {}: {v:?} is not a number", t.columns[c]),
                    )
                })?;
                if !x.is_finite() {
                    return Err(bad(
                        ln,
                        format!(
                            "column {}: {v:?} is not finite (NaN or infinite features cannot be fitted; \
                             fix or drop the row)",
                            t.columns[c]
                        ),
                    ));
                }
                t.values.push(x);
            }
        }
        Ok(t)
    }
}

/// The CSV header of a feature table with these feature columns.
pub fn csv_header(columns: &[String]) -> Vec<String> {
    ID_COLUMNS
        .iter()
        .map(|s| s.to_string())
        .chain(columns.iter().cloned())
        .collect()
}

/// Whether a feature-table set name is an out-of-distribution set (`ood-*`, `known-unknown-*`).
pub fn is_ood_set(set: &str) -> bool {
    set.starts_with("ood-") || set.starts_with("known-unknown-")
}

/// Column names of a net's feature table.
/// A net without dropout layers has no MC-dropout columns (`mc_*`): its T passes would all be
/// the plain forward pass.
pub fn columns(net: &Net) -> Vec<String> {
    let mc = net.dropout_layers() > 0;
    let mut cols: Vec<String> = SCORE_COLUMNS
        .iter()
        .filter(|s| mc || !s.starts_with("mc_"))
        .map(|s| s.to_string())
        .collect();
    let mut layers = net.layer_names();
    layers.push("all".into());
    for l in layers {
        for s in GRAD_STATS {
            cols.push(format!("grad_{l}_{s}"));
        }
    }
    cols
}

/// Entropy (natural log) of a probability vector; 0·log 0 = 0.
pub fn entropy(p: &[f32]) -> f64 {
    p.iter()
        .filter(|&&v| v > 0.0)
        .map(|&v| -(v as f64) * (v as f64).ln())
        .sum()
}

/// MC-dropout statistics from T probability vectors (T × k, row-major):
/// [mc_pmax, mc_entropy, mc_std, mc_mi].
pub fn mc_stats(probs: &[f32], k: usize) -> [f64; 4] {
    let t = probs.len() / k;
    let mut mean = vec![0f64; k];
    let mut mean_h = 0f64;
    for row in probs.chunks(k) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
        mean_h += entropy(row);
    }
    for m in mean.iter_mut() {
        *m /= t as f64;
    }
    mean_h /= t as f64;
    let mut c = 0;
    for i in 1..k {
        if mean[i] > mean[c] {
            c = i;
        }
    }
    let h: f64 = mean
        .iter()
        .filter(|&&v| v > 0.0)
        .map(|&v| -v * v.ln())
        .sum();
    let var = probs
        .chunks(k)
        .map(|r| (r[c] as f64 - mean[c]).powi(2))
        .sum::<f64>()
        / t as f64;
    [mean[c], h, var.sqrt(), (h - mean_h).max(0.0)]
}

/// The gradient of NLL(pred) with respect to the logits of each row, computed so that very
/// confident rows keep their relative precision: the true gradient is p_j for j ≠ pred and
/// −Σ_{j≠pred} p_j at pred (never `p_pred − 1`, whose f32 rounding error, ~6e-8, swamps the
/// true value once 1 − msp < 1e-5). It is returned divided by c = Σ_{j≠pred} p_j, so that its
/// largest entry is exactly −1 whatever the confidence; the backward pass is linear in it, so
/// every gradient is c times the one computed from the scaled values (c, in f64, is the second
/// element). All of it in f64 from the logits, relative to the runner-up logit, so that nothing
/// underflows before the final factor c (which is 0 only when every other class is more than
/// ~745 nats behind).
pub fn output_grad_scaled(logits: &[f64], pred: &[u32], k: usize) -> (Vec<f32>, Vec<f64>) {
    let n = pred.len();
    let mut d = vec![0f32; n * k];
    let mut c = vec![0f64; n];
    if k < 2 {
        return (d, c);
    }
    for i in 0..n {
        let z = &logits[i * k..(i + 1) * k];
        let p = pred[i] as usize;
        let z2 = (0..k)
            .filter(|&j| j != p)
            .map(|j| z[j])
            .fold(f64::NEG_INFINITY, f64::max);
        // e_j = exp(z_j − z2) for j ≠ pred: the runner-up has 1, so their sum s ≥ 1
        let s: f64 = (0..k).filter(|&j| j != p).map(|j| (z[j] - z2).exp()).sum();
        for j in 0..k {
            d[i * k + j] = if j == p {
                -1.0
            } else {
                ((z[j] - z2).exp() / s) as f32
            };
        }
        // Σ_{j≠pred} p_j = s·e^{z2−zp} / (1 + s·e^{z2−zp})
        let r = s * (z2 - z[p]).exp();
        c[i] = r / (1.0 + r);
    }
    (d, c)
}

/// The logit-based detectors of one row, from its logits `z` (f64) and the fc layer's input `a`:
/// [energy, max_logit, gradnorm, exgrad_fc].
/// - energy = logsumexp(z) (the negative free energy: higher = more in-distribution);
/// - max_logit = max z;
/// - gradnorm (Huang, Geng & Li 2021) = ‖∂KL(u‖softmax(z))/∂W‖₁ for the fc weights W (not the
///   bias), u uniform: the logit gradient is p − u, so the norm factorises as
///   Σ_j |p_j − 1/K| · Σ_i |a_i|;
/// - exgrad_fc (Igoe et al. 2022) = Σ_c p_c ‖∂NLL(c)/∂(W, b)‖₂ over the fc weights and bias:
///   the gradient of label c is (p − e_c) ⊗ (a, 1), of norm √(Σp² − 2p_c + 1) · √(‖a‖² + 1).
pub fn logit_features(z: &[f64], a: &[f32]) -> [f64; 4] {
    let k = z.len();
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
    let lse = m + s.ln();
    let p: Vec<f64> = z.iter().map(|v| (v - lse).exp()).collect();
    let a_l1: f64 = a.iter().map(|v| (*v as f64).abs()).sum();
    let a_l2sq: f64 = a.iter().map(|v| (*v as f64) * (*v as f64)).sum();
    let u = 1.0 / k as f64;
    let gradnorm = p.iter().map(|pj| (pj - u).abs()).sum::<f64>() * a_l1;
    let p2: f64 = p.iter().map(|v| v * v).sum();
    let ex = (a_l2sq + 1.0).sqrt()
        * p.iter()
            .map(|pc| pc * (p2 - 2.0 * pc + 1.0).max(0.0).sqrt())
            .sum::<f64>();
    [lse, m, gradnorm, ex]
}

/// Per-sample gradient statistics of a batch: for each sample, 7 stats for each layer and then
/// for all layers together; and each sample's [`logit_features`]. `x` holds `n` images. One
/// forward and one backward for the batch, in evaluation mode (batch norm on its running
/// statistics, so a row depends only on its image); each layer's per-sample gradients are
/// formed one sample at a time as the backward reaches the layer and reduced to moments there.
pub fn grad_stats_batch(
    net: &Net,
    x: &[f32],
    n: usize,
) -> (Vec<f32>, Vec<[f64; 7]>, Vec<[f64; 4]>) {
    grad_stats_batch_if(net, x, n, true)
}

/// [`grad_stats_batch`]; without `grads` the backward is skipped and the statistics are 0
/// (the probabilities and logit features are the same either way).
pub fn grad_stats_batch_if(
    net: &Net,
    x: &[f32],
    n: usize,
    grads: bool,
) -> (Vec<f32>, Vec<[f64; 7]>, Vec<[f64; 4]>) {
    let k = net.arch.classes;
    let tape = net.forward(x, n, None, true);
    let p = softmax(&tape.logits, k);
    let pred = argmax_rows(&tape.logits, k);
    let fc_x = tape.last_input();
    // The logits again, accumulated in f64 from the last layer's input: the output gradient
    // of a confident row depends on logit differences of tens of units, where f32
    // accumulation error (~1e-5 absolute) would cost the gradient features their 1e-4
    // relative precision.
    let fc = net.layers.last().expect("net has a last linear layer");
    let fc_in = net.last_in();
    let logits64: Vec<f64> = (0..n * k)
        .map(|ik| {
            let (i, c) = (ik / k, ik % k);
            let a = &fc_x[i * fc_in..(i + 1) * fc_in];
            let w = &fc.w[c * fc_in..(c + 1) * fc_in];
            fc.b.get(c).map_or(0.0, |&b| b as f64)
                + a.iter()
                    .zip(w)
                    .map(|(&a, &w)| a as f64 * w as f64)
                    .sum::<f64>()
        })
        .collect();
    let lf: Vec<[f64; 4]> = (0..n)
        .map(|i| {
            logit_features(
                &logits64[i * k..(i + 1) * k],
                &fc_x[i * fc_in..(i + 1) * fc_in],
            )
        })
        .collect();
    if !grads {
        return (p, vec![[0.0; 7]; n * (net.layers.len() + 1)], lf);
    }
    let (d, scale) = output_grad_scaled(&logits64, &pred, k);
    let nl = net.layers.len();
    let last = nl - 1;
    let mut per_layer: Vec<Vec<Moments>> = vec![Vec::new(); nl];
    net.backward_with(&tape, d, &mut |li, node, saved, dy, _| {
        per_layer[li] = sample_moments(node, saved, dy, n, li == last);
    });
    let stats: Vec<[f64; 7]> = (0..n)
        .flat_map(|s| {
            let mut per = Vec::with_capacity(nl + 1);
            let mut all = Moments::EMPTY;
            for m in &per_layer {
                all = Moments::combine(&all, &m[s]);
                per.push(m[s].stats());
            }
            per.push(all.stats());
            // back from the scaled output gradient: l1, l2, min, max and mean scale with it;
            // skewness and kurtosis do not depend on the scale
            for st in per.iter_mut() {
                for v in st[..5].iter_mut() {
                    *v *= scale[s];
                }
                if st[4] == 0.0 {
                    st[4] = 0.0; // no −0
                }
            }
            per
        })
        .collect();
    (p, stats, lf)
}

/// Each sample's moments of one layer's parameter gradient, from the layer's output gradient
/// `dy` [n, out_len] and what its forward saved. `last`: the net's output layer, whose output
/// gradient sums to zero.
fn sample_moments(node: &Node, saved: &Saved, dy: &[f32], n: usize, last: bool) -> Vec<Moments> {
    use crate::model::{batchnorm, conv};
    let ol = dy.len() / n.max(1);
    match (node, saved) {
        (Node::Conv { g, .. }, Saved::Input(x)) => {
            use crate::model::moments::LANES;
            let il = g.in_len();
            let groups: Vec<Vec<Moments>> = (0..n.div_ceil(LANES))
                .into_par_iter()
                .map(|gi| {
                    let (s0, s1) = (gi * LANES, ((gi + 1) * LANES).min(n));
                    conv::group_moments(g, &dy[s0 * ol..s1 * ol], &x[s0 * il..s1 * il], s1 - s0)
                })
                .collect();
            groups.into_iter().flatten().collect()
        }
        (Node::Linear { inp, bias, .. }, Saved::Input(x)) => (0..n)
            .into_par_iter()
            .map(|s| {
                linear_moments(
                    &dy[s * ol..(s + 1) * ol],
                    &x[s * inp..(s + 1) * inp],
                    last,
                    *bias,
                )
            })
            .collect(),
        (Node::Bn { g, .. }, Saved::Bn { input, stats }) => (0..n)
            .into_par_iter()
            .map(|s| {
                batchnorm::sample_moments(
                    g,
                    stats,
                    &dy[s * ol..(s + 1) * ol],
                    &input[s * ol..(s + 1) * ol],
                )
            })
            .collect(),
        _ => unreachable!("only parameterised layers reach the sink"),
    }
}

/// The seed of one image's MC-dropout masks: sha256 of the run's seed and the image's values
/// as the network sees them (after preprocessing; f32 little-endian). An image's masks thus
/// depend only on the seed and its own content: not on the other images of the batch, its
/// position, the batch, chunk or shard size, or its file name (a renamed or moved file keeps
/// its trust; two identical images get identical features).
pub fn mc_key(seed: u64, image: &[f32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"metaclf/mc-dropout/v1");
    h.update(seed.to_le_bytes());
    for v in image {
        h.update(v.to_le_bytes());
    }
    h.finalize().into()
}

/// The keys ([`mc_key`]) of the `n` images in `x`.
pub fn mc_keys(seed: u64, x: &[f32], n: usize) -> Vec<[u8; 32]> {
    let len = x.len() / n.max(1);
    x.chunks_exact(len.max(1))
        .take(n)
        .map(|im| mc_key(seed, im))
        .collect()
}

/// The mask stream of MC pass `pass` of the image with key `key` (pass j is ChaCha8 stream j
/// of the key's generator: passes never share draws).
fn mc_stream(key: &[u8; 32], pass: usize) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut r = rand_chacha::ChaCha8Rng::from_seed(*key);
    r.set_stream(pass as u64);
    r
}

/// MC-dropout probabilities of `n` images over `t` passes, laid out [n, t, classes]. The layers
/// before the first dropout are deterministic, so they run once; the rest runs for all passes
/// as one larger batch (in slices of ≤ 4096 rows to bound memory). Identical to `t` full passes
/// under the same masks. Image i's masks in pass j come from [`mc_stream`]`(keys[i], j)` alone.
/// Without dropout every pass equals `eval_probs`.
pub fn mc_dropout_probs(
    net: &Net,
    x: &[f32],
    n: usize,
    t: usize,
    keys: &[[u8; 32]],
    eval_probs: &[f32],
) -> Vec<f32> {
    let k = net.arch.classes;
    let mut mc = vec![0f32; n * t * k];
    let Some(fd) = net.first_dropout() else {
        for i in 0..n {
            for j in 0..t {
                mc[(i * t + j) * k..(i * t + j + 1) * k]
                    .copy_from_slice(&eval_probs[i * k..(i + 1) * k]);
            }
        }
        return mc;
    };
    assert_eq!(keys.len(), n, "one MC key per image");
    let pre = net.forward_prefix(x, n, fd);
    let per = (4096 / n.max(1)).clamp(1, t.max(1));
    // the first dropout itself, when it is a layer of its own (not inside an add's branch),
    // draws straight from the shared prefix: no copy of the prefix per pass
    let rate = match net.nodes[fd] {
        crate::model::graph::Node::Dropout { rate } => Some(rate),
        _ => None,
    };
    let mut done = 0;
    while done < t {
        let tc = per.min(t - done);
        // rows are pass-major: pass j, sample i at (j·n + i)
        let mut streams: Vec<rand_chacha::ChaCha8Rng> = (0..tc)
            .flat_map(|j| keys.iter().map(move |key| mc_stream(key, done + j)))
            .collect();
        let out = match rate {
            Some(rate) => {
                let dropped = crate::model::dropout::forward_repeated(rate, &pre, n, &mut streams);
                net.forward_steps_owned(
                    fd + 1..net.nodes.len(),
                    dropped,
                    tc * n,
                    Masks::PerRow(&mut streams),
                    false,
                )
            }
            None => {
                let mut rep = Vec::with_capacity(tc * pre.len());
                for _ in 0..tc {
                    rep.extend_from_slice(&pre);
                }
                net.forward_steps_owned(
                    fd..net.nodes.len(),
                    rep,
                    tc * n,
                    Masks::PerRow(&mut streams),
                    false,
                )
            }
        };
        let pr = softmax(&out.logits, k);
        for j in 0..tc {
            for i in 0..n {
                let src = &pr[(j * n + i) * k..(j * n + i + 1) * k];
                mc[(i * t + done + j) * k..(i * t + done + j + 1) * k].copy_from_slice(src);
            }
        }
        done += tc;
    }
    mc
}

/// Checks that a data set has the net's input shape.
pub fn check_shape(net: &Net, ds: &Dataset) -> Result<()> {
    if ds.shape != net.arch.input {
        return Err(Error::Data {
            name: ds.name.clone(),
            msg: format!(
                "images are {}, the network takes {}",
                ds.shape, net.arch.input
            ),
        });
    }
    Ok(())
}

/// Scores a data set: one feature row per image. `set` names the rows (`id-test`, `ood-<name>`).
/// Every row depends only on its image, the network and the seed: scoring a set whole, in
/// chunks, in shards, in another order or at another batch size gives the same rows.
pub fn score(net: &Net, ds: &Dataset, set: &str, p: &FeatureParams) -> Result<FeatureTable> {
    score_with_probs(net, ds, set, p).map(|(t, _)| t)
}

/// [`score`], and the softmax probabilities it computed on the way (rows × classes, dropout
/// off), for callers that need more of them than msp and entropy (e.g. calibrated
/// probabilities) without a second forward pass.
pub fn score_with_probs(
    net: &Net,
    ds: &Dataset,
    set: &str,
    p: &FeatureParams,
) -> Result<(FeatureTable, Vec<f32>)> {
    check_shape(net, ds)?;
    let k = net.arch.classes;
    let cols = columns(net);
    let nc = cols.len();
    let n_total = ds.len();
    let len = ds.shape.len();
    let mut values = vec![0f32; n_total * nc];
    let mut preds = vec![0u32; n_total];
    let mut all_probs = Vec::with_capacity(n_total * k);
    let pb = indicatif::ProgressBar::new(n_total as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "features {msg} {bar:30} {pos}/{len} [{elapsed}<{eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(set.to_string());
    if n_total <= p.batch_size {
        // one batch (`metaclf score` scores batch by batch and shows its own progress)
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let bs = p.batch_size.max(1);
    let nl = net.layers.len() + 1;
    // where `columns` put them: the gradient statistics last, the 4 logit features before
    // them, the 4 MC columns after msp and entropy when the net has dropout
    let has_mc = net.dropout_layers() > 0;
    let grad_at = nc - 7 * nl;
    let lf_at = grad_at - 4;
    for start in (0..n_total).step_by(bs) {
        let end = (start + bs).min(n_total);
        let n = end - start;
        let x = &ds.images[start * len..end * len];
        let (probs, gstats, lf) = grad_stats_batch_if(net, x, n, p.grads);
        all_probs.extend_from_slice(&probs);
        let t = p.mc_samples;
        let mc = if p.mc && has_mc {
            mc_dropout_probs(net, x, n, t, &mc_keys(p.seed, x, n), &probs)
        } else {
            Vec::new()
        };
        for i in 0..n {
            let pi = &probs[i * k..(i + 1) * k];
            let pred = argmax_rows(pi, k)[0];
            preds[start + i] = pred;
            let row = &mut values[(start + i) * nc..(start + i + 1) * nc];
            row[0] = pi[pred as usize];
            row[1] = entropy(pi) as f32;
            if has_mc {
                let m = if p.mc {
                    mc_stats(&mc[i * t * k..(i + 1) * t * k], k)
                } else {
                    [0.0; 4]
                };
                for (j, v) in m.iter().enumerate() {
                    row[2 + j] = *v as f32;
                }
            }
            for (j, v) in lf[i].iter().enumerate() {
                row[lf_at + j] = *v as f32;
            }
            for l in 0..nl {
                for (j, v) in gstats[i * nl + l].iter().enumerate() {
                    row[grad_at + l * 7 + j] = *v as f32;
                }
            }
            if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                return Err(Error::Data {
                    name: set.to_string(),
                    msg: format!(
                        "image {} (row {}) gives a non-finite {} ({}); is the model diverged or the image out of range?",
                        ds.index[start + i],
                        start + i,
                        cols[c],
                        row[c]
                    ),
                });
            }
        }
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok((
        FeatureTable {
            columns: cols,
            set: vec![set.to_string(); n_total],
            index: ds.index.clone(),
            label: match &ds.labels {
                Some(l) => l.iter().map(|&v| Some(v)).collect(),
                None => vec![None; n_total],
            },
            pred: preds,
            source_label: vec![None; n_total],
            values,
        },
        all_probs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// energy, max logit, GradNorm and ExGrad against PyTorch autograd in float64
    /// (tests/fixtures/logit_features.json, made by tests/fixtures/make_logit_fixtures.py).
    #[test]
    fn logit_features_equal_torch_autograd() {
        let f: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/logit_features.json"
        )))
        .unwrap();
        let mut n = 0;
        for c in f["cases"].as_array().unwrap() {
            let k = c["k"].as_u64().unwrap() as usize;
            let fc_in = c["fc_in"].as_u64().unwrap() as usize;
            let w: Vec<f64> = serde_json::from_value(c["w"].clone()).unwrap();
            let b: Vec<f64> = serde_json::from_value(c["b"].clone()).unwrap();
            for r in c["rows"].as_array().unwrap() {
                let a64: Vec<f64> = serde_json::from_value(r["a"].clone()).unwrap();
                // the features take the fc input as f32 (as the network holds it)
                let a: Vec<f32> = a64.iter().map(|&v| v as f32).collect();
                let z: Vec<f64> = (0..k)
                    .map(|j| {
                        b[j] + (0..fc_in)
                            .map(|i| w[j * fc_in + i] * a[i] as f64)
                            .sum::<f64>()
                    })
                    .collect();
                let got = logit_features(&z, &a);
                for (i, name) in ["energy", "max_logit", "gradnorm", "exgrad_fc"]
                    .iter()
                    .enumerate()
                {
                    let want = r[name].as_f64().unwrap();
                    // the f32 rounding of a is the only difference (~1e-7 relative)
                    assert!(
                        (got[i] - want).abs() <= 1e-5 * want.abs().max(1e-3),
                        "{name}: {} vs torch {want}",
                        got[i]
                    );
                }
                n += 1;
            }
        }
        assert_eq!(n, 16);
    }

    #[test]
    fn mc_stats_by_hand() {
        // two passes over 2 classes: [0.8, 0.2] and [0.4, 0.6] → mean [0.6, 0.4]
        let s = mc_stats(&[0.8, 0.2, 0.4, 0.6], 2);
        assert!((s[0] - 0.6).abs() < 1e-7);
        let h = -(0.6f64 * 0.6f64.ln() + 0.4 * 0.4f64.ln());
        assert!((s[1] - h).abs() < 1e-7);
        assert!((s[2] - 0.2).abs() < 1e-7); // std of {0.8, 0.4}
        let h1 = -(0.8f64 * 0.8f64.ln() + 0.2 * 0.2f64.ln());
        let h2 = -(0.4f64 * 0.4f64.ln() + 0.6 * 0.6f64.ln());
        assert!((s[3] - (h - (h1 + h2) / 2.0)).abs() < 1e-6);
        // identical passes: no spread, no mutual information
        let s = mc_stats(&[0.5, 0.25, 0.25, 0.5, 0.25, 0.25], 3);
        assert!(s[2].abs() < 1e-9 && s[3].abs() < 1e-9);
    }

    #[test]
    fn moments_combine_and_factorise() {
        let a: Vec<f32> = (0..50)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.3)
            .collect();
        let b: Vec<f32> = (0..31).map(|i| ((i * 11 % 7) as f32) * 1.7 + 2.0).collect();
        let both: Vec<f32> = a.iter().chain(&b).cloned().collect();
        let c = Moments::combine(&Moments::of(&a), &Moments::of(&b)).stats();
        let d = Moments::of(&both).stats();
        for (x, y) in c.iter().zip(&d) {
            assert!((x - y).abs() <= 1e-9 * (1.0 + y.abs()), "{c:?} vs {d:?}");
        }
        let g = [0.3f32, -0.5, 0.2];
        let x = [1.0f32, 0.0, 2.5, -0.7];
        let mut full: Vec<f32> = Vec::new();
        for gi in g {
            for xj in x {
                full.push(gi * xj);
            }
        }
        full.extend_from_slice(&g);
        let f = linear_moments(&g, &x, false, true).stats();
        let e = Moments::of(&full).stats();
        for (x, y) in f.iter().zip(&e) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{f:?} vs {e:?}");
        }
    }

    #[test]
    fn csv_round_trips() {
        let t = FeatureTable {
            columns: vec!["msp".into(), "x".into()],
            set: vec![
                "id-test".into(),
                "ood-noise".into(),
                "ood-fashion-mnist".into(),
            ],
            index: vec![3, 0, 7],
            label: vec![Some(1), None, None],
            pred: vec![1, 4, 2],
            source_label: vec![None, None, Some(2)],
            values: vec![0.1, 1.0e-7, f32::MAX, -3.25, 0.5, 0.25],
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.csv");
        std::fs::write(&p, t.to_csv()).unwrap();
        assert_eq!(FeatureTable::read_csv(&p).unwrap(), t);
        let csv = t.to_csv();
        assert!(csv.starts_with("set,index,label,pred,correct,source_label,msp,x\n"));
        assert!(csv.contains("\nid-test,3,1,1,1,,0.1,"));
        assert!(csv.contains("\nood-noise,0,,4,,,"));
        // an OOD row whose source class equals pred is still not "correct"
        assert!(csv.contains("\nood-fashion-mnist,7,,2,,2,0.5,0.25\n"));
    }

    #[test]
    fn old_feature_files_move_ood_labels_to_source_label() {
        let text = "set,index,label,pred,correct,msp\nid-test,0,3,3,1,0.9\nood-fashion-mnist,5,2,2,1,0.8\n";
        let t = FeatureTable::parse_csv(text, Path::new("f.csv")).unwrap();
        assert_eq!(t.label, vec![Some(3), None]);
        assert_eq!(t.source_label, vec![None, Some(2)]);
        assert_eq!(t.correct(1), None);
    }

    #[test]
    fn csv_rejects_non_finite_and_malformed_values_naming_line_and_column() {
        let head = "set,index,label,pred,correct,source_label,msp,entropy\n";
        let cases = [
            ("id-test,0,1,1,1,,0.9,NaN\n", "column entropy"),
            ("id-test,0,1,1,1,,inf,0.1\n", "column msp"),
            ("id-test,0,1,1,1,,-inf,0.1\n", "not finite"),
            ("id-test,0,1,1,1,,1e39,0.1\n", "not finite"),
            (
                "id-test,0,1,1,1,,x,0.1\n",
                "column msp: \"x\" is not a number",
            ),
            ("id-test,-1,1,1,1,,0.5,0.1\n", "index \"-1\""),
            ("id-test,0,1.5,1,1,,0.5,0.1\n", "label \"1.5\""),
            ("id-test,0,1,1,0,,0.5,0.1\n", "correct is \"0\""),
            ("id-test,0,1,,,,0.5,0.1\n", "pred is empty"),
            ("id-test,0,1,1,1,,0.5\n", "7 fields, header has 8"),
            ("id-test,0,99999999999,1,0,,0.5,0.1\n", "too large"),
        ];
        for (row, want) in cases {
            let text = format!("{head}id-test,1,0,0,1,,0.5,0.5\n{row}");
            let e = FeatureTable::parse_csv(&text, Path::new("feat.csv"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("feat.csv") && e.contains(want), "{row:?}: {e}");
            assert!(e.contains("line 3"), "{row:?}: {e}");
        }
        let e = FeatureTable::parse_csv("set,index\n", Path::new("f.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("header must start with"), "{e}");
    }
}

#[cfg(test)]
mod score_tests {
    use super::*;
    use crate::model::net::Arch;
    use rand::{Rng, SeedableRng};

    #[test]
    fn pred_and_msp_do_not_depend_on_t_and_seed_repeats() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let net = Net::new(Arch::paper(), &mut rng).unwrap();
        let x: Vec<f32> = (0..30 * 784).map(|_| rng.gen::<f32>()).collect();
        let ds = Dataset::new("t", crate::data::Shape::MNIST, x, None);
        let p = |t: usize, bs: usize| FeatureParams {
            mc_samples: t,
            batch_size: bs,
            seed: 3,
            mc: true,
            grads: true,
        };
        let a = score(&net, &ds, "s", &p(2, 7)).unwrap();
        let b = score(&net, &ds, "s", &p(40, 7)).unwrap();
        assert_eq!(a.pred, b.pred);
        assert_eq!(a.column("msp"), b.column("msp"));
        assert_eq!(a.column("grad_all_l2"), b.column("grad_all_l2"));
        assert_ne!(a.column("mc_std"), b.column("mc_std"));
        // same seed, same everything: identical
        assert_eq!(a, score(&net, &ds, "s", &p(2, 7)).unwrap());
        // scored in chunks of any size: identical values
        let mut parts = FeatureTable::default();
        for (lo, hi) in [(0, 5), (5, 28), (28, 30)] {
            let part = ds.select(&(lo..hi).collect::<Vec<_>>());
            parts
                .append(score(&net, &part, "s", &p(2, 7)).unwrap())
                .unwrap();
        }
        assert_eq!(parts.values, a.values);
        // another batch size, another order, one image left out: every other row identical
        let c = score(&net, &ds, "s", &p(2, 4)).unwrap();
        assert_eq!(c.values, a.values);
        let order: Vec<usize> = (0..30).rev().filter(|&i| i != 11).collect();
        let d = score(&net, &ds.select(&order), "s", &p(2, 7)).unwrap();
        for (r, &i) in order.iter().enumerate() {
            assert_eq!(d.row(r), a.row(i), "row of image {i}");
        }
        // an image's masks are its own: the same image twice gets the same MC features
        let twice = ds.select(&[3, 3]);
        let e = score(&net, &twice, "s", &p(40, 7)).unwrap();
        assert_eq!(e.row(0), e.row(1));
        // without MC passes: the other columns are unchanged
        let no_mc = score(
            &net,
            &ds,
            "s",
            &FeatureParams {
                mc: false,
                ..p(2, 7)
            },
        )
        .unwrap();
        assert_eq!(no_mc.column("grad_all_l2"), a.column("grad_all_l2"));
        assert_eq!(no_mc.column("mc_std").unwrap(), vec![0.0; 30]);
        // without the backward: every column but the gradient statistics unchanged
        let no_grads = score(
            &net,
            &ds,
            "s",
            &FeatureParams {
                grads: false,
                ..p(2, 7)
            },
        )
        .unwrap();
        for (c, name) in a.columns.iter().enumerate() {
            let (x, y) = (a.column(name).unwrap(), no_grads.column(name).unwrap());
            if name.starts_with("grad_") {
                assert_eq!(y, vec![0.0; 30], "{name}");
            } else {
                assert_eq!(x, y, "column {c} {name}");
            }
        }
        // msp is the probability of pred; entropy is bounded by ln 10
        for r in 0..a.len() {
            let row = a.row(r);
            assert!(row[0] >= 0.1 && row[0] <= 1.0 && row[1] >= 0.0 && row[1] <= 10f32.ln() + 1e-5);
        }
    }
}

#[cfg(test)]
mod precision_tests {
    use super::*;
    use crate::model::net::Arch;
    use crate::model::oracle::{naive_stats, per_sample_grads_f64, tolerance};
    use rand::{Rng, SeedableRng};

    /// Every gradient statistic of every row, confident ones included, within 1e-4 relative of
    /// a float64 candle-autograd reference. The fc weights are scaled up to make the net
    /// confident: 1 − msp spans ~1e-2 down to ~1e-10, where `p_pred − 1` in f32 (the old way)
    /// is wrong by up to 100% or more.
    #[test]
    fn gradient_stats_match_float64_on_very_confident_rows() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let base = Net::new(Arch::paper(), &mut rng).unwrap();
        let n = 12;
        // no exact zeros: tied maxima in a pooling window would make candle's max backward
        // split the gradient where the kernels route it to the first maximum
        let x: Vec<f32> = (0..n * 784).map(|_| rng.gen::<f32>()).collect();
        let (mut checked, mut confident, mut very) = (0, 0, 0);
        // fc weights scaled up, and class 3's bias raised: logits up to ~±320 (a trained MNIST
        // net stays within ~±60), gaps up to ~25 nats
        let mut max_logit = 0f32;
        for (scale, bias) in [
            (1.0f32, 0.0f32),
            (10.0, 0.0),
            (40.0, 0.0),
            (80.0, 0.0),
            (1.0, 12.0),
            (1.0, 20.0),
            (10.0, 16.0),
            (10.0, 24.0),
            (40.0, 12.0),
        ] {
            let mut net = base.clone();
            let fc = net.layers.last_mut().unwrap();
            for w in fc.w.iter_mut() {
                *w *= scale;
            }
            fc.b[3] += bias;
            let (_, stats, _) = grad_stats_batch(&net, &x, n);
            let nl = net.layers.len() + 1;
            for s in 0..n {
                let (pred, one_minus, g) =
                    per_sample_grads_f64(&net, &x[s * 784..(s + 1) * 784]).unwrap();
                let logits = net
                    .forward(&x[s * 784..(s + 1) * 784], 1, None, false)
                    .logits;
                max_logit = logits.iter().fold(max_logit, |m, v| m.max(v.abs()));
                assert_eq!(argmax_rows(&logits, logits.len())[0], pred);
                if one_minus < 1e-11 {
                    continue; // below the reference's own precision
                }
                checked += 1;
                confident += (one_minus < 1e-5) as usize;
                very += (one_minus < 1e-8) as usize;
                let mut all = Vec::new();
                for (l, (w, b)) in g.iter().enumerate() {
                    let v: Vec<f64> = w.iter().chain(b).cloned().collect();
                    all.extend_from_slice(&v);
                    let want = naive_stats(&v);
                    let got = stats[s * nl + l];
                    for j in 0..7 {
                        let tol = tolerance(j, &want, v.len());
                        assert!(
                            (got[j] - want[j]).abs() <= tol,
                            "scale {scale} row {s} (1-msp {one_minus:.2e}) layer {l} stat {}: {} vs f64 {}",
                            GRAD_STATS[j], got[j], want[j]
                        );
                    }
                }
                // the fc gradient sums to zero: its mean is written as exactly 0
                assert_eq!(stats[s * nl + nl - 2][4], 0.0);
                let want = naive_stats(&all);
                let got = stats[s * nl + nl - 1];
                for j in 0..7 {
                    let tol = tolerance(j, &want, all.len());
                    assert!(
                        (got[j] - want[j]).abs() <= tol,
                        "scale {scale} row {s} (1-msp {one_minus:.2e}) all stat {}: {} vs f64 {}",
                        GRAD_STATS[j],
                        got[j],
                        want[j]
                    );
                }
            }
        }
        eprintln!("checked {checked} rows, {confident} with 1-msp < 1e-5, {very} below 1e-8; |logit| ≤ {max_logit}");
        assert!(
            checked >= 40 && confident >= 10 && very >= 4,
            "{checked} {confident} {very}"
        );
    }
}
