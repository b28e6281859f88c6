//! 2-D convolution (any odd kernel, stride ≥ 1, same or valid padding, with or without bias)
//! by im2col + GEMM: forward, input gradient, weight gradient summed over a batch, and the
//! per-sample weight gradient's moments (formed one sample at a time from its output gradient
//! and its input unfolded again, never held for the batch). On AVX2 with FMA the forward, the
//! stride-1 input gradient and the summed weight gradient read the zero-padded sample instead
//! of its unfolding ([`implicit`]), bit for bit the same products.

use super::gemm::{gemm, gemm_strided_c, par_zeroed, CHUNK};
use super::moments::{Moments, LANES};
use super::{implicit, lanes};
use rayon::prelude::*;

/// Geometry of a conv layer: `cin` × `h` × `w` in, `cout` × `oh` × `ow` out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    /// Zeros on each side.
    pub pad: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub bias: bool,
}

impl ConvGeom {
    /// A geometry with the output size of a window of `k` at `stride` over `pad`-padded input
    /// (the caller has checked that it is at least 1×1).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        h: usize,
        w: usize,
        bias: bool,
    ) -> ConvGeom {
        ConvGeom {
            cin,
            cout,
            k,
            stride,
            pad,
            h,
            w,
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (w + 2 * pad - k) / stride + 1,
            bias,
        }
    }
    /// Output pixels per channel.
    pub fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    /// Rows of the unfolded input (= weight entries per output channel).
    pub fn ckk(&self) -> usize {
        self.cin * self.k * self.k
    }
    pub fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    pub fn out_len(&self) -> usize {
        self.cout * self.ohw()
    }
    pub fn cols_len(&self) -> usize {
        self.ckk() * self.ohw()
    }
    pub fn weights(&self) -> usize {
        self.cout * self.ckk()
    }

    /// The kernel offsets (c, ky, kx) in the order of the unfolded rows (row = the index).
    fn kernel_offsets(&self) -> impl Iterator<Item = (usize, usize, usize)> {
        let k = self.k;
        (0..self.cin).flat_map(move |c| (0..k * k).map(move |r| (c, r / k, r % k)))
    }

    /// Stride 1 with "same" padding: every row of the unfolded input is the input plane
    /// shifted by one offset, so it is copied as one span (see [`Self::im2col`]).
    fn shifts_whole_planes(&self) -> bool {
        self.stride == 1 && self.oh == self.h && self.ow == self.w
    }

    /// For "same" stride-1 geometry: per (ky, kx), the shift `off` (= dy·w + dx) from a
    /// position of the unfolded row to its input pixel, the rows `y0..y1` and columns
    /// `x0..x1` whose pixel lies inside the input, and the span `j0..j1` of unfolded
    /// positions whose shifted index lies inside the plane (all of the inside positions and
    /// at most `pad` outside ones per row, at the row ends).
    fn shift(&self, ky: usize, kx: usize) -> Option<Shift> {
        let (h, w, p) = (self.h as isize, self.w as isize, self.pad as isize);
        let (dy, dx) = (ky as isize - p, kx as isize - p);
        let (y0, y1) = ((-dy).clamp(0, h), (h - dy).clamp(0, h));
        let (x0, x1) = ((-dx).clamp(0, w), (w - dx).clamp(0, w));
        if y1 <= y0 || x1 <= x0 {
            return None;
        }
        let off = dy * w + dx;
        let j0 = (y0 * w).max(-off);
        let j1 = (y1 * w).min(h * w - off).max(j0);
        let u = |v: isize| v as usize;
        Some(Shift {
            off,
            rows: u(y0)..u(y1),
            cols: u(x0)..u(x1),
            span: u(j0)..u(j1),
        })
    }

    /// Unfolds one sample [cin, h, w] into cols [cin·k·k, oh·ow] (zeros outside the input).
    /// Stride 1 with "same" padding copies each row as one span of the plane and then zeroes
    /// the few positions outside the input (the rows' ends); other geometries go row by row.
    pub fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        if !self.shifts_whole_planes() {
            return self.im2col_rows(x, cols);
        }
        let (w, hw) = (self.w, self.h * self.w);
        for (row, (c, ky, kx)) in self.kernel_offsets().enumerate() {
            let plane = &x[c * hw..(c + 1) * hw];
            let dst = &mut cols[row * hw..(row + 1) * hw];
            let Some(sh) = self.shift(ky, kx) else {
                dst.fill(0.0);
                continue;
            };
            dst[sh.span.clone()].copy_from_slice(&plane[sh.source()]);
            dst[..sh.span.start].fill(0.0);
            dst[sh.span.end..].fill(0.0);
            zero_row_ends(dst, w, &sh);
        }
    }

    /// [`Self::im2col`] row by row of the output (any stride and padding).
    fn im2col_rows(&self, x: &[f32], cols: &mut [f32]) {
        let (h, w, s) = (self.h as isize, self.w as isize, self.stride as isize);
        let (oh, ow) = (self.oh as isize, self.ow as isize);
        let p = self.pad as isize;
        let ohw = self.ohw();
        let hw = (h * w) as usize;
        for (row, (c, ky, kx)) in self.kernel_offsets().enumerate() {
            let plane = &x[c * hw..(c + 1) * hw];
            let dst = &mut cols[row * ohw..(row + 1) * ohw];
            let (dy, dx) = (ky as isize - p, kx as isize - p);
            for y in 0..oh {
                let sy = y * s + dy;
                let out = &mut dst[(y * ow) as usize..((y + 1) * ow) as usize];
                if sy < 0 || sy >= h {
                    out.fill(0.0);
                    continue;
                }
                let src = &plane[(sy * w) as usize..((sy + 1) * w) as usize];
                if s == 1 {
                    let x0 = (-dx).clamp(0, ow) as usize;
                    let x1 = (w - dx).clamp(0, ow) as usize;
                    if x1 > x0 {
                        out[..x0].fill(0.0);
                        out[x1..].fill(0.0);
                        let s0 = (x0 as isize + dx) as usize;
                        out[x0..x1].copy_from_slice(&src[s0..s0 + (x1 - x0)]);
                    } else {
                        out.fill(0.0);
                    }
                } else {
                    for (ox, o) in out.iter_mut().enumerate() {
                        let sx = ox as isize * s + dx;
                        *o = if sx < 0 || sx >= w {
                            0.0
                        } else {
                            src[sx as usize]
                        };
                    }
                }
            }
        }
    }

    /// Folds cols gradients back onto the input: dx [cin, h, w] = col2im(dcols) (overwrites;
    /// `dcols` is scratch: stride 1 with "same" padding zeroes its positions outside the input
    /// and adds each row as one span, as [`Self::im2col`] copies it). The span adds +0.0 at
    /// those positions, which changes nothing: a sum that starts at +0.0 is never −0.0, and
    /// x + 0.0 = x for every other x, so the result is bit for bit that of the row-by-row fold.
    pub fn col2im(&self, dcols: &mut [f32], dx: &mut [f32]) {
        if !self.shifts_whole_planes() {
            return self.col2im_rows(dcols, dx);
        }
        let (w, hw) = (self.w, self.h * self.w);
        dx.fill(0.0);
        for (row, (c, ky, kx)) in self.kernel_offsets().enumerate() {
            let plane = &mut dx[c * hw..(c + 1) * hw];
            let src = &mut dcols[row * hw..(row + 1) * hw];
            let Some(sh) = self.shift(ky, kx) else {
                continue;
            };
            zero_row_ends(src, w, &sh);
            for (d, v) in plane[sh.source()].iter_mut().zip(&src[sh.span.clone()]) {
                *d += v;
            }
        }
    }

    /// [`Self::col2im`] row by row of the output (any stride and padding).
    fn col2im_rows(&self, dcols: &[f32], dx: &mut [f32]) {
        let (h, w, s) = (self.h as isize, self.w as isize, self.stride as isize);
        let (oh, ow) = (self.oh as isize, self.ow as isize);
        let p = self.pad as isize;
        let ohw = self.ohw();
        let hw = (h * w) as usize;
        dx.fill(0.0);
        for (row, (c, ky, kx)) in self.kernel_offsets().enumerate() {
            let plane = &mut dx[c * hw..(c + 1) * hw];
            let src = &dcols[row * ohw..(row + 1) * ohw];
            let (dy, dxo) = (ky as isize - p, kx as isize - p);
            for y in 0..oh {
                let sy = y * s + dy;
                if sy < 0 || sy >= h {
                    continue;
                }
                let srow = &src[(y * ow) as usize..((y + 1) * ow) as usize];
                let drow = &mut plane[(sy * w) as usize..((sy + 1) * w) as usize];
                if s == 1 {
                    let x0 = (-dxo).clamp(0, ow) as usize;
                    let x1 = (w - dxo).clamp(0, ow) as usize;
                    if x1 <= x0 {
                        continue;
                    }
                    let d0 = (x0 as isize + dxo) as usize;
                    for (d, v) in drow[d0..d0 + (x1 - x0)].iter_mut().zip(&srow[x0..x1]) {
                        *d += v;
                    }
                } else {
                    for (ox, v) in srow.iter().enumerate() {
                        let sx = ox as isize * s + dxo;
                        if sx >= 0 && sx < w {
                            drow[sx as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// One (ky, kx) row of a "same" stride-1 unfolding ([`ConvGeom::shift`]).
struct Shift {
    off: isize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    span: std::ops::Range<usize>,
}

impl Shift {
    /// The plane positions the span reads (writes): the span shifted by `off`.
    fn source(&self) -> std::ops::Range<usize> {
        let s0 = (self.span.start as isize + self.off) as usize;
        s0..s0 + self.span.len()
    }
}

/// The sum of each of the `rows` rows of `x` [rows, len], each in order from −0.0 (as
/// `iter().sum()`), all rows at once: one chain of dependent additions per row was latency
/// bound (4 cycles an element); side by side they overlap, with each row's sum the same.
pub fn row_sums(x: &[f32], rows: usize, len: usize) -> Vec<f32> {
    let mut s = vec![-0.0f32; rows];
    for p in 0..len {
        for (o, a) in s.iter_mut().enumerate() {
            *a += x[o * len + p];
        }
    }
    s
}

/// Zeroes the positions of a "same" stride-1 unfolded row whose pixel lies left or right of
/// the input (`pad` or fewer per row), column by column down the rows: a fill per row end
/// was a `memset` call for one or two elements (4% of the gradient features' time).
fn zero_row_ends(row: &mut [f32], w: usize, sh: &Shift) {
    for x in (0..sh.cols.start).chain(sh.cols.end..w) {
        for y in sh.rows.clone() {
            row[y * w + x] = 0.0;
        }
    }
}

thread_local! {
    /// A thread's unfolded input (or its gradient), kept and only grown: allocated afresh for
    /// every task it was pages the kernel zeroed, or a memset, for a buffer that the
    /// unfolding (or a product with β = 0) overwrites whole.
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's [`COLS`] scratch of `len` values (contents unspecified). The
/// buffer is taken out while `f` runs, so a nested call (work stolen by this thread) gets a
/// fresh one instead of a second borrow.
fn with_cols<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut c = COLS.take();
    if c.len() < len {
        c.resize(len, 0.0);
    }
    let r = f(&mut c[..len]);
    COLS.set(c);
    r
}

/// Forward for `n` samples: `x` [n, cin, h, w] → [n, cout, oh, ow]. On AVX2 with FMA the
/// products read the zero-padded sample ([`implicit::forward_sample`]); elsewhere the
/// unfolded input lives in a per-thread scratch buffer. The backward unfolds again from `x`.
pub fn forward(g: &ConvGeom, wgt: &[f32], bias: &[f32], x: &[f32], n: usize) -> Vec<f32> {
    forward_by(
        g,
        wgt,
        bias,
        x,
        n,
        implicit::available() && implicit::forward_pays(g),
    )
}

/// [`forward`] by the implicit kernel or from the unfolded input (the same bits).
fn forward_by(
    g: &ConvGeom,
    wgt: &[f32],
    bias: &[f32],
    x: &[f32],
    n: usize,
    implicit: bool,
) -> Vec<f32> {
    let (il, ol, cl, ohw) = (g.in_len(), g.out_len(), g.cols_len(), g.ohw());
    let fill_bias = |out: &mut [f32]| {
        if g.bias {
            for (o, row) in out.chunks_mut(ohw).enumerate() {
                row.fill(bias[o]);
            }
        }
    };
    par_zeroed(n * ol, CHUNK * ol, |i, ys| {
        let xs = &x[i * CHUNK * il..];
        if implicit {
            return with_cols(g.padded_len(), |xp| {
                for s in 0..ys.len() / ol {
                    g.pad_into(&xs[s * il..(s + 1) * il], xp);
                    let out = &mut ys[s * ol..(s + 1) * ol];
                    fill_bias(out);
                    implicit::forward_sample(g, wgt, xp, out);
                }
            });
        }
        with_cols(cl, |c| {
            for s in 0..ys.len() / ol {
                g.im2col(&xs[s * il..(s + 1) * il], c);
                let out = &mut ys[s * ol..(s + 1) * ol];
                fill_bias(out);
                gemm(
                    g.cout,
                    g.ckk(),
                    ohw,
                    wgt,
                    (g.ckk(), 1),
                    c,
                    (ohw, 1),
                    1.0,
                    out,
                    ohw,
                );
            }
        })
    })
}

/// Summed weight and bias gradients: dW = Σ_n dy_n · cols_nᵀ, db = Σ dy_n (empty without
/// bias), with cols_n = im2col(x_n) formed per sample from the layer's input `x`. Each chunk
/// of [`CHUNK`] samples sums into its own partial, sample by sample and, within a sample, in
/// blocks of [`super::gemm::KC`] pixels (matrixmultiply's product with β = 1); the partials
/// are added in chunk order. On AVX2 with FMA the implicit kernel ([`implicit`]) adds each
/// sample's blocks to the chunk's partial straight from the zero-padded sample, without
/// unfolding it (the lane kernel, [`lanes`] with `Out::Blocks`, where the implicit one is
/// turned off): bit for bit the same sums, without packing both operands for every sample.
pub fn weight_grad(g: &ConvGeom, dy: &[f32], x: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    let by = if implicit::available() {
        WgBy::Implicit
    } else if lanes::available() && CHUNK == LANES {
        WgBy::Lanes
    } else {
        WgBy::Matrixmultiply
    };
    weight_grad_by(g, dy, x, n, by)
}

/// Which kernel forms the summed weight gradient (all give the same bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WgBy {
    Matrixmultiply,
    Lanes,
    Implicit,
}

/// [`weight_grad`] by the kernel `by`.
fn weight_grad_by(g: &ConvGeom, dy: &[f32], x: &[f32], n: usize, by: WgBy) -> (Vec<f32>, Vec<f32>) {
    let (il, ol, cl, wl, ohw) = (g.in_len(), g.out_len(), g.cols_len(), g.weights(), g.ohw());
    let nb = if g.bias { g.cout } else { 0 };
    // one sample's bias gradient (its output gradient's row sums) added to a partial's
    let add_bias = |acc: &mut [f32], ds: &[f32]| {
        if g.bias {
            for (a, r) in acc[wl..].iter_mut().zip(row_sums(ds, g.cout, ohw)) {
                *a += r;
            }
        }
    };
    let partials: Vec<Vec<f32>> = dy[..n * ol]
        .par_chunks(CHUNK * ol)
        .zip(x.par_chunks(CHUNK * il))
        .map(|(d, xs)| {
            let mut acc = vec![0f32; wl + nb];
            let m = d.len() / ol;
            if by == WgBy::Implicit {
                let (ckk, co, pl) = (g.ckk(), g.cout, g.padded_len());
                with_cols(pl + ohw * co + wl, |buf| {
                    let (xp, rest) = buf.split_at_mut(pl);
                    let (dyt, acc_t) = rest.split_at_mut(ohw * co);
                    acc_t.fill(0.0);
                    for s in 0..m {
                        let ds = &d[s * ol..(s + 1) * ol];
                        g.pad_into(&xs[s * il..(s + 1) * il], xp);
                        implicit::transpose(ds, co, ohw, dyt);
                        implicit::weight_grad_sample(g, xp, dyt, acc_t);
                        add_bias(&mut acc, ds);
                    }
                    implicit::transpose(acc_t, ckk, co, &mut acc[..wl]);
                });
                return acc;
            }
            if by == WgBy::Lanes {
                GROUP_SCRATCH.with_borrow_mut(|sc| {
                    let sets = lanes::blocks(g);
                    if sc.gw.len() < sets * wl * LANES {
                        sc.gw.resize(sets * wl * LANES, 0.0);
                    }
                    if sc.gb.len() < g.cout * LANES {
                        sc.gb.resize(g.cout * LANES, 0.0);
                    }
                    let (gw, gb) = (&mut sc.gw, &mut sc.gb);
                    lanes::weight_grads(g, d, xs, m, lanes::Out::Blocks, &mut sc.lanes, gw, gb);
                    for s in 0..m {
                        for set in gw.chunks_exact(wl * LANES).take(sets) {
                            for (a, v) in
                                acc[..wl].iter_mut().zip(set.iter().skip(s).step_by(LANES))
                            {
                                *a += v;
                            }
                        }
                        for (i, a) in acc[wl..].iter_mut().enumerate() {
                            *a += gb[i * LANES + s];
                        }
                    }
                });
                return acc;
            }
            with_cols(cl, |c| {
                for s in 0..m {
                    let ds = &d[s * ol..(s + 1) * ol];
                    g.im2col(&xs[s * il..(s + 1) * il], c);
                    gemm(
                        g.cout,
                        ohw,
                        g.ckk(),
                        ds,
                        (ohw, 1),
                        c,
                        (1, ohw),
                        1.0,
                        &mut acc[..wl],
                        g.ckk(),
                    );
                    add_bias(&mut acc, ds);
                }
            });
            acc
        })
        .collect();
    let mut total = vec![0f32; wl + nb];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    let db = total.split_off(wl);
    (total, db)
}

/// Input gradient: dx_n = col2im(Wᵀ · dy_n); on AVX2 with FMA at stride 1 folded as it is
/// multiplied, from the zero-padded output gradient ([`implicit::input_grad_sample`]).
pub fn input_grad(g: &ConvGeom, wgt: &[f32], dy: &[f32], n: usize) -> Vec<f32> {
    input_grad_by(g, wgt, dy, n, implicit::available() && implicit::folds(g))
}

/// [`input_grad`] by the implicit kernel or by the unfolded product and col2im (the same
/// bits).
fn input_grad_by(g: &ConvGeom, wgt: &[f32], dy: &[f32], n: usize, implicit: bool) -> Vec<f32> {
    let (il, ol, cl, ohw) = (g.in_len(), g.out_len(), g.cols_len(), g.ohw());
    let packed = implicit.then(|| implicit::dx_weights(g, wgt));
    if let Some(wp) = &packed {
        // SAFETY: `input_grad_sample` writes every element of each sample's dx
        return unsafe {
            super::gemm::par_written(n * il, CHUNK * il, |i, dxs| {
                let dys = &dy[i * CHUNK * ol..];
                with_cols(implicit::dy_padded_len(g), |dyp| {
                    for s in 0..dxs.len() / il {
                        implicit::pad_dy(g, &dys[s * ol..(s + 1) * ol], dyp);
                        implicit::input_grad_sample(g, wp, dyp, &mut dxs[s * il..(s + 1) * il]);
                    }
                })
            })
        };
    }
    par_zeroed(n * il, CHUNK * il, |i, dxs| {
        let dys = &dy[i * CHUNK * ol..];
        with_cols(cl, |dcols| {
            for s in 0..dxs.len() / il {
                gemm(
                    g.ckk(),
                    g.cout,
                    ohw,
                    wgt,
                    (1, g.ckk()),
                    &dys[s * ol..(s + 1) * ol],
                    (ohw, 1),
                    0.0,
                    dcols,
                    ohw,
                );
                g.col2im(dcols, &mut dxs[s * il..(s + 1) * il]);
            }
        })
    })
}

/// A thread's buffers for [`group_moments`]: [`LANES`] samples' weight gradients and bias
/// sums, interleaved, and the lane kernel's (matrixmultiply's path unfolds into [`COLS`]).
/// Kept per thread and only grown: allocated afresh per call they were pages the kernel
/// zeroed (a quarter of the gradient metrics' time at 2×64×64).
#[derive(Default)]
struct GroupScratch {
    gw: Vec<f32>,
    gb: Vec<f32>,
    lanes: lanes::Scratch,
}

thread_local! {
    static GROUP_SCRATCH: std::cell::RefCell<GroupScratch> = std::cell::RefCell::default();
}

/// Each sample's moments of its weight (and bias) gradient, from its output gradient and
/// input, for up to [`LANES`] samples at once (`dy` [m, cout, oh·ow], `x`
/// [m, cin, h, w]): their weight gradients are formed interleaved, so that their moments
/// run side by side ([`Moments::of_lanes`]). On AVX2 with FMA the gradients come from the
/// lane kernel ([`lanes`]), elsewhere one sample at a time from matrixmultiply; the two are
/// bit for bit the same, and so each sample's moments are its own alone.
pub fn group_moments(g: &ConvGeom, dy: &[f32], x: &[f32], m: usize) -> Vec<Moments> {
    assert!(m <= LANES, "{m} samples in {LANES} lanes");
    GROUP_SCRATCH.with_borrow_mut(|sc| {
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut sc.gw, g.weights() * LANES);
        grow(&mut sc.gb, g.cout * LANES);
        group_moments_in(g, dy, x, m, sc)
    })
}

fn group_moments_in(
    g: &ConvGeom,
    dy: &[f32],
    x: &[f32],
    m: usize,
    sc: &mut GroupScratch,
) -> Vec<Moments> {
    let (ohw, ol, il, t) = (g.ohw(), g.out_len(), g.in_len(), g.ckk());
    let lane_kernel = lanes::available();
    if lane_kernel {
        lanes::weight_grads(
            g,
            dy,
            x,
            m,
            lanes::Out::Product,
            &mut sc.lanes,
            &mut sc.gw,
            &mut sc.gb,
        );
    } else {
        with_cols(g.cols_len(), |cols| {
            for s in 0..m {
                g.im2col(&x[s * il..(s + 1) * il], cols);
                gemm_strided_c(
                    g.cout,
                    ohw,
                    t,
                    &dy[s * ol..(s + 1) * ol],
                    (ohw, 1),
                    cols,
                    (1, ohw),
                    &mut sc.gw[s..],
                    (t * LANES, LANES),
                );
            }
        });
    }
    let ms = Moments::of_lanes(&sc.gw, g.weights());
    (0..m)
        .map(|s| {
            if g.bias {
                let gb: Vec<f32> = if lane_kernel {
                    (0..g.cout).map(|i| sc.gb[i * LANES + s]).collect()
                } else {
                    row_sums(&dy[s * ol..(s + 1) * ol], g.cout, ohw)
                };
                Moments::combine(&ms[s], &Moments::of(&gb))
            } else {
                ms[s]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, the definition, for checking im2col + GEMM.
    fn conv_direct(g: &ConvGeom, w: &[f32], b: &[f32], x: &[f32]) -> Vec<f32> {
        let p = g.pad as isize;
        let mut y = vec![0f32; g.out_len()];
        for o in 0..g.cout {
            for yy in 0..g.oh {
                for xx in 0..g.ow {
                    let mut s = if g.bias { b[o] } else { 0.0 };
                    for c in 0..g.cin {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let sy = (yy * g.stride) as isize + ky as isize - p;
                                let sx = (xx * g.stride) as isize + kx as isize - p;
                                if sy >= 0 && sx >= 0 && (sy as usize) < g.h && (sx as usize) < g.w
                                {
                                    s += w[((o * g.cin + c) * g.k + ky) * g.k + kx]
                                        * x[c * g.h * g.w + sy as usize * g.w + sx as usize];
                                }
                            }
                        }
                    }
                    y[o * g.ohw() + yy * g.ow + xx] = s;
                }
            }
        }
        y
    }

    fn geoms() -> Vec<ConvGeom> {
        vec![
            ConvGeom::new(2, 3, 3, 1, 1, 5, 4, true),
            ConvGeom::new(2, 3, 3, 2, 1, 7, 6, true),
            ConvGeom::new(2, 3, 3, 1, 0, 6, 5, false),
            ConvGeom::new(3, 2, 5, 2, 0, 9, 8, true),
            ConvGeom::new(2, 4, 1, 2, 0, 5, 6, false),
        ]
    }

    /// [`geoms`] and larger ones for the kernels' tiles and blocks: pixel counts across
    /// matrixmultiply's blocks of 256, more than 16 output channels (a full and a masked
    /// column tile), stride 2 over rows that blocks of 256 pixels cut, a strided 1×1.
    fn wide_geoms() -> Vec<ConvGeom> {
        let mut gs = geoms();
        gs.push(ConvGeom::new(2, 5, 3, 1, 1, 23, 17, true));
        gs.push(ConvGeom::new(3, 20, 3, 1, 1, 11, 9, false));
        gs.push(ConvGeom::new(2, 33, 3, 2, 1, 41, 37, false));
        gs.push(ConvGeom::new(4, 16, 1, 2, 0, 9, 9, false));
        gs
    }

    #[test]
    fn conv_matches_direct_definition() {
        for g in geoms() {
            let w: Vec<f32> = (0..g.weights())
                .map(|i| ((i * 7 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let b = vec![0.1, -0.2, 0.3, 0.05];
            let x: Vec<f32> = (0..2 * g.in_len())
                .map(|i| ((i * 5 % 13) as f32 - 6.0) / 9.0)
                .collect();
            let y = forward(&g, &w, &b[..g.cout], &x, 2);
            for s in 0..2 {
                let d = conv_direct(&g, &w, &b, &x[s * g.in_len()..(s + 1) * g.in_len()]);
                for (a, e) in y[s * g.out_len()..(s + 1) * g.out_len()].iter().zip(&d) {
                    assert!((a - e).abs() < 1e-5, "{g:?}: {a} vs {e}");
                }
            }
        }
    }

    /// The span unfolding and folding of "same" stride-1 geometry equal the row-by-row ones
    /// bit for bit (kernels 1 to 7, planes smaller than the kernel, one channel and several).
    #[test]
    fn span_unfolding_equals_rows() {
        for (cin, k, h, w) in [
            (1, 3, 28, 28),
            (2, 3, 7, 5),
            (3, 1, 4, 6),
            (1, 5, 3, 2),
            (2, 7, 9, 4),
            (1, 3, 1, 1),
            (16, 3, 14, 14),
        ] {
            let g = ConvGeom::new(cin, 2, k, 1, k / 2, h, w, true);
            assert!(g.shifts_whole_planes());
            let x: Vec<f32> = (0..g.in_len()).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut a = vec![f32::NAN; g.cols_len()];
            let mut b = vec![f32::NAN; g.cols_len()];
            g.im2col(&x, &mut a);
            g.im2col_rows(&x, &mut b);
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{g:?}"
            );
            // gradients at every position, padding ones included, some of them −0.0
            let c: Vec<f32> = (0..g.cols_len())
                .map(|i| {
                    if i % 7 == 3 {
                        -0.0
                    } else {
                        (i as f32 * 0.11).cos()
                    }
                })
                .collect();
            let (mut da, mut db) = (vec![1f32; g.in_len()], vec![2f32; g.in_len()]);
            g.col2im(&mut c.clone(), &mut da);
            g.col2im_rows(&c, &mut db);
            assert_eq!(
                da.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                db.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{g:?}"
            );
        }
    }

    /// Row sums equal `iter().sum()` bit for bit, −0.0 rows and an empty row included.
    #[test]
    fn row_sums_equal_sequential_sums() {
        for (rows, len) in [(16, 784), (3, 1), (5, 49), (2, 0)] {
            let mut x: Vec<f32> = (0..rows * len)
                .map(|i| ((i * 37) as f32 * 0.013).sin() * 1e3)
                .collect();
            if len > 0 {
                x[..len].fill(-0.0);
            }
            let want: Vec<u32> = x
                .chunks(len.max(1))
                .take(rows)
                .map(|r| r.iter().sum::<f32>().to_bits())
                .chain(std::iter::repeat_n(
                    (-0.0f32).to_bits(),
                    if len == 0 { rows } else { 0 },
                ))
                .collect();
            let got: Vec<u32> = row_sums(&x, rows, len)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(got, want, "{rows}×{len}");
        }
    }

    /// The summed weight gradient by the lane and the implicit kernel equals matrixmultiply's, bit for bit,
    /// over sample counts that leave a partial last chunk (`lanes`' own test checks the
    /// per-sample products of every geometry).
    #[test]
    fn summed_weight_grad_by_lanes_and_implicit_is_matrixmultiplys() {
        if !lanes::available() {
            return;
        }
        let mut gs = wide_geoms();
        gs.push(ConvGeom::new(1, 7, 3, 1, 1, 40, 30, true));
        for g in gs {
            for n in [1, 8, 13] {
                let dy: Vec<f32> = (0..n * g.out_len())
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                    .collect();
                let x: Vec<f32> = (0..n * g.in_len())
                    .map(|i| ((i * 53 % 97) as f32 - 48.0) / 13.0)
                    .collect();
                let (w0, b0) = weight_grad_by(&g, &dy, &x, n, WgBy::Matrixmultiply);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for by in [WgBy::Lanes, WgBy::Implicit] {
                    let (w1, b1) = weight_grad_by(&g, &dy, &x, n, by);
                    assert_eq!(bits(&w0), bits(&w1), "{by:?} {g:?}, {n} samples");
                    assert_eq!(bits(&b0), bits(&b1), "{by:?} {g:?}, {n} samples");
                }
            }
        }
    }

    /// The implicit forward and input gradient equal the unfolded products, bit for bit.
    #[test]
    fn implicit_forward_and_input_grad_are_the_unfolded_products() {
        if !implicit::available() {
            return;
        }
        let mut gs = wide_geoms();
        gs.push(ConvGeom::new(40, 70, 3, 1, 1, 8, 8, false));
        gs.push(ConvGeom::new(16, 16, 3, 1, 1, 32, 32, false));
        gs.push(ConvGeom::new(5, 7, 5, 1, 0, 19, 21, true));
        gs.push(ConvGeom::new(4, 9, 3, 1, 0, 12, 40, false));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for g in gs {
            let n = 9;
            let w = crate::model::gemm::tests::values(g.weights(), 1);
            let b = crate::model::gemm::tests::values(g.cout, 2);
            let x = crate::model::gemm::tests::values(n * g.in_len(), 3);
            let dy = crate::model::gemm::tests::values(n * g.out_len(), 4);
            let (f0, f1) = (
                forward_by(&g, &w, &b, &x, n, false),
                forward_by(&g, &w, &b, &x, n, true),
            );
            assert_eq!(bits(&f0), bits(&f1), "forward {g:?}");
            if implicit::folds(&g) {
                let (d0, d1) = (
                    input_grad_by(&g, &w, &dy, n, false),
                    input_grad_by(&g, &w, &dy, n, true),
                );
                assert_eq!(bits(&d0), bits(&d1), "input gradient {g:?}");
            }
        }
    }

    #[test]
    fn col2im_is_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for any x, c
        for g in geoms() {
            let x: Vec<f32> = (0..g.in_len()).map(|i| (i as f32 * 0.37).sin()).collect();
            let c: Vec<f32> = (0..g.cols_len()).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut cols = vec![0f32; g.cols_len()];
            g.im2col(&x, &mut cols);
            let mut back = vec![0f32; g.in_len()];
            g.col2im(&mut c.clone(), &mut back);
            let l: f64 = cols
                .iter()
                .zip(&c)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let r: f64 = x
                .iter()
                .zip(&back)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            assert!((l - r).abs() < 1e-4, "{g:?}: {l} vs {r}");
        }
    }

    /// The layer in a net, against candle autograd: stride 2, valid padding, no bias.
    #[test]
    fn strided_and_valid_convs_match_candle() {
        use crate::arch::Spec;
        let conv = |name: &str, out, kernel, stride, same, bias| Spec::Conv {
            name: name.into(),
            out,
            kernel,
            stride,
            same,
            bias,
        };
        super::super::oracle::check_specs(
            vec![
                conv("a", 4, 3, 2, true, true),
                Spec::Act {
                    name: "r".into(),
                    slope: 0.1,
                },
                conv("b", 5, 3, 1, false, false),
                Spec::Act {
                    name: "r2".into(),
                    slope: 0.0,
                },
                conv("c", 3, 5, 2, false, true),
                Spec::Flatten { name: "f".into() },
                Spec::Linear {
                    name: "fc".into(),
                    out: 0,
                    bias: true,
                },
            ],
            crate::data::Shape::new(2, 19, 17),
            3,
        );
    }
}
