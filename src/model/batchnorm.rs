//! Batch norm over channels (2-D: [n, c, h, w]) or features (1-D: [n, f], as h = w = 1).
//! Training mode normalises with the batch's mean and (biased) variance and the running
//! statistics follow them (PyTorch's update: momentum m, unbiased variance); evaluation mode —
//! features, scoring, MC dropout — uses the running statistics, so it is a per-channel affine
//! map and an image's gradient features do not depend on its batch. γ (`weight`) and β
//! (`bias`) are the parameters; their per-sample gradients dγ_c = Σ_hw dy·x̂ and dβ_c = Σ_hw dy
//! are one layer's statistics.

use super::moments::Moments;
use rayon::prelude::*;

/// Geometry and settings of a batch-norm layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BnGeom {
    pub c: usize,
    /// Pixels per channel (1 for features).
    pub hw: usize,
    pub eps: f64,
    pub momentum: f64,
}

/// The statistics a forward pass normalised with: per channel mean and 1/√(var + ε), in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct BnStats {
    pub mean: Vec<f64>,
    pub inv: Vec<f64>,
    /// The batch's unbiased variance (training mode; empty in evaluation mode).
    pub var_unbiased: Vec<f64>,
    pub train: bool,
}

/// Evaluation-mode statistics from the running mean and variance.
pub fn eval_stats(g: &BnGeom, running_mean: &[f32], running_var: &[f32]) -> BnStats {
    BnStats {
        mean: running_mean.iter().map(|&v| v as f64).collect(),
        inv: running_var
            .iter()
            .map(|&v| 1.0 / (v as f64 + g.eps).sqrt())
            .collect(),
        var_unbiased: Vec::new(),
        train: false,
    }
}

/// Training-mode statistics of a batch `x` [n, c, hw] (f64 sums, two passes).
pub fn batch_stats(g: &BnGeom, x: &[f32], n: usize) -> BnStats {
    let (c, hw) = (g.c, g.hw);
    let m = (n * hw) as f64;
    let per: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut s = 0f64;
            for i in 0..n {
                s += x[(i * c + ch) * hw..(i * c + ch + 1) * hw]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            let mu = s / m;
            let mut q = 0f64;
            for i in 0..n {
                q += x[(i * c + ch) * hw..(i * c + ch + 1) * hw]
                    .iter()
                    .map(|&v| (v as f64 - mu).powi(2))
                    .sum::<f64>();
            }
            (mu, q)
        })
        .collect();
    BnStats {
        mean: per.iter().map(|p| p.0).collect(),
        inv: per.iter().map(|p| 1.0 / (p.1 / m + g.eps).sqrt()).collect(),
        var_unbiased: per.iter().map(|p| p.1 / (m - 1.0).max(1.0)).collect(),
        train: true,
    }
}

/// y = γ·(x − mean)·inv + β, per channel.
pub fn forward(
    g: &BnGeom,
    st: &BnStats,
    gamma: &[f32],
    beta: &[f32],
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let (c, hw) = (g.c, g.hw);
    let a: Vec<f32> = (0..c)
        .map(|ch| (gamma[ch] as f64 * st.inv[ch]) as f32)
        .collect();
    let b: Vec<f32> = (0..c)
        .map(|ch| (beta[ch] as f64 - st.mean[ch] * gamma[ch] as f64 * st.inv[ch]) as f32)
        .collect();
    let mut y = vec![0f32; n * c * hw];
    y.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw))
        .for_each(|(ys, xs)| {
            for ch in 0..c {
                for (o, v) in ys[ch * hw..(ch + 1) * hw]
                    .iter_mut()
                    .zip(&xs[ch * hw..(ch + 1) * hw])
                {
                    *o = v * a[ch] + b[ch];
                }
            }
        });
    y
}

/// PyTorch's running-statistics update after a training-mode batch.
pub fn update_running(g: &BnGeom, st: &BnStats, running_mean: &mut [f32], running_var: &mut [f32]) {
    let m = g.momentum;
    for ch in 0..g.c {
        running_mean[ch] = ((1.0 - m) * running_mean[ch] as f64 + m * st.mean[ch]) as f32;
        running_var[ch] = ((1.0 - m) * running_var[ch] as f64 + m * st.var_unbiased[ch]) as f32;
    }
}

