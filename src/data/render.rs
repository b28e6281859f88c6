//! Images made or converted here: letters A–J rendered from fonts (MNIST normalisation, see
//! [`super::prep::mnist_normalize`]), grayscale natural-image crops, seeded noise at any shape,
//! and image folders brought to the run's shape.

use super::prep::{self, mnist_normalize, Prep, Shape};
use super::{Dataset, PIXELS};
use crate::error::{Error, IoContext, Result};
use ab_glyph::{Font, FontVec};
use image::{imageops::FilterType, ImageBuffer, Luma};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::path::{Path, PathBuf};

type GrayF = ImageBuffer<Luma<f32>, Vec<f32>>;

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
                    if let Some(px) = mnist_normalize(&glyph, 28, 28, side, off) {
                        images.extend_from_slice(&px);
                        labels.push(li as u32);
                    }
                }
            }
        }
    }
    Ok(Dataset::new("letters", Shape::MNIST, images, Some(labels)))
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
    Ok(Dataset::new("gray-natural", Shape::MNIST, images, None))
}

/// Uniform noise at `shape`: every value from U[0, 1).
pub fn uniform_noise(count: usize, shape: Shape, rng: &mut ChaCha8Rng) -> Dataset {
    let images = (0..count * shape.len()).map(|_| rng.gen::<f32>()).collect();
    Dataset::new("uniform-noise", shape, images, None)
}

/// Normal noise at `shape`: every value from N(0.5, 0.25²), clipped to [0, 1].
pub fn normal_noise(count: usize, shape: Shape, rng: &mut ChaCha8Rng) -> Dataset {
    let n = Normal::new(0.5f32, 0.25).unwrap();
    let images = (0..count * shape.len())
        .map(|_| n.sample(rng).clamp(0.0, 1.0))
        .collect();
    Dataset::new("normal-noise", shape, images, None)
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg" | "tif" | "tiff")
    )
}

/// Converts one image file to the run's shape (see [`convert_bytes`]).
pub fn convert_file(p: &Path, prep: &Prep) -> Result<Vec<f32>> {
    convert_file_native(p, prep).map(|(px, _)| px)
}

/// [`convert_file`], and the file's own shape (its channels, height and width as stored).
pub fn convert_file_native(p: &Path, prep: &Prep) -> Result<(Vec<f32>, Shape)> {
    let bytes = std::fs::read(p).at(p)?;
    let (img, source_c) = prep::decode_source(&bytes, p, prep.shape.c)?;
    let px = prep
        .resize_native(&img, true)
        .ok_or_else(|| Error::Format {
            path: p.to_path_buf(),
            msg: "image is blank".into(),
        })?;
    Ok((px, Shape::new(source_c, img.shape.h, img.shape.w)))
}

/// Decodes an image file's bytes ([`prep::decode`]: format from the bytes, decoder limits) and
/// brings it to `prep`'s shape. With the `mnist` policy (28×28 grayscale by default): dark ink
/// on light paper is inverted, images of the target size are kept as they are, others
/// normalised (ink box → 20 px, centre of mass); a blank image is an error.
pub fn convert_bytes(bytes: &[u8], p: &Path, prep: &Prep) -> Result<Vec<f32>> {
    let img = prep::decode(bytes, p, prep.shape.c)?;
    prep.resize_native(&img, true).ok_or_else(|| Error::Format {
        path: p.to_path_buf(),
        msg: "image is blank".into(),
    })
}

/// How an image folder's subfolders become labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum FolderLabels {
    /// Subfolder k (in sorted order) is label k: the training folder of a run that names no
    /// classes.
    #[default]
    Own,
    /// A subfolder is the label of its name in this list (the run's `data.class_names`); a
    /// subfolder the list does not name is an error, never renumbered.
    ByName(Vec<String>),
    /// Every image below the folder (any depth, as [`flat_files`]), unlabelled: subfolder
    /// names are not taken as labels.
    Ignore,
}

/// The subfolder names of `dir`, sorted (empty for a flat folder).
pub fn subfolder_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(|p| {
            p.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The image files of a folder: one subfolder per class (labelled as `how` says), or a flat
/// folder of unlabeled images. Returns the set's name, the files in order and the labels.
pub fn folder_files(
    dir: &Path,
    how: &FolderLabels,
) -> Result<(String, Vec<PathBuf>, Option<Vec<u32>>)> {
    if *how == FolderLabels::Ignore {
        let (name, files) = flat_files(dir)?;
        return Ok((name, files, None));
    }
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
        let sub = sd
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = match how {
            FolderLabels::ByName(names) => match names.iter().position(|n| *n == sub) {
                Some(k) => k as u32,
                None => {
                    return Err(Error::Format {
                        path: sd.clone(),
                        msg: format!(
                            "subfolder {sub:?} is not a class of the run (its classes: {}); \
                             read nested folders that are not classes with folder-flat:{} \
                             (every image below it, unlabelled), or score with --unlabeled",
                            names.join(", "),
                            dir.display(),
                        ),
                    });
                }
            },
            // `Ignore` returned above: the sorted subfolder order
            _ => ci as u32,
        };
        let mut f: Vec<_> = std::fs::read_dir(sd)
            .at(sd)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        f.sort();
        labels.extend(std::iter::repeat_n(label, f.len()));
        files.extend(f);
    }
    Ok((name, files, Some(labels)))
}

/// Every image file below `dir` (any depth, sorted by path; symbolic links to folders are not
/// followed): one unlabelled batch, for collections whose subfolders are dates, plates or
/// stations rather than classes.
pub fn flat_files(dir: &Path) -> Result<(String, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).at(&d)? {
            let Ok(e) = e else { continue };
            let p = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                stack.push(p);
            } else if is_image(&p) {
                files.push(p);
            }
        }
    }
    files.sort();
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "folder".into());
    Ok((name, files))
}

