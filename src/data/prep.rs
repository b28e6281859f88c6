//! Image shape and preprocessing: the run's input shape (channels × height × width), how an image
//! of another size is brought to it (`fit`, `stretch`, `center-crop`, `mnist`), how channels are
//! matched, and the decoding of image files (PNG 8/16-bit, JPEG, TIFF with pages as channels)
//! into channel-major f32 in [0, 1].

use crate::error::{Error, Result};
use image::{imageops::FilterType, ImageBuffer, Luma};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

type GrayF = ImageBuffer<Luma<f32>, Vec<f32>>;

/// Channels, height and width of an image; pixels are stored channel-major (C, H, W), as PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    /// MNIST's 1 × 28 × 28.
    pub const MNIST: Shape = Shape { c: 1, h: 28, w: 28 };

    pub const fn new(c: usize, h: usize, w: usize) -> Shape {
        Shape { c, h, w }
    }
    /// Values per image.
    pub const fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Pixels per channel.
    pub const fn hw(&self) -> usize {
        self.h * self.w
    }
    /// The same size with `c` channels.
    pub const fn with_c(&self, c: usize) -> Shape {
        Shape { c, ..*self }
    }
    /// Parses `C,H,W` (as `metaclf bench --shape` takes it).
    pub fn parse(s: &str) -> std::result::Result<Shape, String> {
        let v: Vec<usize> = s
            .split([',', 'x', '×'])
            .map(|p| p.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| format!("{s:?} is not C,H,W (three whole numbers, e.g. 2,64,64)"))?;
        match v[..] {
            [c, h, w] if c > 0 && h > 0 && w > 0 => Ok(Shape { c, h, w }),
            _ => Err(format!(
                "{s:?} is not C,H,W (three whole numbers ≥ 1, e.g. 2,64,64)"
            )),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{}×{}", self.h, self.w, self.c)
    }
}

/// How an image of another size is brought to the run's height and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resize {
    /// Keep the aspect ratio, scale to fit inside, pad with the background value (the mean of
    /// the image's border pixels, per channel).
    Fit,
    /// Scale each axis to the target, aspect ratio not kept.
    Stretch,
    /// Keep the aspect ratio, scale to cover the target, cut the centre.
    CenterCrop,
    /// MNIST's way (one channel only): light paper is inverted, faint background dropped, the
    /// ink box scaled so its longer side is 20/28 of the image, centre of mass in the middle.
    /// Images already at the target size are kept as they are.
    Mnist,
}

/// The names `data.resize` takes.
pub const RESIZE_NAMES: [&str; 4] = ["fit", "stretch", "center-crop", "mnist"];

impl Resize {
    pub fn parse(s: &str) -> std::result::Result<Resize, String> {
        match s {
            "fit" => Ok(Resize::Fit),
            "stretch" => Ok(Resize::Stretch),
            "center-crop" => Ok(Resize::CenterCrop),
            "mnist" => Ok(Resize::Mnist),
            o => Err(format!("{o:?} is not one of {}", RESIZE_NAMES.join(", "))),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Resize::Fit => "fit",
            Resize::Stretch => "stretch",
            Resize::CenterCrop => "center-crop",
            Resize::Mnist => "mnist",
        }
    }
    /// The default policy for a shape: `mnist` for 28×28 grayscale (the default run does not
    /// change), `fit` otherwise.
    pub fn default_for(s: Shape) -> Resize {
        if s == Shape::MNIST {
            Resize::Mnist
        } else {
            Resize::Fit
        }
    }
}

/// The preprocessing every image of a run goes through: target shape and resize policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prep {
    pub shape: Shape,
    pub resize: Resize,
}

impl Default for Prep {
    fn default() -> Self {
        Prep::MNIST
    }
}

/// An image as decoded: its own shape, channel-major values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Native {
    pub shape: Shape,
    pub px: Vec<f32>,
}

impl Prep {
    /// 28×28 grayscale, MNIST normalisation: today's default.
    pub const MNIST: Prep = Prep {
        shape: Shape::MNIST,
        resize: Resize::Mnist,
    };

