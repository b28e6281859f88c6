//! Data: one typed [`Dataset`] (images of one shape C×H×W, channel-major, in [0,1], optional
//! labels, name, checksum) from any source: IDX files (3 or 4 dimensions), NumPy `.npy` arrays,
//! image folders (PNG, JPEG, TIFF stacks), the named sets fetched into the cache by the
//! ecosystem's package managers, rendered letters, natural-image crops and seeded noise, every
//! one brought to the run's shape by [`prep::Prep`].

pub mod fetch;
pub mod idx;
pub mod npy;
pub mod prep;
pub mod render;
pub mod stream;
pub mod transform;

pub use prep::{Prep, Resize, Shape};

use crate::error::{Error, IoContext, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Most images a generated or sampled set (`ood.count`, `known_unknowns.count`, `--count`) may
/// ask for; loading also checks the count against the memory available.
pub const MAX_IMAGES: usize = 50_000_000;

/// Largest number of classes accepted from user IDX files (EMNIST byclass has 62).
pub const MAX_CLASSES: u32 = 62;

/// Pixels of a 28×28 grayscale image (the built-in sets' own shape).
pub const PIXELS: usize = 784;

/// A set of images of one shape, each channel-major (C, H, W), values in [0, 1].
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub shape: Shape,
    /// N × C·H·W values.
    pub images: Vec<f32>,
    pub labels: Option<Vec<u32>>,
    /// sha256 of the images (f32 little-endian) and labels (u32 little-endian).
    pub sha256: String,
    /// Index of each image in its source (stays valid after subsetting).
    pub index: Vec<usize>,
}

impl Dataset {
    pub fn new(
        name: impl Into<String>,
        shape: Shape,
        images: Vec<f32>,
        labels: Option<Vec<u32>>,
    ) -> Dataset {
        let mut d = Dataset::unhashed(name, shape, images, labels);
        d.rehash();
        d
    }

    /// A data set without its sha256 (empty): for the pieces `metaclf score` and `metaclf
    /// features` score one after another, where hashing every image would only cost time.
    pub fn unhashed(
        name: impl Into<String>,
        shape: Shape,
        images: Vec<f32>,
        labels: Option<Vec<u32>>,
    ) -> Dataset {
        let n = images.len() / shape.len().max(1);
        Dataset {
            name: name.into(),
            shape,
            images,
            labels,
            sha256: String::new(),
            index: (0..n).collect(),
        }
    }

    /// Recomputes the sha256 of the images and labels (after changing them).
    pub fn rehash(&mut self) {
        let mut h = Sha256::new();
        for v in &self.images {
            h.update(v.to_le_bytes());
        }
        if let Some(l) = &self.labels {
            for v in l {
                h.update(v.to_le_bytes());
            }
        }
        self.sha256 = hex::encode(h.finalize());
    }

    pub fn len(&self) -> usize {
        self.images.len() / self.shape.len().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.shape.len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The rows at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(idx.len() * self.shape.len());
        for &i in idx {
            images.extend_from_slice(self.image(i));
        }
        let labels = self
            .labels
            .as_ref()
            .map(|l| idx.iter().map(|&i| l[i]).collect());
        let mut d = Dataset {
            name: self.name.clone(),
            shape: self.shape,
            images,
            labels,
            sha256: String::new(),
            index: idx.iter().map(|&i| self.index[i]).collect(),
        };
        d.rehash();
        d
    }

