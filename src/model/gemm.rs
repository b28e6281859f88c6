//! The matrix product every layer kind is built on, and the fixed chunk of samples that
//! parallel work is split into: reductions over samples run in chunk order, so results do not
//! depend on the number of threads.
//!
//! [`gemm`] is matrixmultiply's `sgemm` with explicit strides, except on a CPU with AVX-512
//! or AVX2 with FMA for products whose B rows are contiguous (conv forward and input
//! gradient, the linear layers), where an own kernel computes them with less packing (see
//! [`avx512`], [`avx2`]).
//! matrixmultiply copies both operands into packed panels on every call (and allocates the
//! panels): for the conv layers' products, 16 × 144 by 144 × 196 per sample and the like,
//! packing cost about as much as the arithmetic. The own kernel reads B's rows in place and
//! A by broadcasts, in place when A's columns are contiguous, else from a panel packed once
//! per 16 rows. The conv weight gradient (both operands contiguous along the summed
//! dimension, so one must be transposed; transposing it in this kernel measured no faster)
//! runs in [`super::implicit`] for training's sum over a batch and in [`super::lanes`], 8
//! samples side by side, for the per-sample statistics, where AVX2 with FMA is present. The own
//! kernel's results are **bit for bit matrixmultiply's** on FMA hardware: each
//! entry of C is the same chain of fused multiply-adds in k order, started from +0 in blocks
//! of [`KC`] products, each block added to C as matrixmultiply adds it (tested below).

use matrixmultiply::sgemm;

/// Samples per parallel work item; fixed, so reductions are deterministic.
pub const CHUNK: usize = 8;

/// `len` values built chunk by chunk in parallel: each chunk of `chunk` elements (the last
/// may be shorter) is zeroed by the worker that then hands it to `f` with its index. The
/// zeroing happens in cache just before `f` writes, not in the allocator for the whole
/// buffer up front (a zeroed allocation of a batch's activations cost 3% of the gradient
/// features' time per buffer, on one thread and out of cache).
pub fn par_zeroed<T: Default + Copy + Send + Sync>(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    use std::mem::MaybeUninit;
    // SAFETY: every element of each chunk is written (zeroed) before `f` sees it
    unsafe {
        par_written(len, chunk, |i, c| {
            for e in c.iter_mut() {
                e.write(T::default());
            }
            // SAFETY: every element of `c` was written just above
            let c = &mut *(c as *mut [MaybeUninit<T>] as *mut [T]);
            f(i, c);
        })
    }
}

/// [`par_zeroed`] for a `f` that writes every element of its chunk: no zeroing first (the
/// zeroing of a batch norm's or an input gradient's output, which the pass then overwrites,
/// cost a memset of every activation).
///
/// # Safety
/// `f` must initialise every element of the chunk it is given.
pub unsafe fn par_written<T: Send + Sync>(
    len: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut v: Vec<T> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
    // SAFETY: the chunks cover the first `len` elements, each written by `f` (the caller's
    // promise)
    unsafe { v.set_len(len) };
    v
}

/// Whether the CPU has AVX2 (detected once): the f64 lanes of batch norm's sums and of the
/// moments use it.
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| is_x86_feature_detected!("avx2"))
}

/// Whether the CPU has AVX2 and FMA (detected once; false off x86-64): what the own AVX2
/// kernel, the lane kernel and the implicit conv kernels need.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A kernel's switch: AVX2 with FMA present and `off` not set in the environment (which
/// turns the kernel off, for comparisons), decided once into `cell`.
pub fn switched_on(cell: &std::sync::OnceLock<bool>, off: &str) -> bool {
    *cell.get_or_init(|| std::env::var_os(off).is_none() && has_avx2_fma())
}

/// matrixmultiply's block of the summed dimension for f32 (its `S_KC`): every entry of C
/// gets one FMA chain per block, and the blocks are added to C in order.
pub const KC: usize = 256;

