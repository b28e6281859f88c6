//! Statistics of paired comparisons over repetitions (the report's verdicts): the paired t test
//! and its interval, the Wilcoxon signed-rank test (exact for small samples without ties, as
//! scipy does it), a bootstrap interval of the mean difference, and Holm's correction across a
//! family of tests. Distributions come from `statrs`; every function is checked against scipy
//! (tests/fixtures/stats.json, made by tests/fixtures/make_stats_fixtures.py).

use rand::Rng;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Mean of the values (NaN when empty).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n − 1 in the denominator; 0 for fewer than 2 values).
pub fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// A paired t test of differences `d` against 0: (t, two-sided p), as
/// `scipy.stats.ttest_1samp(d, 0)`. With every difference equal (sd 0) the test is undefined:
/// p = 1 when they are all 0, else 0 (a constant nonzero difference).
pub fn paired_t(d: &[f64]) -> (f64, f64) {
    let n = d.len();
    if n < 2 {
        return (f64::NAN, 1.0);
    }
    let (m, s) = (mean(d), sd(d));
    if s == 0.0 {
        return if m == 0.0 {
            (0.0, 1.0)
        } else {
            (m.signum() * f64::INFINITY, 0.0)
        };
    }
    let t = m / (s / (n as f64).sqrt());
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("df ≥ 1");
    (t, (2.0 * dist.sf(t.abs())).min(1.0))
}

/// One-sided one-sample t test of the mean of `d` against `mu0`: P(T ≥ t) for `greater`
/// (H0: mean ≤ mu0), P(T ≤ t) otherwise (H0: mean ≥ mu0), t = (mean − mu0)/(sd/√n), n − 1
/// degrees of freedom; as scipy's `ttest_1samp(d, mu0, alternative=...)`. With zero spread the
/// p-value is 0 or 1 by the side the mean is on.
pub fn t_one_sided(d: &[f64], mu0: f64, greater: bool) -> f64 {
    let n = d.len();
    if n < 2 {
        return 1.0;
    }
    let (m, s) = (mean(d), sd(d));
    let diff = m - mu0;
    if s == 0.0 {
        return if (diff > 0.0) == greater && diff != 0.0 {
            0.0
        } else {
            1.0
        };
    }
    let t = diff / (s / (n as f64).sqrt());
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("df ≥ 1");
    if greater {
        dist.sf(t)
    } else {
        dist.cdf(t)
    }
}

/// Two one-sided tests (TOST) of equivalence within ±`margin`: the larger of the p-values of
/// H0: mean ≤ −margin and H0: mean ≥ +margin. Equivalent at level α when it is < α (the same
/// as the 1 − 2α t interval lying inside (−margin, margin)).
pub fn tost(d: &[f64], margin: f64) -> f64 {
    t_one_sided(d, -margin, true).max(t_one_sided(d, margin, false))
}

/// The `level` (e.g. 0.95) t interval of the mean of `d`: mean ± t_{(1+level)/2, n−1}·sd/√n.
pub fn t_interval(d: &[f64], level: f64) -> (f64, f64) {
    let n = d.len();
    let m = mean(d);
    if n < 2 {
        return (m, m);
    }
    let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("df ≥ 1");
    let q = dist.inverse_cdf(0.5 + level / 2.0);
    let h = q * sd(d) / (n as f64).sqrt();
    (m - h, m + h)
}