    /// Keeps only `classes` (labels re-indexed to their position in the list).
    pub fn keep_classes(&self, classes: &[u32]) -> Result<Dataset> {
        let Some(labels) = &self.labels else {
            return Err(Error::Data {
                name: self.name.clone(),
                msg: "has no labels, so data.classes cannot select from it".into(),
            });
        };
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| classes.contains(&labels[i]))
            .collect();
        let mut d = self.select(&idx);
        if let Some(l) = d.labels.as_mut() {
            for v in l.iter_mut() {
                *v = classes.iter().position(|c| c == v).unwrap() as u32;
            }
        }
        d.rehash();
        Ok(d)
    }

    /// Transposes every channel of every image (EMNIST storage → MNIST orientation):
    /// out[r][c] = raw[c][r]; height and width swap.
    pub fn transpose(&mut self) {
        let s = self.shape;
        let mut out = vec![0f32; self.images.len()];
        for (src, dst) in self
            .images
            .chunks_exact(s.hw())
            .zip(out.chunks_exact_mut(s.hw()))
        {
            for r in 0..s.h {
                for c in 0..s.w {
                    dst[c * s.h + r] = src[r * s.w + c];
                }
            }
        }
        self.images = out;
        self.shape = Shape::new(s.c, s.w, s.h);
        self.rehash();
    }

    /// The images brought to `prep`'s shape (built-in grayscale sets: resized by the policy and
    /// replicated across channels).
    pub fn adopt(self, prep: &Prep) -> Dataset {
        if self.shape == prep.shape {
            return self;
        }
        let index = self.index;
        let images = prep.adopt(self.images, self.shape);
        let mut d = Dataset::new(self.name, prep.shape, images, self.labels);
        d.index = index;
        d
    }

    /// Number of classes (max label + 1).
    pub fn num_classes(&self) -> usize {
        self.labels
            .as_ref()
            .and_then(|l| l.iter().max())
            .map_or(0, |m| *m as usize + 1)
    }
}

/// A deterministic RNG for one named stage: `seed` and `stage` fix every draw.
pub fn stage_rng(seed: u64, stage: &str) -> ChaCha8Rng {
    // FNV-1a of the stage name, so adding a stage does not shift another stage's draws.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stage.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h)
}

/// Train or test split of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Where a data set comes from; parsed from a spec string (see [`SPEC_HELP`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Mnist(Split),
    FashionMnist(Split),
    /// EMNIST files the user placed under `<data_dir>/emnist/`: (variant, split).
    Emnist(String, Split),
    Letters,
    GrayNatural,
    UniformNoise,
    NormalNoise,
    Idx {
        images: PathBuf,
        labels: Option<PathBuf>,
    },
    Npy {
        images: PathBuf,
        labels: Option<PathBuf>,
    },
    Folder(PathBuf),
    /// Every image below a folder, at any depth, unlabelled (subfolders are not classes).
    FolderFlat(PathBuf),
}

/// How data specs are written.
pub const SPEC_HELP: &str = "mnist[:train|:test], fashion-mnist[:train|:test], \
emnist-<variant>[:train|:test] (files under data/emnist/), letters, gray-natural, uniform-noise, \
normal-noise, idx:IMAGES[,LABELS], npy:IMAGES[,LABELS], folder:PATH (a subfolder per class, or flat), \
folder-flat:PATH (every image below PATH, unlabelled)";

/// The named sets `metaclf data` knows.
pub const NAMED: [&str; 6] = [
    "mnist",
    "fashion-mnist",
    "letters",
    "gray-natural",
    "uniform-noise",
    "normal-noise",
];

