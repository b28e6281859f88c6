//! Gradient boosting meta classifier `gb`: histogram gradient-boosted trees for the binary log
//! loss, in the manner of scikit-learn's `HistGradientBoostingClassifier` (features binned into
//! at most 255 bins on the training rows, trees grown best-first by gain up to a leaf and depth
//! limit, Newton leaf values −G/(H + λ) times the learning rate, early stopping on a seeded,
//! stratified validation part of the training rows). Trees only compare a feature with
//! thresholds, so the model is invariant to monotone transforms of each column: the scale
//! problem of the gradient statistics does not arise (the authors' group uses XGBoost for the
//! same reason).
//!
//! Why our own: the maintained Rust boosters either bind C++ (xgboost, lightgbm: a C++
//! toolchain and cmake at build time) or lack early stopping and sample-level determinism
//! (linfa has no boosting); a binary-loss histogram booster is ~300 lines and is checked here
//! against scikit-learn (tests/fixtures/boost.json, made by tests/fixtures/make_boost_fixtures.py).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Settings of a boosted fit (defaults: scikit-learn's, with a depth limit).
#[derive(Debug, Clone, PartialEq)]
pub struct BoostParams {
    pub max_iter: usize,
    pub learning_rate: f64,
    pub max_leaf_nodes: usize,
    pub max_depth: usize,
    pub min_samples_leaf: usize,
    pub l2: f64,
    pub max_bins: usize,
    /// Share of the training rows held out for early stopping (0 = no early stopping).
    pub validation_fraction: f64,
    pub n_iter_no_change: usize,
    pub tol: f64,
    pub seed: u64,
}

impl Default for BoostParams {
    fn default() -> Self {
        BoostParams {
            max_iter: 100,
            learning_rate: 0.1,
            max_leaf_nodes: 31,
            max_depth: 6,
            min_samples_leaf: 20,
            l2: 0.0,
            max_bins: 255,
            validation_fraction: 0.1,
            n_iter_no_change: 10,
            tol: 1e-7,
            seed: 0,
        }
    }
}

/// One node: a split (`x[feature] <= threshold` goes left) or a leaf with its raw value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub feature: usize,
    pub threshold: f64,
    pub left: usize,
    pub right: usize,
    pub value: f64,
    pub leaf: bool,
}

/// A fitted booster: P(target = 1) = sigmoid(baseline + Σ trees).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booster {
    pub baseline: f64,
    pub trees: Vec<Vec<Node>>,
    pub features: usize,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Bin thresholds of one column (scikit-learn 1.9's rule): midpoints of the distinct values
/// when there are at most `max_bins`, else the interior quantiles.
fn thresholds(mut v: Vec<f64>, max_bins: usize) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    let mut d = v.clone();
    d.dedup();
    if d.len() <= max_bins {
        return d.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    }
    // percentiles at linspace(0, 100, max_bins + 1)[1:-1] of all values, numpy's
    // "averaged_inverted_cdf" method (scikit-learn's): g = n·q; the mean of the g-th and
    // (g+1)-th smallest values when g is whole, else the ⌈g⌉-th
    let n = v.len();
    let mut t: Vec<f64> = (1..max_bins)
        .map(|i| {
            let j = n * i / max_bins;
            if (n * i).is_multiple_of(max_bins) {
                (v[j.saturating_sub(1)] + v[j.min(n - 1)]) / 2.0
            } else {
                v[j.min(n - 1)]
            }
        })
        .collect();
    t.dedup();
    t
}

struct Split {
    gain: f64,
    feature: usize,
    bin: usize,
}

struct Leaf {
    rows: Vec<usize>,
    depth: usize,
    node: usize,
    split: Option<Split>,
}