/// C = A·B + beta · C with explicit strides (row stride, column stride). A is m × k, B is
/// k × n, C is m × n with row stride `rsc` and column stride 1.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    debug_assert!(m == 0 || k == 0 || a.len() > (m - 1) * rsa + (k - 1) * csa);
    debug_assert!(k == 0 || n == 0 || b.len() > (k - 1) * rsb + (n - 1) * csb);
    debug_assert!(m == 0 || n == 0 || c.len() > (m - 1) * rsc + (n - 1));
    #[cfg(target_arch = "x86_64")]
    if m > 0 && n > 0 && k > 0 && (csb == 1 || n == 1) && avx512::available() {
        // SAFETY: AVX-512F is present; the slices cover every index the strides reach
        // (checked above in debug builds, guaranteed by the callers' shapes).
        unsafe { avx512::gemm(m, k, n, a, (rsa, csa), b, (rsb, csb), beta, c, rsc) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if m > 0 && n > 0 && k > 0 && (csb == 1 || n == 1) && avx2::available() {
        // SAFETY: AVX2 and FMA are present; the slices cover every index the strides reach
        // (checked above in debug builds, guaranteed by the callers' shapes).
        unsafe { avx2::gemm(m, k, n, a, (rsa, csa), b, (rsb, csb), beta, c, rsc) };
        return;
    }
    matrixmultiply_gemm(m, k, n, a, (rsa, csa), b, (rsb, csb), beta, c, rsc);
}

/// [`gemm`] into a C with column stride `csc` (matrixmultiply's, whatever the CPU: the same
/// values as [`gemm`], written apart, e.g. interleaved with other samples' products).
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided_c(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    sa: (usize, usize),
    b: &[f32],
    sb: (usize, usize),
    c: &mut [f32],
    sc: (usize, usize),
) {
    sgemm_checked(m, k, n, a, sa, b, sb, 0.0, c, sc);
}

/// [`gemm`] by matrixmultiply, whatever the CPU.
#[allow(clippy::too_many_arguments)]
pub fn matrixmultiply_gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    sa: (usize, usize),
    b: &[f32],
    sb: (usize, usize),
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    sgemm_checked(m, k, n, a, sa, b, sb, beta, c, (rsc, 1));
}

