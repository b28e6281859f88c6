//! Batch norm over channels (2-D: [n, c, h, w]) or features (1-D: [n, f], as h = w = 1).
//! Training mode normalises with the batch's mean and (biased) variance and the running
//! statistics follow them (PyTorch's update: momentum m, unbiased variance); evaluation mode —
//! features, scoring, MC dropout — uses the running statistics, so it is a per-channel affine
//! map and an image's gradient features do not depend on its batch. γ (`weight`) and β
//! (`bias`) are the parameters; their per-sample gradients dγ_c = Σ_hw dy·x̂ and dβ_c = Σ_hw dy
//! are one layer's statistics.

use super::moments::Moments;
use rayon::prelude::*;

/// An output element a pass writes before anything reads it.
type Uninit = std::mem::MaybeUninit<f32>;

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

/// Training-mode statistics of a batch `x` [n, c, hw] (f64 sums, two passes): per channel
/// and sample one sum in pixel order from −0.0, added to the channel's total in sample order.
/// Eight channels run side by side ([`channel_sums`]), groups of channels in parallel.
pub fn batch_stats(g: &BnGeom, x: &[f32], n: usize) -> BnStats {
    const G: usize = 8;
    let c = g.c;
    let m = (n * g.hw) as f64;
    let group = |c0: usize| -> Vec<(f64, f64)> {
        if c - c0 >= G {
            let (mu, q) = stats_side_by_side::<G>(g, x, n, c0);
            mu.into_iter().zip(q).collect()
        } else {
            (c0..c)
                .map(|ch| {
                    let (mu, q) = stats_side_by_side::<1>(g, x, n, ch);
                    (mu[0], q[0])
                })
                .collect()
        }
    };
    let per: Vec<(f64, f64)> = (0..c)
        .step_by(G)
        .collect::<Vec<_>>()
        .into_par_iter()
        .flat_map_iter(group)
        .collect();
    BnStats {
        mean: per.iter().map(|p| p.0).collect(),
        inv: per.iter().map(|p| 1.0 / (p.1 / m + g.eps).sqrt()).collect(),
        var_unbiased: per.iter().map(|p| p.1 / (m - 1.0).max(1.0)).collect(),
        train: true,
    }
}

