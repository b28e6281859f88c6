//! Data read chunk by chunk, so that scoring a collection needs memory for one chunk, not the
//! whole set: IDX files (plain or gzip) read in pieces, image folders decoded file by file,
//! noise generated from the same seeded stream as [`super::load`], and every other named set
//! (small: letters, natural crops, sampled sets) loaded whole and handed out in pieces. Every
//! stream yields exactly the images, labels and order of [`super::load`] for the same spec.

use super::{check_count, fetch, idx, render, stage_rng, Dataset, LoadCtx, Prep, Source, Split};
use crate::error::{Error, Result};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::io::BufReader;
use std::path::PathBuf;

/// Images of a stream: `images` (n × C·H·W at the run's shape), labels if the source has them, each image's index
/// in its source, its position in the stream, and its file path (folders; empty otherwise).
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub images: Vec<f32>,
    pub labels: Option<Vec<u32>>,
    pub index: Vec<usize>,
    pub pos: Vec<usize>,
    pub paths: Vec<String>,
    /// Each image's own shape before preprocessing (empty when the source does not say).
    pub native: Vec<super::Shape>,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
    /// The chunk as a data set named `name` of `shape` (indices kept; not hashed).
    pub fn dataset(&self, name: &str, shape: super::Shape) -> Dataset {
        let mut d = Dataset::unhashed(name, shape, self.images.clone(), self.labels.clone());
        d.index = self.index.clone();
        d
    }
}

/// What to do with an image file that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop with an error naming the file (the default).
    Stop,
    /// Skip it (logged, and listed by [`ImageStream::skipped`]).
    Skip,
}

/// A source read in chunks.
pub trait ImageStream {
    /// Images in the source.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn labelled(&self) -> bool;
    /// The images at the next `max` positions (fewer at the end; a folder's unreadable files
    /// are left out with [`OnError::Skip`], so a chunk may be empty); `None` at the end.
    fn next_chunk(&mut self, max: usize) -> Result<Option<Chunk>>;
    /// Skips the next `k` images without decoding them where the source allows.
    fn skip(&mut self, k: usize) -> Result<()>;
    /// Files skipped as unreadable (with [`OnError::Skip`]).
    fn skipped(&self) -> Vec<String> {
        Vec::new()
    }
}

struct IdxStream {
    images: Option<idx::Records<BufReader<std::fs::File>>>,
    labels: Option<Vec<u32>>,
    pos: usize,
    n: usize,
    /// The file's own shape, the run's preprocessing, and whether it is a built-in set (its
    /// gray channel replicated) or a user's file (channel count must match).
    shape: super::Shape,
    prep: Prep,
    builtin: bool,
    path: PathBuf,
}

impl ImageStream for IdxStream {
    fn len(&self) -> usize {
        self.n
    }
    fn labelled(&self) -> bool {
        self.labels.is_some()
    }
    fn next_chunk(&mut self, max: usize) -> Result<Option<Chunk>> {
        let k = max.max(1).min(self.n - self.pos);
        if k == 0 {
            if let Some(r) = self.images.take() {
                r.finish()?;
            }
            return Ok(None);
        }
        let rec = self.images.as_mut().expect("open until the end");
        let px = idx::planar(&rec.read(k)?, self.shape);
        let images = if self.builtin {
            self.prep.adopt(px, self.shape)
        } else {
            super::fit_user(px, self.shape, &self.prep, &self.path)?
        };
        let c = Chunk {
            images,
            labels: self
                .labels
                .as_ref()
                .map(|l| l[self.pos..self.pos + k].to_vec()),
            index: (self.pos..self.pos + k).collect(),
            pos: (self.pos..self.pos + k).collect(),
            paths: vec![String::new(); k],
            native: vec![self.shape; k],
        };
        self.pos += k;
        if self.pos == self.n {
            if let Some(r) = self.images.take() {
                r.finish()?;
            }
        }
        Ok(Some(c))
    }
    fn skip(&mut self, k: usize) -> Result<()> {
        let k = k.min(self.n - self.pos);
        if let Some(r) = self.images.as_mut() {
            r.skip(k)?;
        }
        self.pos += k;
        Ok(())
    }
}

