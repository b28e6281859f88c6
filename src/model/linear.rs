//! The linear layer: forward, backward, and the per-sample gradient's moments without forming
//! it (its entries are outer products: see [`super::moments::linear_moments`]).

use super::gemm::gemm;
use rayon::prelude::*;

/// y [n, out] = x [n, inp] · Wᵀ + b, W [out, inp] (b empty: no bias).
pub fn forward(x: &[f32], w: &[f32], b: &[f32], n: usize, inp: usize, out: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * out];
    if !b.is_empty() {
        for row in y.chunks_mut(out) {
            row.copy_from_slice(b);
        }
    }
    y.par_chunks_mut(64 * out)
        .zip(x.par_chunks(64 * inp))
        .for_each(|(ys, xs)| {
            let m = ys.len() / out;
            gemm(m, inp, out, xs, (inp, 1), w, (1, inp), 1.0, ys, out);
        });
    y
}

/// (dW [out, inp] = dyᵀ·x, db = Σ dy (empty without `bias`)).
pub fn weight_grad(
    dy: &[f32],
    x: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    bias: bool,
) -> (Vec<f32>, Vec<f32>) {
    let mut dw = vec![0f32; out * inp];
    gemm(out, n, inp, dy, (1, out), x, (inp, 1), 0.0, &mut dw, inp);
    let mut db = Vec::new();
    if bias {
        db = vec![0f32; out];
        for row in dy.chunks(out) {
            for (d, v) in db.iter_mut().zip(row) {
                *d += v;
            }
        }
    }
    (dw, db)
}

/// dx [n, inp] = dy · W.
pub fn input_grad(dy: &[f32], w: &[f32], n: usize, inp: usize, out: usize) -> Vec<f32> {
    let mut dx = vec![0f32; n * inp];
    dx.par_chunks_mut(64 * inp)
        .zip(dy.par_chunks(64 * out))
        .for_each(|(dxs, dys)| {
            let m = dys.len() / out;
            gemm(m, out, inp, dys, (out, 1), w, (inp, 1), 0.0, dxs, inp);
        });
    dx
}

#[cfg(test)]
mod tests {
    use crate::arch::Spec;

    /// A dense stack (one layer without bias) after a conv, against candle autograd.
    #[test]
    fn dense_stacks_match_candle() {
        super::super::oracle::check_specs(
            vec![
                Spec::Conv {
                    name: "c".into(),
                    out: 3,
                    kernel: 3,
                    stride: 2,
                    same: true,
                    bias: true,
                },
                Spec::Act {
                    name: "a".into(),
                    slope: 0.0,
                },
                Spec::Flatten { name: "f".into() },
                Spec::Linear {
                    name: "fc1".into(),
                    out: 16,
                    bias: false,
                },
                Spec::Act {
                    name: "a1".into(),
                    slope: 0.0,
                },
                Spec::Linear {
                    name: "fc2".into(),
                    out: 8,
                    bias: true,
                },
                Spec::Act {
                    name: "a2".into(),
                    slope: 0.0,
                },
                Spec::Linear {
                    name: "fc3".into(),
                    out: 0,
                    bias: true,
                },
            ],
            crate::data::Shape::new(1, 9, 9),
            5,
        );
    }
}
