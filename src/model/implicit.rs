//! Conv products read straight from a zero-padded copy of the sample ("implicit GEMM") on
//! AVX2 with FMA, instead of from its unfolded input: the unfolded row (c, ky, kx) at output
//! pixel (y, x) is the padded input at c·hp·wp + (y·s + ky)·wp + x·s + kx, a fixed offset per
//! row plus one per pixel, so a kernel can broadcast it where it stands. The unfolded input of
//! a 16-channel 32×32 layer is 9 times the sample (590 KB): writing it and reading it back
//! cost as much as the products' arithmetic in a ResNet's training step.
//!
//! [`weight_grad_sample`] adds one sample's weight gradient to a sum, **bit for bit as
//! matrixmultiply's product with β = 1 adds it** (each entry one chain of fused multiply-adds
//! over the output pixels in order, from +0 in blocks of [`KC`], each block added to the sum):
//! a zero of the padding is the same +0 that the unfolding writes there. [`forward_sample`]
//! unfolds 16 output pixels at a time into a strip that stays in the first-level cache and
//! runs the own AVX2 kernel's row tiles on it ([`super::gemm::avx2::rows`]), the same
//! products as from the whole unfolded input. [`input_grad_sample`] (stride 1) folds as it
//! multiplies: per kernel offset (ky, kx) in order it adds Wᵀ·dy, read from the output
//! gradient zero-padded by k − 1 − pad, to the input gradient, which is what col2im adds
//! there in that order (a +0 where col2im adds nothing changes no sum that started at +0).

use super::conv::ConvGeom;
use super::gemm::KC;

/// Whether the implicit kernels run on this CPU: AVX2 with FMA (`METACLF_NO_IMPLICIT` in the
/// environment turns them off, for comparisons).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    super::gemm::switched_on(&ON, "METACLF_NO_IMPLICIT")
}

impl ConvGeom {
    /// Rows and columns of the zero-padded input.
    pub fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad, self.w + 2 * self.pad)
    }

    /// Values of one zero-padded sample.
    pub fn padded_len(&self) -> usize {
        let (hp, wp) = self.padded();
        self.cin * hp * wp
    }

    /// Copies one sample `x` [cin, h, w] into `out` [cin, hp, wp] with `pad` zeros around.
    pub fn pad_into(&self, x: &[f32], out: &mut [f32]) {
        pad_planes(x, self.cin, self.h, self.w, self.pad, out);
    }

    /// Offset in the padded sample of each unfolded row (c, ky, kx), at output pixel (0, 0).
    fn row_offsets(&self) -> Vec<usize> {
        let (hp, wp) = self.padded();
        let kk = self.k * self.k;
        (0..self.ckk())
            .map(|r| (r / kk) * hp * wp + (r % kk / self.k) * wp + r % self.k)
            .collect()
    }
}

/// Copies `c` planes `x` [c, h, w] into `out` [c, h + 2p, w + 2p] with `p` zeros around.
pub fn pad_planes(x: &[f32], c: usize, h: usize, w: usize, p: usize, out: &mut [f32]) {
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    for (plane, src) in out
        .chunks_exact_mut(hp * wp)
        .zip(x.chunks_exact(h * w))
        .take(c)
    {
        plane[..p * wp].fill(0.0);
        plane[(p + h) * wp..].fill(0.0);
        for (row, s) in plane[p * wp..(p + h) * wp]
            .chunks_exact_mut(wp)
            .zip(src.chunks_exact(w))
        {
            row[..p].fill(0.0);
            row[p..p + w].copy_from_slice(s);
            row[p + w..].fill(0.0);
        }
    }
}

/// Whether [`input_grad_sample`] serves this geometry: stride 1, one block of the summed
/// output channels (as the unfolded product sums them), rows of at least 16 pixels (on 8×8
/// planes the unfolded product and fold measured 10% faster) and a tile's worth of input
/// channels (one input channel left two thirds of each tile idle: 2–3 times slower).
pub fn folds(g: &ConvGeom) -> bool {
    g.stride == 1 && g.cout <= KC && g.pad < g.k && g.w >= 16 && g.cin >= DX_ROWS
}

/// Whether [`forward_sample`] pays on this geometry: each strip of 16 output pixels is one
/// run along an output row (ow a multiple of 16), or the unfolding is a strided gather
/// anyway (stride > 1). Elsewhere (one thread, 128 samples) building the strips from pieces of
/// rows measured 1–35% slower than unfolding whole rows (e.g. 16 channels at 14×14: 2.8
/// against 2.2 ms), and at 32×32 the implicit product was 1.6× faster (10.8 against 16.8 ms).
pub fn forward_pays(g: &ConvGeom) -> bool {
    g.stride > 1 || g.ow.is_multiple_of(16)
}

