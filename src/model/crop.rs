//! The input crop: a random h×w window per image in training (offsets drawn from the training
//! stream), the centre window otherwise (offsets ⌊(H − h)/2⌋, ⌊(W − w)/2⌋). Only as the first
//! layer, so no gradient flows through it. No parameters.

use super::dropout::Masks;
use rand::Rng;

/// Geometry of a crop of [c, h, w] to [c, ch, cw].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub ch: usize,
    pub cw: usize,
}

/// Crops each of the `n` images; random offsets when `masks` is a training stream.
pub fn forward(g: &CropGeom, x: &[f32], n: usize, masks: &mut Masks<'_>) -> Vec<f32> {
    let (il, ol) = (g.c * g.h * g.w, g.c * g.ch * g.cw);
    let mut y = vec![0f32; n * ol];
    for i in 0..n {
        let (oy, ox) = match masks {
            Masks::Stream(r) => (r.gen_range(0..=g.h - g.ch), r.gen_range(0..=g.w - g.cw)),
            _ => ((g.h - g.ch) / 2, (g.w - g.cw) / 2),
        };
        let xs = &x[i * il..(i + 1) * il];
        let ys = &mut y[i * ol..(i + 1) * ol];
        for c in 0..g.c {
            for r in 0..g.ch {
                let s = c * g.h * g.w + (oy + r) * g.w + ox;
                ys[(c * g.ch + r) * g.cw..(c * g.ch + r + 1) * g.cw]
                    .copy_from_slice(&xs[s..s + g.cw]);
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_crop_by_hand_and_random_crops_stay_inside() {
        let g = CropGeom {
            c: 1,
            h: 4,
            w: 5,
            ch: 2,
            cw: 3,
        };
        let x: Vec<f32> = (0..20).map(|v| v as f32).collect();
        // rows 1..3, columns 1..4
        assert_eq!(
            forward(&g, &x, 1, &mut Masks::Off),
            vec![6.0, 7.0, 8.0, 11.0, 12.0, 13.0]
        );
        use rand::SeedableRng;
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let y = forward(&g, &x, 1, &mut Masks::Stream(&mut r));
            // a window of the image: consecutive values in each row, rows 5 apart
            assert_eq!(y[1] - y[0], 1.0);
            assert_eq!(y[3] - y[0], 5.0);
            seen.insert(y[0] as i32);
        }
        // every offset (3 rows × 3 columns of them) is drawn
        assert_eq!(seen.len(), 9);
    }
}