/// The means and summed squared deviations of the `K` channels from `c0` on.
#[inline(always)]
fn stats_side_by_side<const K: usize>(
    g: &BnGeom,
    x: &[f32],
    n: usize,
    c0: usize,
) -> ([f64; K], [f64; K]) {
    let (c, hw) = (g.c, g.hw);
    let m = (n * hw) as f64;
    let plane = |i: usize| &x[(i * c + c0) * hw..(i * c + c0 + K) * hw];
    // the first pixel of each sample's sums the lanes have not covered
    #[cfg(target_arch = "x86_64")]
    let lanes = |xs: &[f32], mu: Option<&[f64; K]>, a: &mut [f64; K]| -> usize {
        if K == 8 && super::gemm::has_avx2() {
            let a8: &mut [f64; 8] = (&mut a[..]).try_into().expect("K = 8");
            let mu8 = mu.map(|m| <&[f64; 8]>::try_from(&m[..]).expect("K = 8"));
            // SAFETY: AVX2 is present; `xs` holds K = 8 rows of hw
            unsafe { x86::stats8_avx2(xs, hw, mu8, a8) };
            hw / 8 * 8
        } else {
            0
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let lanes = |_: &[f32], _: Option<&[f64; K]>, _: &mut [f64; K]| -> usize { 0 };
    let mut s = [0f64; K];
    for i in 0..n {
        let xs = plane(i);
        let mut a = [-0f64; K];
        for p in lanes(xs, None, &mut a)..hw {
            for k in 0..K {
                a[k] += xs[k * hw + p] as f64;
            }
        }
        for k in 0..K {
            s[k] += a[k];
        }
    }
    let mu: [f64; K] = std::array::from_fn(|k| s[k] / m);
    let mut q = [0f64; K];
    for i in 0..n {
        let xs = plane(i);
        let mut a = [-0f64; K];
        for p in lanes(xs, Some(&mu), &mut a)..hw {
            for k in 0..K {
                a[k] += (xs[k * hw + p] as f64 - mu[k]).powi(2);
            }
        }
        for k in 0..K {
            q[k] += a[k];
        }
    }
    (mu, q)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::model::lanes::x86::transpose8_regs;
    use std::arch::x86_64::*;

    /// [`super::side_by_side`]'s pixel loop for 8 channels (rows `hw` apart) over the pixels
    /// 0..hw/8·8, the channels in the 8 lanes of an f64 register: blocks of 8 pixels × 8
    /// channels transposed in registers, then per pixel the same operations in the same order
    /// as the scalar loop (no fused multiply-add), so each lane's sums are bit for bit its
    /// scalar sums.
    ///
    /// # Safety
    /// AVX-512F must be present; `dy` and `x` must hold 8 rows of `hw`.
    #[target_feature(enable = "avx2,avx512f")]
    pub unsafe fn sums8(
        dy: &[f32],
        x: &[f32],
        hw: usize,
        mu: &[f64],
        inv: &[f64],
        a: &mut [f64],
        b: &mut [f64],
    ) {
        assert!(dy.len() >= 8 * hw && x.len() >= 8 * hw && mu.len() >= 8 && inv.len() >= 8);
        assert!(a.len() >= 8 && b.len() >= 8);
        let (muv, invv) = (_mm512_loadu_pd(mu.as_ptr()), _mm512_loadu_pd(inv.as_ptr()));
        let (mut av, mut bv) = (_mm512_loadu_pd(a.as_ptr()), _mm512_loadu_pd(b.as_ptr()));
        let (dp, xp) = (dy.as_ptr(), x.as_ptr());
        for p0 in (0..hw / 8 * 8).step_by(8) {
            let rd = transpose8_regs(std::array::from_fn(|k| {
                _mm256_loadu_ps(dp.add(k * hw + p0))
            }));
            let rx = transpose8_regs(std::array::from_fn(|k| {
                _mm256_loadu_ps(xp.add(k * hw + p0))
            }));
            for (d, v) in rd.iter().zip(&rx) {
                let d = _mm512_cvtps_pd(*d);
                let v = _mm512_cvtps_pd(*v);
                let t = _mm512_mul_pd(_mm512_mul_pd(d, _mm512_sub_pd(v, muv)), invv);
                av = _mm512_add_pd(av, t);
                bv = _mm512_add_pd(bv, d);
            }
        }
        _mm512_storeu_pd(a.as_mut_ptr(), av);
        _mm512_storeu_pd(b.as_mut_ptr(), bv);
    }

    /// [`super::affine`] compiled for AVX2 (the same operations, 8 lanes wide).
    ///
    /// # Safety
    /// AVX2 must be present.
    #[target_feature(enable = "avx2")]
    pub unsafe fn affine_avx2(
        xs: &[f32],
        ys: &mut [super::Uninit],
        a: &[f32],
        b: &[f32],
        hw: usize,
        act: Option<f32>,
    ) {
        super::affine(xs, ys, a, b, hw, act)
    }

    /// [`super::dx_sample`] compiled for AVX2 (the same f64 operations in the same order, 4
    /// lanes wide; no fused multiply-add).
    ///
    /// # Safety
    /// AVX2 must be present.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub unsafe fn dx_sample_avx2(
        d: &mut [super::Uninit],
        gs: &[f32],
        xs: &[f32],
        hw: usize,
        gamma: &[f32],
        st: &super::BnStats,
        mdy: &[f64],
        mdyx: &[f64],
    ) {
        super::dx_sample(d, gs, xs, hw, gamma, st, mdy, mdyx)
    }

    /// 8 f64 values from `p` on as two registers of 4.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_halves(p: *const f64) -> [__m256d; 2] {
        [_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4))]
    }

    /// The 8 f32 lanes of `v` as f64, lanes 0–3 and 4–7.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn widen(v: __m256) -> [__m256d; 2] {
        [
            _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
        ]
    }

    /// [`sums8`] on AVX2: the 8 channels in two f64 registers of 4 lanes (channels 0–3 and
    /// 4–7), the same operations in the same order, so bit for bit the scalar sums as well.
    ///
    /// # Safety
    /// AVX2 must be present; `dy` and `x` must hold 8 rows of `hw`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn sums8_avx2(
        dy: &[f32],
        x: &[f32],
        hw: usize,
        mu: &[f64],
        inv: &[f64],
        a: &mut [f64],
        b: &mut [f64],
    ) {
        assert!(dy.len() >= 8 * hw && x.len() >= 8 * hw && mu.len() >= 8 && inv.len() >= 8);
        assert!(a.len() >= 8 && b.len() >= 8);
        let (muv, invv) = (load_halves(mu.as_ptr()), load_halves(inv.as_ptr()));
        let (mut av, mut bv) = (load_halves(a.as_ptr()), load_halves(b.as_ptr()));
        let (dp, xp) = (dy.as_ptr(), x.as_ptr());
        for p0 in (0..hw / 8 * 8).step_by(8) {
            let rd = transpose8_regs(std::array::from_fn(|k| {
                _mm256_loadu_ps(dp.add(k * hw + p0))
            }));
            let rx = transpose8_regs(std::array::from_fn(|k| {
                _mm256_loadu_ps(xp.add(k * hw + p0))
            }));
            for (d, v) in rd.iter().zip(&rx) {
                let (d, v) = (widen(*d), widen(*v));
                for h in 0..2 {
                    let t =
                        _mm256_mul_pd(_mm256_mul_pd(d[h], _mm256_sub_pd(v[h], muv[h])), invv[h]);
                    av[h] = _mm256_add_pd(av[h], t);
                    bv[h] = _mm256_add_pd(bv[h], d[h]);
                }
            }
        }
        for h in 0..2 {
            _mm256_storeu_pd(a.as_mut_ptr().add(4 * h), av[h]);
            _mm256_storeu_pd(b.as_mut_ptr().add(4 * h), bv[h]);
        }
    }

    /// One sample's pixel loop of [`super::stats_side_by_side`] for 8 channels (rows `hw`
    /// apart) over the pixels 0..hw/8·8, in two f64 registers of 4 channels: a += x
    /// (`mu` None) or a += (x − mu)² (`mu` Some), in pixel order, so bit for bit the scalar
    /// loop.
    ///
    /// # Safety
    /// AVX2 must be present; `x` must hold 8 rows of `hw`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn stats8_avx2(x: &[f32], hw: usize, mu: Option<&[f64; 8]>, a: &mut [f64; 8]) {
        assert!(x.len() >= 8 * hw);
        let muv = mu.map(|m| load_halves(m.as_ptr()));
        let mut av = load_halves(a.as_ptr());
        let xp = x.as_ptr();
        for p0 in (0..hw / 8 * 8).step_by(8) {
            let rx = transpose8_regs(std::array::from_fn(|k| {
                _mm256_loadu_ps(xp.add(k * hw + p0))
            }));
            for v in &rx {
                let v = widen(*v);
                for h in 0..2 {
                    let t = match muv {
                        None => v[h],
                        Some(m) => {
                            let d = _mm256_sub_pd(v[h], m[h]);
                            _mm256_mul_pd(d, d)
                        }
                    };
                    av[h] = _mm256_add_pd(av[h], t);
                }
            }
        }
        _mm256_storeu_pd(a.as_mut_ptr(), av[0]);
        _mm256_storeu_pd(a.as_mut_ptr().add(4), av[1]);
    }
}

