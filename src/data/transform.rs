//! Built-in shifts of labelled images for the "error detection under shift" tasks: a spec
//! `SPEC@rotate=DEG@blur=SIGMA@thicken=R@scale=S` applies the transforms in order to every
//! channel of every image of SPEC (SPEC `test` = the run's own in-distribution test set).
//! Geometric transforms sample bilinearly about the image centre and fill with 0 (the dark
//! background of MNIST-like images).

use super::Shape;

/// One transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// Rotation by this many degrees (counter-clockwise).
    Rotate(f64),
    /// Gaussian blur of this σ in pixels.
    Blur(f64),
    /// Grayscale dilation (a max filter) of this radius in pixels: thicker strokes.
    Thicken(usize),
    /// Zoom about the centre by this factor (0.7 = 70% size).
    Scale(f64),
}

/// How `[shift] sets` are written.
pub const SHIFT_HELP: &str = "SPEC[@rotate=DEG][@blur=SIGMA][@thicken=PX][@scale=FACTOR], \
SPEC = test (the run's test set) or a labelled data spec";

/// A shift spec: the data spec (`test` = the run's test set) and the transforms.
#[derive(Debug, Clone, PartialEq)]
pub struct ShiftSpec {
    pub spec: String,
    pub transforms: Vec<Transform>,
    /// The task's name: `shift-<name>`.
    pub name: String,
}

impl ShiftSpec {
    pub fn parse(s: &str) -> Result<ShiftSpec, String> {
        let mut parts = s.split('@');
        let spec = parts.next().unwrap_or_default().trim().to_string();
        if spec.is_empty() {
            return Err(format!("{s:?}: no data spec before '@' ({SHIFT_HELP})"));
        }
        if spec != "test" {
            super::Source::parse(&spec)?;
        }
        let mut transforms = Vec::new();
        let mut name = if spec == "test" {
            Vec::new()
        } else {
            vec![super::Source::short_name(&spec)]
        };
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("{s:?}: {p:?} is not NAME=VALUE ({SHIFT_HELP})"))?;
            let num = |lo: f64, hi: f64| -> Result<f64, String> {
                let x: f64 = v
                    .parse()
                    .map_err(|_| format!("{s:?}: {k}={v:?} is not a number"))?;
                if !(x.is_finite() && x >= lo && x <= hi) {
                    return Err(format!("{s:?}: {k}={v} is outside [{lo}, {hi}]"));
                }
                Ok(x)
            };
            let t = match k {
                "rotate" => Transform::Rotate(num(-360.0, 360.0)?),
                "blur" => Transform::Blur(num(0.0, 20.0)?),
                "thicken" => Transform::Thicken(num(0.0, 10.0)? as usize),
                "scale" => Transform::Scale(num(0.1, 4.0)?),
                o => {
                    return Err(format!(
                        "{s:?}: unknown transform {o:?} (rotate, blur, thicken, scale)"
                    ))
                }
            };
            name.push(format!("{k}{v}"));
            transforms.push(t);
        }
        if name.is_empty() {
            name.push("test".into());
        }
        Ok(ShiftSpec {
            spec,
            transforms,
            name: name.join("-"),
        })
    }
}

/// Applies the transforms to `n` images of `shape` (channel-major), in place.
pub fn apply(images: &mut [f32], shape: Shape, transforms: &[Transform]) {
    for plane in images.chunks_exact_mut(shape.hw()) {
        for t in transforms {
            let out = match *t {
                Transform::Rotate(deg) => {
                    let (s, c) = (-deg.to_radians()).sin_cos();
                    warp(plane, shape.h, shape.w, |x, y| {
                        (c * x - s * y, s * x + c * y)
                    })
                }
                Transform::Scale(f) => warp(plane, shape.h, shape.w, |x, y| (x / f, y / f)),
                Transform::Blur(sigma) => blur(plane, shape.h, shape.w, sigma),
                Transform::Thicken(r) => dilate(plane, shape.h, shape.w, r),
            };
            plane.copy_from_slice(&out);
        }
    }
}

/// out(x, y) = in(map(x − cx, y − cy) + c), bilinear, 0 outside.
fn warp(p: &[f32], h: usize, w: usize, map: impl Fn(f64, f64) -> (f64, f64)) -> Vec<f32> {
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let at = |x: isize, y: isize| -> f64 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0.0
        } else {
            p[y as usize * w + x as usize] as f64
        }
    };
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = map(x as f64 - cx, y as f64 - cy);
            let (sx, sy) = (sx + cx, sy + cy);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let v = at(x0, y0) * (1.0 - fx) * (1.0 - fy)
                + at(x0 + 1, y0) * fx * (1.0 - fy)
                + at(x0, y0 + 1) * (1.0 - fx) * fy
                + at(x0 + 1, y0 + 1) * fx * fy;
            out[y * w + x] = v.clamp(0.0, 1.0) as f32;
        }
    }
    out
}

