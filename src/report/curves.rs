//! The statistics behind the curves: kernel density (Silverman bandwidth), quantiles, ROC and
//! PR points, and the accuracy-vs-rejection curve.

use crate::eval;

/// Gaussian kernel density at `xs` with Silverman's rule-of-thumb bandwidth
/// h = 0.9 · min(σ, IQR/1.34) · n^(−1/5) (σ alone when the IQR is 0).
pub fn kde(data: &[f64], xs: &[f64]) -> (Vec<f64>, f64) {
    let n = data.len() as f64;
    let h = silverman(data);
    let c = 1.0 / (n * h * (2.0 * std::f64::consts::PI).sqrt());
    let ys = xs
        .iter()
        .map(|x| {
            c * data
                .iter()
                .map(|d| (-0.5 * ((x - d) / h).powi(2)).exp())
                .sum::<f64>()
        })
        .collect();
    (ys, h)
}

/// Silverman's bandwidth (see [`kde`]); a small positive floor keeps constant data drawable.
pub fn silverman(data: &[f64]) -> f64 {
    let n = data.len() as f64;
    let mean = data.iter().sum::<f64>() / n;
    let sd = (data.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    let mut s = data.to_vec();
    s.sort_by(f64::total_cmp);
    let iqr = quantile(&s, 0.75) - quantile(&s, 0.25);
    let a = if iqr > 0.0 { sd.min(iqr / 1.34) } else { sd };
    (0.9 * a * n.powf(-0.2)).max(1e-9 * (1.0 + mean.abs()))
}
pub use crate::stats::quantile;

/// ROC points (fpr, tpr) from positives and scores, thresholds from high to low.
pub fn roc_points(pos: &[bool], s: &[f64]) -> Vec<(f64, f64)> {
    let np = pos.iter().filter(|p| **p).count().max(1) as f64;
    let nn = pos.iter().filter(|p| !**p).count().max(1) as f64;
    std::iter::once((0.0, 0.0))
        .chain(
            eval::threshold_steps(pos, s)
                .into_iter()
                .map(|(tp, fp)| (fp / nn, tp / np)),
        )
        .collect()
}

/// Precision–recall points (recall, precision) at each distinct threshold.
pub fn pr_points(pos: &[bool], s: &[f64]) -> Vec<(f64, f64)> {
    let np = pos.iter().filter(|p| **p).count().max(1) as f64;
    eval::threshold_steps(pos, s)
        .into_iter()
        .map(|(tp, fp)| (tp / np, tp / (tp + fp)))
        .collect()
}

/// Accuracy of the kept predictions when the `x` fraction with the lowest scores is rejected,
/// for x = 0, 1/steps, ..., (steps−1)/steps.
pub fn rejection_curve(correct: &[bool], s: &[f64], steps: usize) -> Vec<(f64, f64)> {
    let mut idx: Vec<usize> = (0..s.len()).collect();
    idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
    let n = idx.len();
    (0..steps)
        .map(|k| {
            let rej = k as f64 / steps as f64;
            let keep = ((n as f64) * (1.0 - rej)).round().max(1.0) as usize;
            let acc =
                idx[..keep.min(n)].iter().filter(|&&i| correct[i]).count() as f64 / keep as f64;
            (rej, acc)
        })
        .collect()
}
