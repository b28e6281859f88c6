//! The per-sample conv weight gradients of [`LANES`] samples at once, one sample per vector
//! lane: dW_l[i, j] = Σ_p dy_l[i, p]·cols_l[j, p] for every sample l of a group, with the
//! group's output gradients and unfolded inputs interleaved (element e of sample l at
//! `e·LANES + l`), so that one vector load brings the same element of all the group's samples
//! and one fused multiply-add advances all their sums.
//!
//! The product per sample is dy [cout, oh·ow] · colsᵀ: both operands contiguous along the
//! summed pixel axis. matrixmultiply packs both of them into panels on every call (29% of the
//! gradient metrics' time at 2×64×64), and the output was then written interleaved for the
//! moments ([`super::moments::Moments::of_lanes`]) anyway; training's summed weight gradient
//! is the same product per sample, added over the batch (it runs here only where the implicit
//! kernel, [`super::implicit`], is turned off). Here no operand is packed: the
//! input is interleaved once per group ([`Scratch`]), unfolded into interleaved rows one block
//! of pixels at a time (a block fits in L2), and the products run in register tiles of
//! RI output channels × RJ unfolded rows.
//!
//! **Bit for bit matrixmultiply's per-sample product** on FMA hardware (tested against it
//! below): each lane's entry is one chain of fused multiply-adds in pixel order, started from
//! +0 in blocks of [`KC`] pixels, each block added to the entry as matrixmultiply adds it. The
//! bias gradient's row sums run in the lanes too, each from −0.0 in pixel order, as
//! [`super::conv::row_sums`].

use super::conv::ConvGeom;
use super::gemm::KC;
use super::moments::LANES;

/// Whether the lane kernel runs on this CPU: AVX2 with FMA, as matrixmultiply's FMA kernels
/// (without FMA, matrixmultiply rounds products and sums apart, and the callers use it);
/// `METACLF_NO_LANES` in the environment turns it off, for comparisons.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    super::gemm::switched_on(&ON, "METACLF_NO_LANES")
}

/// A worker's buffers: the group's input and output gradient interleaved, and one block of
/// interleaved unfolded rows.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    dy: Vec<f32>,
    cols: Vec<f32>,
}

/// Unfolded rows per block: RJ-multiple, so that a block of [`KC`] pixels × this many rows
/// × [`LANES`] floats is 192 KiB (it stays in L2 while every output-channel tile reads it).
const ROWS_PER_BLOCK: usize = 24;

/// What [`weight_grads`] writes for each weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// The product: the blocks' sums added in order (matrixmultiply's product with β = 0).
    Product,
    /// Each block's sum apart, block b at `gw[b·weights·LANES ..]`, for a caller that adds
    /// them into an accumulator in order (matrixmultiply's product with β = 1).
    Blocks,
}

/// The blocks of the summed pixel axis (`Out::Blocks` writes this many sets of weights).
pub fn blocks(g: &ConvGeom) -> usize {
    g.ohw().div_ceil(KC)
}

/// The weight gradients of the `m` ≤ [`LANES`] samples of `dy` [m, cout, oh·ow] and `x`
/// [m, cin, h, w], interleaved: `gw[(i·ckk + j)·LANES + l]` = sample l's dW[i, j] (or its
/// blocks, [`Out`]), and, with a bias, `gb[i·LANES + l]` = Σ_p dy_l[i, p] (lanes ≥ m hold
/// zeros). The caller checks [`available`].
#[allow(clippy::too_many_arguments)]
pub fn weight_grads(
    g: &ConvGeom,
    dy: &[f32],
    x: &[f32],
    m: usize,
    out: Out,
    sc: &mut Scratch,
    gw: &mut [f32],
    gb: &mut [f32],
) {
    assert!(m <= LANES && available());
    assert!(dy.len() >= m * g.out_len() && x.len() >= m * g.in_len());
    let sets = if out == Out::Blocks { blocks(g) } else { 1 };
    assert!(gw.len() >= sets * g.weights() * LANES && (!g.bias || gb.len() >= g.cout * LANES));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (`available`); the lengths are checked above
    unsafe {
        let blocks = out == Out::Blocks;
        if std::arch::is_x86_feature_detected!("avx512vl") {
            x86::run_wide(g, dy, x, m, blocks, sc, gw, gb)
        } else {
            x86::run_narrow(g, dy, x, m, blocks, sc, gw, gb)
        }
    }
}

