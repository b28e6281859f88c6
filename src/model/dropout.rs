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

/// Applies dropout of rate `p` to `x` ([n, per] in place); returns the mask when `keep`
/// (None when off or not kept: an MC pass applies the mask without storing it).
pub fn forward(
    p: f32,
    x: &mut [f32],
    n: usize,
    masks: &mut Masks<'_>,
    keep: bool,
) -> Option<Vec<f32>> {
    // a stream for the whole batch is one row of x.len() elements
    let (rows, per): (&mut [ChaCha8Rng], usize) = match masks {
        Masks::Off => return None,
        Masks::Stream(r) => (std::slice::from_mut(&mut **r), x.len()),
        Masks::PerRow(rows) => {
            assert_eq!(rows.len(), n, "one mask stream per row");
            (&mut **rows, x.len() / n.max(1))
        }
    };
    let scale = 1.0 / (1.0 - p);
    let mut mask = keep.then(|| vec![0f32; x.len()]);
    for (i, (r, xs)) in rows.iter_mut().zip(x.chunks_mut(per.max(1))).enumerate() {
        let m = mask.as_mut().map(|m| &mut m[i * per..(i + 1) * per]);
        apply(r, p, scale, xs, m);
    }
    mask
}

/// Draws the mask of `x` from `r` (element by element, in order) and multiplies it in, writing
/// it to `mask` when given. The draws are `rand`'s `gen::<f32>()` taken in blocks: the top 24
/// bits of each `next_u32`, times 2⁻²⁴ (`fill` yields the same words as `next_u32` calls), so
/// the masks are those of drawing one element at a time, and the comparison runs vectorised.
fn apply(r: &mut ChaCha8Rng, p: f32, scale: f32, x: &mut [f32], mut mask: Option<&mut [f32]>) {
    const BLOCK: usize = 256;
    let mut words = [0u32; BLOCK];
    let mut m = [0f32; BLOCK];
    for (b, xs) in x.chunks_mut(BLOCK).enumerate() {
        let w = &mut words[..xs.len()];
        r.fill(w);
        let m = &mut m[..xs.len()];
        for (m, &u) in m.iter_mut().zip(w.iter()) {
            let draw = (u >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
            *m = if draw < p { 0.0 } else { scale };
        }
        for (v, m) in xs.iter_mut().zip(m.iter()) {
            *v *= m;
        }
        if let Some(out) = mask.as_deref_mut() {
            out[b * BLOCK..b * BLOCK + xs.len()].copy_from_slice(m);
        }
    }
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
    use rand::{Rng, RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The block draws give the masks of one `gen::<f32>()` per element, in order, for both
    /// streams, with the stream left where one-at-a-time drawing leaves it.
    #[test]
    fn block_draws_equal_single_draws() {
        for (p, len) in [(0.25f32, 1000usize), (0.5, 256), (0.1, 3), (0.9, 777)] {
            let scale = 1.0 / (1.0 - p);
            let mut one = ChaCha8Rng::seed_from_u64(7);
            one.set_stream(3);
            let want: Vec<f32> = (0..len)
                .map(|_| if one.gen::<f32>() < p { 0.0 } else { scale })
                .collect();
            let mut blk = ChaCha8Rng::seed_from_u64(7);
            blk.set_stream(3);
            let mut x = vec![2.0f32; len];
            let mask = super::forward(p, &mut x, 1, &mut super::Masks::Stream(&mut blk), true)
                .expect("a mask");
            assert_eq!(mask, want);
            assert!(x.iter().zip(&want).all(|(v, w)| *v == 2.0 * w));
            assert_eq!(blk.next_u32(), one.next_u32());
            // not kept: the same values applied, no mask
            let mut blk = ChaCha8Rng::seed_from_u64(7);
            blk.set_stream(3);
            let mut y = vec![2.0f32; len];
            let mut rows = [blk];
            assert!(
                super::forward(p, &mut y, 1, &mut super::Masks::PerRow(&mut rows), false).is_none()
            );
            assert_eq!(x, y);
        }
    }

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
