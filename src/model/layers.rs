//! Explicit forward and backward kernels of every layer kind (conv k×k by im2col + GEMM, leaky
//! ReLU, max pooling with saved argmax, dropout with saved masks, linear), on plain f32 slices
//! laid out like candle/PyTorch tensors (NCHW, row-major). Work is split over fixed chunks of
//! samples (rayon), and every reduction over samples runs in chunk order, so results do not
//! depend on the number of threads.

use matrixmultiply::sgemm;
use rayon::prelude::*;

/// Samples per parallel work item; fixed, so reductions are deterministic.
pub const CHUNK: usize = 8;

/// C = alpha · A·B + beta · C with explicit strides (row stride, column stride).
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
    // SAFETY: the slices cover every index the strides reach (checked above in debug builds,
    // guaranteed by the callers' shapes).
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
            1,
        );
    }
}

/// Geometry of a same-padded stride-1 conv layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub h: usize,
    pub w: usize,
}

impl ConvGeom {
    pub fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Rows of the unfolded input (= weight entries per output channel).
    pub fn ckk(&self) -> usize {
        self.cin * self.k * self.k
    }
    pub fn in_len(&self) -> usize {
        self.cin * self.hw()
    }
    pub fn out_len(&self) -> usize {
        self.cout * self.hw()
    }
    pub fn cols_len(&self) -> usize {
        self.ckk() * self.hw()
    }