    /// Brings n images of `from` (`px`) to the run's shape: resized with the policy (an image
    /// the `mnist` policy finds blank stays blank), a single gray channel replicated across the
    /// run's channels (how the built-in 28×28 sets are adopted; a user's data must already
    /// have the run's channels, see [`super::fit_user`]).
    pub fn adopt(&self, px: Vec<f32>, from: Shape) -> Vec<f32> {
        if from == self.shape {
            return px;
        }
        let mut out = Vec::with_capacity(px.len() / from.len().max(1) * self.shape.len());
        for img in px.chunks_exact(from.len()) {
            let r = self
                .resize_native(
                    &Native {
                        shape: from,
                        px: img.to_vec(),
                    },
                    false,
                )
                .unwrap_or_else(|| vec![0.0; from.c * self.shape.hw()]);
            out.extend(replicate(&r, from.c, self.shape));
        }
        out
    }

    /// Brings one decoded image to the run's shape. `file` marks an image from a file, for
    /// which the `mnist` policy inverts light paper. Channels must already match (or the run
    /// has one channel and the image is converted before); see [`decode`]. `None` when the
    /// `mnist` policy finds no ink.
    pub fn resize_native(&self, img: &Native, file: bool) -> Option<Vec<f32>> {
        let t = self.shape;
        let s = img.shape;
        if self.resize == Resize::Mnist && s.c == 1 {
            let mut g = GrayF::from_raw(s.w as u32, s.h as u32, img.px.clone())
                .expect("buffer matches its shape");
            if file {
                let mean = img.px.iter().sum::<f32>() / img.px.len().max(1) as f32;
                if mean > 0.5 {
                    for p in g.pixels_mut() {
                        p.0[0] = 1.0 - p.0[0];
                    }
                }
            }
            if (s.h, s.w) == (t.h, t.w) {
                return Some(
                    g.into_raw()
                        .into_iter()
                        .map(|v| v.clamp(0.0, 1.0))
                        .collect(),
                );
            }
            // faint background noise would make the ink box the whole image
            for p in g.pixels_mut() {
                if p.0[0] < 0.1 {
                    p.0[0] = 0.0;
                }
            }
            return mnist_normalize(&g, t.h, t.w, mnist_side(t), (0, 0));
        }
        if (s.h, s.w) == (t.h, t.w) {
            return Some(img.px.clone());
        }
        let mut out = Vec::with_capacity(s.c * t.hw());
        for ch in img.px.chunks_exact(s.hw()) {
            let g = GrayF::from_raw(s.w as u32, s.h as u32, ch.to_vec())
                .expect("buffer matches its shape");
            out.extend(resize_channel(&g, t.h, t.w, self.resize));
        }
        Some(out)
    }
}

/// Images stored channels-last (H × W × C per image, as IDX, NumPy and decoded pictures hold
/// them) laid out channel-major (C × H × W), image after image.
pub fn planar(values: Vec<f32>, s: Shape) -> Vec<f32> {
    if s.c == 1 {
        return values;
    }
    let mut out = vec![0f32; values.len()];
    for (img, dst) in values
        .chunks_exact(s.len())
        .zip(out.chunks_exact_mut(s.len()))
    {
        for (i, &v) in img.iter().enumerate() {
            dst[(i % s.c) * s.hw() + i / s.c] = v;
        }
    }
    out
}

/// The ink box side of the `mnist` policy for a target size: 20 px at 28×28.
pub fn mnist_side(t: Shape) -> u32 {
    ((t.h.min(t.w) as f64 * 20.0 / 28.0).round() as u32).max(1)
}

/// `n` images of `img_c` channels → the run's channels (equal, or 1 replicated).
fn replicate(px: &[f32], img_c: usize, t: Shape) -> Vec<f32> {
    if img_c == t.c {
        return px.to_vec();
    }
    debug_assert_eq!(img_c, 1);
    let mut out = Vec::with_capacity(t.len());
    for _ in 0..t.c {
        out.extend_from_slice(px);
    }
    out
}

