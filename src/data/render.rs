//! Images made or converted here: the MNIST normalisation (ink box → longer side B → centre of
//! mass at the frame centre), letters A–J rendered from fonts, grayscale natural-image crops,
//! seeded noise, and image folders.

use super::{Dataset, PIXELS};
use crate::error::{Error, IoContext, Result};
use ab_glyph::{Font, FontVec};
use image::{imageops::FilterType, ImageBuffer, Luma};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::path::{Path, PathBuf};

type GrayF = ImageBuffer<Luma<f32>, Vec<f32>>;

/// MNIST-style normalisation of a white-on-black grayscale image (values in [0,1]):
/// crop to the ink box, resize so the longer side is `side` px (antialiased), paste into 28×28
/// with the intensity-weighted centre of mass at (13.5, 13.5) rounded to whole pixels, shift by
/// `offset` (dx, dy) and clamp so no ink is cut. `None` when there is no ink.
pub fn mnist_normalize(img: &GrayF, side: u32, offset: (i32, i32)) -> Option<[f32; PIXELS]> {
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
    let nw = ((cw as f64 * scale).round() as u32).clamp(1, 28);
    let nh = ((ch as f64 * scale).round() as u32).clamp(1, 28);
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
    let left = (13.5 - mx / m).round() as i32 + offset.0;
    let top = (13.5 - my / m).round() as i32 + offset.1;
    let left = left.clamp(0, 28 - nw as i32);
    let top = top.clamp(0, 28 - nh as i32);
    let mut out = [0f32; PIXELS];
    for (x, y, p) in small.enumerate_pixels() {
        let (ox, oy) = (left + x as i32, top + y as i32);
        out[oy as usize * 28 + ox as usize] = p.0[0].clamp(0.0, 1.0);
    }
    Some(out)
}

/// Rasterises one character at 128 px, white on black.
fn rasterise(font: &FontVec, c: char) -> Option<GrayF> {
    let glyph = font.glyph_id(c).with_scale(128.0);
    let outlined = font.outline_glyph(glyph)?;
    let b = outlined.px_bounds();
    let (w, h) = (b.width().ceil() as u32 + 1, b.height().ceil() as u32 + 1);
    let mut img = GrayF::new(w, h);
    outlined.draw(|x, y, c| {
        if x < w && y < h {
            img.put_pixel(x, y, Luma([c]));
        }
    });
    Some(img)
}

/// Sizes and offsets of every letter render (15 variants per glyph).
pub const LETTER_SIDES: [u32; 3] = [20, 17, 14];
pub const LETTER_OFFSETS: [(i32, i32); 5] = [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)];

/// Letters A–J from every font file in `dir`, 15 variants each (sorted by font file name);
/// labels 0..9 = A..J.
pub fn letters(dir: &Path) -> Result<Dataset> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("ttf" | "otf")))
        .collect();
    files.sort();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).at(f)?;
        let font = FontVec::try_from_vec(bytes).map_err(|e| Error::Format {
            path: f.clone(),
            msg: format!("not a usable font: {e}"),
        })?;
        for (li, c) in ('A'..='J').enumerate() {
            let Some(glyph) = rasterise(&font, c) else {
                continue;
            };
            for side in LETTER_SIDES {
                for off in LETTER_OFFSETS {
                    if let Some(px) = mnist_normalize(&glyph, side, off) {
                        images.extend_from_slice(&px);
                        labels.push(li as u32);
                    }
                }
            }
        }
    }
    Ok(Dataset::new("letters", images, Some(labels)))
}

/// Crops whose pixel standard deviation is below this are rejected as flat.
pub const MIN_CROP_STD: f32 = 0.04;