/// y = γ·(x − mean)·inv + β, per channel, computed as x·a + b with a = γ·inv and
/// b = β − mean·γ·inv rounded to f32; then, with `act` Some(slope), the activation that
/// follows ([`super::activation::forward`]: the same selects, in the same pass).
pub fn forward(
    g: &BnGeom,
    st: &BnStats,
    gamma: &[f32],
    beta: &[f32],
    x: &[f32],
    n: usize,
    act: Option<f32>,
) -> Vec<f32> {
    let (c, hw) = (g.c, g.hw);
    let a: Vec<f32> = (0..c)
        .map(|ch| (gamma[ch] as f64 * st.inv[ch]) as f32)
        .collect();
    let b: Vec<f32> = (0..c)
        .map(|ch| (beta[ch] as f64 - st.mean[ch] * gamma[ch] as f64 * st.inv[ch]) as f32)
        .collect();
    // SAFETY: `affine` writes every element of its chunk
    unsafe {
        super::gemm::par_written(n * c * hw, c * hw, |i, ys| {
            let xs = &x[i * c * hw..(i + 1) * c * hw];
            #[cfg(target_arch = "x86_64")]
            if super::gemm::has_avx2() {
                // SAFETY: AVX2 is present
                return x86::affine_avx2(xs, ys, &a, &b, hw, act);
            }
            affine(xs, ys, &a, &b, hw, act);
        })
    }
}

