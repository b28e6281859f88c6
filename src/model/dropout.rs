//! Dropout with inverted scaling: masks of 0 and 1/(1 − p) drawn from a stream (training: one
//! stream for the batch in sample-major order; MC dropout: one stream per row, so an image's
//! masks depend only on the seed and the image) and saved for the backward. The identity when
//! off. No parameters.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Where dropout masks (and a training crop's offsets) come from in a forward pass.
pub enum Masks<'a> {
    /// Dropout off (the identity).
    Off,
    /// One stream for the whole batch, drawn in sample-major order (training).
    Stream(&'a mut ChaCha8Rng),
    /// One stream per row (`rows[r]` draws row r's mask elements, in order): MC dropout, where
    /// each image's masks come from the seed and that image alone.
    PerRow(&'a mut [ChaCha8Rng]),
}

impl<'a> From<Option<&'a mut ChaCha8Rng>> for Masks<'a> {
    fn from(r: Option<&'a mut ChaCha8Rng>) -> Masks<'a> {
        match r {
            Some(r) => Masks::Stream(r),
            None => Masks::Off,
        }
    }
}

/// Applies dropout of rate `p` to `x` ([n, per] in place); returns the mask (None when off).
pub fn forward(p: f32, x: &mut [f32], n: usize, masks: &mut Masks<'_>) -> Option<Vec<f32>> {
    let scale = 1.0 / (1.0 - p);
    let draw = |r: &mut ChaCha8Rng| if r.gen::<f32>() < p { 0.0 } else { scale };
    let mask: Vec<f32> = match masks {
        Masks::Off => return None,
        Masks::Stream(r) => (0..x.len()).map(|_| draw(r)).collect(),
        Masks::PerRow(rows) => {
            assert_eq!(rows.len(), n, "one mask stream per row");
            let per = x.len() / n.max(1);
            let mut m = Vec::with_capacity(x.len());
            for r in rows.iter_mut() {
                m.extend((0..per).map(|_| draw(r)));
            }
            m
        }
    };
    for (v, m) in x.iter_mut().zip(&mask) {
        *v *= m;
    }
    Some(mask)
}

/// Backward: dy ⊙ mask in place (an empty mask: dropout was off).
pub fn backward(mask: &[f32], dy: &mut [f32]) {
    for (d, m) in dy.iter_mut().zip(mask) {
        *d *= m;
    }
}

#[cfg(test)]
mod tests {
    use crate::arch::Spec;

    /// Dropout in three places (after a conv, after a pool, between dense layers), its masks
    /// replayed in candle.
    #[test]
    fn dropout_anywhere_matches_candle() {
        super::super::oracle::check_specs(
            vec![
                Spec::Conv {
                    name: "c".into(),
                    out: 3,
                    kernel: 3,
                    stride: 1,
                    same: true,
                    bias: true,
                },
                Spec::Dropout {
                    name: "d0".into(),
                    rate: 0.3,
                },
                Spec::Act {
                    name: "a".into(),
                    slope: 0.01,
                },
                Spec::MaxPool {
                    name: "p".into(),
                    kernel: 2,
                    stride: 2,
                },
                Spec::Dropout {
                    name: "d1".into(),
                    rate: 0.5,
                },
                Spec::Flatten { name: "f".into() },
                Spec::Linear {
                    name: "fc1".into(),
                    out: 7,
                    bias: true,
                },
                Spec::Dropout {
                    name: "d2".into(),
                    rate: 0.2,
                },
                Spec::Linear {
                    name: "fc2".into(),
                    out: 0,
                    bias: true,
                },
            ],
            crate::data::Shape::new(1, 8, 8),
            3,
        );
    }
}
