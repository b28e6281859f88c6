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
//! a zero of the padding is the same +0 that the unfolding writes there.

use super::conv::ConvGeom;
use super::gemm::KC;

/// Whether the implicit kernels run on this CPU: AVX2 with FMA (`METACLF_NO_IMPLICIT` in the
/// environment turns them off, for comparisons).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            std::env::var_os("METACLF_NO_IMPLICIT").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
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
        let (h, w, p) = (self.h, self.w, self.pad);
        let (hp, wp) = self.padded();
        for (plane, src) in out
            .chunks_exact_mut(hp * wp)
            .zip(x.chunks_exact(h * w))
            .take(self.cin)
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

    /// Offset in the padded sample of each unfolded row (c, ky, kx), at output pixel (0, 0).
    fn row_offsets(&self) -> Vec<usize> {
        let (hp, wp) = self.padded();
        let kk = self.k * self.k;
        (0..self.ckk())
            .map(|r| (r / kk) * hp * wp + (r % kk / self.k) * wp + r % self.k)
            .collect()
    }
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
    if x86::present() {
        // SAFETY: AVX2 and FMA are present, and the slices hold what the geometry reaches
        // (asserted): every unfolded position lies inside the padded sample by the output
        // size's definition, (oh − 1)·s + k ≤ h + 2·pad
        unsafe { x86::weight_grad(g, xp.as_ptr(), dyt.as_ptr(), c.as_mut_ptr()) };
        return;
    }
    panic!("the implicit conv kernels need AVX2 with FMA");
}

/// `t` [cols, rows] = `m` [rows, cols] transposed.
pub fn transpose(m: &[f32], rows: usize, cols: usize, t: &mut [f32]) {
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
    use std::arch::x86_64::*;

    /// Rows of a tile (unfolded rows): 6 × 2 accumulators, 2 registers of the output
    /// gradient and a broadcast fill 15 of the 16 ymm registers.
    const MR: usize = 6;

    pub fn present() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weight_grad(g: &ConvGeom, xp: *const f32, dyt: *const f32, c: *mut f32) {
        let (ckk, co, ohw) = (g.ckk(), g.cout, g.ohw());
        let rows = g.row_offsets();
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for k0 in (0..ohw).step_by(KC) {
            let k1 = (k0 + KC).min(ohw);
            for j0 in (0..co).step_by(16) {
                let w = (co - j0).min(16) as i32;
                let t = WTile {
                    g,
                    xp,
                    k0,
                    k1,
                    b: dyt.add(j0),
                    masks: [
                        _mm256_cmpgt_epi32(_mm256_set1_epi32(w), lanes),
                        _mm256_cmpgt_epi32(_mm256_set1_epi32(w - 8), lanes),
                    ],
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
            if FULL {
                _mm256_loadu_ps(p.add(8 * h))
            } else {
                _mm256_maskload_ps(p.add(8 * h), self.masks[h])
            }
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
