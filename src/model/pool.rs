//! Pooling: max (window k, stride s, floor; the argmax saved for the backward), average (the
//! same windows, no padding) and global average. No parameters.

use super::gemm::par_zeroed;
use rayon::prelude::*;

/// Geometry of a pooling layer over [c, h, w].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
}

impl PoolGeom {
    pub fn new(c: usize, h: usize, w: usize, k: usize, stride: usize) -> PoolGeom {
        PoolGeom {
            c,
            h,
            w,
            k,
            stride,
            oh: (h - k) / stride + 1,
            ow: (w - k) / stride + 1,
        }
    }
    pub fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn out_len(&self) -> usize {
        self.c * self.oh * self.ow
    }
}

/// Max pooling of [n, c, h, w]; returns the output and, per output element, the index of its
/// maximum within the sample's input (the first on ties).
pub fn max_forward(g: &PoolGeom, x: &[f32], n: usize) -> (Vec<f32>, Vec<u32>) {
    let (il, ol) = (g.in_len(), g.out_len());
    let (h, w, p, s) = (g.h, g.w, g.k, g.stride);
    let mut y = vec![0f32; n * ol];
    let mut idx = vec![0u32; n * ol];
    y.par_chunks_mut(ol)
        .zip(idx.par_chunks_mut(ol))
        .zip(x.par_chunks(il))
        .for_each(|((ys, is), xs)| {
            // selects, not branches (a comparison on image data mispredicts about every other
            // time); the same order of comparisons as a plain scan of each window, so the
            // first maximum wins, NaN never does, and a window of NaN/−∞ keeps index 0
            let take = |v: f32, i: usize, best: &mut f32, bi: &mut usize| {
                let gt = v > *best;
                *best = if gt { v } else { *best };
                *bi = if gt { i } else { *bi };
            };
            for ch in 0..g.c {
                let base = ch * h * w;
                for oy in 0..g.oh {
                    let o0 = (ch * g.oh + oy) * g.ow;
                    let (yr, ir) = (&mut ys[o0..o0 + g.ow], &mut is[o0..o0 + g.ow]);
                    if p == 2 && s == 2 {
                        let (i0, i1) = (base + 2 * oy * w, base + (2 * oy + 1) * w);
                        let (r0, r1) = (&xs[i0..i0 + 2 * g.ow], &xs[i1..i1 + 2 * g.ow]);
                        for ox in 0..g.ow {
                            let (mut best, mut bi) = (f32::NEG_INFINITY, 0usize);
                            take(r0[2 * ox], i0 + 2 * ox, &mut best, &mut bi);
                            take(r0[2 * ox + 1], i0 + 2 * ox + 1, &mut best, &mut bi);
                            take(r1[2 * ox], i1 + 2 * ox, &mut best, &mut bi);
                            take(r1[2 * ox + 1], i1 + 2 * ox + 1, &mut best, &mut bi);
                            yr[ox] = best;
                            ir[ox] = bi as u32;
                        }
                        continue;
                    }
                    for ox in 0..g.ow {
                        let (mut best, mut bi) = (f32::NEG_INFINITY, 0usize);
                        for dy in 0..p {
                            let r = base + (oy * s + dy) * w + ox * s;
                            for (dx, &v) in xs[r..r + p].iter().enumerate() {
                                take(v, r + dx, &mut best, &mut bi);
                            }
                        }
                        yr[ox] = best;
                        ir[ox] = bi as u32;
                    }
                }
            }
        });
    (y, idx)
}

/// Max-pooling backward: routes each output gradient to its saved argmax.
pub fn max_backward(dy: &[f32], idx: &[u32], n: usize, in_len: usize) -> Vec<f32> {
    let ol = dy.len() / n.max(1);
    par_zeroed(n * in_len, in_len, |s, d| {
        for (g, &i) in dy[s * ol..(s + 1) * ol]
            .iter()
            .zip(&idx[s * ol..(s + 1) * ol])
        {
            d[i as usize] += g;
        }
    })
}

/// Average pooling of [n, c, h, w] over k×k windows at the stride.
pub fn avg_forward(g: &PoolGeom, x: &[f32], n: usize) -> Vec<f32> {
    let (il, ol) = (g.in_len(), g.out_len());
    let inv = 1.0 / (g.k * g.k) as f32;
    let mut y = vec![0f32; n * ol];
    y.par_chunks_mut(ol)
        .zip(x.par_chunks(il))
        .for_each(|(ys, xs)| {
            for ch in 0..g.c {
                let plane = &xs[ch * g.h * g.w..(ch + 1) * g.h * g.w];
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut s = 0f32;
                        for dy in 0..g.k {
                            let r = (oy * g.stride + dy) * g.w + ox * g.stride;
                            s += plane[r..r + g.k].iter().sum::<f32>();
                        }
                        ys[ch * g.oh * g.ow + oy * g.ow + ox] = s * inv;
                    }
                }
            }
        });
    y
}

/// Average-pooling backward: each output gradient spread evenly over its window.
pub fn avg_backward(g: &PoolGeom, dy: &[f32], n: usize) -> Vec<f32> {
    let (il, ol) = (g.in_len(), g.out_len());
    let inv = 1.0 / (g.k * g.k) as f32;
    let mut dx = vec![0f32; n * il];
    dx.par_chunks_mut(il)
        .zip(dy.par_chunks(ol))
        .for_each(|(d, gs)| {
            for ch in 0..g.c {
                let plane = &mut d[ch * g.h * g.w..(ch + 1) * g.h * g.w];
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let v = gs[ch * g.oh * g.ow + oy * g.ow + ox] * inv;
                        for dy in 0..g.k {
                            let r = (oy * g.stride + dy) * g.w + ox * g.stride;
                            for e in &mut plane[r..r + g.k] {
                                *e += v;
                            }
                        }
                    }
                }
            }
        });
    dx
}