impl BoostParams {
    /// Fits on row-major `x` (rows × p) and targets `y` ∈ {0, 1}.
    pub fn fit(&self, x: &[f64], y: &[f64]) -> Result<Booster, String> {
        let n = y.len();
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(format!("boosting: {} values for {n} rows", x.len()));
        }
        let p = x.len() / n;
        // early stopping: a stratified, seeded part of the rows
        let mut is_val = vec![false; n];
        if self.validation_fraction > 0.0 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
            for class in [0.0, 1.0] {
                let mut idx: Vec<usize> = (0..n).filter(|&i| y[i] == class).collect();
                idx.shuffle(&mut rng);
                let k = (idx.len() as f64 * self.validation_fraction).round() as usize;
                for &i in &idx[..k] {
                    is_val[i] = true;
                }
            }
        }
        let train: Vec<usize> = (0..n).filter(|&i| !is_val[i]).collect();
        let val: Vec<usize> = (0..n).filter(|&i| is_val[i]).collect();
        if train.is_empty() {
            return Err("boosting: no training rows".into());
        }
        let ths: Vec<Vec<f64>> = (0..p)
            .map(|j| thresholds(train.iter().map(|&i| x[i * p + j]).collect(), self.max_bins))
            .collect();
        let bin = |v: f64, j: usize| ths[j].partition_point(|&t| t < v);
        // binned training matrix, column-major per row
        let binned: Vec<u16> = (0..n)
            .flat_map(|i| (0..p).map(move |j| (i, j)))
            .map(|(i, j)| bin(x[i * p + j], j) as u16)
            .collect();
        let ybar = train.iter().map(|&i| y[i]).sum::<f64>() / train.len() as f64;
        let ybar = ybar.clamp(1e-12, 1.0 - 1e-12);
        let baseline = (ybar / (1.0 - ybar)).ln();
        let mut raw = vec![baseline; n];
        let mut trees = Vec::new();
        let loss = |raw: &[f64], rows: &[usize]| -> f64 {
            rows.iter()
                .map(|&i| {
                    let z = raw[i];
                    // log(1 + e^z) − y z, stably
                    (if z > 0.0 {
                        z + (-z).exp().ln_1p()
                    } else {
                        z.exp().ln_1p()
                    }) - y[i] * z
                })
                .sum::<f64>()
                / rows.len().max(1) as f64
        };
        let mut val_loss = vec![loss(&raw, &val)];
        for _ in 0..self.max_iter {
            let g: Vec<f64> = (0..n).map(|i| sigmoid(raw[i]) - y[i]).collect();
            let h: Vec<f64> = (0..n)
                .map(|i| {
                    let q = sigmoid(raw[i]);
                    q * (1.0 - q)
                })
                .collect();
            let tree = self.grow(&train, &binned, p, &ths, &g, &h);
            for i in 0..n {
                raw[i] += predict_tree(&tree, &x[i * p..(i + 1) * p]);
            }
            trees.push(tree);
            if !val.is_empty() {
                val_loss.push(loss(&raw, &val));
                let k = self.n_iter_no_change;
                if val_loss.len() > k {
                    let reference = val_loss[val_loss.len() - k - 1];
                    if val_loss[val_loss.len() - k..]
                        .iter()
                        .all(|&l| l > reference - self.tol)
                    {
                        break;
                    }
                }
            }
        }
        Ok(Booster {
            baseline,
            trees,
            features: p,
        })
    }

    fn best_split(
        &self,
        rows: &[usize],
        binned: &[u16],
        p: usize,
        ths: &[Vec<f64>],
        g: &[f64],
        h: &[f64],
    ) -> Option<Split> {
        let (gs, hs): (f64, f64) = rows
            .iter()
            .fold((0.0, 0.0), |a, &i| (a.0 + g[i], a.1 + h[i]));
        let parent = gs * gs / (hs + self.l2);
        let mut best: Option<Split> = None;
        for (j, t) in ths.iter().enumerate() {
            let nb = t.len() + 1;
            if nb < 2 {
                continue;
            }
            let mut hist = vec![(0f64, 0f64, 0usize); nb];
            for &i in rows {
                let b = binned[i * p + j] as usize;
                hist[b].0 += g[i];
                hist[b].1 += h[i];
                hist[b].2 += 1;
            }
            let (mut gl, mut hl, mut cl) = (0f64, 0f64, 0usize);
            for (b, e) in hist.iter().enumerate().take(nb - 1) {
                gl += e.0;
                hl += e.1;
                cl += e.2;
                let (gr, hr, cr) = (gs - gl, hs - hl, rows.len() - cl);
                if cl < self.min_samples_leaf || cr < self.min_samples_leaf {
                    continue;
                }
                if hl < 1e-3 || hr < 1e-3 {
                    continue;
                }
                let gain = gl * gl / (hl + self.l2) + gr * gr / (hr + self.l2) - parent;
                // a pure node's gain is rounding noise around 0: not a split
                if gain > 1e-9 * parent.abs().max(1.0)
                    // ties (to rounding) go to the first feature and bin, as in scikit-learn
                    && best
                        .as_ref()
                        .is_none_or(|s| gain > s.gain + 1e-10 * s.gain.abs())
                {
                    best = Some(Split {
                        gain,
                        feature: j,
                        bin: b,
                    });
                }
            }
        }
        best
    }

    /// One tree, grown best-first (the leaf whose split gains most splits next) until
    /// `max_leaf_nodes` leaves or no leaf can split.
    fn grow(
        &self,
        rows: &[usize],
        binned: &[u16],
        p: usize,
        ths: &[Vec<f64>],
        g: &[f64],
        h: &[f64],
    ) -> Vec<Node> {
        let leaf_value = |rows: &[usize]| {
            let (gs, hs): (f64, f64) = rows
                .iter()
                .fold((0.0, 0.0), |a, &i| (a.0 + g[i], a.1 + h[i]));
            -self.learning_rate * gs / (hs + self.l2).max(1e-300)
        };
        let mut nodes = vec![Node {
            feature: 0,
            threshold: 0.0,
            left: 0,
            right: 0,
            value: leaf_value(rows),
            leaf: true,
        }];
        let split_of = |rows: &[usize], depth: usize| {
            if depth >= self.max_depth || rows.len() < 2 * self.min_samples_leaf {
                None
            } else {
                self.best_split(rows, binned, p, ths, g, h)
            }
        };
        let mut open = vec![Leaf {
            split: split_of(rows, 0),
            rows: rows.to_vec(),
            depth: 0,
            node: 0,
        }];
        let mut leaves = 1;
        while leaves < self.max_leaf_nodes {
            // the open leaf with the largest gain (the first on ties)
            let Some(k) = open
                .iter()
                .enumerate()
                .filter(|(_, l)| l.split.is_some())
                .fold(None, |best: Option<(usize, f64)>, (k, l)| {
                    let gain = l.split.as_ref().map_or(0.0, |s| s.gain);
                    match best {
                        Some((_, bg)) if bg >= gain => best,
                        _ => Some((k, gain)),
                    }
                })
                .map(|(k, _)| k)
            else {
                break;
            };
            let l = open.remove(k);
            let s = l.split.expect("filtered");
            let (lr, rr): (Vec<usize>, Vec<usize>) = l
                .rows
                .iter()
                .partition(|&&i| (binned[i * p + s.feature] as usize) <= s.bin);
            let (li, ri) = (nodes.len(), nodes.len() + 1);
            for r in [&lr, &rr] {
                nodes.push(Node {
                    feature: 0,
                    threshold: 0.0,
                    left: 0,
                    right: 0,
                    value: leaf_value(r),
                    leaf: true,
                });
            }
            nodes[l.node] = Node {
                feature: s.feature,
                threshold: ths[s.feature][s.bin],
                left: li,
                right: ri,
                value: 0.0,
                leaf: false,
            };
            leaves += 1;
            for (r, ni) in [(lr, li), (rr, ri)] {
                open.push(Leaf {
                    split: split_of(&r, l.depth + 1),
                    rows: r,
                    depth: l.depth + 1,
                    node: ni,
                });
            }
        }
        nodes
    }
}