    /// Unfolds one sample [cin, h, w] into cols [cin·k·k, h·w] (zero padding k/2).
    pub fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        let (h, w, k) = (self.h as isize, self.w as isize, self.k);
        let p = (k / 2) as isize;
        let hw = self.hw();
        for c in 0..self.cin {
            let plane = &x[c * hw..(c + 1) * hw];
            for ky in 0..k {
                for kx in 0..k {
                    let row = (c * k + ky) * k + kx;
                    let dst = &mut cols[row * hw..(row + 1) * hw];
                    let (dy, dx) = (ky as isize - p, kx as isize - p);
                    for y in 0..h {
                        let sy = y + dy;
                        let out = &mut dst[(y * w) as usize..((y + 1) * w) as usize];
                        if sy < 0 || sy >= h {
                            out.fill(0.0);
                            continue;
                        }
                        let src = &plane[(sy * w) as usize..((sy + 1) * w) as usize];
                        let x0 = (-dx).clamp(0, w) as usize;
                        let x1 = (w - dx).clamp(0, w) as usize;
                        out[..x0].fill(0.0);
                        out[x1..].fill(0.0);
                        if x1 > x0 {
                            let s0 = (x0 as isize + dx) as usize;
                            out[x0..x1].copy_from_slice(&src[s0..s0 + (x1 - x0)]);
                        }
                    }
                }
            }
        }
    }

    /// Folds cols gradients back onto the input: dx [cin, h, w] = col2im(dcols) (overwrites).
    pub fn col2im(&self, dcols: &[f32], dx: &mut [f32]) {
        let (h, w, k) = (self.h as isize, self.w as isize, self.k);
        let p = (k / 2) as isize;
        let hw = self.hw();
        dx.fill(0.0);
        for c in 0..self.cin {
            let plane = &mut dx[c * hw..(c + 1) * hw];
            for ky in 0..k {
                for kx in 0..k {
                    let row = (c * k + ky) * k + kx;
                    let src = &dcols[row * hw..(row + 1) * hw];
                    let (dy, dxo) = (ky as isize - p, kx as isize - p);
                    for y in 0..h {
                        let sy = y + dy;
                        if sy < 0 || sy >= h {
                            continue;
                        }
                        let x0 = (-dxo).clamp(0, w) as usize;
                        let x1 = (w - dxo).clamp(0, w) as usize;
                        if x1 <= x0 {
                            continue;
                        }
                        let s = &src[(y * w) as usize + x0..(y * w) as usize + x1];
                        let d0 = (sy * w) as usize + (x0 as isize + dxo) as usize;
                        for (d, v) in plane[d0..d0 + (x1 - x0)].iter_mut().zip(s) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// Conv + bias + leaky ReLU forward for `n` samples. `x` [n, cin, h, w] → `y` [n, cout, h, w].
/// The unfolded input lives in a per-task scratch buffer; the backward unfolds again from `x`.
pub fn conv_leaky_forward(
    g: &ConvGeom,
    wgt: &[f32],
    bias: &[f32],
    slope: f32,
    x: &[f32],
    n: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; n * g.out_len()];
    let (il, ol, cl) = (g.in_len(), g.out_len(), g.cols_len());
    y.par_chunks_mut(CHUNK * ol)
        .zip(x.par_chunks(CHUNK * il))
        .for_each_init(
            || vec![0f32; cl],
            |c, (ys, xs)| {
                for s in 0..xs.len() / il {
                    g.im2col(&xs[s * il..(s + 1) * il], c);
                    let out = &mut ys[s * ol..(s + 1) * ol];
                    for (o, row) in out.chunks_mut(g.hw()).enumerate() {
                        row.fill(bias[o]);
                    }
                    gemm(
                        g.cout,
                        g.ckk(),
                        g.hw(),
                        wgt,
                        (g.ckk(), 1),
                        c,
                        (g.hw(), 1),
                        1.0,
                        out,
                        g.hw(),
                    );
                    for v in out.iter_mut() {
                        if *v < 0.0 {
                            *v *= slope;
                        }
                    }
                }
            },
        );
    y
}

/// Leaky-ReLU backward through the saved activation `act` (> 0 ⇔ input > 0), in place on `dy`.
pub fn leaky_backward(act: &[f32], slope: f32, dy: &mut [f32]) {
    dy.par_chunks_mut(4096)
        .zip(act.par_chunks(4096))
        .for_each(|(d, a)| {
            for (d, a) in d.iter_mut().zip(a) {
                if *a <= 0.0 {
                    *d *= slope;
                }
            }
        });
}

/// Summed weight and bias gradients of a conv layer: dW = Σ_n dy_n · cols_nᵀ, db = Σ dy_n, with
/// cols_n = im2col(x_n) formed per sample from the layer's input `x`.
/// Returns (dW [cout · ckk], db [cout]).
pub fn conv_weight_grad(g: &ConvGeom, dy: &[f32], x: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    let (il, ol, cl, wl) = (g.in_len(), g.out_len(), g.cols_len(), g.cout * g.ckk());
    let partials: Vec<Vec<f32>> = dy[..n * ol]
        .par_chunks(CHUNK * ol)
        .zip(x.par_chunks(CHUNK * il))
        .map(|(d, xs)| {
            let mut acc = vec![0f32; wl + g.cout];
            let mut c = vec![0f32; cl];
            let m = d.len() / ol;
            for s in 0..m {
                let ds = &d[s * ol..(s + 1) * ol];
                g.im2col(&xs[s * il..(s + 1) * il], &mut c);
                gemm(
                    g.cout,
                    g.hw(),
                    g.ckk(),
                    ds,
                    (g.hw(), 1),
                    &c,
                    (1, g.hw()),
                    1.0,
                    &mut acc[..wl],
                    g.ckk(),
                );
                for (o, row) in ds.chunks(g.hw()).enumerate() {
                    acc[wl + o] += row.iter().sum::<f32>();
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f32; wl + g.cout];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    let db = total.split_off(wl);
    (total, db)
}

/// Input gradient of a conv layer: dx_n = col2im(Wᵀ · dy_n).
pub fn conv_input_grad(g: &ConvGeom, wgt: &[f32], dy: &[f32], n: usize) -> Vec<f32> {
    let (il, ol, cl) = (g.in_len(), g.out_len(), g.cols_len());
    let mut dx = vec![0f32; n * il];
    dx.par_chunks_mut(CHUNK * il)
        .zip(dy.par_chunks(CHUNK * ol))
        .for_each_init(
            || vec![0f32; cl],
            |dcols, (dxs, dys)| {
                for s in 0..dxs.len() / il {
                    gemm(
                        g.ckk(),
                        g.cout,
                        g.hw(),
                        wgt,
                        (1, g.ckk()),
                        &dys[s * ol..(s + 1) * ol],
                        (g.hw(), 1),
                        0.0,
                        dcols,
                        g.hw(),
                    );
                    g.col2im(dcols, &mut dxs[s * il..(s + 1) * il]);
                }
            },
        );
    dx
}

/// Max pooling (window = stride = `p`, floor) of [n, c, h, w]; returns the output and, per
/// output element, the index of its maximum within the sample's input.
pub fn maxpool_forward(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    p: usize,
) -> (Vec<f32>, Vec<u32>) {
    let (oh, ow) = (h / p, w / p);
    let (il, ol) = (c * h * w, c * oh * ow);
    let mut y = vec![0f32; n * ol];
    let mut idx = vec![0u32; n * ol];
    y.par_chunks_mut(ol)
        .zip(idx.par_chunks_mut(ol))
        .zip(x.par_chunks(il))
        .for_each(|((ys, is), xs)| {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = f32::NEG_INFINITY;
                        let mut bi = 0usize;
                        for dy in 0..p {
                            for dx in 0..p {
                                let i = ch * h * w + (oy * p + dy) * w + ox * p + dx;
                                if xs[i] > best {
                                    best = xs[i];
                                    bi = i;
                                }
                            }
                        }
                        let o = ch * oh * ow + oy * ow + ox;
                        ys[o] = best;
                        is[o] = bi as u32;
                    }
                }
            }
        });
    (y, idx)
}

/// Max-pooling backward: routes each output gradient to its saved argmax.
pub fn maxpool_backward(dy: &[f32], idx: &[u32], n: usize, in_len: usize) -> Vec<f32> {
    let ol = dy.len() / n.max(1);
    let mut dx = vec![0f32; n * in_len];
    dx.par_chunks_mut(in_len)
        .zip(dy.par_chunks(ol))
        .zip(idx.par_chunks(ol))
        .for_each(|((d, g), i)| {
            for (g, &i) in g.iter().zip(i) {
                d[i as usize] += g;
            }
        });
    dx
}

/// Linear forward: y [n, out] = x [n, inp] · Wᵀ + b, W [out, inp].
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    inp: usize,
    out: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; n * out];
    for row in y.chunks_mut(out) {
        row.copy_from_slice(b);
    }
    y.par_chunks_mut(64 * out)
        .zip(x.par_chunks(64 * inp))
        .for_each(|(ys, xs)| {
            let m = ys.len() / out;
            gemm(m, inp, out, xs, (inp, 1), w, (1, inp), 1.0, ys, out);
        });
    y
}

/// Linear backward: (dW [out, inp] = dyᵀ·x, db = Σ dy, dx = dy·W).
pub fn linear_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    want_dx: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dw = vec![0f32; out * inp];
    gemm(out, n, inp, dy, (1, out), x, (inp, 1), 0.0, &mut dw, inp);
    let mut db = vec![0f32; out];
    for row in dy.chunks(out) {
        for (d, v) in db.iter_mut().zip(row) {
            *d += v;
        }
    }
    let mut dx = Vec::new();
    if want_dx {
        dx = vec![0f32; n * inp];
        dx.par_chunks_mut(64 * inp)
            .zip(dy.par_chunks(64 * out))
            .for_each(|(dxs, dys)| {
                let m = dys.len() / out;
                gemm(m, out, inp, dys, (out, 1), w, (inp, 1), 0.0, dxs, inp);
            });
    }
    (dw, db, dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, the definition, for checking im2col + GEMM.
    fn conv_direct(g: &ConvGeom, w: &[f32], b: &[f32], x: &[f32]) -> Vec<f32> {
        let p = (g.k / 2) as isize;
        let mut y = vec![0f32; g.out_len()];
        for o in 0..g.cout {
            for yy in 0..g.h {
                for xx in 0..g.w {
                    let mut s = b[o];
                    for c in 0..g.cin {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let sy = yy as isize + ky as isize - p;
                                let sx = xx as isize + kx as isize - p;
                                if sy >= 0 && sx >= 0 && (sy as usize) < g.h && (sx as usize) < g.w
                                {
                                    s += w[((o * g.cin + c) * g.k + ky) * g.k + kx]
                                        * x[c * g.hw() + sy as usize * g.w + sx as usize];
                                }
                            }
                        }
                    }
                    y[o * g.hw() + yy * g.w + xx] = s;
                }
            }
        }
        y
    }

    #[test]
    fn conv_matches_direct_definition() {
        let g = ConvGeom {
            cin: 2,
            cout: 3,
            k: 3,
            h: 5,
            w: 4,
        };
        let w: Vec<f32> = (0..g.cout * g.ckk())
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 7.0)
            .collect();
        let b = vec![0.1, -0.2, 0.3];
        let x: Vec<f32> = (0..2 * g.in_len())
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 9.0)
            .collect();
        let y = conv_leaky_forward(&g, &w, &b, 1.0, &x, 2);
        for s in 0..2 {
            let d = conv_direct(&g, &w, &b, &x[s * g.in_len()..(s + 1) * g.in_len()]);
            for (a, e) in y[s * g.out_len()..(s + 1) * g.out_len()].iter().zip(&d) {
                assert!((a - e).abs() < 1e-5, "{a} vs {e}");
            }
        }
    }

    #[test]
    fn col2im_is_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for any x, c
        let g = ConvGeom {
            cin: 2,
            cout: 1,
            k: 3,
            h: 4,
            w: 6,
        };
        let x: Vec<f32> = (0..g.in_len()).map(|i| (i as f32 * 0.37).sin()).collect();
        let c: Vec<f32> = (0..g.cols_len()).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut cols = vec![0f32; g.cols_len()];
        g.im2col(&x, &mut cols);
        let mut back = vec![0f32; g.in_len()];
        g.col2im(&c, &mut back);
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
        assert!((l - r).abs() < 1e-4, "{l} vs {r}");
    }

    #[test]
    fn maxpool_picks_max_and_routes_back() {
        let x = vec![
            1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 9.0, 8.0, 7.0, 6.0, 1.0, 2.0, 0.0, 0.0, 3.0, 1.0,
        ];
        let (y, idx) = maxpool_forward(&x, 1, 1, 4, 4, 2);
        assert_eq!(y, vec![5.0, 9.0, 7.0, 3.0]);
        let dx = maxpool_backward(&[1.0, 2.0, 3.0, 4.0], &idx, 1, 16);
        assert_eq!(dx[1], 1.0);
        assert_eq!(dx[6], 2.0);
        assert_eq!(dx[8], 3.0);
        assert_eq!(dx[14], 4.0);
        assert_eq!(dx.iter().sum::<f32>(), 10.0);
    }
}