/// An image folder (see [`folder_files`]) read whole, every image brought to `prep`'s shape.
pub fn folder(dir: &Path, prep: &Prep, how: &FolderLabels) -> Result<Dataset> {
    let (name, files, labels) = folder_files(dir, how)?;
    read_files(name, &files, labels, prep)
}

/// Every image below a folder ([`flat_files`]), unlabelled.
pub fn folder_flat(dir: &Path, prep: &Prep) -> Result<Dataset> {
    let (name, files) = flat_files(dir)?;
    read_files(name, &files, None, prep)
}

fn read_files(
    name: String,
    files: &[PathBuf],
    labels: Option<Vec<u32>>,
    prep: &Prep,
) -> Result<Dataset> {
    let mut images = Vec::with_capacity(files.len() * prep.shape.len());
    for p in files {
        images.extend_from_slice(&convert_file(p, prep)?);
    }
    Ok(Dataset::new(name, prep.shape, images, labels))
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
        let px = mnist_normalize(&img, 28, 28, 20, (0, 0)).unwrap();
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
        let shifted = mnist_normalize(&img, 28, 28, 20, (2, 0)).unwrap();
        let first = |p: &[f32]| {
            (0..28)
                .find(|&c| (0..28).any(|r| p[r * 28 + c] > 0.5))
                .unwrap()
        };
        assert_eq!(first(&shifted), first(&px) + 2);
        assert!(mnist_normalize(&GrayF::new(5, 5), 28, 28, 20, (0, 0)).is_none());
    }

    #[test]
    fn noise_is_seeded_and_in_range() {
        use rand::SeedableRng;
        let a = uniform_noise(3, Shape::MNIST, &mut ChaCha8Rng::seed_from_u64(1));
        let b = uniform_noise(3, Shape::MNIST, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(a.images, b.images);
        let c = uniform_noise(3, Shape::new(2, 5, 7), &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(c.images.len(), 3 * 70);
        assert_eq!(c.images[..70], a.images[..70]);
        let n = normal_noise(50, Shape::MNIST, &mut ChaCha8Rng::seed_from_u64(1));
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
        let ds = folder(d.path(), &Prep::MNIST, &FolderLabels::Own).unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.labels.clone().unwrap(), vec![0, 0, 1, 1]);
        // by name: the run's list fixes the numbers, never the folder's own order
        let names: Vec<String> = ["x", "b", "a"].map(String::from).to_vec();
        let by = folder(d.path(), &Prep::MNIST, &FolderLabels::ByName(names)).unwrap();
        assert_eq!(by.labels.clone().unwrap(), vec![2, 2, 1, 1]);
        assert_eq!(by.images, ds.images);
        let e = folder(
            d.path(),
            &Prep::MNIST,
            &FolderLabels::ByName(vec!["a".into(), "c".into()]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"b\" is not a class of the run (its classes: a, c)")
                && e.contains("folder-flat:"),
            "{e}"
        );
        let ign = folder(d.path(), &Prep::MNIST, &FolderLabels::Ignore).unwrap();
        assert!(ign.labels.is_none() && ign.len() == 4);
        // folder-flat: every image below, any depth, sorted by path, unlabelled
        std::fs::create_dir_all(d.path().join("b").join("2024-06-01")).unwrap();
        std::fs::copy(
            d.path().join("a").join("2.png"),
            d.path().join("b").join("2024-06-01").join("0.png"),
        )
        .unwrap();
        let (_, files) = flat_files(d.path()).unwrap();
        let rel: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(d.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            rel,
            [
                "a/1.png",
                "a/2.png",
                "b/1.png",
                "b/2.png",
                "b/2024-06-01/0.png"
            ]
        );
        std::fs::remove_dir_all(d.path().join("b").join("2024-06-01")).unwrap();
        // inverted to white ink, normalised: 20 px wide bar, centred
        let img = ds.image(0);
        let cols = (0..28)
            .filter(|&c| (0..28).any(|r| img[r * 28 + c] > 0.5))
            .count();
        assert_eq!(cols, 20);
        assert!(img[0] == 0.0 && img.iter().cloned().fold(0.0, f32::max) > 0.9);
        // 28×28 images are kept as they are (after the light-background check: mean < 0.5 here)
        assert!((ds.image(1)[27] - 243.0 / 255.0).abs() < 1e-6);
        let flat = folder(&d.path().join("b"), &Prep::MNIST, &FolderLabels::Own).unwrap();
        assert_eq!(flat.len(), 2);
        assert!(flat.labels.is_none());
        let e = convert_file(&d.path().join("a").join("notes.txt"), &Prep::MNIST)
            .unwrap_err()
            .to_string();
        assert!(e.contains("notes.txt"), "{e}");
    }
}
