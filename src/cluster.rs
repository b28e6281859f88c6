//! Grouping by visual similarity for the review page: k-means (k-means++ seeding, Lloyd
//! iterations, best of several seeded starts) on the CNN's penultimate activations, with k
//! chosen by the mean silhouette. A leaf module: plain row-major `f64` data in, labels out.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-means of `n` rows of `d` values: (labels, inertia). Deterministic for a seed.
pub fn kmeans(x: &[f64], d: usize, k: usize, seed: u64) -> (Vec<usize>, f64) {
    let n = x.len().checked_div(d).unwrap_or(0);
    if n == 0 || k == 0 {
        return (vec![0; n], 0.0);
    }
    let k = k.min(n);
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let mut best: Option<(Vec<usize>, f64)> = None;
    for start in 0..4u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (start.wrapping_mul(0x9e37_79b9)));
        // k-means++: each next centre drawn with probability ∝ squared distance
        let mut centres: Vec<Vec<f64>> = vec![row(rng.gen_range(0..n)).to_vec()];
        let mut near: Vec<f64> = (0..n).map(|i| dist2(row(i), &centres[0])).collect();
        while centres.len() < k {
            let total: f64 = near.iter().sum();
            let pick = if total <= 0.0 {
                rng.gen_range(0..n)
            } else {
                let mut u = rng.gen::<f64>() * total;
                let mut j = n - 1;
                for (i, w) in near.iter().enumerate() {
                    if u < *w {
                        j = i;
                        break;
                    }
                    u -= w;
                }
                j
            };
            centres.push(row(pick).to_vec());
            for (i, v) in near.iter_mut().enumerate() {
                *v = v.min(dist2(row(i), &centres[centres.len() - 1]));
            }
        }
        let mut labels = vec![0usize; n];
        for _ in 0..100 {
            let mut changed = false;
            for (i, l) in labels.iter_mut().enumerate() {
                let (mut bj, mut bd) = (0, f64::INFINITY);
                for (j, c) in centres.iter().enumerate() {
                    let dd = dist2(row(i), c);
                    if dd < bd {
                        (bj, bd) = (j, dd);
                    }
                }
                if *l != bj {
                    *l = bj;
                    changed = true;
                }
            }
            let mut sums = vec![vec![0.0; d]; k];
            let mut counts = vec![0usize; k];
            for (i, &l) in labels.iter().enumerate() {
                counts[l] += 1;
                for (s, v) in sums[l].iter_mut().zip(row(i)) {
                    *s += v;
                }
            }
            for j in 0..k {
                if counts[j] > 0 {
                    centres[j] = sums[j].iter().map(|s| s / counts[j] as f64).collect();
                }
            }
            if !changed {
                break;
            }
        }
        let inertia: f64 = (0..n).map(|i| dist2(row(i), &centres[labels[i]])).sum();
        if best.as_ref().is_none_or(|b| inertia < b.1) {
            best = Some((labels, inertia));
        }
    }
    best.unwrap_or((vec![0; n], 0.0))
}

/// Mean silhouette (Rousseeuw 1987) of a labelling: for each point, (b − a) / max(a, b) with a
/// its mean distance to its own cluster, b the smallest mean distance to another; 0 for a
/// point alone in its cluster. Euclidean distances.
pub fn silhouette(x: &[f64], d: usize, labels: &[usize]) -> f64 {
    let n = labels.len();
    let k = labels.iter().max().map_or(0, |m| m + 1);
    if n < 2 || k < 2 {
        return 0.0;
    }
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let mut total = 0.0;
    for i in 0..n {
        let mut sum = vec![0.0; k];
        let mut cnt = vec![0usize; k];
        for j in 0..n {
            if i != j {
                sum[labels[j]] += dist2(row(i), row(j)).sqrt();
                cnt[labels[j]] += 1;
            }
        }
        let own = labels[i];
        if cnt[own] == 0 {
            continue;
        }
        let a = sum[own] / cnt[own] as f64;
        let b = (0..k)
            .filter(|&c| c != own && cnt[c] > 0)
            .map(|c| sum[c] / cnt[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() && a.max(b) > 0.0 {
            total += (b - a) / a.max(b);
        }
    }
    total / n as f64
}

/// Groups rows by similarity: k in 2..=`max_k` (at most n / 3) with the best mean silhouette;
/// one group when there are fewer than 6 rows or no k reaches a silhouette of 0.25 (below it
/// Kaufman and Rousseeuw find no substantial structure). Returns (labels, k, silhouette), groups numbered by size
/// (largest first).
pub fn groups(x: &[f64], d: usize, max_k: usize, seed: u64) -> (Vec<usize>, usize, f64) {
    let n = x.len().checked_div(d).unwrap_or(0);
    let mut best = (vec![0usize; n], 1usize, 0.0f64);
    if n >= 6 {
        for k in 2..=max_k.min(n / 3) {
            let (l, _) = kmeans(x, d, k, seed);
            let s = silhouette(x, d, &l);
            if s > best.2 + 1e-12 && s >= 0.25 {
                best = (l, k, s);
            }
        }
    }
    // renumber by size, largest first (ties: first appearance)
    let (labels, k, s) = best;
    let mut size = vec![0usize; k];
    for &l in &labels {
        size[l] += 1;
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&c| {
        (
            std::cmp::Reverse(size[c]),
            labels.iter().position(|&l| l == c),
        )
    });
    let mut new = vec![0usize; k];
    for (i, &c) in order.iter().enumerate() {
        new[c] = i;
    }
    (labels.iter().map(|&l| new[l]).collect(), k, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silhouette_by_hand() {
        // 1-D points 0, 1 (cluster 0) and 4, 5 (cluster 1):
        // point 0: a = 1, b = (4 + 5) / 2 = 4.5 → 3.5 / 4.5; point 1: a = 1, b = 3.5 → 2.5 / 3.5
        // symmetric for 4 and 5
        let x = [0.0, 1.0, 4.0, 5.0];
        let s = silhouette(&x, 1, &[0, 0, 1, 1]);
        let want = (3.5 / 4.5 + 2.5 / 3.5) / 2.0;
        assert!((s - want).abs() < 1e-12, "{s} vs {want}");
        // a singleton cluster counts 0: points 0, 1 | 4 | —
        let s = silhouette(&[0.0, 1.0, 4.0], 1, &[0, 0, 1]);
        // point 0: a 1, b 4 → 0.75; point 1: a 1, b 3 → 2/3; point 4: alone → 0
        assert!((s - (0.75 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn finds_three_blobs() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut x = Vec::new();
        let centres = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)];
        for (i, c) in centres.iter().enumerate() {
            for _ in 0..(10 + 5 * i) {
                x.push(c.0 + rng.gen::<f64>());
                x.push(c.1 + rng.gen::<f64>());
            }
        }
        let (labels, k, s) = groups(&x, 2, 6, 1);
        assert_eq!(k, 3);
        assert!(s > 0.8);
        // numbered by size: the 20-point blob (the last) is group 0
        assert!(labels[25..].iter().all(|&l| l == 0));
        assert!(labels[..10].iter().all(|&l| l == 2));
        assert_eq!(groups(&x, 2, 6, 1), (labels, k, s), "deterministic");
        // too few rows to split
        assert_eq!(groups(&x[..10], 2, 6, 1).1, 1);
    }
}