fn predict_tree(t: &[Node], row: &[f64]) -> f64 {
    let mut k = 0;
    loop {
        let n = &t[k];
        if n.leaf {
            return n.value;
        }
        k = if row[n.feature] <= n.threshold {
            n.left
        } else {
            n.right
        };
    }
}

impl Booster {
    /// P(target = 1) of each row (row-major, `features` columns).
    pub fn predict(&self, x: &[f64]) -> Vec<f64> {
        x.chunks(self.features.max(1))
            .map(|row| {
                sigmoid(
                    self.baseline + self.trees.iter().map(|t| predict_tree(t, row)).sum::<f64>(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One depth-1 tree on 8 rows, by hand: p₀ = 0.5, g = 0.5 − y, h = 0.25; splits after
    /// x = 2 and after x = 4 both gain 4.8, the first found wins (as in scikit-learn); leaf
    /// values −0.1·1.5/0.75 = −0.2 and −0.1·(−1.5)/1.25 = 0.12. scikit-learn's
    /// HistGradientBoostingClassifier gives the same probabilities (tests/fixtures/boost.json).
    #[test]
    fn one_stump_by_hand_and_as_sklearn() {
        let x: Vec<f64> = (0..8).map(|v| v as f64).collect();
        let y = [0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let b = BoostParams {
            max_iter: 1,
            max_leaf_nodes: 2,
            min_samples_leaf: 1,
            validation_fraction: 0.0,
            ..Default::default()
        }
        .fit(&x, &y)
        .unwrap();
        assert_eq!(b.baseline, 0.0);
        assert_eq!(b.trees[0][0].threshold, 2.5);
        let p = b.predict(&x);
        for (i, v) in p.iter().enumerate() {
            let want = sigmoid(if i <= 2 { -0.2 } else { 0.12 });
            assert!((v - want).abs() < 1e-12, "{i}: {v} vs {want}");
        }
        let f: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/boost.json"
        )))
        .unwrap();
        let sk: Vec<f64> = serde_json::from_value(f["stump"]["proba"].clone()).unwrap();
        for (a, b) in p.iter().zip(&sk) {
            assert!((a - b).abs() < 1e-12, "{a} vs sklearn {b}");
        }
    }

    /// On real features (error detection on a quick MNIST run's id-test rows), the AUROC on the
    /// held-out half is within 0.005 of scikit-learn's with the same settings.
    #[test]
    fn auroc_as_sklearn_on_real_features() {
        let f: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/boost.json"
        )))
        .unwrap();
        let r = &f["real"];
        let p = r["columns"].as_array().unwrap().len();
        let x: Vec<f64> = serde_json::from_value(r["x"].clone()).unwrap();
        let y: Vec<f64> = serde_json::from_value(r["y"].clone()).unwrap();
        let n = y.len();
        let half = r["train_rows"].as_u64().unwrap() as usize;
        let pos: Vec<bool> = y[half..n].iter().map(|&v| v == 1.0).collect();
        // fit on the first half, AUROC on the second
        let auroc_of = |x: &[f64]| {
            let b = BoostParams {
                max_iter: r["max_iter"].as_u64().unwrap() as usize,
                max_depth: r["max_depth"].as_u64().unwrap() as usize,
                validation_fraction: 0.0,
                ..Default::default()
            }
            .fit(&x[..half * p], &y[..half])
            .unwrap();
            crate::eval::auroc(&pos, &b.predict(&x[half * p..])).unwrap()
        };
        let ours = auroc_of(&x);
        let theirs = r["sklearn_auroc"].as_f64().unwrap();
        assert!((ours - theirs).abs() < 0.005, "{ours} vs sklearn {theirs}");
        // and boosting is invariant to a monotone transform of a column
        let xl: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % p == 0 { v.exp() } else { v })
            .collect();
        let a2 = auroc_of(&xl);
        assert!((a2 - ours).abs() < 1e-9, "{a2} vs {ours}");
    }
}
