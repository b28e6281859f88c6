//! Per-channel input normalisation, (x − mean[c]) / std[c]: what `[data] normalize` puts in
//! front of the net so that an imported model sees the inputs it was trained on, while the
//! images themselves (and everything drawn from them) stay in [0, 1]. No parameters, so no
//! per-sample statistics; its backward divides by std.

use rayon::prelude::*;

/// The normalisation of `c` channels of `hw` pixels each.
#[derive(Debug, Clone, PartialEq)]
pub struct NormGeom {
    pub c: usize,
    pub hw: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// y = (x − mean[c]) / std[c], in place (the division as PyTorch's Normalize does it).
pub fn forward(g: &NormGeom, x: &mut [f32]) {
    let plane = g.hw.max(1);
    x.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
        let ch = i % g.c;
        let (m, s) = (g.mean[ch], g.std[ch]);
        for v in p.iter_mut() {
            *v = (*v - m) / s;
        }
    });
}

/// dx = dy / std[c], in place.
pub fn backward(g: &NormGeom, dy: &mut [f32]) {
    let plane = g.hw.max(1);
    dy.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
        let s = g.std[i % g.c];
        for v in p.iter_mut() {
            *v /= s;
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::arch::Spec;

    /// Normalisation of 2 channels in front of a conv and a linear layer, against candle
    /// autograd (logits, every layer's gradient, per-sample statistics).
    #[test]
    fn normalisation_matches_candle() {
        super::super::oracle::check_specs(
            vec![
                Spec::Normalize {
                    name: "normalize".into(),
                    mean: vec![0.25, 0.6],
                    std: vec![0.5, 0.2],
                },
                Spec::Conv {
                    name: "c".into(),
                    out: 3,
                    kernel: 3,
                    stride: 1,
                    same: true,
                    bias: true,
                },
                Spec::Flatten { name: "f".into() },
                Spec::Linear {
                    name: "fc".into(),
                    out: 0,
                    bias: true,
                },
            ],
            crate::data::Shape::new(2, 5, 4),
            3,
        );
    }

    /// By hand: channel 0 minus 1 over 2, channel 1 minus 0 over 4; the backward divides.
    #[test]
    fn normalisation_by_hand() {
        let g = super::NormGeom {
            c: 2,
            hw: 2,
            mean: vec![1.0, 0.0],
            std: vec![2.0, 4.0],
        };
        let mut x = vec![3.0, 1.0, 8.0, -4.0, 5.0, 5.0, 0.0, 2.0];
        super::forward(&g, &mut x);
        assert_eq!(x, [1.0, 0.0, 2.0, -1.0, 2.0, 2.0, 0.0, 0.5]);
        let mut d = vec![2.0; 8];
        super::backward(&g, &mut d);
        assert_eq!(d, [1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.5, 0.5]);
    }
}