/// `dst[e·LANES + l]` = `src[l·len + e]` for the `m` samples of `src`, zeros in lanes ≥ m
/// and in elements `len..padded` (padding rows). Every element is written, so the buffer is
/// only grown, never cleared. Blocks of 8 elements × 8 lanes are transposed in registers
/// ([`x86::transpose8`]); element by element the gathers from 8 streams cost 5% of the
/// gradient metrics' time at 2×64×64.
#[inline]
fn interleave(src: &[f32], m: usize, len: usize, padded: usize, dst: &mut Vec<f32>) {
    if dst.len() < padded * LANES {
        dst.resize(padded * LANES, 0.0);
    }
    let (head, tail) = dst[..padded * LANES].split_at_mut(len * LANES);
    let body = len / 8 * 8;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 is present (the callers run only where `available`); `transpose8` reads
    // elements e..e + 8 < len of the m ≤ LANES samples and writes 64 values from e·LANES on
    unsafe {
        for e in (0..body).step_by(8) {
            x86::transpose8(
                src.as_ptr().add(e),
                len,
                m,
                head.as_mut_ptr().add(e * LANES),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let body = 0;
    for (e, d) in head.chunks_exact_mut(LANES).enumerate().skip(body) {
        for (l, d) in d.iter_mut().enumerate() {
            *d = if l < m { src[l * len + e] } else { 0.0 };
        }
    }
    tail.fill(0.0);
}

impl ConvGeom {
    /// Unfolded row `j` (= (c, ky, kx)) over the output pixels `p0..p0 + out.len()/LANES`,
    /// interleaved, from the interleaved input `x` [cin, h, w][LANES]: zeros outside the input.
    fn unfold_lanes(&self, x: &[f32], j: usize, p0: usize, out: &mut [f32]) {
        let (k, s, w, ow) = (self.k, self.stride, self.w as isize, self.ow);
        let (c, ky, kx) = (j / (k * k), j % (k * k) / k, j % k);
        let dy = ky as isize - self.pad as isize;
        let dx = kx as isize - self.pad as isize;
        // the output columns whose input column ox·s + dx lies in 0..w
        let si = s as isize;
        let x0 = if dx >= 0 { 0 } else { (-dx + si - 1) / si };
        let x1 = if w - 1 - dx < 0 {
            0
        } else {
            (w - 1 - dx) / si + 1
        };
        let (x0, x1) = (
            x0.clamp(0, ow as isize) as usize,
            x1.clamp(0, ow as isize) as usize,
        );
        let plane = &x[c * self.h * self.w * LANES..(c + 1) * self.h * self.w * LANES];
        let p1 = p0 + out.len() / LANES;
        let mut p = p0;
        while p < p1 {
            let (oy, a) = (p / ow, p % ow);
            let b = ow.min(a + p1 - p);
            let seg = &mut out[(p - p0) * LANES..(p - p0 + b - a) * LANES];
            let iy = (oy * s) as isize + dy;
            if iy < 0 || iy >= self.h as isize {
                seg.fill(0.0);
            } else {
                let row = &plane[iy as usize * self.w * LANES..];
                let (c0, c1) = (a.max(x0).min(b), b.min(x1).max(a.max(x0).min(b)));
                seg[..(c0 - a) * LANES].fill(0.0);
                seg[(c1 - a) * LANES..].fill(0.0);
                let inside = &mut seg[(c0 - a) * LANES..(c1 - a) * LANES];
                if c1 > c0 {
                    let ix0 = (c0 as isize * si + dx) as usize;
                    if s == 1 {
                        inside.copy_from_slice(&row[ix0 * LANES..(ix0 + c1 - c0) * LANES]);
                    } else {
                        for (e, o) in inside.chunks_exact_mut(LANES).enumerate() {
                            let ix = ix0 + e * s;
                            o.copy_from_slice(&row[ix * LANES..(ix + 1) * LANES]);
                        }
                    }
                }
            }
            p += b - a;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Tiles of 4 channels × 6 rows: 24 accumulators of the 32 registers AVX-512VL gives ymm.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_wide(
        g: &ConvGeom,
        dy: &[f32],
        x: &[f32],
        m: usize,
        blocks: bool,
        sc: &mut Scratch,
        gw: &mut [f32],
        gb: &mut [f32],
    ) {
        run::<4, 6>(g, dy, x, m, blocks, sc, gw, gb)
    }

    /// Tiles of 3 channels × 4 rows: 12 accumulators of AVX2's 16 registers.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_narrow(
        g: &ConvGeom,
        dy: &[f32],
        x: &[f32],
        m: usize,
        blocks: bool,
        sc: &mut Scratch,
        gw: &mut [f32],
        gb: &mut [f32],
    ) {
        run::<3, 4>(g, dy, x, m, blocks, sc, gw, gb)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run<const RI: usize, const RJ: usize>(
        g: &ConvGeom,
        dy: &[f32],
        x: &[f32],
        m: usize,
        blocks: bool,
        sc: &mut Scratch,
        gw: &mut [f32],
        gb: &mut [f32],
    ) {
        let (ohw, t, cout) = (g.ohw(), g.ckk(), g.cout);
        let ip = cout.div_ceil(RI) * RI;
        let tp = t.div_ceil(RJ) * RJ;
        let rows_per_block = ROWS_PER_BLOCK.div_ceil(RJ) * RJ;
        interleave(x, m, g.in_len(), g.in_len(), &mut sc.x);
        interleave(dy, m, g.out_len(), ip * ohw, &mut sc.dy);
        if g.bias {
            for i in 0..cout {
                let mut s = _mm256_set1_ps(-0.0);
                let row = sc.dy.as_ptr().add(i * ohw * LANES);
                for p in 0..ohw {
                    s = _mm256_add_ps(s, _mm256_loadu_ps(row.add(p * LANES)));
                }
                _mm256_storeu_ps(gb.as_mut_ptr().add(i * LANES), s);
            }
        }
        let gwp = gw.as_mut_ptr();
        for p0 in (0..ohw).step_by(KC) {
            let pb = (ohw - p0).min(KC);
            for j0 in (0..tp).step_by(rows_per_block) {
                let j1 = (j0 + rows_per_block).min(tp);
                if sc.cols.len() < (j1 - j0) * pb * LANES {
                    sc.cols.resize((j1 - j0) * pb * LANES, 0.0);
                }
                // the padding rows (j ≥ ckk) are zeros; every other row is written whole
                sc.cols[(t.clamp(j0, j1) - j0) * pb * LANES..(j1 - j0) * pb * LANES].fill(0.0);
                for j in j0..t.min(j1) {
                    let o = (j - j0) * pb * LANES;
                    g.unfold_lanes(&sc.x, j, p0, &mut sc.cols[o..o + pb * LANES]);
                }
                for i0 in (0..ip).step_by(RI) {
                    let a = sc.dy.as_ptr().add((i0 * ohw + p0) * LANES);
                    for jt in (j0..j1).step_by(RJ) {
                        let b = sc.cols.as_ptr().add((jt - j0) * pb * LANES);
                        let acc = tile::<RI, RJ>(a, ohw * LANES, b, pb * LANES, pb);
                        for (r, row) in acc.iter().enumerate() {
                            for (c, v) in row.iter().enumerate() {
                                let (i, j) = (i0 + r, jt + c);
                                if i >= cout || j >= t {
                                    continue;
                                }
                                if blocks {
                                    let set = p0 / KC * cout * t;
                                    _mm256_storeu_ps(gwp.add((set + i * t + j) * LANES), *v);
                                    continue;
                                }
                                let cp = gwp.add((i * t + j) * LANES);
                                // C ← block in the first block, C ← block + C after:
                                // matrixmultiply's order with β = 0
                                let v = if p0 == 0 {
                                    *v
                                } else {
                                    _mm256_add_ps(*v, _mm256_loadu_ps(cp))
                                };
                                _mm256_storeu_ps(cp, v);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The 8 × 8 block at `src` (rows `rs` apart, rows ≥ m read as zeros) transposed into
    /// 64 consecutive floats at `dst`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose8(src: *const f32, rs: usize, m: usize, dst: *mut f32) {
        let r: [__m256; 8] = std::array::from_fn(|l| {
            if l < m {
                _mm256_loadu_ps(src.add(l * rs))
            } else {
                _mm256_setzero_ps()
            }
        });
        for (e, v) in transpose8_regs(r).iter().enumerate() {
            _mm256_storeu_ps(dst.add(e * LANES), *v);
        }
    }

    /// The 8 × 8 block in `r` (one row a register) transposed: register e holds element e
    /// of every row.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn transpose8_regs(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// acc[r][c] = Σ_{p < k} a[r·ars + p·LANES ..][lanes] · b[c·brs + p·LANES ..][lanes],
    /// one FMA chain per lane from +0 in p order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const RI: usize, const RJ: usize>(
        a: *const f32,
        ars: usize,
        b: *const f32,
        brs: usize,
        k: usize,
    ) -> [[__m256; RJ]; RI] {
        let mut acc = [[_mm256_setzero_ps(); RJ]; RI];
        for p in 0..k {
            let bv: [__m256; RJ] =
                std::array::from_fn(|c| _mm256_loadu_ps(b.add(c * brs + p * LANES)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_loadu_ps(a.add(r * ars + p * LANES));
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm256_fmadd_ps(av, *bv, *acc);
                }
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::conv;
    use crate::model::gemm::gemm_strided_c;
    use crate::model::gemm::tests::values;

    /// Every geometry the layer list allows (odd kernels 1–5, stride 1 and 2, same and
    /// valid padding, with and without bias), pixel counts across the [`KC`] block and
    /// channel counts off the tile sizes, with 1 to 8 samples: each sample's weight gradient
    /// and bias sums equal matrixmultiply's product and `row_sums` bit for bit.
    #[test]
    fn lanes_equal_matrixmultiply_per_sample_bit_for_bit() {
        if !available() {
            eprintln!("no AVX2 + FMA: the lane kernel does not run here");
            return;
        }
        let geoms = [
            ConvGeom::new(1, 16, 3, 1, 1, 28, 28, true),
            ConvGeom::new(2, 5, 3, 1, 1, 23, 17, true),
            ConvGeom::new(3, 7, 5, 1, 2, 9, 11, false),
            ConvGeom::new(3, 9, 3, 2, 1, 13, 12, false),
            ConvGeom::new(4, 6, 1, 2, 0, 10, 9, false),
            ConvGeom::new(2, 4, 3, 1, 0, 8, 10, true),
            ConvGeom::new(5, 13, 3, 2, 0, 21, 20, true),
            ConvGeom::new(1, 2, 5, 1, 2, 40, 30, true),
        ];
        let mut sc = Scratch::default();
        for (gi, g) in geoms.iter().enumerate() {
            for m in [1, 3, LANES] {
                let dy = values(m * g.out_len(), gi as u64 * 10 + m as u64);
                let x = values(m * g.in_len(), gi as u64 * 10 + m as u64 + 5);
                let mut gw = vec![f32::NAN; g.weights() * LANES];
                let mut gb = vec![f32::NAN; g.cout * LANES];
                weight_grads(g, &dy, &x, m, Out::Product, &mut sc, &mut gw, &mut gb);
                let mut cols = vec![0f32; g.cols_len()];
                for s in 0..m {
                    let (ol, il, t) = (g.out_len(), g.in_len(), g.ckk());
                    g.im2col(&x[s * il..(s + 1) * il], &mut cols);
                    let mut want = vec![0f32; g.weights()];
                    gemm_strided_c(
                        g.cout,
                        g.ohw(),
                        t,
                        &dy[s * ol..(s + 1) * ol],
                        (g.ohw(), 1),
                        &cols,
                        (1, g.ohw()),
                        &mut want,
                        (t, 1),
                    );
                    for (e, w) in want.iter().enumerate() {
                        assert_eq!(
                            gw[e * LANES + s].to_bits(),
                            w.to_bits(),
                            "{g:?}, {m} samples, sample {s}, weight {e}"
                        );
                    }
                    if g.bias {
                        let rs = conv::row_sums(&dy[s * ol..(s + 1) * ol], g.cout, g.ohw());
                        for (i, r) in rs.iter().enumerate() {
                            assert_eq!(gb[i * LANES + s].to_bits(), r.to_bits(), "{g:?} bias {i}");
                        }
                    }
                }
                for l in m..LANES {
                    assert!(gw.iter().skip(l).step_by(LANES).all(|v| *v == 0.0));
                }
            }
        }
    }
}