/// One sample's forward product added to `out` [cout, oh·ow] (the bias, or zeros): W·cols,
/// cols read from the padded sample `xp`, bit for bit [`super::gemm::gemm`]'s product with
/// β = 1 on the unfolded input.
///
/// # Panics
/// If the slices are shorter than the geometry needs, or AVX2 and FMA are absent.
pub fn forward_sample(g: &ConvGeom, wgt: &[f32], xp: &[f32], out: &mut [f32]) {
    assert!(wgt.len() >= g.weights(), "weights");
    assert!(xp.len() >= g.padded_len(), "padded sample");
    assert!(out.len() >= g.out_len(), "output");
    #[cfg(target_arch = "x86_64")]
    if super::gemm::has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present; the slices hold what the geometry reaches
        unsafe { x86::forward(g, wgt.as_ptr(), xp.as_ptr(), out.as_mut_ptr()) };
        return;
    }
    panic!("the implicit conv kernels need AVX2 with FMA");
}

/// Length of one sample's output gradient padded for [`input_grad_sample`].
pub fn dy_padded_len(g: &ConvGeom) -> usize {
    g.cout * (g.h + g.k - 1) * (g.w + g.k - 1)
}

/// Pads one sample's output gradient [cout, oh, ow] by k − 1 − pad for
/// [`input_grad_sample`] (planes of (h + k − 1) × (w + k − 1) at stride 1).
pub fn pad_dy(g: &ConvGeom, dy: &[f32], out: &mut [f32]) {
    assert!(g.pad < g.k, "padding below the kernel size");
    pad_planes(dy, g.cout, g.oh, g.ow, g.k - 1 - g.pad, out);
}

/// The weights arranged for [`input_grad_sample`]: per tile of [`DX_ROWS`] input channels,
/// per kernel offset (ky, kx), per output channel o, the tile's W[o, c, ky, kx] side by side
/// (zeros past the last channel).
pub struct DxWeights {
    data: Vec<f32>,
}

/// Input channels per tile of [`input_grad_sample`] (3 channels × 16 pixels: 6 products, 6
/// totals, 2 output gradient values and a broadcast fill 15 of the 16 ymm registers).
pub const DX_ROWS: usize = 3;

/// Arranges `wgt` [cout, cin, k, k] for [`input_grad_sample`].
pub fn dx_weights(g: &ConvGeom, wgt: &[f32]) -> DxWeights {
    let (r, kk, co) = (DX_ROWS, g.k * g.k, g.cout);
    let tiles = g.cin.div_ceil(r);
    let mut data = vec![0f32; tiles * kk * co * r];
    for t in 0..tiles {
        for q in 0..kk {
            for o in 0..co {
                for i in 0..r {
                    let c = t * r + i;
                    if c < g.cin {
                        data[((t * kk + q) * co + o) * r + i] = wgt[(o * g.cin + c) * kk + q];
                    }
                }
            }
        }
    }
    DxWeights { data }
}

/// One sample's input gradient into `dx` [cin, h, w] (every element written): col2im(Wᵀ·dy), from the output
/// gradient padded by [`pad_dy`], bit for bit the unfolded product and fold ([`folds`]
/// geometries only): per input pixel and channel one total from +0, to which each kernel
/// offset's chain of fused multiply-adds over the output channels (from +0) is added in
/// (ky, kx) order, as col2im adds the product's rows.
///
/// # Panics
/// If the geometry does not fold, the slices are shorter than it needs, or AVX2 and FMA are
/// absent.
pub fn input_grad_sample(
    g: &ConvGeom,
    wp: &DxWeights,
    dyp: &[f32],
    dx: &mut [std::mem::MaybeUninit<f32>],
) {
    assert!(folds(g), "a geometry the input gradient folds on ({g:?})");
    assert!(
        wp.data.len() >= g.cin.div_ceil(DX_ROWS) * g.k * g.k * g.cout * DX_ROWS,
        "weights"
    );
    assert!(dyp.len() >= dy_padded_len(g), "padded output gradient");
    assert!(dx.len() >= g.in_len(), "input gradient");
    #[cfg(target_arch = "x86_64")]
    if super::gemm::has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present; the slices hold what the geometry reaches
        unsafe { x86::input_grad(g, wp.data.as_ptr(), dyp.as_ptr(), dx.as_mut_ptr().cast()) };
        return;
    }
    panic!("the implicit conv kernels need AVX2 with FMA");
}