/// Separable Gaussian blur (kernel radius ⌈3σ⌉, renormalised at the borders).
fn blur(p: &[f32], h: usize, w: usize, sigma: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return p.to_vec();
    }
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0f32; h * w];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let (mut s, mut z) = (0f64, 0f64);
                for (j, kv) in k.iter().enumerate() {
                    let d = j as isize - r;
                    let (xx, yy) = if horizontal { (x + d, y) } else { (x, y + d) };
                    if xx >= 0 && yy >= 0 && xx < w as isize && yy < h as isize {
                        s += kv * src[yy as usize * w + xx as usize] as f64;
                        z += kv;
                    }
                }
                out[y as usize * w + x as usize] = (s / z) as f32;
            }
        }
        out
    };
    pass(&pass(p, true), false)
}

/// Max filter over a (2r+1)² square.
fn dilate(p: &[f32], h: usize, w: usize, r: usize) -> Vec<f32> {
    let r = r as isize;
    let mut out = vec![0f32; h * w];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let mut m = f32::NEG_INFINITY;
            for yy in (y - r).max(0)..=(y + r).min(h as isize - 1) {
                for xx in (x - r).max(0)..=(x + r).min(w as isize - 1) {
                    m = m.max(p[yy as usize * w + xx as usize]);
                }
            }
            out[y as usize * w + x as usize] = m;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_and_errors() {
        let s = ShiftSpec::parse("test@rotate=25@blur=1.2").unwrap();
        assert_eq!(s.spec, "test");
        assert_eq!(
            s.transforms,
            vec![Transform::Rotate(25.0), Transform::Blur(1.2)]
        );
        assert_eq!(s.name, "rotate25-blur1.2");
        assert_eq!(
            ShiftSpec::parse("mnist:test@scale=0.7").unwrap().name,
            "mnist-scale0.7"
        );
        assert_eq!(ShiftSpec::parse("mnist:test").unwrap().name, "mnist");
        for bad in [
            "test@spin=3",
            "test@rotate",
            "test@blur=x",
            "test@scale=0",
            "cifar@blur=1",
            "@blur=1",
        ] {
            assert!(ShiftSpec::parse(bad).is_err(), "{bad}");
        }
    }

    fn bar(h: usize, w: usize) -> Vec<f32> {
        // a horizontal bar through the middle row, columns 2..w-2
        let mut p = vec![0f32; h * w];
        for x in 2..w - 2 {
            p[(h / 2) * w + x] = 1.0;
        }
        p
    }

    #[test]
    fn rotate_by_90_turns_a_bar_upright() {
        let (h, w) = (9, 9);
        let mut p = bar(h, w);
        apply(&mut p, Shape::new(1, h, w), &[Transform::Rotate(90.0)]);
        // now a vertical bar through the middle column, rows 2..7
        for y in 0..h {
            for x in 0..w {
                let want = if x == 4 && (2..7).contains(&y) {
                    1.0
                } else {
                    0.0
                };
                assert!(
                    (p[y * w + x] - want).abs() < 1e-5,
                    "({x},{y}) {}",
                    p[y * w + x]
                );
            }
        }
    }

    #[test]
    fn thicken_scale_and_blur() {
        let (h, w) = (9, 12);
        let mut p = bar(h, w);
        apply(&mut p, Shape::new(1, h, w), &[Transform::Thicken(1)]);
        // rows 3..=5 lit over columns 1..=10
        let lit = p.iter().filter(|&&v| v == 1.0).count();
        assert_eq!(lit, 3 * 10);
        // blur keeps the ink's total inside the frame and lowers the peak
        let mut b = bar(h, w);
        let before: f32 = b.iter().sum();
        apply(&mut b, Shape::new(1, h, w), &[Transform::Blur(1.0)]);
        let after: f32 = b.iter().sum();
        assert!((before - after).abs() < 0.05 * before, "{before} {after}");
        assert!(b.iter().cloned().fold(0.0, f32::max) < 0.9);
        // scale 0.5 halves the bar's length about the centre
        let mut s = bar(h, w);
        apply(&mut s, Shape::new(1, h, w), &[Transform::Scale(0.5)]);
        let row: Vec<f32> = s[(h / 2) * w..(h / 2 + 1) * w].to_vec();
        let len: f32 = row.iter().sum();
        assert!((len - 4.0).abs() < 1.01, "{row:?}");
        // two channels are transformed each on its own
        let mut two = [bar(h, w), vec![0.0; h * w]].concat();
        apply(&mut two, Shape::new(2, h, w), &[Transform::Thicken(1)]);
        assert!(two[h * w..].iter().all(|&v| v == 0.0));
    }
}
