//! Logistic regression with the elastic-net penalty, glmnet style: minimise
//! (1/N) Σ logloss + λ·(α‖w‖₁ + (1−α)/2‖w‖²) with the intercept unpenalised, on standardised
//! features; IRLS outer loop with a backtracking line search on the objective, each weighted
//! least-squares step solved exactly on the weighted Gram matrix (Cholesky without an L1 part,
//! feature-sign search with one, coordinate descent as its fallback), warm starts along a λ
//! path, λ by k-fold CV.
//! `glm` = λ 0, `lasso` = α 1, `ridge` = α 0.
//!
//! Why not linfa: linfa-logistic fits only the L2 penalty and linfa-elasticnet only least
//! squares, so one solver serves the whole family here; linfa-logistic checks it in the tests.

use rand::seq::SliceRandom;

/// Settings of one logistic fit.
#[derive(Debug, Clone)]
pub struct LogisticParams {
    pub alpha: f64,
    /// Fixed λ, or `None` to choose it by cross-validation along the path.
    pub lambda: Option<f64>,
    pub n_lambda: usize,
    pub cv_folds: usize,
    pub seed: u64,
    pub max_iter: usize,
    pub tol: f64,
}

impl LogisticParams {
    pub fn new(alpha: f64, lambda: Option<f64>) -> LogisticParams {
        LogisticParams {
            alpha,
            lambda,
            n_lambda: 10,
            cv_folds: 3,
            seed: 0,
            max_iter: 100,
            tol: 1e-8,
        }
    }
}

/// A fitted model: coefficients on the standardised scale and the scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    pub intercept: f64,
    /// Coefficients of the standardised features.
    pub coef: Vec<f64>,
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    pub lambda: f64,
    /// Messages worth a warning (separable data, constant features, no convergence).
    pub warnings: Vec<String>,
}

impl Logistic {
    /// Coefficients and intercept on the original feature scale.
    pub fn original(&self) -> (f64, Vec<f64>) {
        let coef: Vec<f64> = self
            .coef
            .iter()
            .zip(&self.scale)
            .map(|(c, s)| if *s > 0.0 { c / s } else { 0.0 })
            .collect();
        let b0 = self.intercept - coef.iter().zip(&self.mean).map(|(c, m)| c * m).sum::<f64>();
        (b0, coef)
    }