/// Adds one sample's weight gradient, transposed, to `c` [ckk, cout]: c[r, o] += Σ_p
/// cols[r, p]·dy[o, p], from the padded sample `xp` ([`ConvGeom::pad_into`]) and the output
/// gradient transposed, `dyt` [oh·ow, cout].
///
/// # Panics
/// If the slices are shorter than the geometry needs, or AVX2 and FMA are absent.
pub fn weight_grad_sample(g: &ConvGeom, xp: &[f32], dyt: &[f32], c: &mut [f32]) {
    assert!(xp.len() >= g.padded_len(), "padded sample");
    assert!(dyt.len() >= g.ohw() * g.cout, "transposed output gradient");
    assert!(c.len() >= g.ckk() * g.cout, "weight gradient");
    #[cfg(target_arch = "x86_64")]
    if super::gemm::has_avx2_fma() {
        // SAFETY: AVX2 and FMA are present, and the slices hold what the geometry reaches
        // (asserted): every unfolded position lies inside the padded sample by the output
        // size's definition, (oh − 1)·s + k ≤ h + 2·pad
        unsafe { x86::weight_grad(g, xp.as_ptr(), dyt.as_ptr(), c.as_mut_ptr()) };
        return;
    }
    panic!("the implicit conv kernels need AVX2 with FMA");
}