/// Global average pooling: [n, c, hw] → [n, c].
pub fn global_forward(c: usize, hw: usize, x: &[f32], n: usize) -> Vec<f32> {
    let inv = 1.0 / hw as f32;
    let mut y = vec![0f32; n * c];
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c * hw))
        .for_each(|(ys, xs)| {
            for (o, plane) in ys.iter_mut().zip(xs.chunks(hw)) {
                *o = plane.iter().sum::<f32>() * inv;
            }
        });
    y
}

/// Global-average-pooling backward: dy/hw over every pixel.
pub fn global_backward(c: usize, hw: usize, dy: &[f32], n: usize) -> Vec<f32> {
    let inv = 1.0 / hw as f32;
    let mut dx = vec![0f32; n * c * hw];
    dx.par_chunks_mut(c * hw)
        .zip(dy.par_chunks(c))
        .for_each(|(d, gs)| {
            for (plane, g) in d.chunks_mut(hw).zip(gs) {
                plane.fill(g * inv);
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Spec;

    #[test]
    fn maxpool_picks_max_and_routes_back() {
        let x = vec![
            1.0, 5.0, 2.0, 0.0, 3.0, 4.0, 9.0, 8.0, 7.0, 6.0, 1.0, 2.0, 0.0, 0.0, 3.0, 1.0,
        ];
        let g = PoolGeom::new(1, 4, 4, 2, 2);
        let (y, idx) = max_forward(&g, &x, 1);
        assert_eq!(y, vec![5.0, 9.0, 7.0, 3.0]);
        let dx = max_backward(&[1.0, 2.0, 3.0, 4.0], &idx, 1, 16);
        assert_eq!((dx[1], dx[6], dx[8], dx[14]), (1.0, 2.0, 3.0, 4.0));
        assert_eq!(dx.iter().sum::<f32>(), 10.0);
        // overlapping 3×3 windows at stride 1 route to the shared maximum twice
        let g = PoolGeom::new(1, 4, 4, 3, 1);
        let (y, idx) = max_forward(&g, &x, 1);
        assert_eq!(y, vec![9.0, 9.0, 9.0, 9.0]);
        assert_eq!(max_backward(&[1.0; 4], &idx, 1, 16)[6], 4.0);
        // average of the 2×2 windows by hand
        let g = PoolGeom::new(1, 4, 4, 2, 2);
        assert_eq!(avg_forward(&g, &x, 1), vec![3.25, 4.75, 3.25, 1.75]);
        assert_eq!(global_forward(1, 16, &x, 1), vec![52.0 / 16.0]);
    }

    /// Both max-pool paths (2×2 at stride 2, and any window) against a plain scan of each
    /// window: ties go to the first, NaN never wins, a window of NaN and −∞ keeps index 0.
    #[test]
    fn maxpool_equals_a_plain_scan() {
        for (c, h, w, k, s) in [
            (2, 6, 8, 2, 2),
            (3, 7, 5, 2, 2),
            (2, 7, 7, 3, 2),
            (1, 5, 6, 2, 1),
        ] {
            let g = PoolGeom::new(c, h, w, k, s);
            let n = 3;
            let x: Vec<f32> = (0..n * g.in_len())
                .map(|i| match i % 11 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    _ => ((i * 7) % 5) as f32,
                })
                .collect();
            // the first sample's first window all NaN/−∞
            let mut x = x;
            for dy in 0..k {
                for dx in 0..k {
                    x[dy * w + dx] = if (dy + dx) % 2 == 0 {
                        f32::NAN
                    } else {
                        f32::NEG_INFINITY
                    };
                }
            }
            let (y, idx) = max_forward(&g, &x, n);
            for sm in 0..n {
                let xs = &x[sm * g.in_len()..(sm + 1) * g.in_len()];
                for ch in 0..c {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let (mut best, mut bi) = (f32::NEG_INFINITY, 0usize);
                            for dy in 0..k {
                                for dx in 0..k {
                                    let i = ch * h * w + (oy * s + dy) * w + ox * s + dx;
                                    if xs[i] > best {
                                        best = xs[i];
                                        bi = i;
                                    }
                                }
                            }
                            let o = sm * g.out_len() + (ch * g.oh + oy) * g.ow + ox;
                            assert_eq!((y[o].to_bits(), idx[o]), (best.to_bits(), bi as u32));
                        }
                    }
                }
            }
            assert_eq!((y[0], idx[0]), (f32::NEG_INFINITY, 0));
        }
    }

    /// Max and average pools (overlapping and not) and a global pool, against candle autograd.
    #[test]
    fn pools_match_candle() {
        super::super::oracle::check_specs(
            vec![
                Spec::Conv {
                    name: "c1".into(),
                    out: 3,
                    kernel: 3,
                    stride: 1,
                    same: true,
                    bias: true,
                },
                Spec::MaxPool {
                    name: "p1".into(),
                    kernel: 3,
                    stride: 2,
                },
                Spec::Conv {
                    name: "c2".into(),
                    out: 4,
                    kernel: 3,
                    stride: 1,
                    same: true,
                    bias: true,
                },
                Spec::AvgPool {
                    name: "p2".into(),
                    kernel: 2,
                    stride: 2,
                },
                Spec::Conv {
                    name: "c3".into(),
                    out: 5,
                    kernel: 1,
                    stride: 1,
                    same: true,
                    bias: true,
                },
                Spec::GlobalAvgPool { name: "g".into() },
                Spec::Linear {
                    name: "fc".into(),
                    out: 0,
                    bias: true,
                },
            ],
            crate::data::Shape::new(2, 13, 11),
            3,
        );
    }
}
