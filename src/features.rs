//! Uncertainty features per image: softmax (msp, entropy), MC dropout (mc_pmax, mc_entropy,
//! mc_std, mc_mi) and the per-sample gradient metrics of every layer (exact, batched: one
//! forward and backward per batch, per-sample weight gradients formed from output gradients ×
//! unfolded inputs and reduced to their statistics inside the batch), and the feature table
//! with its CSV form.

use crate::data::{stage_rng, Dataset, PIXELS};
use crate::error::{Error, IoContext, Result};
use crate::model::layers::gemm;
use crate::model::net::{argmax_rows, softmax, Net, Saved};
use rayon::prelude::*;
use std::path::Path;

/// Score columns, in CSV order.
pub const SCORE_COLUMNS: [&str; 6] = ["msp", "entropy", "mc_pmax", "mc_entropy", "mc_std", "mc_mi"];
/// Statistics of each layer's gradient, in CSV order.
pub const GRAD_STATS: [&str; 7] = ["l1", "l2", "min", "max", "mean", "skew", "kurt"];
/// Leading identification columns.
pub const ID_COLUMNS: [&str; 5] = ["set", "index", "label", "pred", "correct"];

/// Scoring settings.
#[derive(Debug, Clone)]
pub struct FeatureParams {
    pub mc_samples: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl FeatureParams {
    pub fn from_config(c: &crate::config::Config) -> FeatureParams {
        FeatureParams {
            mc_samples: c.features.mc_samples,
            batch_size: c.features.batch_size,
            seed: c.run.seed,
        }
    }
}

/// One row per scored image: identification and named f32 feature columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureTable {
    pub columns: Vec<String>,
    pub set: Vec<String>,
    pub index: Vec<usize>,
    pub label: Vec<Option<u32>>,
    pub pred: Vec<u32>,
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
        self.values.extend(other.values);
        Ok(())
    }

    /// The CSV text (full f32 precision: shortest round-trip decimal).
    pub fn to_csv(&self) -> String {
        let mut s = String::with_capacity(self.values.len() * 12);
        s.push_str(&ID_COLUMNS.join(","));
        for c in &self.columns {
            s.push(',');
            s.push_str(c);
        }
        s.push('\n');
        for r in 0..self.len() {
            let lab = self.label[r].map(|l| l.to_string()).unwrap_or_default();
            let cor = self
                .correct(r)
                .map(|c| (c as u8).to_string())
                .unwrap_or_default();
            s.push_str(&format!(
                "{},{},{},{},{}",
                self.set[r], self.index[r], lab, self.pred[r], cor
            ));
            for v in self.row(r) {
                s.push(',');
                s.push_str(&v.to_string());
            }
            s.push('\n');
        }
        s
    }

    /// Reads a features CSV written by [`FeatureTable::to_csv`].
    pub fn read_csv(path: &Path) -> Result<FeatureTable> {
        let text = std::fs::read_to_string(path).at(path)?;
        let bad = |line: usize, msg: String| Error::Format {
            path: path.into(),
            msg: format!("line {line}: {msg}"),
        };
        let mut lines = text.lines();
        let head: Vec<&str> = lines
            .next()
            .ok_or_else(|| bad(1, "empty file".into()))?
            .split(',')
            .collect();
        if head.len() < 5 || head[..5] != ID_COLUMNS {
            return Err(bad(
                1,
                format!("header must start with {}", ID_COLUMNS.join(",")),
            ));
        }
        let mut t = FeatureTable {
            columns: head[5..].iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        for (i, line) in lines.enumerate() {
            let ln = i + 2;
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != head.len() {
                return Err(bad(
                    ln,
                    format!("{} fields, header has {}", f.len(), head.len()),
                ));
            }
            let num = |s: &str, what: &str| {
                s.parse::<f64>()
                    .map_err(|_| bad(ln, format!("{what} {s:?} is not a number")))
            };
            t.set.push(f[0].to_string());
            t.index.push(num(f[1], "index")? as usize);
            t.label.push(if f[2].is_empty() {
                None
            } else {
                Some(num(f[2], "label")? as u32)
            });
            t.pred.push(num(f[3], "pred")? as u32);
            for v in &f[5..] {
                t.values.push(
                    v.parse::<f32>()
                        .map_err(|_| bad(ln, format!("value {v:?} is not a number")))?,
                );
            }
        }
        Ok(t)
    }
}