struct FolderStream {
    prep: Prep,
    files: Vec<PathBuf>,
    labels: Option<Vec<u32>>,
    pos: usize,
    on_error: OnError,
    skipped: Vec<String>,
}

impl ImageStream for FolderStream {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn labelled(&self) -> bool {
        self.labels.is_some()
    }
    fn next_chunk(&mut self, max: usize) -> Result<Option<Chunk>> {
        if self.pos >= self.files.len() {
            return Ok(None);
        }
        let mut c = Chunk {
            labels: self.labels.as_ref().map(|_| Vec::new()),
            ..Default::default()
        };
        let end = (self.pos + max.max(1)).min(self.files.len());
        while self.pos < end {
            let i = self.pos;
            self.pos += 1;
            let p = &self.files[i];
            match render::convert_file_native(p, &self.prep) {
                Ok((px, native)) => {
                    c.images.extend_from_slice(&px);
                    c.native.push(native);
                    if let (Some(l), Some(all)) = (c.labels.as_mut(), &self.labels) {
                        l.push(all[i]);
                    }
                    c.index.push(i);
                    c.pos.push(i);
                    c.paths.push(p.display().to_string());
                }
                Err(e) if self.on_error == OnError::Skip => {
                    tracing::warn!("skipped: {e}");
                    self.skipped.push(p.display().to_string());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(c))
    }
    fn skip(&mut self, k: usize) -> Result<()> {
        self.pos = (self.pos + k).min(self.files.len());
        Ok(())
    }
    fn skipped(&self) -> Vec<String> {
        self.skipped.clone()
    }
}

struct NoiseStream {
    shape: super::Shape,
    normal: bool,
    rng: ChaCha8Rng,
    pos: usize,
    n: usize,
}

impl NoiseStream {
    fn draw(&mut self, k: usize) -> Vec<f32> {
        if self.normal {
            let d = Normal::new(0.5f32, 0.25).expect("valid normal");
            (0..k * self.shape.len())
                .map(|_| d.sample(&mut self.rng).clamp(0.0, 1.0))
                .collect()
        } else {
            (0..k * self.shape.len())
                .map(|_| self.rng.gen::<f32>())
                .collect()
        }
    }
}

impl ImageStream for NoiseStream {
    fn len(&self) -> usize {
        self.n
    }
    fn labelled(&self) -> bool {
        false
    }
    fn next_chunk(&mut self, max: usize) -> Result<Option<Chunk>> {
        let k = max.max(1).min(self.n - self.pos);
        if k == 0 {
            return Ok(None);
        }
        let c = Chunk {
            images: self.draw(k),
            labels: None,
            index: (self.pos..self.pos + k).collect(),
            pos: (self.pos..self.pos + k).collect(),
            paths: vec![String::new(); k],
            native: vec![self.shape; k],
        };
        self.pos += k;
        Ok(Some(c))
    }
    fn skip(&mut self, k: usize) -> Result<()> {
        let mut left = k.min(self.n - self.pos);
        while left > 0 {
            let step = left.min(4096);
            self.draw(step);
            left -= step;
            self.pos += step;
        }
        Ok(())
    }
}

struct MemStream {
    ds: Dataset,
    pos: usize,
}

impl ImageStream for MemStream {
    fn len(&self) -> usize {
        self.ds.len()
    }
    fn labelled(&self) -> bool {
        self.ds.labels.is_some()
    }
    fn next_chunk(&mut self, max: usize) -> Result<Option<Chunk>> {
        let k = max.max(1).min(self.ds.len() - self.pos);
        if k == 0 {
            return Ok(None);
        }
        let r = self.pos..self.pos + k;
        self.pos += k;
        let n = self.ds.shape.len();
        Ok(Some(Chunk {
            images: self.ds.images[r.start * n..r.end * n].to_vec(),
            labels: self.ds.labels.as_ref().map(|l| l[r.clone()].to_vec()),
            index: self.ds.index[r.clone()].to_vec(),
            pos: r.collect(),
            paths: vec![String::new(); k],
            // a set loaded whole is already brought to the run's shape: its native shape is
            // not known here, and the post-preprocessing one would read as a mismatch
            native: Vec::new(),
        }))
    }
    fn skip(&mut self, k: usize) -> Result<()> {
        self.pos = (self.pos + k).min(self.ds.len());
        Ok(())
    }
}

fn idx_stream(
    images: &std::path::Path,
    labels: Option<&std::path::Path>,
    max_label: u32,
    prep: Prep,
    builtin: bool,
) -> Result<Box<dyn ImageStream>> {
    let rec = idx::open_images(images)?;
    let n = rec.n;
    let shape = rec.shape;
    if !builtin && shape.c != prep.shape.c {
        // the same error as a whole load, before anything is read
        super::fit_user(Vec::new(), shape, &prep, images)?;
    }
    let labels = match labels {
        Some(lp) => Some(super::read_idx_labels(lp, n, images, max_label)?),
        None => None,
    };
    Ok(Box::new(IdxStream {
        images: Some(rec),
        labels,
        pos: 0,
        n,
        shape,
        prep,
        builtin,
        path: images.to_path_buf(),
    }))
}

/// Opens a data spec as a stream (the same images, in the same order, as [`super::load`]).
pub fn open(spec: &str, ctx: &LoadCtx, on_error: OnError) -> Result<Box<dyn ImageStream>> {
    let src = Source::parse(spec).map_err(|msg| Error::Data {
        name: spec.into(),
        msg,
    })?;
    check_count(spec, ctx.count, ctx.prep.shape)?;
    let whole = |spec: &str| -> Result<Box<dyn ImageStream>> {
        Ok(Box::new(MemStream {
            ds: super::load(spec, ctx)?,
            pos: 0,
        }))
    };
    let s: Box<dyn ImageStream> = match src {
        Source::Mnist(split) if ctx.count == 0 => {
            let dir = fetch::ensure(&ctx.data_dir, "mnist")?;
            let p = if split == Split::Train {
                "train"
            } else {
                "t10k"
            };
            idx_stream(
                &dir.join(format!("{p}-images-idx3-ubyte")),
                Some(&dir.join(format!("{p}-labels-idx1-ubyte"))),
                10,
                ctx.prep,
                true,
            )?
        }
        Source::FashionMnist(split) if ctx.count == 0 => {
            let dir = fetch::ensure(&ctx.data_dir, "fashion-mnist")?;
            let p = if split == Split::Train {
                "train"
            } else {
                "t10k"
            };
            idx_stream(
                &dir.join(format!("{p}-images-idx3-ubyte.gz")),
                Some(&dir.join(format!("{p}-labels-idx1-ubyte.gz"))),
                10,
                ctx.prep,
                true,
            )?
        }
        Source::Idx { images, labels } => idx_stream(
            &images,
            labels.as_deref(),
            super::MAX_CLASSES,
            ctx.prep,
            false,
        )?,
        Source::Folder(path) => {
            let (_, files, labels) = render::folder_files(&path, &ctx.folder_labels)?;
            Box::new(FolderStream {
                prep: ctx.prep,
                files,
                labels,
                pos: 0,
                on_error,
                skipped: Vec::new(),
            })
        }
        Source::FolderFlat(path) => {
            let (_, files) = render::flat_files(&path)?;
            Box::new(FolderStream {
                prep: ctx.prep,
                files,
                labels: None,
                pos: 0,
                on_error,
                skipped: Vec::new(),
            })
        }
        Source::UniformNoise | Source::NormalNoise => Box::new(NoiseStream {
            shape: ctx.prep.shape,
            normal: src == Source::NormalNoise,
            rng: stage_rng(ctx.seed, &format!("{}/{}", ctx.stage, spec)),
            pos: 0,
            n: if ctx.count == 0 { 2000 } else { ctx.count },
        }),
        _ => whole(spec)?,
    };
    if s.is_empty() {
        return Err(Error::Data {
            name: spec.into(),
            msg: "holds no images".into(),
        });
    }
    Ok(s)
}

/// Calls `f` with the chunks (of `chunk` positions) that cover positions [start, end) of a
/// stream, and the positions [from, to) each covers.
pub fn for_each_chunk(
    s: &mut dyn ImageStream,
    start: usize,
    end: usize,
    chunk: usize,
    mut f: impl FnMut(Chunk, usize, usize) -> Result<()>,
) -> Result<()> {
    s.skip(start)?;
    let mut pos = start;
    while pos < end {
        let step = chunk.max(1).min(end - pos);
        let Some(c) = s.next_chunk(step)? else {
            break;
        };
        f(c, pos, pos + step)?;
        pos += step;
    }
    Ok(())
}

/// Writes the images of `spec`, at the shape of `ctx.prep`, as PNG files `<name>-<index>.png`
/// into `out` (inside a subfolder per label when the data has labels, so the folder reads back
/// as the same classes); 1 channel → gray, 2 → gray+alpha, 3 → RGB, 4 → RGBA (PNG holds no
/// more). At most `limit` images (0 = all). Refuses an `out` that exists and is not empty.
pub fn export_png(spec: &str, ctx: &LoadCtx, out: &std::path::Path, limit: usize) -> Result<usize> {
    use crate::error::IoContext;
    if out.exists() && std::fs::read_dir(out).at(out)?.next().is_some() {
        return Err(Error::Other(format!(
            "{} exists and is not empty; export writes into a new folder",
            out.display()
        )));
    }
    let shape = ctx.prep.shape;
    let color = match shape.c {
        1 => image::ColorType::L8,
        2 => image::ColorType::La8,
        3 => image::ColorType::Rgb8,
        4 => image::ColorType::Rgba8,
        c => {
            return Err(Error::Other(format!(
                "PNG holds 1 to 4 channels; these images have {c}"
            )))
        }
    };
    let mut s = open(spec, ctx, OnError::Stop)?;
    let name = Source::short_name(spec);
    let want = if limit == 0 {
        s.len()
    } else {
        limit.min(s.len())
    };
    let mut done = 0;
    while done < want {
        let Some(c) = s.next_chunk((want - done).min(4096))? else {
            break;
        };
        for i in 0..c.len() {
            let dir = match &c.labels {
                Some(l) => out.join(l[i].to_string()),
                None => out.to_path_buf(),
            };
            crate::runfolder::create_dirs(&dir)?;
            let img = &c.images[i * shape.len()..(i + 1) * shape.len()];
            // channel-major → interleaved
            let px: Vec<u8> = (0..shape.len())
                .map(|j| {
                    let v = img[(j % shape.c) * shape.hw() + j / shape.c];
                    (v.clamp(0.0, 1.0) * 255.0).round() as u8
                })
                .collect();
            let p = dir.join(format!("{name}-{:06}.png", c.index[i]));
            image::save_buffer(&p, &px, shape.w as u32, shape.h as u32, color).map_err(|e| {
                Error::Format {
                    path: p.clone(),
                    msg: e.to_string(),
                }
            })?;
        }
        done += c.len();
    }
    Ok(done)
}

/// What the training data looks like: its images' own shapes before preprocessing (sampled)
/// and the 1%, 50% and 99% quantiles of the per-image mean intensity after it. `metaclf run`
/// keeps it in run.json (`train_stats`); `metaclf score` compares each batch with it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainStats {
    pub images: usize,
    /// Images per own shape ("H×W×C") among the sampled ones.
    pub native_shapes: std::collections::BTreeMap<String, usize>,
    pub image_mean_quantiles: [f64; 3],
}

impl TrainStats {
    /// From preprocessed images (`len` values each) and sampled own shapes.
    pub fn of(images: &[f32], len: usize, native: &[super::Shape]) -> TrainStats {
        let mut m: Vec<f64> = images
            .chunks_exact(len.max(1))
            .map(|img| img.iter().map(|&v| v as f64).sum::<f64>() / img.len().max(1) as f64)
            .collect();
        m.sort_by(f64::total_cmp);
        let mut shapes = std::collections::BTreeMap::new();
        for s in native {
            *shapes.entry(s.to_string()).or_default() += 1;
        }
        let q = |p: f64| crate::stats::quantile(&m, p);
        TrainStats {
            images: m.len(),
            native_shapes: shapes,
            image_mean_quantiles: if m.is_empty() {
                [0.0; 3]
            } else {
                [q(0.01), q(0.5), q(0.99)]
            },
        }
    }
}

/// What a scored batch looks like, in counts that add up over shards exactly: own shapes,
/// the sum of per-image mean intensities (in millionths) and how many images lie outside the
/// training images' 1–99% range.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchStats {
    pub images: usize,
    pub native_shapes: std::collections::BTreeMap<String, usize>,
    pub mean_micro_sum: u64,
    pub outside_train_range: usize,
}