impl Source {
    pub fn parse(spec: &str) -> std::result::Result<Source, String> {
        let (head, tail) = match spec.split_once(':') {
            Some((h, t)) => (h, Some(t)),
            None => (spec, None),
        };
        let split = |t: Option<&str>| match t {
            None | Some("test") => Ok(Split::Test),
            Some("train") => Ok(Split::Train),
            Some(o) => Err(format!("{spec:?}: split {o:?} is neither train nor test")),
        };
        let no_tail = |s: Source| match tail {
            None => Ok(s),
            Some(_) => Err(format!("{spec:?}: {head} takes no ':' part")),
        };
        match head {
            "mnist" => Ok(Source::Mnist(split(tail)?)),
            "fashion-mnist" => Ok(Source::FashionMnist(split(tail)?)),
            "letters" => no_tail(Source::Letters),
            "gray-natural" => no_tail(Source::GrayNatural),
            "uniform-noise" => no_tail(Source::UniformNoise),
            "normal-noise" => no_tail(Source::NormalNoise),
            "idx" | "npy" => {
                let t = tail.filter(|t| !t.is_empty()).ok_or(format!(
                    "{spec:?}: write {head}:IMAGES or {head}:IMAGES,LABELS"
                ))?;
                let (i, l) = match t.split_once(',') {
                    Some((i, l)) => (i, Some(PathBuf::from(l))),
                    None => (t, None),
                };
                if head == "idx" {
                    Ok(Source::Idx {
                        images: i.into(),
                        labels: l,
                    })
                } else {
                    Ok(Source::Npy {
                        images: i.into(),
                        labels: l,
                    })
                }
            }
            "folder" => Ok(Source::Folder(
                tail.filter(|t| !t.is_empty())
                    .ok_or(format!("{spec:?}: write folder:PATH"))?
                    .into(),
            )),
            "folder-flat" => Ok(Source::FolderFlat(
                tail.filter(|t| !t.is_empty())
                    .ok_or(format!("{spec:?}: write folder-flat:PATH"))?
                    .into(),
            )),
            h if h.starts_with("emnist-") && h.len() > 7 => {
                Ok(Source::Emnist(h[7..].to_string(), split(tail)?))
            }
            _ => Err(format!("unknown data source {spec:?} (known: {SPEC_HELP})")),
        }
    }

    /// A short name for file columns (`ood-<name>`).
    pub fn short_name(spec: &str) -> String {
        spec.split(':').next().unwrap_or(spec).to_string()
    }
}

/// Fashion-MNIST's ten classes, in label order.
pub const FASHION_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The names of a source's labels 0, 1, 2, … where the source has them: a folder's
/// subfolders (sorted), the built-in sets' classes (digits "0"–"9", Fashion-MNIST's ten,
/// EMNIST's digits and letters). `None` for IDX and NumPy files (labels are numbers unless
/// `data.class_names` names them) and for sets without classes. Reads no image.
pub fn source_class_names(spec: &str) -> Result<Option<Vec<String>>> {
    let src = Source::parse(spec).map_err(|msg| Error::Data {
        name: spec.into(),
        msg,
    })?;
    let digits = || (0..10).map(|d| d.to_string()).collect::<Vec<_>>();
    Ok(match src {
        Source::Mnist(_) => Some(digits()),
        Source::FashionMnist(_) => Some(FASHION_NAMES.iter().map(|s| s.to_string()).collect()),
        Source::Emnist(v, _) => match v.as_str() {
            "digits" | "mnist" => Some(digits()),
            // EMNIST letters: labels 1–26 are a–z (0 is unused)
            "letters" => Some(
                std::iter::once("none".to_string())
                    .chain((b'a'..=b'z').map(|c| (c as char).to_string()))
                    .collect(),
            ),
            "byclass" => Some(
                digits()
                    .into_iter()
                    .chain((b'A'..=b'Z').map(|c| (c as char).to_string()))
                    .chain((b'a'..=b'z').map(|c| (c as char).to_string()))
                    .collect(),
            ),
            _ => None,
        },
        Source::Folder(p) => {
            let names = render::subfolder_names(&p)?;
            (!names.is_empty()).then_some(names)
        }
        _ => None,
    })
}

/// What loading needs besides the source.
#[derive(Debug, Clone)]
pub struct LoadCtx {
    pub data_dir: PathBuf,
    pub seed: u64,
    /// Images wanted from generated/sampled sets (noise, letters, crops); 0 = the set's default.
    pub count: usize,
    /// Stage name mixed into the seed (an OOD set and a known-unknown set of the same kind
    /// get different draws).
    pub stage: String,
    /// The run's image shape and resize policy: every set is brought to it.
    pub prep: Prep,
    /// How the subfolders of an image folder become labels (by the run's class names for
    /// in-distribution data; their own order for out-of-distribution folders, whose labels
    /// are not the run's classes).
    pub folder_labels: render::FolderLabels,
}