/// Column names of a net's feature table.
pub fn columns(net: &Net) -> Vec<String> {
    let mut cols: Vec<String> = SCORE_COLUMNS.iter().map(|s| s.to_string()).collect();
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

/// Central-moment summary of a set of values: count, mean, M2..M4 (sums of powered
/// deviations), L1, min, max. Combined exactly across sets (Chan/Pébay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub n: f64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
    pub l1: f64,
    pub min: f64,
    pub max: f64,
}

impl Moments {
    pub const EMPTY: Moments = Moments {
        n: 0.0,
        mean: 0.0,
        m2: 0.0,
        m3: 0.0,
        m4: 0.0,
        l1: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    /// Two passes over the values (mean, then powered deviations), f64 throughout.
    pub fn of(values: &[f32]) -> Moments {
        let n = values.len() as f64;
        if values.is_empty() {
            return Moments::EMPTY;
        }
        let (mut s, mut l1, mut mn, mut mx) = (0f64, 0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &v in values {
            let v = v as f64;
            s += v;
            l1 += v.abs();
            mn = mn.min(v);
            mx = mx.max(v);
        }
        let mean = s / n;
        let (mut m2, mut m3, mut m4) = (0f64, 0f64, 0f64);
        for &v in values {
            let d = v as f64 - mean;
            let d2 = d * d;
            m2 += d2;
            m3 += d2 * d;
            m4 += d2 * d2;
        }
        Moments {
            n,
            mean,
            m2,
            m3,
            m4,
            l1,
            min: mn,
            max: mx,
        }
    }

    /// From raw power sums S1..S4 of `n` values (used where the values factorise).
    pub fn from_power_sums(n: f64, s: [f64; 4], l1: f64, min: f64, max: f64) -> Moments {
        let mu = s[0] / n;
        let m2 = (s[1] - n * mu * mu).max(0.0);
        let m3 = s[2] - 3.0 * mu * s[1] + 3.0 * mu * mu * s[0] - n * mu.powi(3);
        let m4 = (s[3] - 4.0 * mu * s[2] + 6.0 * mu * mu * s[1] - 4.0 * mu.powi(3) * s[0]
            + n * mu.powi(4))
        .max(0.0);
        Moments {
            n,
            mean: mu,
            m2,
            m3,
            m4,
            l1,
            min,
            max,
        }
    }

    /// Moments of the union of two value sets.
    pub fn combine(a: &Moments, b: &Moments) -> Moments {
        if a.n == 0.0 {
            return *b;
        }
        if b.n == 0.0 {
            return *a;
        }
        let n = a.n + b.n;
        let d = b.mean - a.mean;
        let (na, nb) = (a.n, b.n);
        let mean = a.mean + d * nb / n;
        let m2 = a.m2 + b.m2 + d * d * na * nb / n;
        let m3 = a.m3
            + b.m3
            + d.powi(3) * na * nb * (na - nb) / (n * n)
            + 3.0 * d * (na * b.m2 - nb * a.m2) / n;
        let m4 = a.m4
            + b.m4
            + d.powi(4) * na * nb * (na * na - na * nb + nb * nb) / n.powi(3)
            + 6.0 * d * d * (na * na * b.m2 + nb * nb * a.m2) / (n * n)
            + 4.0 * d * (na * b.m3 - nb * a.m3) / n;
        Moments {
            n,
            mean,
            m2,
            m3,
            m4,
            l1: a.l1 + b.l1,
            min: a.min.min(b.min),
            max: a.max.max(b.max),
        }
    }

    /// [l1, l2, min, max, mean, skew, kurt] (population moments; skew and kurt 0 when m2 = 0).
    pub fn stats(&self) -> [f64; 7] {
        let l2 = (self.m2 + self.n * self.mean * self.mean).max(0.0).sqrt();
        let (c2, c3, c4) = (self.m2 / self.n, self.m3 / self.n, self.m4 / self.n);
        let (skew, kurt) = if c2 > 0.0 {
            (c3 / c2.powf(1.5), c4 / (c2 * c2) - 3.0)
        } else {
            (0.0, 0.0)
        };
        [self.l1, l2, self.min, self.max, self.mean, skew, kurt]
    }
}

/// Moments of the linear layer's per-sample gradient without forming it: weight entries are
/// g_i·a_j (g = dL/dlogits, a = the layer's input), so their power sums factorise and min/max come
/// from the four corner products; bias entries are g_i.
pub fn linear_moments(g: &[f32], a: &[f32]) -> Moments {
    let pw = |v: &[f32]| {
        let mut s = [0f64; 4];
        let (mut l1, mut mn, mut mx) = (0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &x in v {
            let x = x as f64;
            s[0] += x;
            s[1] += x * x;
            s[2] += x * x * x;
            s[3] += x * x * x * x;
            l1 += x.abs();
            mn = mn.min(x);
            mx = mx.max(x);
        }
        (s, l1, mn, mx)
    };
    let (gs, gl1, gmin, gmax) = pw(g);
    let (as_, al1, amin, amax) = pw(a);
    let corners = [gmin * amin, gmin * amax, gmax * amin, gmax * amax];
    let wmin = corners.iter().cloned().fold(f64::INFINITY, f64::min);
    let wmax = corners.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let n = (g.len() * a.len() + g.len()) as f64;
    let s = [0, 1, 2, 3].map(|k| gs[k] * as_[k] + gs[k]);
    Moments::from_power_sums(n, s, gl1 * al1 + gl1, wmin.min(gmin), wmax.max(gmax))
}

/// Per-sample gradient statistics of a batch: for each sample, 7 stats for each layer and then
/// for all layers together. `x` holds `n` images.
pub fn grad_stats_batch(net: &Net, x: &[f32], n: usize) -> (Vec<f32>, Vec<[f64; 7]>) {
    let k = net.arch.classes;
    let tape = net.forward(x, n, None, true);
    let p = softmax(&tape.logits, k);
    let pred = argmax_rows(&tape.logits, k);
    let mut d = p.clone();
    for i in 0..n {
        d[i * k + pred[i] as usize] -= 1.0;
    }
    let g = net.backward(&tape, d);
    let mut conv_in = Vec::new();
    for s in &tape.saved {
        if let Saved::Conv { input, .. } = s {
            conv_in.push(input);
        }
    }
    let Some(Saved::Fc { x: fc_x }) = tape.saved.last() else {
        unreachable!("tape ends with fc")
    };
    let nl = net.layers.len();
    let max_w = net
        .geoms
        .iter()
        .map(|g| g.cout * g.ckk())
        .max()
        .unwrap_or(0);
    let max_c = net.geoms.iter().map(|g| g.cols_len()).max().unwrap_or(0);
    let stats: Vec<[f64; 7]> = (0..n)
        .into_par_iter()
        .map_init(
            || (vec![0f32; max_w], vec![0f32; max_c]),
            |(scratch, cols_buf), s| {
                let mut per = Vec::with_capacity(nl + 1);
                let mut all = Moments::EMPTY;
                for (ci, geo) in net.geoms.iter().enumerate() {
                    let (il, ol, cl, wl) = (
                        geo.in_len(),
                        geo.out_len(),
                        geo.cols_len(),
                        geo.cout * geo.ckk(),
                    );
                    let dy = &g.conv[ci][s * ol..(s + 1) * ol];
                    let cols = &mut cols_buf[..cl];
                    geo.im2col(&conv_in[ci][s * il..(s + 1) * il], cols);
                    let cols = &*cols;
                    let gw = &mut scratch[..wl];
                    gemm(
                        geo.cout,
                        geo.hw(),
                        geo.ckk(),
                        dy,
                        (geo.hw(), 1),
                        cols,
                        (1, geo.hw()),
                        0.0,
                        gw,
                        geo.ckk(),
                    );
                    let gb: Vec<f32> = dy.chunks(geo.hw()).map(|r| r.iter().sum()).collect();
                    let m = Moments::combine(&Moments::of(gw), &Moments::of(&gb));
                    all = Moments::combine(&all, &m);
                    per.push(m.stats());
                }
                let m = linear_moments(
                    &g.fc[s * k..(s + 1) * k],
                    &fc_x[s * net.fc_in..(s + 1) * net.fc_in],
                );
                all = Moments::combine(&all, &m);
                per.push(m.stats());
                per.push(all.stats());
                per
            },
        )
        .flatten()
        .collect();
    (p, stats)
}

/// MC-dropout probabilities of `n` images over `t` passes, laid out [n, t, classes]. The layers
/// before the first dropout are deterministic, so they run once; the rest runs for all passes
/// as one larger batch (in slices of ≤ 4096 rows to bound memory). Identical to `t` full passes
/// under the same masks. Without dropout every pass equals `eval_probs`.
pub fn mc_dropout_probs(
    net: &Net,
    x: &[f32],
    n: usize,
    t: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
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
    let pre = net.forward_prefix(x, n, fd);
    let per = (4096 / n.max(1)).clamp(1, t.max(1));
    let mut done = 0;
    let mut rep = Vec::with_capacity(per * pre.len());
    while done < t {
        let tc = per.min(t - done);
        rep.clear();
        for _ in 0..tc {
            rep.extend_from_slice(&pre);
        }
        let out = net.forward_steps(fd..net.steps.len(), &rep, tc * n, Some(rng), false);
        let pr = softmax(&out.logits, k);
        // rows are pass-major: pass j, sample i at (j·n + i)
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

/// Scores a data set: one feature row per image. `set` names the rows (`id-test`, `ood-<name>`).
pub fn score(net: &Net, ds: &Dataset, set: &str, p: &FeatureParams) -> Result<FeatureTable> {
    let k = net.arch.classes;
    let cols = columns(net);
    let nc = cols.len();
    let n_total = ds.len();
    let mut values = vec![0f32; n_total * nc];
    let mut preds = vec![0u32; n_total];
    let mut rng = stage_rng(p.seed, &format!("mc/{set}"));
    let pb = indicatif::ProgressBar::new(n_total as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "features {msg} {bar:30} {pos}/{len} [{elapsed}<{eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(set.to_string());
    let bs = p.batch_size.max(1);
    let nl = net.layers.len() + 1;
    for start in (0..n_total).step_by(bs) {
        let end = (start + bs).min(n_total);
        let n = end - start;
        let x = &ds.images[start * PIXELS..end * PIXELS];
        let (probs, gstats) = grad_stats_batch(net, x, n);
        let t = p.mc_samples;
        let mc = mc_dropout_probs(net, x, n, t, &mut rng, &probs);
        for i in 0..n {
            let pi = &probs[i * k..(i + 1) * k];
            let pred = argmax_rows(pi, k)[0];
            preds[start + i] = pred;
            let row = &mut values[(start + i) * nc..(start + i + 1) * nc];
            row[0] = pi[pred as usize];
            row[1] = entropy(pi) as f32;
            let m = mc_stats(&mc[i * t * k..(i + 1) * t * k], k);
            for (j, v) in m.iter().enumerate() {
                row[2 + j] = *v as f32;
            }
            for l in 0..nl {
                for (j, v) in gstats[i * nl + l].iter().enumerate() {
                    row[6 + l * 7 + j] = *v as f32;
                }
            }
        }
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(FeatureTable {
        columns: cols,
        set: vec![set.to_string(); n_total],
        index: ds.index.clone(),
        label: match &ds.labels {
            Some(l) => l.iter().map(|&v| Some(v)).collect(),
            None => vec![None; n_total],
        },
        pred: preds,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let f = linear_moments(&g, &x).stats();
        let e = Moments::of(&full).stats();
        for (x, y) in f.iter().zip(&e) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{f:?} vs {e:?}");
        }
    }

    #[test]
    fn csv_round_trips() {
        let t = FeatureTable {
            columns: vec!["msp".into(), "x".into()],
            set: vec!["id-test".into(), "ood-noise".into()],
            index: vec![3, 0],
            label: vec![Some(1), None],
            pred: vec![1, 4],
            values: vec![0.1, 1.0e-7, f32::MAX, -3.25],
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.csv");
        std::fs::write(&p, t.to_csv()).unwrap();
        assert_eq!(FeatureTable::read_csv(&p).unwrap(), t);
        assert!(t.to_csv().contains("id-test,3,1,1,1,"));
        assert!(t.to_csv().contains("ood-noise,0,,4,,"));
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
        let net = Net::new(Arch::paper(), &mut rng);
        let x: Vec<f32> = (0..30 * PIXELS).map(|_| rng.gen::<f32>()).collect();
        let ds = Dataset::new("t", x, None);
        let p = |t: usize, bs: usize| FeatureParams {
            mc_samples: t,
            batch_size: bs,
            seed: 3,
        };
        let a = score(&net, &ds, "s", &p(2, 7)).unwrap();
        let b = score(&net, &ds, "s", &p(40, 7)).unwrap();
        assert_eq!(a.pred, b.pred);
        assert_eq!(a.column("msp"), b.column("msp"));
        assert_eq!(a.column("grad_all_l2"), b.column("grad_all_l2"));
        assert_ne!(a.column("mc_std"), b.column("mc_std"));
        // same seed, same everything: identical
        assert_eq!(a, score(&net, &ds, "s", &p(2, 7)).unwrap());
        // msp is the probability of pred; entropy is bounded by ln 10
        for r in 0..a.len() {
            let row = a.row(r);
            assert!(row[0] >= 0.1 && row[0] <= 1.0 && row[1] >= 0.0 && row[1] <= 10f32.ln() + 1e-5);
        }
    }
}