impl BatchStats {
    /// Adds images (`len` values each) and their own shapes; `range` = the training images'
    /// 1–99% range of mean intensity, when known.
    pub fn add(
        &mut self,
        images: &[f32],
        len: usize,
        native: &[super::Shape],
        range: Option<(f64, f64)>,
    ) {
        for img in images.chunks_exact(len.max(1)) {
            let m = img.iter().map(|&v| v as f64).sum::<f64>() / img.len().max(1) as f64;
            self.mean_micro_sum += (m.clamp(0.0, 1e6) * 1e6).round() as u64;
            self.images += 1;
            if let Some((lo, hi)) = range {
                self.outside_train_range += (m < lo || m > hi) as usize;
            }
        }
        for s in native {
            *self.native_shapes.entry(s.to_string()).or_default() += 1;
        }
    }

    /// Adds another part's counts.
    pub fn merge(&mut self, o: &BatchStats) {
        self.images += o.images;
        self.mean_micro_sum += o.mean_micro_sum;
        self.outside_train_range += o.outside_train_range;
        for (k, v) in &o.native_shapes {
            *self.native_shapes.entry(k.clone()).or_default() += v;
        }
    }

    /// The mean of the per-image mean intensities.
    pub fn mean_intensity(&self) -> f64 {
        self.mean_micro_sum as f64 / 1e6 / self.images.max(1) as f64
    }
}