fn resize_channel(g: &GrayF, th: usize, tw: usize, how: Resize) -> Vec<f32> {
    let (w, h) = g.dimensions();
    let (tw32, th32) = (tw as u32, th as u32);
    let clamp = |v: Vec<f32>| v.into_iter().map(|x| x.clamp(0.0, 1.0)).collect::<Vec<_>>();
    match how {
        Resize::Stretch | Resize::Mnist => {
            clamp(image::imageops::resize(g, tw32, th32, FilterType::Triangle).into_raw())
        }
        Resize::Fit => {
            let s = (tw as f64 / w as f64).min(th as f64 / h as f64);
            let nw = ((w as f64 * s).round() as u32).clamp(1, tw32);
            let nh = ((h as f64 * s).round() as u32).clamp(1, th32);
            let small = image::imageops::resize(g, nw, nh, FilterType::Triangle);
            let bg = border_mean(g);
            let mut out = vec![bg; th * tw];
            let (left, top) = ((tw32 - nw) / 2, (th32 - nh) / 2);
            for (x, y, p) in small.enumerate_pixels() {
                out[(top + y) as usize * tw + (left + x) as usize] = p.0[0];
            }
            clamp(out)
        }
        Resize::CenterCrop => {
            let s = (tw as f64 / w as f64).max(th as f64 / h as f64);
            let nw = ((w as f64 * s).round() as u32).max(tw32);
            let nh = ((h as f64 * s).round() as u32).max(th32);
            let big = image::imageops::resize(g, nw, nh, FilterType::Triangle);
            let (left, top) = ((nw - tw32) / 2, (nh - th32) / 2);
            let crop = image::imageops::crop_imm(&big, left, top, tw32, th32).to_image();
            clamp(crop.into_raw())
        }
    }
}

/// Mean of the pixels on the image's border: the background value `fit` pads with.
fn border_mean(g: &GrayF) -> f32 {
    let (w, h) = g.dimensions();
    let (mut s, mut n) = (0f64, 0usize);
    for (x, y, p) in g.enumerate_pixels() {
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            s += p.0[0] as f64;
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        (s / n as f64) as f32
    }
}