/// y = x·a + b per channel of one sample (a multiply, then an add: no fused multiply-add),
/// then the activation of slope `act` if any.
#[inline(always)]
fn affine(xs: &[f32], ys: &mut [Uninit], a: &[f32], b: &[f32], hw: usize, act: Option<f32>) {
    for ((y, x), (a, b)) in ys
        .chunks_exact_mut(hw)
        .zip(xs.chunks_exact(hw))
        .zip(a.iter().zip(b))
    {
        match act {
            None => {
                for (o, v) in y.iter_mut().zip(x) {
                    o.write(v * a + b);
                }
            }
            Some(0.0) => {
                for (o, v) in y.iter_mut().zip(x) {
                    o.write(super::activation::apply(0.0, v * a + b));
                }
            }
            Some(slope) => {
                for (o, v) in y.iter_mut().zip(x) {
                    o.write(super::activation::apply(slope, v * a + b));
                }
            }
        }
    }
}

/// dx of one sample in f64 per element, γ·inv·(dy − mdy − x̂·mdyx) (the training-mode means
/// zero in evaluation mode), in this order of operations.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dx_sample(
    d: &mut [Uninit],
    gs: &[f32],
    xs: &[f32],
    hw: usize,
    gamma: &[f32],
    st: &BnStats,
    mdy: &[f64],
    mdyx: &[f64],
) {
    for (ch, ((d, gs), xs)) in d
        .chunks_exact_mut(hw)
        .zip(gs.chunks_exact(hw))
        .zip(xs.chunks_exact(hw))
        .enumerate()
    {
        let a = gamma[ch] as f64 * st.inv[ch];
        let (mu, inv, my, mx) = (st.mean[ch], st.inv[ch], mdy[ch], mdyx[ch]);
        for ((o, gv), xv) in d.iter_mut().zip(gs).zip(xs) {
            let xh = (*xv as f64 - mu) * inv;
            o.write((a * (*gv as f64 - my - xh * mx)) as f32);
        }
    }
}

/// PyTorch's running-statistics update after a training-mode batch.
pub fn update_running(g: &BnGeom, st: &BnStats, running_mean: &mut [f32], running_var: &mut [f32]) {
    let m = g.momentum;
    for ch in 0..g.c {
        running_mean[ch] = ((1.0 - m) * running_mean[ch] as f64 + m * st.mean[ch]) as f32;
        running_var[ch] = ((1.0 - m) * running_var[ch] as f64 + m * st.var_unbiased[ch]) as f32;
    }
}