/// The gross differences between a scored batch and the run's training data, in words with
/// the numbers: another own size or channel count (the images were resized), mean intensities
/// mostly outside the training images' 1–99% range, or most images flagged as a new kind
/// (`new_kind_share`; about 5% of in-distribution images are, at keep95).
pub fn mismatch(
    train: &TrainStats,
    batch: &BatchStats,
    run_shape: super::Shape,
    new_kind_share: Option<f64>,
) -> Vec<String> {
    let mut out = Vec::new();
    let main = batch.native_shapes.iter().max_by_key(|(_, n)| **n);
    if let (Some((bs, bn)), false) = (main, train.native_shapes.is_empty()) {
        let total: usize = batch.native_shapes.values().sum();
        let pct = |n: usize| 100.0 * n as f64 / total.max(1) as f64;
        let trained = train
            .native_shapes
            .keys()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if !train.native_shapes.contains_key(bs) {
            out.push(format!(
                "{:.0}% of the batch's images are {bs} (H×W×C) and were resized to the run's {run_shape}; the run's training images were {trained}",
                pct(*bn),
            ));
        }
        // a few odd images among the usual ones: resized and scored like the rest, said so
        let odd: Vec<(&String, &usize)> = batch
            .native_shapes
            .iter()
            .filter(|(s, _)| *s != bs && !train.native_shapes.contains_key(*s))
            .collect();
        if !odd.is_empty() {
            let n: usize = odd.iter().map(|(_, n)| **n).sum();
            let list = odd
                .iter()
                .take(5)
                .map(|(s, n)| format!("{n} × {s}"))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(format!(
                "{n} of the batch's images ({:.1}%) have a size or channel count the run was not trained on ({list}{}; H×W×C) and were resized to the run's {run_shape}; the run's training images were {trained}",
                pct(n),
                if odd.len() > 5 { ", …" } else { "" },
            ));
        }
    }
    let [lo, med, hi] = train.image_mean_quantiles;
    if train.images > 0 && batch.images > 0 {
        let share = batch.outside_train_range as f64 / batch.images as f64;
        if share > 0.25 {
            out.push(format!(
                "{:.0}% of the batch's images have a mean intensity outside the training images' 1–99% range [{lo:.3}, {hi:.3}] (batch mean {:.3}, training median {med:.3}; about 2% expected)",
                100.0 * share,
                batch.mean_intensity(),
            ));
        }
    }
    if let Some(s) = new_kind_share {
        if s > 0.5 {
            out.push(format!(
                "{:.0}% of the batch's images look like a new kind (p_known below its threshold; about 5% of in-distribution images are): the batch may not be of the data the run was trained on",
                100.0 * s
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut dyn ImageStream, chunk: usize) -> Chunk {
        let mut all = Chunk::default();
        while let Some(c) = s.next_chunk(chunk).unwrap() {
            all.images.extend(c.images);
            if let Some(l) = c.labels {
                all.labels.get_or_insert_with(Vec::new).extend(l);
            }
            all.index.extend(c.index);
            all.pos.extend(c.pos);
            all.paths.extend(c.paths);
        }
        all
    }

    /// A few images of another shape among the usual ones get a line of their own; a batch
    /// of the training shape gets none; a foreign main shape keeps its line.
    #[test]
    fn odd_shapes_are_said() {
        let shapes = |v: &[(&str, usize)]| -> std::collections::BTreeMap<String, usize> {
            v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
        };
        let train = TrainStats {
            images: 500,
            native_shapes: shapes(&[("28×28×1", 500)]),
            image_mean_quantiles: [0.0, 0.5, 1.0],
        };
        let batch = |v: &[(&str, usize)]| BatchStats {
            images: v.iter().map(|(_, n)| n).sum(),
            native_shapes: shapes(v),
            ..Default::default()
        };
        let shape = crate::data::Shape { c: 1, h: 28, w: 28 };
        assert!(mismatch(&train, &batch(&[("28×28×1", 600)]), shape, None).is_empty());
        let m = mismatch(
            &train,
            &batch(&[("28×28×1", 599), ("32×32×3", 1)]),
            shape,
            None,
        );
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].starts_with("1 of the batch's images (0.2%) have a size or channel count the run was not trained on (1 × 32×32×3; H×W×C) and were resized"),
            "{m:?}"
        );
        let m = mismatch(
            &train,
            &batch(&[("40×40×1", 90), ("28×28×1", 5), ("9×9×1", 5)]),
            shape,
            None,
        );
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(
            m[0].starts_with("90% of the batch's images are 40×40×1"),
            "{m:?}"
        );
        assert!(m[1].contains("(5 × 9×9×1; H×W×C)"), "{m:?}");
    }

    #[test]
    fn streams_equal_whole_loads_for_every_chunk_size_and_skip() {
        let d = tempfile::tempdir().unwrap();
        let px: Vec<u8> = (0..23 * 784).map(|i| (i * 7 % 256) as u8).collect();
        let labels: Vec<u8> = (0..23).map(|i| (i % 10) as u8).collect();
        let ip = d.path().join("i.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut raw = Vec::new();
        for v in [0x803u32, 23, 28, 28] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        raw.extend_from_slice(&px);
        std::io::Write::write_all(&mut e, &raw).unwrap();
        std::fs::write(&ip, e.finish().unwrap()).unwrap();
        let lp = d.path().join("l");
        idx::write_labels(&lp, &labels).unwrap();
        let ctx = LoadCtx {
            data_dir: d.path().join("cache"),
            seed: 5,
            count: 30,
            stage: "s".into(),
            prep: Prep::MNIST,
            folder_labels: Default::default(),
        };
        for spec in [
            format!("idx:{},{}", ip.display(), lp.display()),
            "uniform-noise".to_string(),
            "normal-noise".to_string(),
        ] {
            let whole = super::super::load(&spec, &ctx).unwrap();
            for chunk in [1, 4, 7, 100] {
                let mut s = open(&spec, &ctx, OnError::Stop).unwrap();
                assert_eq!(s.len(), whole.len());
                let got = drain(&mut *s, chunk);
                assert_eq!(got.images, whole.images, "{spec} chunk {chunk}");
                assert_eq!(got.labels, whole.labels);
                assert_eq!(got.index, whole.index);
                assert_eq!(got.pos, (0..whole.len()).collect::<Vec<_>>());
                // skipping the first 5 gives the rest
                let mut s = open(&spec, &ctx, OnError::Stop).unwrap();
                s.skip(5).unwrap();
                let rest = drain(&mut *s, chunk);
                assert_eq!(rest.images, whole.images[5 * 784..]);
                assert_eq!(rest.index[0], 5);
            }
        }
    }

    #[test]
    fn folder_stream_skips_or_stops_on_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("imgs");
        std::fs::create_dir_all(&f).unwrap();
        let img =
            image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y) % 256) as u8]));
        img.save(f.join("a.png")).unwrap();
        std::fs::write(f.join("b.png"), "not a png").unwrap();
        img.save(f.join("c, with comma.png")).unwrap();
        let ctx = LoadCtx {
            data_dir: d.path().into(),
            seed: 1,
            count: 0,
            stage: "s".into(),
            prep: Prep::MNIST,
            folder_labels: Default::default(),
        };
        let spec = format!("folder:{}", f.display());
        let mut s = open(&spec, &ctx, OnError::Stop).unwrap();
        let e = drain_err(&mut *s);
        assert!(e.contains("b.png"), "{e}");
        let mut s = open(&spec, &ctx, OnError::Skip).unwrap();
        let got = drain(&mut *s, 2);
        assert_eq!(got.index, vec![0, 2]);
        assert!(got.paths[1].ends_with("c, with comma.png"));
        assert_eq!(s.skipped().len(), 1);
        assert!(s.skipped()[0].ends_with("b.png"));
    }

    #[test]
    fn export_writes_pngs_that_read_back_as_the_same_images_and_classes() {
        let d = tempfile::tempdir().unwrap();
        // dark images (mean < 0.5): the folder reader inverts light ones
        let px: Vec<u8> = (0..6 * 784).map(|i| (i * 13 % 128) as u8).collect();
        let ip = d.path().join("i");
        idx::write_images(&ip, &px).unwrap();
        let lp = d.path().join("l");
        idx::write_labels(&lp, &[2, 0, 2, 1, 0, 2]).unwrap();
        let ctx = LoadCtx {
            data_dir: d.path().into(),
            seed: 1,
            count: 0,
            stage: "s".into(),
            prep: Prep::MNIST,
            folder_labels: Default::default(),
        };
        let spec = format!("idx:{},{}", ip.display(), lp.display());
        let out = d.path().join("png");
        assert_eq!(export_png(&spec, &ctx, &out, 0).unwrap(), 6);
        assert!(out.join("2/idx-000005.png").exists());
        let back = render::folder(&out, &Prep::MNIST, &Default::default()).unwrap();
        // class folders 0, 1, 2 in order: images 1, 4 | 3 | 0, 2, 5
        assert_eq!(back.labels.unwrap(), vec![0, 0, 1, 2, 2, 2]);
        let want: Vec<f32> = [1, 4, 3, 0, 2, 5]
            .iter()
            .flat_map(|&k| px[k * 784..(k + 1) * 784].iter().map(|&p| p as f32 / 255.0))
            .collect();
        assert_eq!(back.images.len(), want.len());
        assert!(back
            .images
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() < 1e-6));
        // a non-empty folder is refused
        assert!(export_png(&spec, &ctx, &out, 0).is_err());
    }

    fn drain_err(s: &mut dyn ImageStream) -> String {
        loop {
            match s.next_chunk(10) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error"),
                Err(e) => return e.to_string(),
            }
        }
    }
}
