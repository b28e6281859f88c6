//! Dropout with inverted scaling: masks of 0 and 1/(1 − p) drawn from a stream (training: one
//! stream for the batch in sample-major order; MC dropout: one stream per row, so an image's
//! masks depend only on the seed and the image) and saved for the backward. The identity when
//! off. No parameters.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

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
/// (None when off or not kept: an MC pass applies the mask without storing it). Rows with
/// their own streams run in parallel; a batch's single stream is cut into blocks of
/// [`SPAN`] elements, each drawn from a copy of the stream set to the block's word position,
/// so the draws are the stream's in order and the stream ends where drawing one element at a
/// time leaves it.
pub fn forward(
    p: f32,
    x: &mut [f32],
    n: usize,
    masks: &mut Masks<'_>,
    keep: bool,
) -> Option<Vec<f32>> {
    if let Masks::Off = masks {
        return None;
    }
    let scale = 1.0 / (1.0 - p);
    let mut mask = keep.then(|| vec![0f32; x.len()]);
    match masks {
        Masks::Off => {}
        Masks::Stream(r) => {
            let start = r.get_word_pos();
            let spans = x.par_chunks_mut(SPAN).enumerate();
            let run = |b: usize, xs: &mut [f32], m: Option<&mut [f32]>| {
                let mut rb = (**r).clone();
                rb.set_word_pos(start + (b * SPAN) as u128);
                apply(&mut rb, p, scale, xs, m);
            };
            match mask.as_mut() {
                Some(mk) => spans
                    .zip(mk.par_chunks_mut(SPAN))
                    .for_each(|((b, xs), m)| run(b, xs, Some(m))),
                None => spans.for_each(|(b, xs)| run(b, xs, None)),
            }
            r.set_word_pos(start + x.len() as u128);
        }
        Masks::PerRow(rows) => {
            assert_eq!(rows.len(), n, "one mask stream per row");
            let per = (x.len() / n.max(1)).max(1);
            let pairs = rows.par_iter_mut().zip(x.par_chunks_mut(per));
            match mask.as_mut() {
                Some(mk) => pairs
                    .zip(mk.par_chunks_mut(per))
                    .for_each(|((r, xs), m)| apply(r, p, scale, xs, Some(m))),
                None => pairs.for_each(|(r, xs)| apply(r, p, scale, xs, None)),
            }
        }
    }
    mask
}

/// Elements of a batch stream's parallel block (a multiple of the draw block).
const SPAN: usize = 64 * BLOCK;

/// Dropout of rate `p` on `x` ([n, per]) repeated: row r of the result ([rows.len(), per])
/// is row r mod n of `x` times the mask drawn from `rows[r]`: MC dropout's passes on the
/// shared prefix, without first copying the prefix once per pass. Equal to [`forward`] on
/// the repeated rows.
pub fn forward_repeated(p: f32, x: &[f32], n: usize, rows: &mut [ChaCha8Rng]) -> Vec<f32> {
    let per = x.len() / n.max(1);
    let scale = 1.0 / (1.0 - p);
    let mut out: Vec<f32> = Vec::with_capacity(rows.len() * per);
    out.spare_capacity_mut()
        .par_chunks_mut(per.max(1))
        .zip(rows.par_iter_mut())
        .enumerate()
        .for_each(|(i, (o, r))| {
            let src = &x[(i % n) * per..(i % n + 1) * per];
            let mut m = [0f32; BLOCK];
            for (o, src) in o.chunks_mut(BLOCK).zip(src.chunks(BLOCK)) {
                let m = &mut m[..src.len()];
                draw(r, p, scale, m);
                for ((o, v), m) in o.iter_mut().zip(src).zip(m.iter()) {
                    o.write(v * m);
                }
            }
        });
    // SAFETY: each of the rows.len() · per elements was written above (the chunks of
    // `per` cover the spare capacity, each chunk is written in full)
    unsafe { out.set_len(rows.len() * per) };
    out
}

/// Mask draws per block.
const BLOCK: usize = 256;