/// `t` [cols, rows] = `m` [rows, cols] transposed (8 × 8 blocks in registers on AVX2).
pub fn transpose(m: &[f32], rows: usize, cols: usize, t: &mut [f32]) {
    assert!(
        m.len() >= rows * cols && t.len() >= rows * cols,
        "transpose"
    );
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if super::gemm::has_avx2_fma() {
        // SAFETY: AVX2 is present; the blocks lie inside both matrices (asserted)
        unsafe { x86::transpose8(m.as_ptr(), rows, cols, r8, c8, t.as_mut_ptr()) };
        // the rows below r8 and the columns right of c8
        for r in 0..rows {
            for c in if r < r8 { c8 } else { 0 }..cols {
                t[c * rows + r] = m[r * cols + c];
            }
        }
        return;
    }
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    t[c * rows + r] = m[r * cols + c];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::model::gemm::avx2::{load16, masks16};
    use std::arch::x86_64::*;

    /// Rows of a tile (unfolded rows): 6 × 2 accumulators, 2 registers of the output
    /// gradient and a broadcast fill 15 of the 16 ymm registers.
    const MR: usize = 6;

    /// The 8 × 8 blocks of `m` [rows, cols] above r8 and left of c8, transposed into `t`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose8(
        m: *const f32,
        rows: usize,
        cols: usize,
        r8: usize,
        c8: usize,
        t: *mut f32,
    ) {
        for r0 in (0..r8).step_by(8) {
            for c0 in (0..c8).step_by(8) {
                let v = crate::model::lanes::x86::transpose8_regs(std::array::from_fn(|i| {
                    _mm256_loadu_ps(m.add((r0 + i) * cols + c0))
                }));
                for (j, v) in v.iter().enumerate() {
                    _mm256_storeu_ps(t.add((c0 + j) * rows + r0), *v);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn forward(g: &ConvGeom, wgt: *const f32, xp: *const f32, out: *mut f32) {
        let (ckk, co, ohw, ow, s) = (g.ckk(), g.cout, g.ohw(), g.ow, g.stride);
        let wp = g.padded().1;
        let rows = g.row_offsets();
        let mut strip = [0f32; KC * 16 + 8];
        let sp = strip.as_mut_ptr();
        for p0 in (0..ohw).step_by(16) {
            let w = (ohw - p0).min(16);
            // the padded sample's offsets of the 16 pixels (the last repeated past w)
            let pos: [usize; 16] = std::array::from_fn(|j| {
                let p = p0 + j.min(w - 1);
                (p / ow) * s * wp + (p % ow) * s
            });
            // at stride 1, the pixels' runs along output rows in pieces of up to 8, each
            // one (masked) vector copy per unfolded row
            let mut pieces = [(0usize, 0usize, _mm256_setzero_si256()); 4];
            let mut np = 0;
            let mut j = 0;
            while s == 1 && j < w && np < pieces.len() {
                let mut len = 1;
                while j + len < w && len < 8 && pos[j + len] == pos[j] + len {
                    len += 1;
                }
                let mask = masks16(len)[0];
                pieces[np] = (j, pos[j], mask);
                np += 1;
                j += len;
            }
            let vector = s == 1 && j == w;
            for k0 in (0..ckk).step_by(KC) {
                let kc = (ckk - k0).min(KC);
                for (kk, r) in rows[k0..k0 + kc].iter().enumerate() {
                    let src = xp.add(*r);
                    let limit = g.padded_len() - *r;
                    let dst = sp.add(kk * 16);
                    if vector {
                        // whole vectors stored: the lanes past a piece are overwritten by
                        // the next piece or row, or land in the strip's slack (a masked
                        // store is microcoded on Zen, slower than the copy itself)
                        for &(j, o, mask) in &pieces[..np] {
                            let v = if o + 8 <= limit {
                                _mm256_loadu_ps(src.add(o))
                            } else {
                                _mm256_maskload_ps(src.add(o), mask)
                            };
                            _mm256_storeu_ps(dst.add(j), v);
                        }
                    } else {
                        for (j, o) in pos.iter().enumerate().take(w) {
                            *dst.add(j) = *src.add(*o);
                        }
                    }
                }
                super::super::gemm::avx2::rows(
                    co,
                    kc,
                    wgt.add(k0),
                    (ckk, 1),
                    sp,
                    16,
                    1.0,
                    k0 == 0,
                    out.add(p0),
                    ohw,
                    w,
                );
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn input_grad(g: &ConvGeom, wp: *const f32, dyp: *const f32, dx: *mut f32) {
        let (cin, w) = (g.cin, g.w);
        let r = DX_ROWS;
        let panel = g.k * g.k * g.cout * r;
        let (hd, wd) = (g.h + g.k - 1, g.w + g.k - 1);
        for (t, c0) in (0..cin).step_by(r).enumerate() {
            for qy in 0..g.h {
                for qx0 in (0..w).step_by(16) {
                    let width = (w - qx0).min(16);
                    let d = DxTile {
                        g,
                        a: wp.add(t * panel),
                        rows: (cin - c0).min(r),
                        width,
                        masks: masks16(width),
                    };
                    let b = dyp.add((qy + g.k - 1) * wd + qx0 + g.k - 1);
                    let o = dx.add(c0 * g.h * w + qy * w + qx0);
                    if width == 16 {
                        d.run::<DX_ROWS, 2, true>(b, hd * wd, wd, o);
                    } else {
                        d.run::<DX_ROWS, 2, false>(b, hd * wd, wd, o);
                    }
                }
            }
        }
    }

    /// R input channels × H·8 pixels of one input row of the input gradient, the totals over
    /// the kernel offsets held in registers.
    struct DxTile<'a> {
        g: &'a ConvGeom,
        /// The tile's arranged weights: [(ky, kx)][o][R].
        a: *const f32,
        /// Channels stored (≤ R).
        rows: usize,
        /// Pixels stored (≤ 8·H).
        width: usize,
        masks: [__m256i; 2],
    }

    impl DxTile<'_> {
        #[inline(always)]
        unsafe fn load<const FULL: bool>(&self, p: *const f32, h: usize) -> __m256 {
            load16::<FULL>(p, h, &self.masks)
        }

        /// `b`: the padded output gradient at the tile's first pixel shifted by (k − 1,
        /// k − 1) (offset (0, 0)), planes `plane` apart, rows `wd`; `dx` at the tile's
        /// first channel and pixel.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<const R: usize, const H: usize, const FULL: bool>(
            &self,
            b: *const f32,
            plane: usize,
            wd: usize,
            dx: *mut f32,
        ) {
            let (k, co) = (self.g.k, self.g.cout);
            let mut tot = [[_mm256_setzero_ps(); H]; R];
            let mut ap = self.a;
            for ky in 0..k {
                for kx in 0..k {
                    let mut acc = [[_mm256_setzero_ps(); H]; R];
                    let mut bp = b.sub(ky * wd + kx);
                    for _ in 0..co {
                        let bv: [__m256; H] = std::array::from_fn(|h| self.load::<FULL>(bp, h));
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let av = _mm256_broadcast_ss(&*ap.add(i));
                            for h in 0..H {
                                acc[h] = _mm256_fmadd_ps(av, bv[h], acc[h]);
                            }
                        }
                        bp = bp.add(plane);
                        ap = ap.add(R);
                    }
                    for (t, a) in tot.iter_mut().zip(&acc) {
                        for h in 0..H {
                            t[h] = _mm256_add_ps(t[h], a[h]);
                        }
                    }
                }
            }
            let hw = self.g.h * self.g.w;
            for (i, t) in tot.iter().enumerate().take(self.rows) {
                let p = dx.add(i * hw);
                if FULL {
                    for (h, v) in t.iter().enumerate() {
                        _mm256_storeu_ps(p.add(8 * h), *v);
                    }
                } else {
                    // through the stack: a masked store is microcoded on Zen
                    let mut tmp = [0f32; 16];
                    for (h, v) in t.iter().enumerate() {
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * h), *v);
                    }
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), p, self.width);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weight_grad(g: &ConvGeom, xp: *const f32, dyt: *const f32, c: *mut f32) {
        let (ckk, co, ohw) = (g.ckk(), g.cout, g.ohw());
        let rows = g.row_offsets();
        for k0 in (0..ohw).step_by(KC) {
            let k1 = (k0 + KC).min(ohw);
            for j0 in (0..co).step_by(16) {
                let w = (co - j0).min(16);
                let t = WTile {
                    g,
                    xp,
                    k0,
                    k1,
                    b: dyt.add(j0),
                    masks: masks16(w),
                };
                for i0 in (0..ckk).step_by(MR) {
                    let r = (ckk - i0).min(MR);
                    let arow: [usize; MR] = std::array::from_fn(|q| rows[(i0 + q).min(ckk - 1)]);
                    let cp = c.add(i0 * co + j0);
                    macro_rules! rows {
                        ($($r:literal)*) => {
                            match (r, w == 16) {
                                $(($r, true) => t.run::<$r, true>(&arow, cp),
                                  ($r, false) => t.run::<$r, false>(&arow, cp),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    rows!(1 2 3 4 5 6);
                }
            }
        }
    }

    /// One block of output pixels `k0..k1` for a tile of unfolded rows (offsets `arow`) and
    /// up to 16 output channels (from `b`, the transposed output gradient at the tile's first
    /// channel, row stride cout).
    struct WTile<'a> {
        g: &'a ConvGeom,
        xp: *const f32,
        k0: usize,
        k1: usize,
        b: *const f32,
        masks: [__m256i; 2],
    }

    impl WTile<'_> {
        #[inline(always)]
        unsafe fn load<const FULL: bool>(&self, p: *const f32, h: usize) -> __m256 {
            load16::<FULL>(p, h, &self.masks)
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<const R: usize, const FULL: bool>(&self, arow: &[usize; MR], c: *mut f32) {
            let (s, ow, co) = (self.g.stride, self.g.ow, self.g.cout);
            let wp = self.g.padded().1;
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let mut p = self.k0;
            // the block's pixels run by output row: along a row the unfolded rows step by s
            while p < self.k1 {
                let (oy, ox) = (p / ow, p % ow);
                let len = (ow - ox).min(self.k1 - p);
                let mut ap = self.xp.add(oy * s * wp + ox * s);
                let mut bp = self.b.add(p * co);
                for _ in 0..len {
                    let bv = [self.load::<FULL>(bp, 0), self.load::<FULL>(bp, 1)];
                    for (acc, o) in acc.iter_mut().zip(arow) {
                        let av = _mm256_broadcast_ss(&*ap.add(*o));
                        acc[0] = _mm256_fmadd_ps(av, bv[0], acc[0]);
                        acc[1] = _mm256_fmadd_ps(av, bv[1], acc[1]);
                    }
                    ap = ap.add(s);
                    bp = bp.add(co);
                }
                p += len;
            }
            // matrixmultiply's β = 1: C ← block + C
            for (r, acc) in acc.iter().enumerate() {
                let cp = c.add(r * co);
                for (h, acc) in acc.iter().enumerate() {
                    let v = _mm256_add_ps(*acc, self.load::<FULL>(cp, h));
                    if FULL {
                        _mm256_storeu_ps(cp.add(8 * h), v);
                    } else {
                        _mm256_maskstore_ps(cp.add(8 * h), self.masks[h], v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The transpose moves every element where it belongs, blocks of 8 and the edges.
    #[test]
    fn transpose_is_the_definition() {
        for (rows, cols) in [(1, 1), (8, 8), (13, 21), (16, 40), (27, 16), (3, 9)] {
            let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut t = vec![f32::NAN; rows * cols];
            super::transpose(&m, rows, cols, &mut t);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        m[r * cols + c],
                        "{rows}×{cols} at {r}, {c}"
                    );
                }
            }
        }
    }
}