/// Per-channel Σ dy·x̂ and Σ dy of one sample (or of the batch, summed over its samples):
/// per channel and sample one f64 sum in pixel order, added to the channel's total in sample
/// order. Eight channels' sums run side by side (one channel alone was a chain of dependent
/// additions, 7% of a ResNet training step on one thread), groups of channels in parallel
/// for a batch; each channel's sums are the same, in the same order, as one at a time.
pub fn channel_sums(g: &BnGeom, st: &BnStats, dy: &[f32], x: &[f32], n: usize) -> ChannelSums {
    const G: usize = 8;
    let c = g.c;
    let group = |c0: usize| -> Vec<(f64, f64)> {
        if c - c0 >= G {
            let (sg, sb) = side_by_side::<G>(g, st, dy, x, n, c0);
            sg.into_iter().zip(sb).collect()
        } else {
            (c0..c)
                .map(|ch| {
                    let (sg, sb) = side_by_side::<1>(g, st, dy, x, n, ch);
                    (sg[0], sb[0])
                })
                .collect()
        }
    };
    let starts = (0..c).step_by(G);
    let sums: Vec<(f64, f64)> = if n * c * g.hw >= 1 << 16 {
        starts
            .collect::<Vec<_>>()
            .into_par_iter()
            .flat_map_iter(group)
            .collect()
    } else {
        starts.flat_map(group).collect()
    };
    sums.into_iter().unzip()
}

/// [`channel_sums`] of the `K` channels from `c0` on.
#[inline(always)]
fn side_by_side<const K: usize>(
    g: &BnGeom,
    st: &BnStats,
    dy: &[f32],
    x: &[f32],
    n: usize,
    c0: usize,
) -> ([f64; K], [f64; K]) {
    let (c, hw) = (g.c, g.hw);
    let mu: [f64; K] = std::array::from_fn(|k| st.mean[c0 + k]);
    let inv: [f64; K] = std::array::from_fn(|k| st.inv[c0 + k]);
    let (mut sg, mut sb) = ([0f64; K], [0f64; K]);
    for i in 0..n {
        let o = (i * c + c0) * hw;
        let (dy, x) = (&dy[o..o + K * hw], &x[o..o + K * hw]);
        let (mut a, mut b) = ([0f64; K], [0f64; K]);
        let mut p0 = 0;
        #[cfg(target_arch = "x86_64")]
        if K == 8 && super::gemm::avx512::available() {
            // SAFETY: AVX-512F is present; the slices hold K = 8 rows of hw
            unsafe { x86::sums8(dy, x, hw, &mu, &inv, &mut a, &mut b) };
            p0 = hw / 8 * 8;
        } else if K == 8 && super::gemm::has_avx2() {
            // SAFETY: AVX2 is present; the slices hold K = 8 rows of hw
            unsafe { x86::sums8_avx2(dy, x, hw, &mu, &inv, &mut a, &mut b) };
            p0 = hw / 8 * 8;
        }
        for p in p0..hw {
            for k in 0..K {
                let (d, v) = (dy[k * hw + p], x[k * hw + p]);
                a[k] += d as f64 * (v as f64 - mu[k]) * inv[k];
                b[k] += d as f64;
            }
        }
        for k in 0..K {
            sg[k] += a[k];
            sb[k] += b[k];
        }
    }
    (sg, sb)
}

/// A batch's per-channel Σ dy·x̂ and Σ dy ([`channel_sums`]), which a training-mode
/// backward needs twice: for (dγ, dβ) and for dx.
pub type ChannelSums = (Vec<f64>, Vec<f64>);

/// `sums` when the caller has them, else the batch's [`channel_sums`] formed here.
fn sums_or<'a>(
    g: &BnGeom,
    st: &BnStats,
    dy: &[f32],
    x: &[f32],
    n: usize,
    sums: Option<&'a ChannelSums>,
) -> std::borrow::Cow<'a, ChannelSums> {
    match sums {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(channel_sums(g, st, dy, x, n)),
    }
}