/// Loads a data set, fetching it into the cache first when needed.
pub fn load(spec: &str, ctx: &LoadCtx) -> Result<Dataset> {
    let src = Source::parse(spec).map_err(|msg| Error::Data {
        name: spec.into(),
        msg,
    })?;
    let name = Source::short_name(spec);
    check_count(spec, ctx.count, ctx.prep.shape)?;
    let count = |default: usize| if ctx.count == 0 { default } else { ctx.count };
    let mut rng = stage_rng(ctx.seed, &format!("{}/{}", ctx.stage, spec));
    let ds = match src {
        Source::Mnist(split) => {
            let dir = fetch::ensure(&ctx.data_dir, "mnist")?;
            let p = if split == Split::Train {
                "train"
            } else {
                "t10k"
            };
            load_idx(
                &name,
                &dir.join(format!("{p}-images-idx3-ubyte")),
                Some(&dir.join(format!("{p}-labels-idx1-ubyte"))),
                10,
            )?
            .adopt(&ctx.prep)
        }
        Source::FashionMnist(split) => {
            let dir = fetch::ensure(&ctx.data_dir, "fashion-mnist")?;
            let p = if split == Split::Train {
                "train"
            } else {
                "t10k"
            };
            let d = load_idx(
                &name,
                &dir.join(format!("{p}-images-idx3-ubyte.gz")),
                Some(&dir.join(format!("{p}-labels-idx1-ubyte.gz"))),
                10,
            )?;
            subsample(d, ctx.count, &mut rng).adopt(&ctx.prep)
        }
        Source::Emnist(variant, split) => {
            let (img, lab) = emnist_files(&ctx.data_dir, spec, &variant, split)?;
            let max = if variant == "letters" { 27 } else { 62 };
            // EMNIST's files store every image transposed: a property of the source, undone
            // wherever it is loaded
            let mut d = load_idx(&name, &img, Some(&lab), max)?;
            d.transpose();
            d.adopt(&ctx.prep)
        }
        Source::Letters => {
            let dir = fetch::ensure(&ctx.data_dir, "letters")?;
            let d = render::letters(&dir)?;
            subsample(d, count(2000), &mut rng).adopt(&ctx.prep)
        }
        Source::GrayNatural => {
            let dir = fetch::ensure(&ctx.data_dir, "gray-natural")?;
            render::natural_crops(&dir, count(2000), &mut rng)?.adopt(&ctx.prep)
        }
        Source::UniformNoise => render::uniform_noise(count(2000), ctx.prep.shape, &mut rng),
        Source::NormalNoise => render::normal_noise(count(2000), ctx.prep.shape, &mut rng),
        Source::Idx { images, labels } => {
            let (px, n, shape) = read_idx_images(&images)?;
            let labels = match labels {
                Some(lp) => Some(read_idx_labels(&lp, n, &images, MAX_CLASSES)?),
                None => None,
            };
            user_images(&name, px, shape, labels, &ctx.prep, &images)?
        }
        Source::Npy { images, labels } => {
            let (px, n, shape) = npy::read_images(&images)?;
            let labels = match labels {
                Some(lp) => Some(npy::read_labels(&lp, n, &images, MAX_CLASSES)?),
                None => None,
            };
            user_images(&name, px, shape, labels, &ctx.prep, &images)?
        }
        Source::Folder(path) => render::folder(&path, &ctx.prep, &ctx.folder_labels)?,
        Source::FolderFlat(path) => render::folder_flat(&path, &ctx.prep)?,
    };
    if ds.is_empty() {
        return Err(Error::Data {
            name: spec.into(),
            msg: "holds no images".into(),
        });
    }
    Ok(ds)
}

/// Checks a requested image count against [`MAX_IMAGES`] and the memory
/// available (images are held as f32, and subsetting copies them once), before anything is
/// allocated.
pub fn check_count(spec: &str, count: usize, shape: Shape) -> Result<()> {
    let max = MAX_IMAGES;
    let px = (shape.len() as u64).max(PIXELS as u64);
    let need = (count as u64).saturating_mul(px * 4 * 2);
    let budget = idx::memory_budget();
    if count > max || need > budget {
        return Err(Error::Data {
            name: spec.into(),
            msg: format!(
                "count {count} is too large: at most {} images fit in the {} MiB of memory available (limit {max})",
                (budget / (px * 8)).min(max as u64),
                budget >> 20
            ),
        });
    }
    Ok(())
}