    /// P(target = 1) of each row (row-major, p columns).
    pub fn predict(&self, x: &[f64]) -> Vec<f64> {
        let p = self.coef.len();
        x.chunks(p.max(1))
            .map(|row| {
                let mut eta = self.intercept;
                for j in 0..p {
                    if self.scale[j] > 0.0 {
                        eta += self.coef[j] * (row[j] - self.mean[j]) / self.scale[j];
                    }
                }
                sigmoid(eta)
            })
            .collect()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// log(1 + e^x), stable.
fn log1pexp(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// Standardised design (row-major), with column means and scales (population sd; 0 = constant).
pub fn standardise(x: &[f64], n: usize, p: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut mean = vec![0f64; p];
    for row in x.chunks(p) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut sd = vec![0f64; p];
    for row in x.chunks(p) {
        for j in 0..p {
            sd[j] += (row[j] - mean[j]).powi(2);
        }
    }
    for (j, s) in sd.iter_mut().enumerate() {
        *s = (*s / n as f64).sqrt();
        // a column whose spread is rounding noise counts as constant
        if s.is_nan() || *s <= 1e-12 * (1.0 + mean[j].abs()) {
            *s = 0.0;
        }
    }
    let z = x
        .chunks(p)
        .flat_map(|row| {
            (0..p)
                .map(|j| {
                    if sd[j] > 0.0 {
                        (row[j] - mean[j]) / sd[j]
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    (z, mean, sd)
}

/// Penalised objective of (b0, β) on standardised data.
fn objective(z: &[f64], y: &[f64], b0: f64, beta: &[f64], lambda: f64, alpha: f64) -> f64 {
    let p = beta.len();
    let n = y.len();
    let mut loss = 0.0;
    for i in 0..n {
        let eta = b0 + (0..p).map(|j| z[i * p + j] * beta[j]).sum::<f64>();
        loss += log1pexp(eta) - y[i] * eta;
    }
    let l1: f64 = beta.iter().map(|b| b.abs()).sum();
    let l2: f64 = beta.iter().map(|b| b * b).sum();
    loss / n as f64 + lambda * (alpha * l1 + (1.0 - alpha) / 2.0 * l2)
}

fn soft(x: f64, t: f64) -> f64 {
    if x > t {
        x - t
    } else if x < -t {
        x + t
    } else {
        0.0
    }
}

/// Fits (b0, β) at one λ on standardised data, starting from (b0, β).
#[allow(clippy::too_many_arguments)]
fn fit_one(
    z: &[f64],
    y: &[f64],
    p: usize,
    lambda: f64,
    alpha: f64,
    b0: &mut f64,
    beta: &mut [f64],
    max_iter: usize,
    tol: f64,
) -> bool {
    let n = y.len();
    let nf = n as f64;
    let mut obj = objective(z, y, *b0, beta, lambda, alpha);
    for _ in 0..max_iter {
        // weighted least-squares approximation at the current point
        let mut w = vec![0f64; n];
        let mut r = vec![0f64; n]; // working response z_i = eta + (y - mu)/w
        for i in 0..n {
            let eta = *b0 + (0..p).map(|j| z[i * p + j] * beta[j]).sum::<f64>();
            let mu = sigmoid(eta);
            w[i] = (mu * (1.0 - mu)).max(1e-5);
            r[i] = eta + (y[i] - mu) / w[i];
        }
        // Gram quantities: sw, Σ w x_j, Σ w x_j x_k (one GEMM on √w-scaled rows), Σ w x_j r, Σ w r
        let sw: f64 = w.iter().sum();
        let mut wx = vec![0f64; p];
        let mut wxr = vec![0f64; p];
        let mut wr = 0f64;
        let mut zs = vec![0f64; n * p];
        for i in 0..n {
            let row = &z[i * p..(i + 1) * p];
            let sq = w[i].sqrt();
            wr += w[i] * r[i];
            for j in 0..p {
                let a = w[i] * row[j];
                wx[j] += a;
                wxr[j] += a * r[i];
                zs[i * p + j] = sq * row[j];
            }
        }
        let mut g = vec![0f64; p * p];
        if p > 0 {
            // SAFETY: zs is n×p row-major, g is p×p; the strides stay inside both.
            unsafe {
                matrixmultiply::dgemm(
                    p,
                    n,
                    p,
                    1.0,
                    zs.as_ptr(),
                    1,
                    p as isize,
                    zs.as_ptr(),
                    p as isize,
                    1,
                    0.0,
                    g.as_mut_ptr(),
                    p as isize,
                    1,
                );
            }
        }
        // the weighted least-squares step: solved directly (Cholesky) when there is no L1 part,
        // by feature-sign search otherwise (coordinate descent where that fails)
        let wls = Wls {
            g: &g,
            wx: &wx,
            wxr: &wxr,
            sw,
            wr,
            nf,
        };
        let direct = if lambda * alpha == 0.0 {
            solve_wls(&wls, p, lambda * (1.0 - alpha))
        } else {
            None
        };
        let (c0, nb) = match direct {
            Some(sol) => sol,
            None => {
                let pen = Penalty {
                    l1: lambda * alpha,
                    l2: lambda * (1.0 - alpha),
                };
                feature_sign(&wls, pen, beta)
                    .unwrap_or_else(|| coordinate_descent(&wls, pen, *b0, beta, tol))
            }
        };
        // backtracking on the true objective
        let mut step = 1.0;
        let (old0, oldb) = (*b0, beta.to_vec());
        let mut accepted = false;
        for _ in 0..30 {
            let t0 = old0 + step * (c0 - old0);
            let tb: Vec<f64> = oldb
                .iter()
                .zip(&nb)
                .map(|(o, n)| o + step * (n - o))
                .collect();
            let o = objective(z, y, t0, &tb, lambda, alpha);
            if o <= obj + 1e-12 * obj.abs().max(1.0) {
                *b0 = t0;
                beta.copy_from_slice(&tb);
                accepted = true;
                let change = (obj - o).abs();
                obj = o;
                if change < tol * obj.abs().max(1e-3) {
                    return true;
                }
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            return true; // no descent direction left: converged to rounding
        }
    }
    false
}

/// The weighted least-squares problem of one IRLS step on the standardised design Z with
/// weights w and working response r: G = ZᵀWZ (p×p, row-major), Σw·z, Σw·z·r, Σw, Σw·r and N.
struct Wls<'a> {
    g: &'a [f64],
    wx: &'a [f64],
    wxr: &'a [f64],
    sw: f64,
    wr: f64,
    nf: f64,
}

impl Wls<'_> {
    /// The columns with a positive diagonal of G; the others (constant columns) keep β = 0.
    fn live(&self, p: usize) -> Vec<usize> {
        (0..p).filter(|&j| self.g[j * p + j] > 0.0).collect()
    }
}

/// The penalty's two parts at one λ: λα (L1) and λ(1−α) (L2).
#[derive(Clone, Copy)]
struct Penalty {
    l1: f64,
    l2: f64,
}

/// The penalised weighted least-squares step by cyclic coordinate descent (covariance
/// updates: gb = G·β is kept current, so a coordinate costs O(1) unless it moves, then O(p)),
/// from (b0, β), at most 1,000 sweeps or until no coordinate moves by `tol`.
///
/// Written for the latency of its serial chain (each coordinate reads gb as the previous one
/// left it), with every floating-point operation of the plain loop kept in its order, so the
/// result is the same bit for bit: the denominators gⱼⱼ/N + λ(1−α) are computed once, the
/// numerators' wxrⱼ − c₀·wxⱼ once per sweep (c₀ only changes between sweeps), a coordinate
/// whose soft threshold is 0 takes 0 without the division (0/d is +0 for d > 0), and G's
/// columns are read as contiguous rows (G is copied transposed once), one vectorised pass
/// per move.
fn coordinate_descent(q: &Wls, pen: Penalty, b0: f64, beta: &[f64], tol: f64) -> (f64, Vec<f64>) {
    let Wls {
        g,
        wx,
        wxr,
        sw,
        wr,
        nf,
    } = *q;
    let p = beta.len();
    let (mut c0, mut nb) = (b0, beta.to_vec());
    let mut gb: Vec<f64> = (0..p)
        .map(|j| (0..p).map(|k| g[j * p + k] * nb[k]).sum())
        .collect();
    let mut wxb: f64 = (0..p).map(|j| wx[j] * nb[j]).sum();
    let mut gt = vec![0f64; p * p];
    for j in 0..p {
        for k in 0..p {
            gt[j * p + k] = g[k * p + j];
        }
    }
    // the coordinates with a positive diagonal (the others never move), their diagonals and
    // denominators
    let live = q.live(p);
    let diag: Vec<f64> = live.iter().map(|&j| g[j * p + j]).collect();
    let denom: Vec<f64> = diag.iter().map(|&d| d / nf + pen.l2).collect();
    let mut num = vec![0f64; p];
    for _ in 0..1000 {
        let mut delta = 0f64;
        // intercept: exact minimiser given β
        let new0 = (wr - wxb) / sw;
        delta = delta.max((new0 - c0).abs());
        c0 = new0;
        for (n, (&r, &x)) in num.iter_mut().zip(wxr.iter().zip(wx)) {
            *n = r - c0 * x;
        }
        for (i, &j) in live.iter().enumerate() {
            let dot = gb[j] - diag[i] * nb[j];
            let u = (num[j] - dot) / nf;
            let s = soft(u, pen.l1);
            let new = if s == 0.0 { 0.0 } else { s / denom[i] };
            let d = new - nb[j];
            if d != 0.0 {
                for (a, &c) in gb.iter_mut().zip(&gt[j * p..(j + 1) * p]) {
                    *a += d * c;
                }
                wxb += d * wx[j];
                nb[j] = new;
                delta = delta.max(d.abs());
            }
        }
        if delta < tol {
            break;
        }
    }
    (c0, nb)
}

/// Solves A x = b for a symmetric positive definite m×m A (row-major; Cholesky A = L Lᵀ). A
/// tiny jitter on the diagonal (1e-12 of its mean, added to `a` in place) keeps nearly
/// collinear features solvable; `None` when A is not positive definite.
fn cholesky_solve(a: &mut [f64], b: &[f64], m: usize) -> Option<Vec<f64>> {
    let jitter = 1e-12 * (0..m).map(|i| a[i * m + i]).sum::<f64>() / m as f64;
    for i in 0..m {
        a[i * m + i] += jitter;
    }
    let mut l = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..=i {
            let mut s = a[i * m + j];
            for k in 0..j {
                s -= l[i * m + k] * l[j * m + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * m + i] = s.sqrt();
            } else {
                l[i * m + j] = s / l[j * m + j];
            }
        }
    }
    let mut y = vec![0f64; m];
    for i in 0..m {
        let s: f64 = (0..i).map(|k| l[i * m + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * m + i];
    }
    let mut x = vec![0f64; m];
    for i in (0..m).rev() {
        let s: f64 = (i + 1..m).map(|k| l[k * m + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * m + i];
    }
    Some(x)
}

/// The penalised weighted least-squares step with an L1 part, solved exactly by feature-sign
/// search (Lee, Battle, Raina & Ng 2007), an active-set method: the intercept is eliminated
/// (c₀ = (Σwr − wxᵀβ)/Σw), leaving min ½βᵀQβ − qᵀβ + λα‖β‖₁ with Q the weighted covariance
/// of the features / N + λ(1−α)I. Each step solves the quadratic on the active set with its
/// signs fixed (Cholesky) and moves to the best of that solution and the points on the way
/// where a coefficient crosses 0 (which leaves the set); when the active coefficients are
/// optimal, the zero coefficient that most violates |∂ⱼ| ≤ λα joins with the sign that lowers
/// the objective. The objective falls at every step, so it ends, at the exact minimiser,
/// after a few steps where coordinate descent on correlated features (the gradient
/// statistics are) takes thousands of sweeps. `None` (the caller falls back to coordinate
/// descent) when a system is not positive definite or the steps run out to rounding.
fn feature_sign(w: &Wls, pen: Penalty, beta: &[f64]) -> Option<(f64, Vec<f64>)> {
    let Wls {
        g,
        wx,
        wxr,
        sw,
        wr,
        nf,
    } = *w;
    let p = beta.len();
    let live = w.live(p);
    let m = live.len();
    let mut q_mat = vec![0f64; m * m];
    let mut q = vec![0f64; m];
    for (a, &j) in live.iter().enumerate() {
        q[a] = (wxr[j] - wx[j] * wr / sw) / nf;
        for (b, &k) in live.iter().enumerate() {
            q_mat[a * m + b] =
                (g[j * p + k] - wx[j] * wx[k] / sw) / nf + if a == b { pen.l2 } else { 0.0 };
        }
    }
    let l1 = pen.l1;
    let objective = |x: &[f64]| -> f64 {
        let mut f = 0.0;
        for a in 0..m {
            if x[a] == 0.0 {
                continue;
            }
            let qx: f64 = (0..m).map(|b| q_mat[a * m + b] * x[b]).sum();
            f += x[a] * (0.5 * qx - q[a]) + l1 * x[a].abs();
        }
        f
    };
    let gradient = |x: &[f64]| -> Vec<f64> {
        (0..m)
            .map(|a| (0..m).map(|b| q_mat[a * m + b] * x[b]).sum::<f64>() - q[a])
            .collect()
    };
    // the scale of the optimality conditions, for their rounding tolerance
    let scale = q
        .iter()
        .map(|v| v.abs())
        .fold(l1, f64::max)
        .max(f64::MIN_POSITIVE);
    let eps = 1e-9 * scale;
    let mut x: Vec<f64> = live.iter().map(|&j| beta[j]).collect();
    // θ: the signs of the active set (0 = not active)
    let signs = |x: &[f64]| -> Vec<f64> {
        x.iter()
            .map(|&v| if v == 0.0 { 0.0 } else { v.signum() })
            .collect()
    };
    // the nonzero coefficients satisfy ∂ⱼ + λα·sign(βⱼ) = 0 (to rounding)
    let nonzeros_optimal = |x: &[f64], theta: &[f64], gr: &[f64]| {
        (0..m).all(|a| x[a] == 0.0 || (gr[a] + l1 * theta[a]).abs() <= eps)
    };
    // the coefficients of the live columns back in place, and the intercept that goes with them
    let finish = |x: &[f64]| -> Option<(f64, Vec<f64>)> {
        let mut out = vec![0f64; p];
        for (a, &j) in live.iter().enumerate() {
            out[j] = x[a];
        }
        let wxb: f64 = (0..p).map(|j| wx[j] * out[j]).sum();
        let c0 = (wr - wxb) / sw;
        (c0.is_finite() && out.iter().all(|v| v.is_finite())).then_some((c0, out))
    };
    let mut theta = signs(&x);
    let mut f_x = objective(&x);
    for _ in 0..(20 * m + 50) {
        let gr = gradient(&x);
        if nonzeros_optimal(&x, &theta, &gr) {
            // the zero coefficient whose gradient most exceeds λα joins, else x is optimal
            let pick = (0..m)
                .filter(|&a| x[a] == 0.0)
                .max_by(|&a, &b| gr[a].abs().total_cmp(&gr[b].abs()));
            match pick {
                Some(a) if gr[a].abs() > l1 + eps => theta[a] = -gr[a].signum(),
                _ => return finish(&x),
            }
        }
        let act: Vec<usize> = (0..m).filter(|&a| theta[a] != 0.0).collect();
        let k = act.len();
        let mut a_mat = vec![0f64; k * k];
        let mut rhs = vec![0f64; k];
        for (i, &a) in act.iter().enumerate() {
            rhs[i] = q[a] - l1 * theta[a];
            for (j, &b) in act.iter().enumerate() {
                a_mat[i * k + j] = q_mat[a * m + b];
            }
        }
        let sol = cholesky_solve(&mut a_mat, &rhs, k)?;
        if sol.iter().any(|v| !v.is_finite()) {
            return None;
        }
        // where along x → x̂ each active coefficient crosses 0 (if it does)
        let cross: Vec<Option<f64>> = act
            .iter()
            .zip(&sol)
            .map(|(&a, &s)| (x[a] != 0.0 && s.signum() != x[a].signum()).then(|| x[a] / (x[a] - s)))
            .collect();
        // those points, then x̂ itself
        let mut ts: Vec<f64> = cross
            .iter()
            .flatten()
            .copied()
            .filter(|t| *t > 0.0 && *t < 1.0)
            .collect();
        ts.push(1.0);
        let mut best: Option<(f64, Vec<f64>)> = None;
        for &t in &ts {
            let mut y = x.clone();
            for ((&a, &s), c) in act.iter().zip(&sol).zip(&cross) {
                y[a] = x[a] + t * (s - x[a]);
                // the crossing coefficient lands on 0 exactly
                if t < 1.0 && *c == Some(t) {
                    y[a] = 0.0;
                }
            }
            let f = objective(&y);
            if best.as_ref().is_none_or(|b| f < b.0) {
                best = Some((f, y));
            }
        }
        let (f_new, y) = best?;
        if f_new > f_x {
            // no descent: rounding has the last word
            return None;
        }
        let moved = f_new < f_x || y != x;
        x = y;
        f_x = f_new;
        theta = signs(&x);
        // the same point again and not optimal: stuck (the next step would repeat this one)
        if !moved && !nonzeros_optimal(&x, &theta, &gradient(&x)) {
            return None;
        }
    }
    None
}

/// Solves the penalised weighted least-squares step without an L1 part:
/// (1/N)[Σw, Σwx; Σwx, XᵀWX] [c0; β] + [0; ridge·β] = (1/N)[Σwr; Σwxr]. Constant columns
/// (zero diagonal) keep β = 0. `None` when the system is not positive definite.
fn solve_wls(w: &Wls, p: usize, ridge: f64) -> Option<(f64, Vec<f64>)> {
    let Wls {
        g,
        wx,
        wxr,
        sw,
        wr,
        nf,
    } = *w;
    let live = w.live(p);
    let m = live.len() + 1;
    let mut a = vec![0f64; m * m];
    let mut b = vec![0f64; m];
    a[0] = sw / nf;
    b[0] = wr / nf;
    for (ii, &j) in live.iter().enumerate() {
        a[ii + 1] = wx[j] / nf;
        a[(ii + 1) * m] = wx[j] / nf;
        b[ii + 1] = wxr[j] / nf;
        for (kk, &k) in live.iter().enumerate() {
            a[(ii + 1) * m + kk + 1] = g[j * p + k] / nf + if j == k { ridge } else { 0.0 };
        }
    }
    let x = cholesky_solve(&mut a, &b, m)?;
    let mut beta = vec![0f64; p];
    for (ii, &j) in live.iter().enumerate() {
        beta[j] = x[ii + 1];
    }
    x[0].is_finite().then_some((x[0], beta))
}

/// λ path from the smallest λ that zeroes every coefficient, log-spaced down by 1e-4.
fn lambda_path(z: &[f64], y: &[f64], p: usize, alpha: f64, k: usize) -> Vec<f64> {
    let n = y.len() as f64;
    let ybar = y.iter().sum::<f64>() / n;
    let mut lmax = 0f64;
    for j in 0..p {
        let s: f64 = y
            .iter()
            .enumerate()
            .map(|(i, yi)| z[i * p + j] * (yi - ybar))
            .sum();
        lmax = lmax.max((s / n).abs());
    }
    let lmax = (lmax / alpha.max(1e-2)).max(1e-6);
    (0..k)
        .map(|i| lmax * (1e-4f64).powf(i as f64 / (k - 1) as f64))
        .collect()
}

fn mean_deviance(z: &[f64], y: &[f64], p: usize, b0: f64, beta: &[f64]) -> f64 {
    let n = y.len();
    let mut d = 0.0;
    for i in 0..n {
        let eta = b0 + (0..p).map(|j| z[i * p + j] * beta[j]).sum::<f64>();
        d += log1pexp(eta) - y[i] * eta;
    }
    d / n.max(1) as f64
}

fn start_intercept(y: &[f64]) -> f64 {
    let m = (y.iter().sum::<f64>() / y.len() as f64).clamp(1e-6, 1.0 - 1e-6);
    (m / (1.0 - m)).ln()
}

impl LogisticParams {
    /// Fits on `x` (row-major n × p) with binary targets `y` (0/1).
    pub fn fit(&self, x: &[f64], y: &[f64]) -> Result<Logistic, String> {
        let n = y.len();
        if n == 0 {
            return Err("no rows to fit".into());
        }
        let p = x.len() / n;
        if p * n != x.len() {
            return Err(format!("{} values for {n} rows", x.len()));
        }
        let pos = y.iter().filter(|&&v| v > 0.5).count();
        let mut warnings = Vec::new();
        let (z, mean, scale) = standardise(x, n, p);
        let constant = scale.iter().filter(|s| **s == 0.0).count();
        if constant > 0 {
            warnings.push(format!("{constant} constant feature(s) get coefficient 0"));
        }
        if pos == 0 || pos == n {
            warnings.push("only one class in the targets; the model predicts it everywhere".into());
            return Ok(Logistic {
                intercept: start_intercept(y),
                coef: vec![0.0; p],
                mean,
                scale,
                lambda: 0.0,
                warnings,
            });
        }
        let lambda = match self.lambda {
            Some(l) => l,
            None => self.cross_validate(&z, y, p),
        };
        let mut b0 = start_intercept(y);
        let mut beta = vec![0f64; p];
        // warm start down the path to the chosen λ
        if lambda > 0.0 {
            for l in lambda_path(&z, y, p, self.alpha, self.n_lambda)
                .into_iter()
                .filter(|&l| l > lambda)
            {
                fit_one(
                    &z,
                    y,
                    p,
                    l,
                    self.alpha,
                    &mut b0,
                    &mut beta,
                    self.max_iter,
                    self.tol,
                );
            }
        }
        let converged = fit_one(
            &z,
            y,
            p,
            lambda,
            self.alpha,
            &mut b0,
            &mut beta,
            self.max_iter,
            self.tol,
        );
        if !converged {
            warnings.push(format!(
                "IRLS did not converge in {} iterations",
                self.max_iter
            ));
        }
        if beta.iter().any(|b| b.abs() > 30.0) {
            warnings.push("coefficients are very large: the classes look (nearly) separable; consider a penalty".into());
        }
        if !b0.is_finite() || beta.iter().any(|b| !b.is_finite()) {
            return Err("fit produced non-finite coefficients".into());
        }
        Ok(Logistic {
            intercept: b0,
            coef: beta,
            mean,
            scale,
            lambda,
            warnings,
        })
    }

    /// λ minimising the mean held-out deviance over stratified folds.
    fn cross_validate(&self, z: &[f64], y: &[f64], p: usize) -> f64 {
        let path = lambda_path(z, y, p, self.alpha, self.n_lambda);
        let n = y.len();
        let mut rng = crate::data::stage_rng(self.seed, "meta/cv");
        let mut fold = vec![0usize; n];
        for class in [0.0, 1.0] {
            let mut idx: Vec<usize> = (0..n).filter(|&i| y[i] == class).collect();
            idx.shuffle(&mut rng);
            for (r, i) in idx.into_iter().enumerate() {
                fold[i] = r % self.cv_folds;
            }
        }
        let mut dev = vec![0f64; path.len()];
        for f in 0..self.cv_folds {
            let (mut zt, mut yt, mut zv, mut yv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..n {
                let (zz, yy) = if fold[i] == f {
                    (&mut zv, &mut yv)
                } else {
                    (&mut zt, &mut yt)
                };
                zz.extend_from_slice(&z[i * p..(i + 1) * p]);
                yy.push(y[i]);
            }
            if yt.iter().all(|&v| v == yt[0]) || yv.is_empty() {
                continue;
            }
            let mut b0 = start_intercept(&yt);
            let mut beta = vec![0f64; p];
            for (li, &l) in path.iter().enumerate() {
                fit_one(
                    &zt,
                    &yt,
                    p,
                    l,
                    self.alpha,
                    &mut b0,
                    &mut beta,
                    self.max_iter,
                    self.tol.max(1e-6),
                );
                dev[li] += mean_deviance(&zv, &yv, p, b0, &beta);
            }
        }
        let best = (0..path.len())
            .min_by(|&a, &b| dev[a].total_cmp(&dev[b]))
            .unwrap_or(0);
        path[best]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_and_constant_stay_finite() {
        let x = vec![0.0, 1.0, 1.0, 1.0, 2.0, 1.0, 3.0, 1.0];
        let y = vec![0.0, 0.0, 1.0, 1.0];
        let m = LogisticParams::new(1.0, Some(0.0)).fit(&x, &y).unwrap();
        assert!(m.coef.iter().all(|c| c.is_finite()));
        assert!(m.warnings.iter().any(|w| w.contains("constant")));
        assert!(m
            .warnings
            .iter()
            .any(|w| w.contains("separable") || w.contains("converge")));
        let pr = m.predict(&x);
        assert!(pr[0] < 0.5 && pr[3] > 0.5);
    }

    /// A design like the gradient statistics: columns that are one signal plus a little noise
    /// (correlations about 0.99), and a binary target that depends on the signal.
    fn correlated(n: usize, p: usize) -> (Vec<f64>, Vec<f64>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut x = Vec::with_capacity(n * p);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let s: f64 = rng.gen::<f64>() * 4.0 - 2.0;
            for j in 0..p {
                x.push(s * (1.0 + 0.1 * j as f64) + 0.01 * (rng.gen::<f64>() - 0.5) + j as f64);
            }
            let eta = 1.5 * s - 0.5;
            y.push((rng.gen::<f64>() < sigmoid(eta)) as u8 as f64);
        }
        (x, y)
    }

    /// The optimality (KKT) conditions of the penalised objective at a fit, on the
    /// standardised design: the intercept's gradient is 0, a zero coefficient's gradient is at
    /// most λα in size, a nonzero one's gradient + λ(α·sign + (1−α)β) is 0. Returns the
    /// largest violation.
    fn kkt_violation(z: &[f64], y: &[f64], p: usize, m: &Logistic, alpha: f64) -> f64 {
        let n = y.len();
        let mut grad = vec![0f64; p + 1];
        for i in 0..n {
            let eta = m.intercept + (0..p).map(|j| z[i * p + j] * m.coef[j]).sum::<f64>();
            let r = sigmoid(eta) - y[i];
            grad[0] += r / n as f64;
            for j in 0..p {
                grad[j + 1] += r * z[i * p + j] / n as f64;
            }
        }
        let (l1, l2) = (m.lambda * alpha, m.lambda * (1.0 - alpha));
        let mut worst = grad[0].abs();
        for j in 0..p {
            let (b, gj) = (m.coef[j], grad[j + 1]);
            let v = if b == 0.0 {
                (gj.abs() - l1).max(0.0)
            } else {
                (gj + l1 * b.signum() + l2 * b).abs()
            };
            worst = worst.max(v);
        }
        worst
    }

    #[test]
    fn lasso_and_elastic_net_reach_the_optimum_on_correlated_features() {
        let (n, p) = (600, 20);
        let (x, y) = correlated(n, p);
        let (z, _, _) = standardise(&x, n, p);
        for (alpha, lambda) in [
            (1.0, 0.01),
            (1.0, 1e-3),
            (1.0, 1e-4),
            (1.0, 1e-5),
            (0.5, 0.01),
            (0.5, 1e-4),
            (0.5, 1e-5),
        ] {
            let m = LogisticParams {
                tol: 1e-12,
                max_iter: 200,
                ..LogisticParams::new(alpha, Some(lambda))
            }
            .fit(&x, &y)
            .unwrap();
            let v = kkt_violation(&z, &y, p, &m, alpha);
            assert!(
                v < 1e-7,
                "alpha {alpha} lambda {lambda}: KKT violated by {v}"
            );
            // the penalty makes it sparse: correlated copies are not all kept
            if alpha == 1.0 && lambda >= 0.001 {
                assert!(m.coef.iter().filter(|c| **c != 0.0).count() < p);
            }
        }
    }

    #[test]
    fn feature_sign_step_equals_converged_coordinate_descent() {
        // one weighted least-squares step on a well-conditioned design, where coordinate
        // descent converges: both solve the same problem
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (n, p) = (300, 6);
        let z: Vec<f64> = (0..n * p).map(|_| rng.gen::<f64>() * 2.0 - 1.0).collect();
        let w: Vec<f64> = (0..n).map(|_| 0.05 + 0.2 * rng.gen::<f64>()).collect();
        let r: Vec<f64> = (0..n)
            .map(|i| z[i * p] * 2.0 - z[i * p + 3] + rng.gen::<f64>() - 0.5)
            .collect();
        let mut g = vec![0f64; p * p];
        let (mut wx, mut wxr) = (vec![0f64; p], vec![0f64; p]);
        let (mut sw, mut wr) = (0f64, 0f64);
        for i in 0..n {
            sw += w[i];
            wr += w[i] * r[i];
            for j in 0..p {
                wx[j] += w[i] * z[i * p + j];
                wxr[j] += w[i] * z[i * p + j] * r[i];
                for k in 0..p {
                    g[j * p + k] += w[i] * z[i * p + j] * z[i * p + k];
                }
            }
        }
        let nf = n as f64;
        for pen in [
            Penalty { l1: 0.01, l2: 0.0 },
            Penalty { l1: 0.03, l2: 0.02 },
            Penalty { l1: 1.0, l2: 0.0 },
        ] {
            let start = vec![0.3; p];
            let q = Wls {
                g: &g,
                wx: &wx,
                wxr: &wxr,
                sw,
                wr,
                nf,
            };
            let (c_fs, b_fs) = feature_sign(&q, pen, &start).unwrap();
            let (c_cd, b_cd) = coordinate_descent(&q, pen, 0.0, &start, 1e-14);
            assert!((c_fs - c_cd).abs() < 1e-9, "{c_fs} vs {c_cd}");
            for (a, b) in b_fs.iter().zip(&b_cd) {
                assert!((a - b).abs() < 1e-9, "{b_fs:?} vs {b_cd:?}");
                assert_eq!(*a == 0.0, *b == 0.0, "{b_fs:?} vs {b_cd:?}");
            }
        }
    }

    #[test]
    fn big_lambda_zeroes_lasso() {
        let x: Vec<f64> = (0..40).map(|i| ((i * 7 % 13) as f64).sin()).collect();
        let y: Vec<f64> = (0..20).map(|i| (i % 2) as f64).collect();
        let m = LogisticParams::new(1.0, Some(10.0)).fit(&x, &y).unwrap();
        assert!(m.coef.iter().all(|c| *c == 0.0));
        assert!((sigmoid(m.intercept) - 0.5).abs() < 1e-6);
    }
}