/// Per-channel Σ dy·x̂ and Σ dy of one sample (or of the batch, summed over its samples).
fn channel_sums(g: &BnGeom, st: &BnStats, dy: &[f32], x: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let (c, hw) = (g.c, g.hw);
    let mut sg = vec![0f64; c];
    let mut sb = vec![0f64; c];
    for i in 0..n {
        for ch in 0..c {
            let o = (i * c + ch) * hw;
            let (mu, inv) = (st.mean[ch], st.inv[ch]);
            let (mut a, mut b) = (0f64, 0f64);
            for (d, v) in dy[o..o + hw].iter().zip(&x[o..o + hw]) {
                a += *d as f64 * (*v as f64 - mu) * inv;
                b += *d as f64;
            }
            sg[ch] += a;
            sb[ch] += b;
        }
    }
    (sg, sb)
}

/// Summed (dγ, dβ) over the batch.
pub fn weight_grad(
    g: &BnGeom,
    st: &BnStats,
    dy: &[f32],
    x: &[f32],
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (sg, sb) = channel_sums(g, st, dy, x, n);
    (
        sg.iter().map(|&v| v as f32).collect(),
        sb.iter().map(|&v| v as f32).collect(),
    )
}

/// dx: evaluation mode dy·γ·inv; training mode γ·inv·(dy − mean(dy) − x̂·mean(dy·x̂)), the
/// means over the batch and pixels of each channel.
pub fn input_grad(
    g: &BnGeom,
    st: &BnStats,
    gamma: &[f32],
    dy: &[f32],
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let (c, hw) = (g.c, g.hw);
    let (mdy, mdyx) = if st.train {
        let (sg, sb) = channel_sums(g, st, dy, x, n);
        let m = (n * hw) as f64;
        (
            sb.iter().map(|v| v / m).collect(),
            sg.iter().map(|v| v / m).collect(),
        )
    } else {
        (vec![0f64; c], vec![0f64; c])
    };
    let mut dx = vec![0f32; n * c * hw];
    dx.par_chunks_mut(c * hw)
        .zip(dy.par_chunks(c * hw))
        .zip(x.par_chunks(c * hw))
        .for_each(|((d, gs), xs)| {
            for ch in 0..c {
                let a = gamma[ch] as f64 * st.inv[ch];
                let (mu, inv) = (st.mean[ch], st.inv[ch]);
                for ((o, gv), xv) in d[ch * hw..(ch + 1) * hw]
                    .iter_mut()
                    .zip(&gs[ch * hw..(ch + 1) * hw])
                    .zip(&xs[ch * hw..(ch + 1) * hw])
                {
                    let xh = (*xv as f64 - mu) * inv;
                    *o = (a * (*gv as f64 - mdy[ch] - xh * mdyx[ch])) as f32;
                }
            }
        });
    dx
}

/// Moments of one sample's (dγ, dβ), from its output gradient and input (evaluation mode).
pub fn sample_moments(g: &BnGeom, st: &BnStats, dy: &[f32], x: &[f32]) -> Moments {
    let (sg, sb) = channel_sums(g, st, dy, x, 1);
    let gg: Vec<f32> = sg.iter().map(|&v| v as f32).collect();
    let gb: Vec<f32> = sb.iter().map(|&v| v as f32).collect();
    Moments::combine(&Moments::of(&gg), &Moments::of(&gb))
}

#[cfg(test)]
mod tests {
    use crate::arch::Spec;

    /// 2-D batch norm after convs and 1-D batch norm between dense layers, against candle
    /// autograd in training mode (batch statistics) and evaluation mode (running statistics
    /// after some training steps), per-sample statistics included.
    #[test]
    fn batch_norm_2d_and_1d_match_candle() {
        let bn = |n: &str| Spec::BatchNorm {
            name: n.into(),
            eps: 1e-5,
            momentum: 0.1,
        };
        super::super::oracle::check_specs(
            vec![
                Spec::Conv {
                    name: "c1".into(),
                    out: 4,
                    kernel: 3,
                    stride: 1,
                    same: true,
                    bias: false,
                },
                bn("bn1"),
                Spec::Act {
                    name: "a1".into(),
                    slope: 0.0,
                },
                Spec::Conv {
                    name: "c2".into(),
                    out: 3,
                    kernel: 3,
                    stride: 2,
                    same: true,
                    bias: true,
                },
                bn("bn2"),
                Spec::Act {
                    name: "a2".into(),
                    slope: 0.0,
                },
                Spec::Flatten { name: "f".into() },
                Spec::Linear {
                    name: "fc1".into(),
                    out: 6,
                    bias: true,
                },
                bn("bn3"),
                Spec::Act {
                    name: "a3".into(),
                    slope: 0.0,
                },
                Spec::Linear {
                    name: "fc".into(),
                    out: 0,
                    bias: true,
                },
            ],
            crate::data::Shape::new(2, 9, 8),
            4,
        );
    }
}