/// Summed (dγ, dβ) over the batch; `sums` the batch's [`channel_sums`] when the caller has
/// them already.
pub fn weight_grad(
    g: &BnGeom,
    st: &BnStats,
    dy: &[f32],
    x: &[f32],
    n: usize,
    sums: Option<&ChannelSums>,
) -> (Vec<f32>, Vec<f32>) {
    let (sg, sb) = &*sums_or(g, st, dy, x, n, sums);
    (
        sg.iter().map(|&v| v as f32).collect(),
        sb.iter().map(|&v| v as f32).collect(),
    )
}

/// dx: evaluation mode dy·γ·inv; training mode γ·inv·(dy − mean(dy) − x̂·mean(dy·x̂)), the
/// means over the batch and pixels of each channel (from `sums`, the batch's
/// [`channel_sums`], when the caller has them already).
pub fn input_grad(
    g: &BnGeom,
    st: &BnStats,
    gamma: &[f32],
    dy: &[f32],
    x: &[f32],
    n: usize,
    sums: Option<&ChannelSums>,
) -> Vec<f32> {
    let (c, hw) = (g.c, g.hw);
    let (mdy, mdyx) = if st.train {
        let (sg, sb) = &*sums_or(g, st, dy, x, n, sums);
        let m = (n * hw) as f64;
        (
            sb.iter().map(|v| v / m).collect(),
            sg.iter().map(|v| v / m).collect(),
        )
    } else {
        (vec![0f64; c], vec![0f64; c])
    };
    // SAFETY: `dx_sample` writes every element of its chunk
    unsafe {
        super::gemm::par_written(n * c * hw, c * hw, |i, d| {
            let r = i * c * hw..(i + 1) * c * hw;
            let (gs, xs) = (&dy[r.clone()], &x[r]);
            #[cfg(target_arch = "x86_64")]
            if super::gemm::has_avx2() {
                // SAFETY: AVX2 is present
                return x86::dx_sample_avx2(d, gs, xs, hw, gamma, st, &mdy, &mdyx);
            }
            dx_sample(d, gs, xs, hw, gamma, st, &mdy, &mdyx);
        })
    }
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

    /// The AVX2 builds of the elementwise passes (forward affine map, dx) give the portable
    /// loops' bits: the same operations, no fused multiply-add.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_elementwise_passes_are_the_portable_ones() {
        use super::*;
        if !crate::model::gemm::has_avx2() {
            return;
        }
        let vals = crate::model::gemm::tests::values;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (c, hw) in [(5, 37), (16, 64), (3, 1)] {
            let (xs, gs) = (vals(c * hw, 1), vals(c * hw, 2));
            let (a, b) = (vals(c, 3), vals(c, 4));
            let init = |v: &mut Vec<Uninit>| -> Vec<f32> {
                // SAFETY: every element was written by the pass just run
                v.iter().map(|e| unsafe { e.assume_init() }).collect()
            };
            let blank = || vec![Uninit::new(f32::NAN); c * hw];
            let (mut y0, mut y1) = (blank(), blank());
            for act in [None, Some(0.0), Some(0.1)] {
                affine(&xs, &mut y0, &a, &b, hw, act);
                // SAFETY: AVX2 is present
                unsafe { x86::affine_avx2(&xs, &mut y1, &a, &b, hw, act) };
                assert_eq!(bits(&init(&mut y0)), bits(&init(&mut y1)));
                // and the fused activation is the activation's own pass
                let mut y2 = blank();
                affine(&xs, &mut y2, &a, &b, hw, None);
                let mut y2 = init(&mut y2);
                if let Some(s) = act {
                    crate::model::activation::forward(s, &mut y2);
                }
                assert_eq!(bits(&init(&mut y0)), bits(&y2));
            }
            let st = BnStats {
                mean: (0..c).map(|i| i as f64 * 0.37 - 0.5).collect(),
                inv: (0..c).map(|i| 1.0 / (i as f64 + 0.3)).collect(),
                var_unbiased: Vec::new(),
                train: true,
            };
            let (my, mx): (Vec<f64>, Vec<f64>) = (0..c)
                .map(|i| (i as f64 * 0.011, -(i as f64) * 0.007))
                .unzip();
            dx_sample(&mut y0, &gs, &xs, hw, &a, &st, &my, &mx);
            // SAFETY: AVX2 is present
            unsafe { x86::dx_sample_avx2(&mut y1, &gs, &xs, hw, &a, &st, &my, &mx) };
            assert_eq!(bits(&init(&mut y0)), bits(&init(&mut y1)));
        }
    }

    /// The batch statistics side by side equal those one channel at a time, bit for bit.
    #[test]
    fn batch_stats_side_by_side_equal_one_at_a_time() {
        use super::*;
        for (c, hw, n) in [(19, 7, 3), (16, 49, 130), (3, 1, 5)] {
            let g = BnGeom {
                c,
                hw,
                eps: 1e-5,
                momentum: 0.1,
            };
            let x: Vec<f32> = (0..n * c * hw)
                .map(|k| ((k * 7919 % 1013) as f32 - 306.0) / 97.0)
                .collect();
            let st = batch_stats(&g, &x, n);
            let m = (n * hw) as f64;
            for ch in 0..c {
                let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
                let mut s = 0f64;
                for i in 0..n {
                    s += plane(i).iter().map(|&v| v as f64).sum::<f64>();
                }
                let mu = s / m;
                let mut q = 0f64;
                for i in 0..n {
                    q += plane(i)
                        .iter()
                        .map(|&v| (v as f64 - mu).powi(2))
                        .sum::<f64>();
                }
                assert_eq!(st.mean[ch].to_bits(), mu.to_bits(), "{c}×{hw}×{n} ch {ch}");
                let inv = 1.0 / (q / m + g.eps).sqrt();
                assert_eq!(st.inv[ch].to_bits(), inv.to_bits(), "{c}×{hw}×{n} ch {ch}");
            }
        }
    }

    /// The channel sums side by side and in parallel equal the sums one channel at a time,
    /// bit for bit (channel counts off the group of 8, one sample and a batch).
    #[test]
    fn channel_sums_side_by_side_equal_one_at_a_time() {
        use super::*;
        for (c, hw, n) in [(19, 7, 1), (16, 49, 130), (3, 1, 5), (8, 1, 600)] {
            let g = BnGeom {
                c,
                hw,
                eps: 1e-5,
                momentum: 0.1,
            };
            let st = BnStats {
                mean: (0..c).map(|i| i as f64 * 0.1 - 0.3).collect(),
                inv: (0..c).map(|i| 1.0 + i as f64 * 0.37).collect(),
                var_unbiased: vec![],
                train: true,
            };
            let v = |k: usize| ((k * 7919 % 1013) as f32 - 506.0) / 97.0;
            let dy: Vec<f32> = (0..n * c * hw).map(v).collect();
            let x: Vec<f32> = (0..n * c * hw).map(|k| v(k + 17)).collect();
            let (sg, sb) = channel_sums(&g, &st, &dy, &x, n);
            for ch in 0..c {
                let (mut tg, mut tb) = (0f64, 0f64);
                for i in 0..n {
                    let o = (i * c + ch) * hw;
                    let (mut a, mut b) = (0f64, 0f64);
                    for (d, xv) in dy[o..o + hw].iter().zip(&x[o..o + hw]) {
                        a += *d as f64 * (*xv as f64 - st.mean[ch]) * st.inv[ch];
                        b += *d as f64;
                    }
                    tg += a;
                    tb += b;
                }
                assert_eq!(
                    sg[ch].to_bits(),
                    tg.to_bits(),
                    "{c}×{hw}, {n} samples, channel {ch}"
                );
                assert_eq!(
                    sb[ch].to_bits(),
                    tb.to_bits(),
                    "{c}×{hw}, {n} samples, channel {ch}"
                );
            }
        }
    }

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