/// Checks that every class of `classes` (original labels, in the order of `data.classes`) has
/// images in `ds` (loaded from `spec`), whose labels are already re-indexed to positions in
/// that list.
pub fn check_classes_present(ds: &Dataset, classes: &[u32], role: &str, spec: &str) -> Result<()> {
    let mut seen = vec![0usize; classes.len()];
    for &l in ds.labels.iter().flatten() {
        if let Some(c) = seen.get_mut(l as usize) {
            *c += 1;
        }
    }
    let missing: Vec<String> = classes
        .iter()
        .zip(&seen)
        .filter(|(_, &n)| n == 0)
        .map(|(c, _)| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Config {
            key: "data.classes".into(),
            msg: format!(
                "class{} {} of data.classes {:?} ha{} no images in the {role} set {spec}",
                if missing.len() > 1 { "es" } else { "" },
                missing.join(", "),
                classes,
                if missing.len() > 1 { "ve" } else { "s" },
            ),
        });
    }
    Ok(())
}

/// The EMNIST image and label files of a variant and split under `<data_dir>/emnist/` (plain or
/// .gz); the error says exactly which files to download and where to put them.
pub fn emnist_files(
    data_dir: &Path,
    spec: &str,
    variant: &str,
    split: Split,
) -> Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("emnist");
    let s = if split == Split::Train {
        "train"
    } else {
        "test"
    };
    let img = existing_or_plain(&dir.join(format!("emnist-{variant}-{s}-images-idx3-ubyte.gz")));
    let lab = existing_or_plain(&dir.join(format!("emnist-{variant}-{s}-labels-idx1-ubyte.gz")));
    if !img.exists() || !lab.exists() {
        return Err(Error::Data {
            name: spec.into(),
            msg: format!(
                "EMNIST is not on any package registry; download the EMNIST \"gzip\" archive from NIST \
                 (Cohen et al. 2017) and put {} and {} (plain or .gz) in {}",
                file_name(&img),
                file_name(&lab),
                dir.display()
            ),
        });
    }
    Ok((img, lab))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `x.gz` if it exists, else `x` without `.gz` if that exists, else `x.gz`.
fn existing_or_plain(gz: &Path) -> PathBuf {
    if gz.exists() {
        return gz.to_path_buf();
    }
    let plain = gz.with_extension("");
    if plain.exists() {
        plain
    } else {
        gz.to_path_buf()
    }
}

fn subsample(d: Dataset, count: usize, rng: &mut ChaCha8Rng) -> Dataset {
    if count == 0 || count >= d.len() {
        return d;
    }
    let mut idx: Vec<usize> = (0..d.len()).collect();
    idx.shuffle(rng);
    idx.truncate(count);
    idx.sort_unstable();
    d.select(&idx)
}

/// Reads an IDX label file for `n` images (of file `images`); every label must be < `max_label`.
pub fn read_idx_labels(lp: &Path, n: usize, images: &Path, max_label: u32) -> Result<Vec<u32>> {
    let l = idx::read_labels(lp)?;
    if l.len() != n {
        return Err(Error::Format {
            path: lp.to_path_buf(),
            msg: format!("{} labels for {n} images in {}", l.len(), images.display()),
        });
    }
    if let Some((i, v)) = l.iter().enumerate().find(|(_, &v)| v as u32 >= max_label) {
        return Err(Error::Format {
            path: lp.to_path_buf(),
            msg: format!("label {v} at index {i} is out of range 0..{max_label}"),
        });
    }
    Ok(l.into_iter().map(u32::from).collect())
}

/// Reads an IDX image file (3 or 4 dimensions) as channel-major values in [0, 1]: (values, N,
/// shape).
pub fn read_idx_images(path: &Path) -> Result<(Vec<f32>, usize, Shape)> {
    let f = std::fs::File::open(path).at(path)?;
    let size = f.metadata().at(path)?.len();
    let (px, n, shape) = idx::read_images_shaped(std::io::BufReader::new(f), size, path)?;
    Ok((idx::planar(&px, shape), n, shape))
}