/// `count` random 28×28 grayscale windows of the photos in `dir`, each photo resized so its
/// shorter side is 64 or 128 px (Lanczos3); near-flat windows are redrawn.
pub fn natural_crops(dir: &Path, count: usize, rng: &mut ChaCha8Rng) -> Result<Dataset> {
    let mut scaled = Vec::new();
    for (member, _) in super::fetch::PHOTOS {
        let p = dir.join(member.rsplit('/').next().unwrap());
        let img = image::open(&p).map_err(|e| Error::Format {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        let g = img.to_luma32f();
        for short in [64u32, 128] {
            let (w, h) = g.dimensions();
            let s = short as f64 / w.min(h) as f64;
            let (nw, nh) = ((w as f64 * s).round() as u32, (h as f64 * s).round() as u32);
            scaled.push(image::imageops::resize(
                &g,
                nw.max(28),
                nh.max(28),
                FilterType::Lanczos3,
            ));
        }
    }
    let mut images = Vec::with_capacity(count * PIXELS);
    let mut tries = 0usize;
    while images.len() < count * PIXELS {
        tries += 1;
        if tries > count * 100 + 1000 {
            return Err(Error::Data {
                name: "gray-natural".into(),
                msg: "photos too flat to give enough crops".into(),
            });
        }
        let img = &scaled[rng.gen_range(0..scaled.len())];
        let (w, h) = img.dimensions();
        let (x, y) = (rng.gen_range(0..=w - 28), rng.gen_range(0..=h - 28));
        let mut px = [0f32; PIXELS];
        for r in 0..28 {
            for c in 0..28 {
                px[r * 28 + c] = img.get_pixel(x + c as u32, y + r as u32).0[0].clamp(0.0, 1.0);
            }
        }
        let mean = px.iter().sum::<f32>() / PIXELS as f32;
        let var = px.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / PIXELS as f32;
        if var.sqrt() >= MIN_CROP_STD {
            images.extend_from_slice(&px);
        }
    }
    Ok(Dataset::new("gray-natural", images, None))
}

/// Uniform noise: every pixel from U[0, 1).
pub fn uniform_noise(count: usize, rng: &mut ChaCha8Rng) -> Dataset {
    let images = (0..count * PIXELS).map(|_| rng.gen::<f32>()).collect();
    Dataset::new("uniform-noise", images, None)
}

/// Normal noise: every pixel from N(0.5, 0.25²), clipped to [0, 1].
pub fn normal_noise(count: usize, rng: &mut ChaCha8Rng) -> Dataset {
    let n = Normal::new(0.5f32, 0.25).unwrap();
    let images = (0..count * PIXELS)
        .map(|_| n.sample(rng).clamp(0.0, 1.0))
        .collect();
    Dataset::new("normal-noise", images, None)
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// Converts one image file to MNIST form: grayscale; dark ink on light paper is inverted;
/// 28×28 images are kept as they are, others normalised (ink box → 20 px, centre of mass).
pub fn convert_file(p: &Path) -> Result<[f32; PIXELS]> {
    let bytes = std::fs::read(p).at(p)?;
    convert_bytes(&bytes, p)
}

/// Largest width or height of an image file accepted (a microscope tile is a few thousand).
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Most bytes the decoder may allocate for one image (decompression bombs stop here).
pub const MAX_IMAGE_ALLOC: u64 = 512 << 20;

/// [`convert_file`] from the file's bytes; the format comes from the bytes, not the name, and
/// the decoder runs under [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_ALLOC`].
pub fn convert_bytes(bytes: &[u8], p: &Path) -> Result<[f32; PIXELS]> {
    let err = |msg: String| Error::Format {
        path: p.to_path_buf(),
        msg,
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    if reader.format().is_none() {
        return Err(err("not a PNG or JPEG image".into()));
    }
    let img = reader.decode().map_err(|e| err(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(err("image has no pixels".into()));
    }
    let mut g = img.to_luma32f();
    let mean = g.pixels().map(|p| p.0[0]).sum::<f32>() / (g.width() * g.height()).max(1) as f32;
    if mean > 0.5 {
        for p in g.pixels_mut() {
            p.0[0] = 1.0 - p.0[0];
        }
    }
    if g.dimensions() == (28, 28) {
        let mut out = [0f32; PIXELS];
        for (i, p) in g.pixels().enumerate() {
            out[i] = p.0[0].clamp(0.0, 1.0);
        }
        return Ok(out);
    }
    // faint background noise would make the ink box the whole image
    for p in g.pixels_mut() {
        if p.0[0] < 0.1 {
            p.0[0] = 0.0;
        }
    }
    mnist_normalize(&g, 20, (0, 0)).ok_or_else(|| Error::Format {
        path: p.to_path_buf(),
        msg: "image is blank".into(),
    })
}

/// The image files of a folder: one subfolder per class (labels = sorted subfolder order), or a
/// flat folder of unlabeled images. Returns the set's name, the files in order and the labels.
pub fn folder_files(dir: &Path) -> Result<(String, Vec<PathBuf>, Option<Vec<u32>>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let subdirs: Vec<_> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "folder".into());
    if subdirs.is_empty() {
        let files = entries.into_iter().filter(|p| is_image(p)).collect();
        return Ok((name, files, None));
    }
    let (mut files, mut labels) = (Vec::new(), Vec::new());
    for (ci, sd) in subdirs.iter().enumerate() {
        let mut f: Vec<_> = std::fs::read_dir(sd)
            .at(sd)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        f.sort();
        labels.extend(std::iter::repeat_n(ci as u32, f.len()));
        files.extend(f);
    }
    Ok((name, files, Some(labels)))
}

/// An image folder (see [`folder_files`]) read whole.
pub fn folder(dir: &Path) -> Result<Dataset> {
    let (name, files, labels) = folder_files(dir)?;
    let mut images = Vec::with_capacity(files.len() * PIXELS);
    for p in &files {
        images.extend_from_slice(&convert_file(p)?);
    }
    Ok(Dataset::new(name, images, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_centres_mass_and_fits_box() {
        // a 40×10 bar: longer side → 20 px
        let mut img = GrayF::new(60, 30);
        for y in 5..15 {
            for x in 10..50 {
                img.put_pixel(x, y, Luma([1.0]));
            }
        }
        let px = mnist_normalize(&img, 20, (0, 0)).unwrap();
        let cols: Vec<usize> = (0..28)
            .filter(|&c| (0..28).any(|r| px[r * 28 + c] > 0.5))
            .collect();
        assert_eq!(cols.len(), 20);
        let (mut m, mut mx, mut my) = (0.0, 0.0, 0.0);
        for (i, v) in px.iter().enumerate() {
            m += v;
            mx += v * (i % 28) as f32;
            my += v * (i / 28) as f32;
        }
        assert!((mx / m - 13.5).abs() <= 0.5 && (my / m - 13.5).abs() <= 0.5);
        // an offset moves the ink by that many pixels
        let shifted = mnist_normalize(&img, 20, (2, 0)).unwrap();
        let first = |p: &[f32; 784]| {
            (0..28)
                .find(|&c| (0..28).any(|r| p[r * 28 + c] > 0.5))
                .unwrap()
        };
        assert_eq!(first(&shifted), first(&px) + 2);
        assert!(mnist_normalize(&GrayF::new(5, 5), 20, (0, 0)).is_none());
    }

    #[test]
    fn noise_is_seeded_and_in_range() {
        use rand::SeedableRng;
        let a = uniform_noise(3, &mut ChaCha8Rng::seed_from_u64(1));
        let b = uniform_noise(3, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a.images, b.images);
        let n = normal_noise(50, &mut ChaCha8Rng::seed_from_u64(1));
        assert!(n.images.iter().all(|v| (0.0..=1.0).contains(v)));
        let mean = n.images.iter().sum::<f32>() / n.images.len() as f32;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}

#[cfg(test)]
mod folder_tests {
    use super::*;

    #[test]
    fn class_folders_and_flat_folders() {
        let d = tempfile::tempdir().unwrap();
        for (class, row) in [("a", 5u32), ("b", 20)] {
            std::fs::create_dir_all(d.path().join(class)).unwrap();
            // dark ink on white paper, 40×40: a horizontal bar
            let img = image::GrayImage::from_fn(40, 40, |x, y| {
                image::Luma([if (row..row + 4).contains(&y) && (8..32).contains(&x) {
                    0
                } else {
                    255
                }])
            });
            img.save(d.path().join(class).join("1.png")).unwrap();
            let small = image::GrayImage::from_fn(28, 28, |x, _| image::Luma([(x * 9) as u8]));
            small.save(d.path().join(class).join("2.png")).unwrap();
        }
        std::fs::write(d.path().join("a").join("notes.txt"), "ignored").unwrap();
        let ds = folder(d.path()).unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.labels.clone().unwrap(), vec![0, 0, 1, 1]);
        // inverted to white ink, normalised: 20 px wide bar, centred
        let img = ds.image(0);
        let cols = (0..28)
            .filter(|&c| (0..28).any(|r| img[r * 28 + c] > 0.5))
            .count();
        assert_eq!(cols, 20);
        assert!(img[0] == 0.0 && img.iter().cloned().fold(0.0, f32::max) > 0.9);
        // 28×28 images are kept as they are (after the light-background check: mean < 0.5 here)
        assert!((ds.image(1)[27] - 243.0 / 255.0).abs() < 1e-6);
        let flat = folder(&d.path().join("b")).unwrap();
        assert_eq!(flat.len(), 2);
        assert!(flat.labels.is_none());
        let e = convert_file(&d.path().join("a").join("notes.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("notes.txt"), "{e}");
    }
}