/// MNIST-style normalisation of a white-on-black grayscale image (values in [0,1]) into an
/// `th`×`tw` frame: crop to the ink box, resize so the longer side is `side` px (antialiased),
/// paste with the intensity-weighted centre of mass at the frame centre ((13.5, 13.5) at 28×28)
/// rounded to whole pixels, shift by `offset` (dx, dy) and clamp so no ink is cut. `None` when
/// there is no ink.
pub fn mnist_normalize(
    img: &GrayF,
    th: usize,
    tw: usize,
    side: u32,
    offset: (i32, i32),
) -> Option<Vec<f32>> {
    let (w, h) = img.dimensions();
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        if p.0[0] > 0.0 {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if x1 < x0 || y1 < y0 {
        return None;
    }
    let crop = image::imageops::crop_imm(img, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
    let (cw, ch) = crop.dimensions();
    let scale = side as f64 / cw.max(ch) as f64;
    let nw = ((cw as f64 * scale).round() as u32).clamp(1, tw as u32);
    let nh = ((ch as f64 * scale).round() as u32).clamp(1, th as u32);
    let small = image::imageops::resize(&crop, nw, nh, FilterType::Triangle);
    let (mut m, mut mx, mut my) = (0f64, 0f64, 0f64);
    for (x, y, p) in small.enumerate_pixels() {
        let v = p.0[0].clamp(0.0, 1.0) as f64;
        m += v;
        mx += v * x as f64;
        my += v * y as f64;
    }
    if m <= 0.0 {
        return None;
    }
    let (cx, cy) = ((tw as f64 - 1.0) / 2.0, (th as f64 - 1.0) / 2.0);
    let left = (cx - mx / m).round() as i32 + offset.0;
    let top = (cy - my / m).round() as i32 + offset.1;
    let left = left.clamp(0, tw as i32 - nw as i32);
    let top = top.clamp(0, th as i32 - nh as i32);
    let mut out = vec![0f32; th * tw];
    for (x, y, p) in small.enumerate_pixels() {
        let (ox, oy) = (left + x as i32, top + y as i32);
        out[oy as usize * tw + ox as usize] = p.0[0].clamp(0.0, 1.0);
    }
    Some(out)
}

/// Largest width or height of an image file accepted (a microscope tile is a few thousand).
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Most bytes the decoder may allocate for one image (decompression bombs stop here).
pub const MAX_IMAGE_ALLOC: u64 = 512 << 20;
/// Most pages (channels) of a TIFF stack.
pub const MAX_TIFF_PAGES: usize = 64;

fn is_tiff(b: &[u8]) -> bool {
    b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") || b.starts_with(b"II+\0")
}

/// Decodes an image file's bytes (format from the bytes, not the name) into its own shape.
/// With `want_c` = 1 a colour image is converted to luminance; otherwise its channels (gray 1,
/// gray+alpha 2, RGB 3, RGBA 4, or the pages of a TIFF stack) must number `want_c`.
pub fn decode(bytes: &[u8], p: &Path, want_c: usize) -> Result<Native> {
    decode_source(bytes, p, want_c).map(|(img, _)| img)
}

/// [`decode`], and the channels the file itself has (e.g. 3 for an RGB file decoded to gray).
pub fn decode_source(bytes: &[u8], p: &Path, want_c: usize) -> Result<(Native, usize)> {
    let err = |msg: String| Error::Format {
        path: p.to_path_buf(),
        msg,
    };
    if is_tiff(bytes) {
        let pages = tiff_pages(bytes, p)?;
        if pages > 1 {
            let img = decode_tiff_stack(bytes, p, pages)?;
            if img.shape.c != want_c {
                return Err(err(format!(
                    "TIFF stack has {pages} pages (channels); the run needs {want_c} (data.channels)"
                )));
            }
            return Ok((img, pages));
        }
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    if reader.format().is_none() {
        return Err(err("not a PNG, JPEG or TIFF image".into()));
    }
    let img = reader.decode().map_err(|e| err(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(err("image has no pixels".into()));
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    let have = img.color().channel_count() as usize;
    let interleaved: Vec<f32> = match (want_c, have) {
        (1, _) => img.to_luma32f().into_raw(),
        (c, k) if c != k => {
            return Err(err(format!(
                "image has {k} channel{} ({:?}); the run needs {c} (data.channels)",
                if k == 1 { "" } else { "s" },
                img.color()
            )))
        }
        (_, 1) => img.to_luma32f().into_raw(),
        (_, 2) => img.to_luma_alpha32f().into_raw(),
        (_, 3) => img.to_rgb32f().into_raw(),
        _ => img.to_rgba32f().into_raw(),
    };
    let shape = Shape::new(want_c, h, w);
    let clamped = interleaved.into_iter().map(|v| v.clamp(0.0, 1.0)).collect();
    Ok((
        Native {
            shape,
            px: planar(clamped, shape),
        },
        have,
    ))
}

fn tiff_limits() -> tiff::decoder::Limits {
    let mut l = tiff::decoder::Limits::default();
    l.decoding_buffer_size = MAX_IMAGE_ALLOC as usize;
    l
}

/// Number of pages (images) of a TIFF file.
fn tiff_pages(bytes: &[u8], p: &Path) -> Result<usize> {
    let err = |e: tiff::TiffError| Error::Format {
        path: p.to_path_buf(),
        msg: format!("TIFF: {e}"),
    };
    let mut d = tiff::decoder::Decoder::new(std::io::Cursor::new(bytes))
        .map_err(err)?
        .with_limits(tiff_limits());
    let mut n = 1;
    while d.more_images() {
        d.next_image().map_err(err)?;
        n += 1;
        if n > MAX_TIFF_PAGES {
            return Err(Error::Format {
                path: p.to_path_buf(),
                msg: format!("TIFF has more than {MAX_TIFF_PAGES} pages"),
            });
        }
    }
    Ok(n)
}

/// A multi-page TIFF (microscopy stack): every page one grayscale channel of the same size.
fn decode_tiff_stack(bytes: &[u8], p: &Path, pages: usize) -> Result<Native> {
    use tiff::decoder::DecodingResult as D;
    let fail = |msg: String| Error::Format {
        path: p.to_path_buf(),
        msg,
    };
    let err = |e: tiff::TiffError| fail(format!("TIFF: {e}"));
    let mut d = tiff::decoder::Decoder::new(std::io::Cursor::new(bytes))
        .map_err(err)?
        .with_limits(tiff_limits());
    let mut px = Vec::new();
    let mut size = None;
    for page in 0..pages {
        if page > 0 {
            d.next_image().map_err(err)?;
        }
        let (w, h) = d.dimensions().map_err(err)?;
        if w == 0 || h == 0 || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
            return Err(fail(format!(
                "page {} is {w}×{h}; sides must be 1..{MAX_IMAGE_SIDE}",
                page + 1
            )));
        }
        match size {
            None => size = Some((w, h)),
            Some(s) if s != (w, h) => {
                return Err(fail(format!(
                    "page {} is {w}×{h}, page 1 is {}×{}: the pages of a stack must have one size",
                    page + 1,
                    s.0,
                    s.1
                )))
            }
            _ => {}
        }
        let ct = d.colortype().map_err(err)?;
        if !matches!(ct, tiff::ColorType::Gray(_)) {
            return Err(fail(format!(
                "page {} is {ct:?}; the pages of a stack must be grayscale (one channel each)",
                page + 1
            )));
        }
        let v: Vec<f32> = match d.read_image().map_err(err)? {
            D::U8(v) => v.into_iter().map(|x| x as f32 / 255.0).collect(),
            D::U16(v) => v.into_iter().map(|x| x as f32 / 65535.0).collect(),
            D::F32(v) => {
                if let Some(x) = v.iter().find(|x| !(0.0..=1.0).contains(*x)) {
                    return Err(fail(format!(
                        "page {}: float value {x} outside [0, 1] (scale float stacks to [0, 1])",
                        page + 1
                    )));
                }
                v
            }
            _ => {
                return Err(fail(format!(
                    "page {}: sample type not supported (8-bit, 16-bit or 32-bit float gray)",
                    page + 1
                )))
            }
        };
        if v.len() != (w * h) as usize {
            return Err(fail(format!(
                "page {}: {} samples for {w}×{h}",
                page + 1,
                v.len()
            )));
        }
        px.extend(v);
    }
    let (w, h) = size.expect("at least one page");
    Ok(Native {
        shape: Shape::new(pages, h as usize, w as usize),
        px,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_parse_and_len() {
        assert_eq!(Shape::parse("2,64,64").unwrap(), Shape::new(2, 64, 64));
        assert_eq!(Shape::parse("3x33x17").unwrap(), Shape::new(3, 33, 17));
        assert!(Shape::parse("0,28,28").is_err());
        assert!(Shape::parse("28,28").is_err());
        assert_eq!(Shape::new(2, 64, 64).len(), 8192);
        assert_eq!(Shape::MNIST.to_string(), "28×28×1");
    }

    #[test]
    fn fit_pads_with_border_mean_and_keeps_aspect() {
        // a 4×8 (h×w) image, border 0.2, a bright 2×2 core → 8×8 target: scaled 2× to 8×16? no:
        // s = min(8/8, 8/4) = 1 → 4 rows × 8 cols pasted at row 2, rows 0-1 and 6-7 padded
        let mut px = vec![0.2f32; 32];
        for (r, c) in [(1, 3), (1, 4), (2, 3), (2, 4)] {
            px[r * 8 + c] = 1.0;
        }
        let p = Prep {
            shape: Shape::new(1, 8, 8),
            resize: Resize::Fit,
        };
        let out = p
            .resize_native(
                &Native {
                    shape: Shape::new(1, 4, 8),
                    px: px.clone(),
                },
                false,
            )
            .unwrap();
        assert_eq!(out.len(), 64);
        assert!(out[..16].iter().all(|&v| (v - 0.2).abs() < 1e-6));
        assert!(out[48..].iter().all(|&v| (v - 0.2).abs() < 1e-6));
        assert_eq!(&out[16..48], &px[..]);
    }

    #[test]
    fn stretch_and_crop_reach_the_target() {
        let img = Native {
            shape: Shape::new(2, 10, 20),
            px: (0..400).map(|i| (i % 7) as f32 / 7.0).collect(),
        };
        for how in [Resize::Stretch, Resize::CenterCrop, Resize::Fit] {
            let p = Prep {
                shape: Shape::new(2, 16, 16),
                resize: how,
            };
            let out = p.resize_native(&img, false).unwrap();
            assert_eq!(out.len(), 2 * 256, "{how:?}");
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        // centre crop of a constant image with a distinct centre column keeps it in the middle
        let mut px = vec![0f32; 10 * 20];
        for r in 0..10 {
            px[r * 20 + 9] = 1.0;
            px[r * 20 + 10] = 1.0;
        }
        let p = Prep {
            shape: Shape::new(1, 10, 10),
            resize: Resize::CenterCrop,
        };
        let out = p
            .resize_native(
                &Native {
                    shape: Shape::new(1, 10, 20),
                    px,
                },
                false,
            )
            .unwrap();
        assert_eq!(out[4], 1.0);
        assert_eq!(out[5], 1.0);
        assert_eq!(out[0], 0.0);
    }

    fn png(img: image::DynamicImage) -> Vec<u8> {
        let mut b = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
            .unwrap();
        b
    }

    #[test]
    fn decode_png_bit_depths_and_channel_counts() {
        let p = Path::new("x.png");
        // 16-bit gray: 65535 → 1.0, 32768 → 0.500008
        let g16 =
            image::ImageBuffer::<Luma<u16>, _>::from_raw(2, 1, vec![65535u16, 32768]).unwrap();
        let d = decode(&png(image::DynamicImage::ImageLuma16(g16)), p, 1).unwrap();
        assert_eq!(d.shape, Shape::new(1, 1, 2));
        assert_eq!(d.px[0], 1.0);
        assert!((d.px[1] - 32768.0 / 65535.0).abs() < 1e-6);
        // RGB kept as 3 channels, channel-major
        let rgb = image::RgbImage::from_raw(2, 1, vec![255, 0, 51, 0, 102, 255]).unwrap();
        let bytes = png(image::DynamicImage::ImageRgb8(rgb));
        let d = decode(&bytes, p, 3).unwrap();
        assert_eq!(d.shape, Shape::new(3, 1, 2));
        assert_eq!(d.px, vec![1.0, 0.0, 0.0, 0.4, 0.2, 1.0]);
        // converted to gray for a one-channel run; refused for a two-channel one
        assert_eq!(decode(&bytes, p, 1).unwrap().shape.c, 1);
        let e = decode(&bytes, p, 2).unwrap_err().to_string();
        assert!(
            e.contains("x.png") && e.contains("3 channels") && e.contains("data.channels"),
            "{e}"
        );
        // gray+alpha is two channels
        let la = image::GrayAlphaImage::from_raw(1, 1, vec![255, 0]).unwrap();
        let d = decode(&png(image::DynamicImage::ImageLumaA8(la)), p, 2).unwrap();
        assert_eq!(d.px, vec![1.0, 0.0]);
    }

    fn tiff_stack(pages: &[(u32, u32, Vec<u16>)]) -> Vec<u8> {
        let mut b = std::io::Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut b).unwrap();
        for (w, h, v) in pages {
            enc.write_image::<tiff::encoder::colortype::Gray16>(*w, *h, v)
                .unwrap();
        }
        b.into_inner()
    }

    #[test]
    fn decode_tiff_stacks_pages_as_channels() {
        let p = Path::new("s.tif");
        let t = tiff_stack(&[(2, 1, vec![0, 65535]), (2, 1, vec![65535, 0])]);
        let d = decode(&t, p, 2).unwrap();
        assert_eq!(d.shape, Shape::new(2, 1, 2));
        assert_eq!(d.px, vec![0.0, 1.0, 1.0, 0.0]);
        let e = decode(&t, p, 1).unwrap_err().to_string();
        assert!(e.contains("s.tif") && e.contains("2 pages"), "{e}");
        let bad = tiff_stack(&[(2, 1, vec![0, 1]), (1, 2, vec![0, 1])]);
        let e = decode(&bad, p, 2).unwrap_err().to_string();
        assert!(e.contains("one size"), "{e}");
        // one page: an ordinary 16-bit gray image
        let one = tiff_stack(&[(2, 1, vec![0, 65535])]);
        assert_eq!(decode(&one, p, 1).unwrap().px, vec![0.0, 1.0]);
    }

    #[test]
    fn adopt_replicates_gray_across_channels() {
        let px: Vec<f32> = (0..2 * 784).map(|i| (i % 255) as f32 / 255.0).collect();
        let p = Prep {
            shape: Shape::new(2, 28, 28),
            resize: Resize::Fit,
        };
        let out = p.adopt(px.clone(), Shape::MNIST);
        assert_eq!(out.len(), 2 * 2 * 784);
        assert_eq!(&out[..784], &px[..784]);
        assert_eq!(&out[784..1568], &px[..784]);
        assert_eq!(&out[1568..2352], &px[784..]);
        assert_eq!(Prep::MNIST.adopt(px.clone(), Shape::MNIST), px);
    }
}