/// Draws `m.len()` ≤ [`BLOCK`] mask elements from `r`: `rand`'s `gen::<f32>()` taken in a
/// block, the top 24 bits of each `next_u32`, times 2⁻²⁴ (`fill` yields the same words as
/// `next_u32` calls), so the masks are those of drawing one element at a time, and the
/// comparison runs vectorised.
fn draw(r: &mut ChaCha8Rng, p: f32, scale: f32, m: &mut [f32]) {
    let mut words = [0u32; BLOCK];
    let w = &mut words[..m.len()];
    r.fill(w);
    for (m, &u) in m.iter_mut().zip(w.iter()) {
        let draw = (u >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
        *m = if draw < p { 0.0 } else { scale };
    }
}

/// Draws the mask of `x` from `r` (element by element, in order) and multiplies it in,
/// writing it to `mask` when given.
fn apply(r: &mut ChaCha8Rng, p: f32, scale: f32, x: &mut [f32], mut mask: Option<&mut [f32]>) {
    let mut m = [0f32; BLOCK];
    for (b, xs) in x.chunks_mut(BLOCK).enumerate() {
        let m = &mut m[..xs.len()];
        draw(r, p, scale, m);
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
        for (p, len) in [
            (0.25f32, 1000usize),
            (0.5, 256),
            (0.1, 3),
            (0.9, 777),
            (0.3, 3 * super::SPAN + 1000),
        ] {
            let scale = 1.0 / (1.0 - p);
            let mut one = ChaCha8Rng::seed_from_u64(7);
            one.set_stream(3);
            // a stream already drawn from (training: the batch before), mid-way in a block
            for _ in 0..5 {
                one.next_u32();
            }
            let want: Vec<f32> = (0..len)
                .map(|_| if one.gen::<f32>() < p { 0.0 } else { scale })
                .collect();
            let mut blk = ChaCha8Rng::seed_from_u64(7);
            blk.set_stream(3);
            for _ in 0..5 {
                blk.next_u32();
            }
            let mut x = vec![2.0f32; len];
            let mask = super::forward(p, &mut x, 1, &mut super::Masks::Stream(&mut blk), true)
                .expect("a mask");
            assert_eq!(mask, want);
            assert!(x.iter().zip(&want).all(|(v, w)| *v == 2.0 * w));
            assert_eq!(blk.next_u32(), one.next_u32());
            // not kept: the same values applied, no mask
            let mut blk = ChaCha8Rng::seed_from_u64(7);
            blk.set_stream(3);
            for _ in 0..5 {
                blk.next_u32();
            }
            let mut y = vec![2.0f32; len];
            let mut rows = [blk];
            assert!(
                super::forward(p, &mut y, 1, &mut super::Masks::PerRow(&mut rows), false).is_none()
            );
            assert_eq!(x, y);
        }
    }

    /// Dropout on the prefix repeated equals dropout on the repeated rows.
    #[test]
    fn repeated_equals_forward_on_copies() {
        let (n, per, t) = (3usize, 700usize, 4usize);
        let x: Vec<f32> = (0..n * per).map(|i| (i % 13) as f32 - 6.5).collect();
        let streams = || -> Vec<ChaCha8Rng> {
            (0..n * t)
                .map(|r| {
                    let mut g = ChaCha8Rng::seed_from_u64(r as u64 / 2);
                    g.set_stream(r as u64);
                    g
                })
                .collect()
        };
        let mut rep: Vec<f32> = (0..t).flat_map(|_| x.iter().copied()).collect();
        let mut rows = streams();
        super::forward(
            0.4,
            &mut rep,
            n * t,
            &mut super::Masks::PerRow(&mut rows),
            false,
        );
        let mut rows2 = streams();
        let got = super::forward_repeated(0.4, &x, n, &mut rows2);
        assert_eq!(got, rep);
        assert!(rows
            .iter_mut()
            .zip(&mut rows2)
            .all(|(a, b)| a.next_u32() == b.next_u32()));
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