/// Reads an IDX image file and optional label file at their own shape; labels must be <
/// `max_label`.
pub fn load_idx(
    name: &str,
    images: &Path,
    labels: Option<&Path>,
    max_label: u32,
) -> Result<Dataset> {
    let (px, n, shape) = read_idx_images(images)?;
    let labels = match labels {
        Some(lp) => Some(read_idx_labels(lp, n, images, max_label)?),
        None => None,
    };
    Ok(Dataset::new(name, shape, px, labels))
}

/// A user's images (IDX or .npy, file `path`) brought to the run's shape: the channel count
/// must be the run's; other sizes are resized with the run's policy.
pub fn user_images(
    name: &str,
    px: Vec<f32>,
    shape: Shape,
    labels: Option<Vec<u32>>,
    prep: &Prep,
    path: &Path,
) -> Result<Dataset> {
    let px = fit_user(px, shape, prep, path)?;
    Ok(Dataset::new(name, prep.shape, px, labels))
}

/// [`user_images`]' conversion of n images of `shape` (channel-major) to the run's shape.
pub fn fit_user(px: Vec<f32>, shape: Shape, prep: &Prep, path: &Path) -> Result<Vec<f32>> {
    if shape.c != prep.shape.c {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!(
                "images have {} channel{}; the run needs {} (data.channels)",
                shape.c,
                if shape.c == 1 { "" } else { "s" },
                prep.shape.c
            ),
        });
    }
    // channels equal: adopt only resizes (a blank image under `mnist` stays blank)
    Ok(prep.adopt(px, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_emnist_rule() {
        let mut img = vec![0f32; PIXELS];
        img[3] = 1.0; // row 0, col 3
        img[28 * 5 + 1] = 0.5; // row 5, col 1
        let mut d = Dataset::new("t", Shape::MNIST, img, None);
        let before = d.sha256.clone();
        d.transpose();
        assert_eq!(d.images[3 * 28], 1.0); // row 3, col 0
        assert_eq!(d.images[28 + 5], 0.5); // row 1, col 5
        assert_eq!(d.images.iter().filter(|&&v| v > 0.0).count(), 2);
        assert_ne!(before, d.sha256);
        // a 2-channel 2×3 image becomes 3×2, each channel on its own
        let mut d = Dataset::new(
            "t",
            Shape::new(2, 2, 3),
            vec![0., 1., 2., 3., 4., 5., 10., 11., 12., 13., 14., 15.],
            None,
        );
        d.transpose();
        assert_eq!(d.shape, Shape::new(2, 3, 2));
        assert_eq!(
            d.images,
            vec![0., 3., 1., 4., 2., 5., 10., 13., 11., 14., 12., 15.]
        );
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(Source::parse("mnist").unwrap(), Source::Mnist(Split::Test));
        assert_eq!(
            Source::parse("mnist:train").unwrap(),
            Source::Mnist(Split::Train)
        );
        assert_eq!(
            Source::parse("emnist-digits:train").unwrap(),
            Source::Emnist("digits".into(), Split::Train)
        );
        assert!(Source::parse("mnist:val").is_err());
        assert!(Source::parse("letters:x").is_err());
        assert!(Source::parse("cifar").is_err());
        assert!(Source::parse("idx:").is_err());
    }

    #[test]
    fn keep_classes_reindexes() {
        let d = Dataset::new(
            "t",
            Shape::MNIST,
            vec![0.0; 4 * PIXELS],
            Some(vec![3, 1, 7, 3]),
        );
        let k = d.keep_classes(&[3, 7]).unwrap();
        assert_eq!(k.labels.unwrap(), vec![0, 1, 0]);
        assert_eq!(k.index, vec![0, 2, 3]);
    }

    #[test]
    fn stage_rngs_differ_and_repeat() {
        use rand::Rng;
        let a: u64 = stage_rng(1, "a").gen();
        let b: u64 = stage_rng(1, "b").gen();
        assert_ne!(a, b);
        assert_eq!(a, stage_rng(1, "a").gen::<u64>());
    }
}