/// Percentile bootstrap interval of the mean of `d` (`b` resamples with replacement, drawn from
/// `rng`).
pub fn bootstrap_interval(d: &[f64], level: f64, b: usize, rng: &mut impl Rng) -> (f64, f64) {
    let n = d.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut means: Vec<f64> = (0..b.max(1))
        .map(|_| (0..n).map(|_| d[rng.gen_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let x = p * (means.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        means[lo] + (means[hi] - means[lo]) * (x - lo as f64)
    };
    let a = (1.0 - level) / 2.0;
    (q(a), q(1.0 - a))
}

/// Average ranks (1-based) of `v`, ties sharing the mean of their ranks; also Σ(t³ − t) over
/// the tie groups.
fn ranks(v: &[f64]) -> (Vec<f64>, f64) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut ties = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    (r, ties)
}

/// The Wilcoxon signed-rank test of paired differences `d` against 0, two-sided, as scipy
/// 1.17's `scipy.stats.wilcoxon(d)` with its defaults (zero differences dropped from the ranks,
/// no continuity correction): with more than 50 differences, the normal approximation with the
/// tie correction; without ties or zeros, the exact null distribution of W+; with ties or zeros
/// and at most 13 differences, the exact permutation distribution over every sign flip; else
/// the normal approximation. Returns (statistic = min(W+, W−), p). No nonzero difference: p = 1.
pub fn wilcoxon(d: &[f64]) -> (f64, f64) {
    let nz: Vec<f64> = d.iter().copied().filter(|&x| x != 0.0).collect();
    let n = nz.len();
    if n == 0 {
        return (0.0, 1.0);
    }
    let abs: Vec<f64> = nz.iter().map(|x| x.abs()).collect();
    let (r, ties) = ranks(&abs);
    let w_plus: f64 = nz
        .iter()
        .zip(&r)
        .filter(|(x, _)| **x > 0.0)
        .map(|(_, r)| r)
        .sum();
    let total = (n * (n + 1)) as f64 / 2.0;
    let stat = w_plus.min(total - w_plus);
    let zeros = d.len() - n;
    if d.len() <= 50 && ties == 0.0 && zeros == 0 {
        // exact: the number of sign assignments giving each rank sum 0..=total
        let tot = n * (n + 1) / 2;
        let mut count = vec![0f64; tot + 1];
        count[0] = 1.0;
        for k in 1..=n {
            for s in (k..=tot).rev() {
                count[s] += count[s - k];
            }
        }
        let all = 2f64.powi(n as i32);
        let s = stat.round() as usize;
        let cdf: f64 = count[..=s].iter().sum::<f64>() / all;
        return (stat, (2.0 * cdf).min(1.0));
    }
    if d.len() <= 13 {
        // every sign flip of the nonzero differences (flipping a zero changes nothing)
        let tol = 1e-12 * total.max(1.0);
        let (mut ge, mut le) = (0u64, 0u64);
        for mask in 0u32..(1 << n) {
            let t: f64 = (0..n).filter(|&i| mask >> i & 1 == 1).map(|i| r[i]).sum();
            ge += (t >= w_plus - tol) as u64;
            le += (t <= w_plus + tol) as u64;
        }
        let all = (1u64 << n) as f64;
        return (stat, (2.0 * ge.min(le) as f64 / all).min(1.0));
    }
    let nf = n as f64;
    let mu = nf * (nf + 1.0) / 4.0;
    let var = nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - ties / 48.0;
    if var <= 0.0 {
        return (stat, 1.0);
    }
    let z = (stat - mu) / var.sqrt();
    let norm = Normal::new(0.0, 1.0).expect("standard normal");
    (stat, (2.0 * norm.cdf(-z.abs())).min(1.0))
}

/// Wilson score interval of a proportion `k / n` at 95% (as labs report accuracy:
/// "96.3% [95.7%, 96.8%]"); (0, 0) when n = 0.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let (nf, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
    let half = z / (1.0 + z2 / nf) * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Holm's step-down adjustment of a family of p-values (same order as given), as
/// `statsmodels.stats.multitest.multipletests(p, method="holm")`.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut idx: Vec<usize> = (0..m).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut run = 0f64;
    for (i, &k) in idx.iter().enumerate() {
        let adj = ((m - i) as f64 * p[k]).min(1.0);
        run = run.max(adj);
        out[k] = run;
    }
    out
}

/// Linear-interpolated quantile of sorted data (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {

    /// scipy's `ttest_1samp` (tests/fixtures/make_wilson_values.py prints these too).
    #[test]
    fn one_sided_tests_equal_scipy() {
        // scipy.stats.ttest_1samp(d, mu0, alternative=...).pvalue
        let d = [0.001, -0.002, 0.0015, 0.0005, -0.001, 0.002, 0.0, 0.001];
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.max(1e-300) + 1e-15;
        assert!(close(t_one_sided(&d, -0.005, true), 4.393753813030549e-06));
        assert!(close(t_one_sided(&d, 0.005, false), 1.1907187323293305e-05));
        assert!(close(t_one_sided(&d, 0.0, true), 0.225619436000839));
        assert!(close(tost(&d, 0.005), 1.1907187323293305e-05));
        let d2 = [0.01, 0.012, 0.008, 0.011, 0.009];
        assert!(close(t_one_sided(&d2, 0.0, true), 7.256408530659893e-05));
        // a clear gain is not equivalent within 0.005
        assert!(close(tost(&d2, 0.005), 0.9989446770774544));
        assert_eq!(t_one_sided(&[0.1, 0.1], 0.0, true), 0.0);
        assert_eq!(t_one_sided(&[0.1, 0.1], 0.0, false), 1.0);
    }

    /// scipy's `binomtest(k, n).proportion_ci(method="wilson")`
    /// (tests/fixtures/make_wilson_values.py).
    #[test]
    fn wilson_equals_scipy() {
        for (k, n, lo, hi) in [
            (963, 1000, 0.9494176025179306, 0.9730388191244452),
            (0, 10, 0.0, 0.27753279986288926),
            (10, 10, 0.7224672001371109, 1.0),
            (1, 3, 0.06149194472039626, 0.7923403991979523),
            (9926, 10000, 0.9907207711647923, 0.9941009136404171),
        ] {
            let (a, b) = wilson(k, n);
            assert!(
                (a - lo).abs() < 1e-12 && (b - hi).abs() < 1e-12,
                "{k}/{n}: {a} {b}"
            );
        }
    }
    use super::*;

    #[test]
    fn by_hand() {
        // d = 1, 2, 3: mean 2, sd 1, t = 2·√3
        let (t, _) = paired_t(&[1.0, 2.0, 3.0]);
        assert!((t - 2.0 * 3f64.sqrt()).abs() < 1e-12);
        // four positive differences without ties: W− = 0, exact p = 2/16
        let (w, p) = wilcoxon(&[0.1, 0.2, 0.3, 0.4]);
        assert_eq!(w, 0.0);
        assert!((p - 0.125).abs() < 1e-12);
        // a zero is dropped from the ranks; the permutation over the 4 others gives 2/16 too
        assert_eq!(wilcoxon(&[0.0, 0.1, 0.2, 0.3, 0.4]), (0.0, 0.125));
        assert_eq!(wilcoxon(&[0.0, 0.0]), (0.0, 1.0));
        // Holm: sorted 0.01·3, 0.02·2, 0.04·1 → 0.03, 0.04, 0.04 (monotone)
        let h = holm(&[0.04, 0.01, 0.02]);
        assert_eq!(h, vec![0.04, 0.03, 0.04]);
        let (r, ties) = ranks(&[3.0, 1.0, 3.0, 2.0]);
        assert_eq!(r, vec![3.5, 1.0, 3.5, 2.0]);
        assert_eq!(ties, 6.0);
    }

    #[test]
    fn bootstrap_interval_covers_the_mean_and_is_seeded() {
        use rand::SeedableRng;
        let d = [0.01, 0.02, -0.005, 0.015, 0.03, 0.0, 0.012, 0.018];
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (lo, hi) = bootstrap_interval(&d, 0.95, 4000, &mut a);
        assert_eq!((lo, hi), bootstrap_interval(&d, 0.95, 4000, &mut b));
        let m = mean(&d);
        assert!(lo < m && m < hi && lo > -0.01 && hi < 0.03, "{lo} {hi}");
    }

    #[test]
    fn equal_scipy() {
        let f: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/stats.json"
        )))
        .unwrap();
        let close = |a: f64, b: f64, what: &str| {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1e-3),
                "{what}: {a} vs scipy {b}"
            );
        };
        for c in f["cases"].as_array().unwrap() {
            let d: Vec<f64> = serde_json::from_value(c["d"].clone()).unwrap();
            let what = format!("{} n={}", c["kind"], d.len());
            let (t, pt) = paired_t(&d);
            close(t, c["t"].as_f64().unwrap(), &format!("{what} t"));
            close(pt, c["p_t"].as_f64().unwrap(), &format!("{what} p_t"));
            let (lo, hi) = t_interval(&d, 0.95);
            close(
                lo,
                c["ci95"][0].as_f64().unwrap(),
                &format!("{what} ci low"),
            );
            close(
                hi,
                c["ci95"][1].as_f64().unwrap(),
                &format!("{what} ci high"),
            );
            let (w, pw) = wilcoxon(&d);
            close(w, c["w"].as_f64().unwrap(), &format!("{what} W"));
            close(pw, c["p_w"].as_f64().unwrap(), &format!("{what} p_w"));
        }
        let p: Vec<f64> = serde_json::from_value(f["holm_in"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(f["holm_out"].clone()).unwrap();
        for (a, b) in holm(&p).iter().zip(&want) {
            close(*a, *b, "holm");
        }
    }

    #[test]
    fn constant_differences() {
        assert_eq!(paired_t(&[0.0, 0.0, 0.0]).1, 1.0);
        assert_eq!(paired_t(&[0.25, 0.25, 0.25]).1, 0.0);
        assert_eq!(t_interval(&[0.25, 0.25, 0.25], 0.95), (0.25, 0.25));
    }
}