#[allow(clippy::too_many_arguments)]
fn sgemm_checked(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    (rsc, csc): (usize, usize),
) {
    assert!(m == 0 || n == 0 || c.len() > (m - 1) * rsc + (n - 1) * csc);
    debug_assert!(m == 0 || k == 0 || a.len() > (m - 1) * rsa + (k - 1) * csa);
    debug_assert!(k == 0 || n == 0 || b.len() > (k - 1) * rsb + (n - 1) * csb);
    // SAFETY: the slices cover every index the strides reach (C checked above; A and B
    // checked in debug builds and guaranteed by the callers' shapes).
    unsafe {
        sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            csc as isize,
        );
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    //! The AVX-512 kernel: C tiles of up to 16 rows × 16 columns, one zmm accumulator per row;
    //! per k, one (masked) load of B's row segment and one broadcast-FMA per row of A.

    use super::KC;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    /// Whether the CPU has AVX-512F (detected once; `METACLF_NO_AVX512` set in the
    /// environment turns the kernel off, for comparisons).
    pub fn available() -> bool {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            std::env::var_os("METACLF_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f")
        })
    }

    thread_local! {
        /// A's panels when its columns are not contiguous.
        static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// [`super::gemm`] on AVX-512.
    ///
    /// # Safety
    /// AVX-512F must be available, m, k, n > 0, and the slices must cover every index the
    /// strides reach.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
        beta: f32,
        c: &mut [f32],
        rsc: usize,
    ) {
        debug_assert!(csb == 1 || n == 1);
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        if rsa == 1 || m == 1 {
            // A's columns are contiguous: the broadcasts read A in place
            return kernel(m, k, n, a, csa, b, rsb, beta, c, rsc);
        }
        // A's rows are contiguous (or strided): its 16-row blocks are copied into panels of
        // [k][16], so a tile's broadcasts sit at fixed offsets from one pointer (read in place
        // they needed a pointer per row, more than the registers hold)
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            for i0 in (0..m).step_by(16) {
                let rows = (m - i0).min(16);
                pack(a.add(i0 * rsa), rsa, csa, rows, k, &mut s);
                kernel(
                    rows,
                    k,
                    n,
                    s.as_ptr(),
                    16,
                    b,
                    rsb,
                    beta,
                    c.add(i0 * rsc),
                    rsc,
                );
            }
        });
    }

    /// out[kk·16 + r] = src[r·rs + kk·cs] for r < rows ≤ 16, kk < k.
    unsafe fn pack(
        src: *const f32,
        rs: usize,
        cs: usize,
        rows: usize,
        k: usize,
        out: &mut Vec<f32>,
    ) {
        out.clear();
        out.resize(16 * k, 0.0);
        let dst = out.as_mut_ptr();
        for r in 0..rows {
            let row = src.add(r * rs);
            for kk in 0..k {
                *dst.add(kk * 16 + r) = *row.add(kk * cs);
            }
        }
    }

    /// C[i, j] (row stride rsc) = Σ_k A[i, k]·B[k, j] + beta·C, with A[i, k] at
    /// a[i + k·astep] (its columns contiguous) and B's rows contiguous (row stride rsb).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        astep: usize,
        b: *const f32,
        rsb: usize,
        beta: f32,
        c: *mut f32,
        rsc: usize,
    ) {
        for i0 in (0..m).step_by(16) {
            for j0 in (0..n).step_by(16) {
                let w = (n - j0).min(16);
                let t = Tile {
                    k,
                    a: a.add(i0),
                    astep,
                    b: b.add(j0),
                    rsb,
                    beta,
                    c: c.add(i0 * rsc + j0),
                    rsc,
                    mask: if w == 16 { 0xffff } else { (1u16 << w) - 1 },
                };
                macro_rules! rows {
                    ($($r:literal)*) => {
                        match (m - i0).min(16) {
                            $($r => t.run::<$r>(),)*
                            _ => unreachable!(),
                        }
                    };
                }
                rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
            }
        }
    }

    /// One C tile: rows from `a` and `c` on, the columns of `mask` from `b` and `c` on.
    struct Tile {
        k: usize,
        a: *const f32,
        astep: usize,
        b: *const f32,
        rsb: usize,
        beta: f32,
        c: *mut f32,
        rsc: usize,
        mask: __mmask16,
    }

    impl Tile {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn run<const R: usize>(&self) {
            let mut k0 = 0;
            while k0 < self.k {
                let kc = (self.k - k0).min(KC);
                let mut acc = [_mm512_setzero_ps(); R];
                let mut bp = self.b.add(k0 * self.rsb);
                let mut ap = self.a.add(k0 * self.astep);
                for _ in 0..kc {
                    let bv = _mm512_maskz_loadu_ps(self.mask, bp);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(r)), bv, *acc);
                    }
                    bp = bp.add(self.rsb);
                    ap = ap.add(self.astep);
                }
                // C ← block + β·C in the first block (C not read when β = 0), C ← block + C
                // after: matrixmultiply's order
                for (r, acc) in acc.iter().enumerate() {
                    let cp = self.c.add(r * self.rsc);
                    let v = if k0 == 0 && self.beta == 0.0 {
                        *acc
                    } else {
                        let mut old = _mm512_maskz_loadu_ps(self.mask, cp);
                        if k0 == 0 {
                            old = _mm512_mul_ps(old, _mm512_set1_ps(self.beta));
                        }
                        _mm512_add_ps(*acc, old)
                    };
                    _mm512_mask_storeu_ps(cp, self.mask, v);
                }
                k0 += kc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    //! The kernel for CPUs with AVX2 and FMA but not AVX-512: C tiles of up to [`MR`] rows ×
    //! 16 columns, two ymm accumulators per row; per k, two (masked) loads of B's row segment
    //! and one broadcast and two FMAs per row of A. The column tiles run outermost, so one
    //! strip of B (k × 16) serves every block of rows while it is in cache (copied where many
    //! row blocks read it); A is read in place, a tile's rows at fixed offsets from one
    //! pointer that moves along k. matrixmultiply packed both operands on every call
    //! (a quarter of its time in a ResNet's conv products). Each entry of C is the same chain
    //! of fused multiply-adds in k order as matrixmultiply's, in blocks of [`KC`], so the
    //! results are bit for bit its own (tested).

    use super::KC;
    use std::arch::x86_64::*;

    /// Rows of a tile: 6 rows × 2 accumulators, 2 B registers and a broadcast fill 15 of the
    /// 16 ymm registers.
    pub const MR: usize = 6;

    /// The lane masks of the first `w` of 16 columns, as two registers of 8.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn masks16(w: usize) -> [__m256i; 2] {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let w = w as i32;
        [
            _mm256_cmpgt_epi32(_mm256_set1_epi32(w), lanes),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(w - 8), lanes),
        ]
    }

    /// Half `h` (columns 8h..8h + 8) of 16 columns from `p` on: all of them when FULL, else
    /// those of `masks` (the others read as 0, and not at all).
    ///
    /// # Safety
    /// AVX2 must be available and the columns read must lie in memory `p` may reach.
    #[inline(always)]
    pub unsafe fn load16<const FULL: bool>(
        p: *const f32,
        h: usize,
        masks: &[__m256i; 2],
    ) -> __m256 {
        if FULL {
            _mm256_loadu_ps(p.add(8 * h))
        } else {
            _mm256_maskload_ps(p.add(8 * h), masks[h])
        }
    }

    /// Whether the CPU has AVX2 and FMA (detected once; `METACLF_NO_AVX2_GEMM` set in the
    /// environment leaves the products to matrixmultiply, for comparisons).
    pub fn available() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        super::switched_on(&ON, "METACLF_NO_AVX2_GEMM")
    }

    /// [`super::gemm`] on AVX2 with FMA.
    ///
    /// # Safety
    /// AVX2 and FMA must be available, m, k, n > 0, and the slices must cover every index
    /// the strides reach.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
        beta: f32,
        c: &mut [f32],
        rsc: usize,
    ) {
        debug_assert!(csb == 1 || n == 1);
        kernel(
            m,
            k,
            n,
            a.as_ptr(),
            (rsa, csa),
            b.as_ptr(),
            rsb,
            beta,
            c.as_mut_ptr(),
            rsc,
        )
    }

    /// C[i, j] (row stride rsc) = Σ_k A[i, k]·B[k, j] + beta·C, A read in place (A[i, k] at
    /// a + i·rsa + k·csa: a tile's rows are fixed offsets from one pointer that moves along
    /// k) and B's rows contiguous (row stride rsb).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        (rsa, csa): (usize, usize),
        b: *const f32,
        rsb: usize,
        beta: f32,
        c: *mut f32,
        rsc: usize,
    ) {
        // one strip of B (kc × 16), copied when many row blocks read it (the input
        // gradient's Wᵀ · dy, ckk rows): in place its rows are rsb apart, often a multiple
        // of 1 or 4 KiB, so that they share a few cache sets and left the first level cache
        // between row blocks (measured: 288 × 32 by 32 × 256 at 68 GFLOP/s in place, 86 from
        // the copy, on one Zen core; for a few row blocks the copy cost more than it saved)
        let mut strip = [0f32; KC * 16];
        for k0 in (0..k).step_by(KC) {
            let kc = (k - k0).min(KC);
            for j0 in (0..n).step_by(16) {
                let w = (n - j0).min(16);
                let masks = masks16(w);
                let (mut bs, mut rsbs) = (b.add(k0 * rsb + j0), rsb);
                if m >= 8 * MR {
                    let sp = strip.as_mut_ptr();
                    for kk in 0..kc {
                        let row = bs.add(kk * rsb);
                        for h in 0..2 {
                            let v = if w == 16 {
                                load16::<true>(row, h, &masks)
                            } else {
                                load16::<false>(row, h, &masks)
                            };
                            _mm256_storeu_ps(sp.add(kk * 16 + 8 * h), v);
                        }
                    }
                    (bs, rsbs) = (sp as *const f32, 16);
                }
                rows(
                    m,
                    kc,
                    a.add(k0 * csa),
                    (rsa, csa),
                    bs,
                    rsbs,
                    beta,
                    k0 == 0,
                    c.add(j0),
                    rsc,
                    w,
                );
            }
        }
    }

    /// Every row tile of C's `m` rows against one block of `kc` rows of B and up to 16 of
    /// its columns (`w`): A[i, k] at a + i·rsa + k·csa, B[k, j] at b + k·rsb + j, C[i, j] at
    /// c + i·rsc + j; `first`: the block that starts C (C ← block + β·C), else C ← block + C.
    ///
    /// # Safety
    /// AVX2 and FMA must be available, and the pointers must reach every index named.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows(
        m: usize,
        kc: usize,
        a: *const f32,
        (rsa, csa): (usize, usize),
        b: *const f32,
        rsb: usize,
        beta: f32,
        first: bool,
        c: *mut f32,
        rsc: usize,
        w: usize,
    ) {
        let masks = masks16(w);
        let arow: [usize; MR] = std::array::from_fn(|r| r * rsa);
        for i0 in (0..m).step_by(MR) {
            let t = Tile {
                kc,
                a: a.add(i0 * rsa),
                arow,
                astep: csa,
                b,
                rsb,
                beta: if first { beta } else { 1.0 },
                first,
                c: c.add(i0 * rsc),
                rsc,
                masks,
            };
            macro_rules! rows {
                ($($r:literal)*) => {
                    match ((m - i0).min(MR), w == 16, rsa == 1) {
                        $(($r, true, false) => t.run::<$r, true, false>(),
                          ($r, false, false) => t.run::<$r, false, false>(),
                          ($r, true, true) => t.run::<$r, true, true>(),
                          ($r, false, true) => t.run::<$r, false, true>(),)*
                        _ => unreachable!(),
                    }
                };
            }
            rows!(1 2 3 4 5 6);
        }
    }

    /// One C tile and one block of the summed dimension: rows from `a` and `c` on, the
    /// columns of `masks` (all 16 when FULL) from `b` and `c` on, `kc` products; `first`:
    /// the block that starts C (C ← block + β·C, not read when β = 0), else C ← block + C.
    struct Tile {
        kc: usize,
        a: *const f32,
        /// Row r of the tile's A at a + arow[r] (+ k·astep).
        arow: [usize; MR],
        astep: usize,
        b: *const f32,
        rsb: usize,
        beta: f32,
        first: bool,
        c: *mut f32,
        rsc: usize,
        masks: [__m256i; 2],
    }

    impl Tile {
        #[inline(always)]
        unsafe fn load<const FULL: bool>(&self, p: *const f32, h: usize) -> __m256 {
            load16::<FULL>(p, h, &self.masks)
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<const R: usize, const FULL: bool, const UNIT: bool>(&self) {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let (mut bp, mut ap) = (self.b, self.a);
            for _ in 0..self.kc {
                let bv = [self.load::<FULL>(bp, 0), self.load::<FULL>(bp, 1)];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let o = if UNIT { r } else { self.arow[r] };
                    let av = _mm256_broadcast_ss(&*ap.add(o));
                    acc[0] = _mm256_fmadd_ps(av, bv[0], acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, bv[1], acc[1]);
                }
                bp = bp.add(self.rsb);
                ap = ap.add(self.astep);
            }
            // matrixmultiply's order: C ← block + β·C in the first block (C not read when
            // β = 0), C ← block + C after
            for (r, acc) in acc.iter().enumerate() {
                let cp = self.c.add(r * self.rsc);
                for (h, acc) in acc.iter().enumerate() {
                    let v = if self.first && self.beta == 0.0 {
                        *acc
                    } else {
                        let mut old = self.load::<FULL>(cp, h);
                        if self.first {
                            old = _mm256_mul_ps(old, _mm256_set1_ps(self.beta));
                        }
                        _mm256_add_ps(*acc, old)
                    };
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
pub(crate) mod tests {
    use super::*;

    /// Values with every kind of rounding: mixed signs and magnitudes, exact zeros, −0.
    pub(crate) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match i % 23 {
                    0 => 0.0,
                    11 => -0.0,
                    _ => ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (1 << (s % 9)) as f32,
                }
            })
            .collect()
    }

    /// The definition with matrixmultiply's rounding, for machines without AVX-512: one
    /// fused chain per block of KC, the blocks added to C in order.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
        beta: f32,
        c: &mut [f32],
        rsc: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut cv = c[i * rsc + j];
                for k0 in (0..k).step_by(KC) {
                    let mut ab = 0f32;
                    for kk in k0..(k0 + KC).min(k) {
                        ab = a[i * rsa + kk * csa].mul_add(b[kk * rsb + j * csb], ab);
                    }
                    cv = match (k0, beta) {
                        (0, 0.0) => ab,
                        (0, _) => ab + cv * beta,
                        _ => ab + cv,
                    };
                }
                c[i * rsc + j] = cv;
            }
        }
    }

    #[test]
    fn own_kernel_is_matrixmultiply_bit_for_bit() {
        // (m, k, n) with the layouts the layers use: conv forward (W · cols), conv input
        // gradient (Wᵀ · dy), per-sample weight gradient (dy · colsᵀ: both operands
        // contiguous along k), linear layers; tails of rows and columns, k over 2 blocks
        type Layout = ((usize, usize), (usize, usize));
        let cases: Vec<(usize, usize, usize, Layout)> = vec![
            (16, 144, 196, ((144, 1), (196, 1))),
            (144, 16, 196, ((1, 144), (196, 1))),
            (16, 784, 9, ((784, 1), (1, 784))),
            (16, 196, 144, ((196, 1), (1, 196))),
            (64, 600, 64, ((600, 1), (1, 600))),
            (33, 5, 17, ((5, 1), (1, 5))),
            (10, 300, 784, ((1, 10), (784, 1))),
            (7, 513, 3, ((1, 7), (3, 1))),
            (1, 40, 1, ((40, 1), (1, 1))),
            (5, 3, 1, ((3, 1), (1, 1))),
        ];
        for (ci, &(m, k, n, ((rsa, csa), (rsb, csb)))) in cases.iter().enumerate() {
            let a = values((m - 1) * rsa + (k - 1) * csa + 1, 3 * ci as u64 + 1);
            let b = values((k - 1) * rsb + (n - 1) * csb + 1, 3 * ci as u64 + 2);
            for (beta, rsc) in [(0.0, n), (1.0, n + 3), (0.5, n)] {
                let c0 = values((m - 1) * rsc + n, 3 * ci as u64 + 3);
                let mut want = c0.clone();
                matrixmultiply_gemm(
                    m,
                    k,
                    n,
                    &a,
                    (rsa, csa),
                    &b,
                    (rsb, csb),
                    beta,
                    &mut want,
                    rsc,
                );
                let mut by_def = c0.clone();
                reference(
                    m,
                    k,
                    n,
                    &a,
                    (rsa, csa),
                    &b,
                    (rsb, csb),
                    beta,
                    &mut by_def,
                    rsc,
                );
                let mut got = c0.clone();
                gemm(m, k, n, &a, (rsa, csa), &b, (rsb, csb), beta, &mut got, rsc);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let case = format!("m {m} k {k} n {n} beta {beta}");
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("fma") {
                    assert_eq!(
                        bits(&by_def),
                        bits(&want),
                        "reference vs matrixmultiply, {case}"
                    );
                }
                assert_eq!(bits(&got), bits(&want), "gemm vs matrixmultiply, {case}");
                // the AVX2 kernel itself (on the products it takes: B's rows contiguous),
                // also where gemm dispatches to AVX-512
                #[cfg(target_arch = "x86_64")]
                if (csb == 1 || n == 1)
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                {
                    let mut got = c0.clone();
                    // SAFETY: AVX2 and FMA are present; the slices cover the strides
                    unsafe {
                        avx2::gemm(m, k, n, &a, (rsa, csa), &b, (rsb, csb), beta, &mut got, rsc)
                    };
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "AVX2 kernel vs matrixmultiply, {case}"
                    );
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if !avx512::available() {
            eprintln!("no AVX-512 here: the AVX-512 kernel was not run");
        }
    }
}
