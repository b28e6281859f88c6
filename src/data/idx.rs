//! IDX (ubyte) reader, plain or gzip. The header is validated (magic, dtype, dims, counts, size
//! limits) before any allocation; a gzip file is read to its end, so its CRC and length trailer
//! are checked, and data past the size the header describes (inside the compressed stream or
//! after it) is an error, as it is for plain files.

use crate::error::{Error, IoContext, Result};
use std::io::{BufRead, Read};
use std::path::Path;

const IMAGE_MAGIC: u32 = 0x0000_0803;
/// Images with a channel dimension: (N, H, W, C), channels last.
const IMAGE4_MAGIC: u32 = 0x0000_0804;
const LABEL_MAGIC: u32 = 0x0000_0801;
/// Largest height or width of IDX images.
pub const MAX_SIDE: usize = 8192;
/// Most channels of IDX images.
pub const MAX_CHANNELS: usize = 64;

/// Deflate cannot compress better than about 1032:1 (a 258-byte match in at most 2 bits); a
/// gzip file of `c` bytes therefore holds at most this many bytes per compressed byte. A header
/// that promises more is truncated data, found before anything is allocated.
pub const MAX_GZIP_RATIO: u64 = 1032;

fn fmt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The bytes of an IDX file: a plain file, or the decompressed stream of a gzip file.
enum Body<R: BufRead> {
    Plain(R),
    Gz(Box<flate2::bufread::GzDecoder<R>>),
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Body::Plain(r) => r.read(buf),
            Body::Gz(r) => r.read(buf),
        }
    }
}

/// Wraps `r` (whose total size is `size` bytes) in a gzip decoder when it starts with the gzip
/// magic. Returns the reader and the most bytes it can yield.
fn open_body<R: BufRead>(mut r: R, size: u64, path: &Path) -> Result<(Body<R>, u64)> {
    let head = r.fill_buf().at(path)?;
    if head.len() >= 2 && head[..2] == [0x1f, 0x8b] {
        let bound = size.saturating_mul(MAX_GZIP_RATIO);
        Ok((
            Body::Gz(Box::new(flate2::bufread::GzDecoder::new(r))),
            bound,
        ))
    } else {
        Ok((Body::Plain(r), size))
    }
}

fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Names what went wrong inside a gzip stream (flate2's messages do not say "gzip").
fn gz_err(path: &Path, e: std::io::Error) -> Error {
    fmt_err(path, format!("corrupt gzip data: {e}"))
}

/// Reads the magic (one of `magics`; its last byte is the number of dimensions) and the
/// dimensions of an IDX header.
fn read_header<R: BufRead>(r: &mut Body<R>, path: &Path, magics: &[u32]) -> Result<Vec<usize>> {
    let mut head = [0u8; 4];
    let got = read_full(r, &mut head).map_err(|e| gz_err(path, e))?;
    if got < 4 {
        return Err(fmt_err(
            path,
            format!("truncated: only {got} bytes, no IDX header"),
        ));
    }
    let m = u32::from_be_bytes(head);
    if !magics.contains(&m) {
        let what = if magics[0] == IMAGE_MAGIC {
            "images files start with 0x00000803 (N, H, W) or 0x00000804 (N, H, W, C)"
        } else {
            "labels files start with 0x00000801"
        };
        return Err(fmt_err(path, format!("wrong magic 0x{m:08x}; IDX {what}")));
    }
    let ndim = (m & 0xff) as usize;
    let mut dims = vec![0u8; 4 * ndim];
    let got = read_full(r, &mut dims).map_err(|e| gz_err(path, e))?;
    if got < dims.len() {
        return Err(fmt_err(path, "truncated IDX header"));
    }
    Ok(dims
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect())
}

/// Bytes of memory the process may use for one data set: what the system reports as available,
/// or 16 GiB when that cannot be read.
pub fn memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(16 << 30)
}

/// The data bytes of an IDX file after its header, read in pieces: the sizes are checked when it
/// is opened (a plain file must be exactly header + data; a gzip file must be able to hold that
/// much), and [`Records::finish`] checks that the file ends where the header says: for gzip it
/// reads the stream to its end (flate2 checks the CRC-32 and length trailer there) and checks
/// that no second member or garbage follows.
pub struct Records<R: BufRead> {
    body: Body<R>,
    path: std::path::PathBuf,
    /// Records (images or labels) the header promises, bytes per record, and records read.
    pub n: usize,
    /// Shape of one image record (C, H, W); for IDX (N, H, W, C) files the bytes of a record
    /// are channels-last (see [`planar`]).
    pub shape: crate::data::Shape,
    rec: usize,
    done: usize,
}

impl<R: BufRead> Records<R> {
    fn new(
        body: Body<R>,
        path: &Path,
        n: usize,
        rec: usize,
        bound: u64,
        head: u64,
    ) -> Result<Self> {
        let len = (n as u64).saturating_mul(rec as u64);
        let want = head.saturating_add(len);
        let gz = matches!(body, Body::Gz(_));
        if want > bound {
            return Err(fmt_err(
                path,
                if gz {
                    format!(
                        "truncated: header promises {want} bytes, more than a gzip file of {} bytes can hold",
                        bound / MAX_GZIP_RATIO
                    )
                } else {
                    format!("truncated: header promises {want} bytes, file has {bound}")
                },
            ));
        }
        if !gz && bound > want {
            return Err(fmt_err(
                path,
                format!(
                    "{} bytes of trailing garbage after the data the header describes",
                    bound - want
                ),
            ));
        }
        Ok(Records {
            body,
            path: path.to_path_buf(),
            n,
            shape: crate::data::Shape::new(1, 1, rec),
            rec,
            done: 0,
        })
    }

    /// The next `k` records (fewer at the end) as bytes. `want ≤ bound` (checked when opened)
    /// keeps every allocation within a small multiple of the file's size.
    pub fn read(&mut self, k: usize) -> Result<Vec<u8>> {
        let k = k.min(self.n - self.done);
        let mut buf = vec![0u8; k * self.rec];
        let got = read_full(&mut self.body, &mut buf).map_err(|e| gz_err(&self.path, e))?;
        if got < buf.len() {
            let found = self.done * self.rec + got;
            return Err(fmt_err(
                &self.path,
                format!(
                    "truncated: header promises {} data bytes, found {found}",
                    self.n * self.rec
                ),
            ));
        }
        self.done += k;
        Ok(buf)
    }

    /// Skips `k` records.
    pub fn skip(&mut self, k: usize) -> Result<()> {
        let mut left = k.min(self.n - self.done);
        while left > 0 {
            let step = left.min((1 << 22) / self.rec.max(1)).max(1);
            self.read(step)?;
            left -= step;
        }
        Ok(())
    }

    /// Reads what is left and checks that the file ends there.
    pub fn finish(mut self) -> Result<()> {
        self.skip(self.n - self.done)?;
        let path = self.path;
        if let Body::Gz(d) = self.body {
            let mut d = *d;
            let mut extra = [0u8; 512];
            let mut n_extra = 0u64;
            loop {
                match d.read(&mut extra) {
                    Ok(0) => break,
                    Ok(k) => n_extra += k as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(gz_err(&path, e)),
                }
                if n_extra > 1 << 20 {
                    break;
                }
            }
            if n_extra > 0 {
                return Err(fmt_err(
                    &path,
                    format!(
                        "{}{n_extra} bytes inside the gzip stream after the data the header describes",
                        if n_extra > 1 << 20 { "over " } else { "" }
                    ),
                ));
            }
            let mut inner = d.into_inner();
            let rest = inner.fill_buf().at(&path)?;
            if !rest.is_empty() {
                return Err(fmt_err(
                    &path,
                    "trailing data after the end of the gzip stream (a second member or garbage)",
                ));
            }
        }
        Ok(())
    }
}

/// Opens an IDX images file for reading in pieces (header and sizes checked).
pub fn open_images(path: &Path) -> Result<Records<std::io::BufReader<std::fs::File>>> {
    let f = std::fs::File::open(path).at(path)?;
    let size = f.metadata().at(path)?.len();
    open_images_from(std::io::BufReader::new(f), size, path)
}

/// [`open_images`] from any reader of `size` bytes.
pub fn open_images_from<R: BufRead>(r: R, size: u64, path: &Path) -> Result<Records<R>> {
    let (mut r, bound) = open_body(r, size, path)?;
    let dims = read_header(&mut r, path, &[IMAGE_MAGIC, IMAGE4_MAGIC])?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    let chans = dims.get(3).copied().unwrap_or(1);
    if !(1..=MAX_SIDE).contains(&rows) || !(1..=MAX_SIDE).contains(&cols) {
        return Err(fmt_err(
            path,
            format!("images are {rows}×{cols}; height and width must be 1..{MAX_SIDE}"),
        ));
    }
    if !(1..=MAX_CHANNELS).contains(&chans) {
        return Err(fmt_err(
            path,
            format!("images have {chans} channels; must be 1..{MAX_CHANNELS}"),
        ));
    }
    let shape = crate::data::Shape::new(chans, rows, cols);
    let mut rec = Records::new(r, path, n, shape.len(), bound, 4 + 4 * dims.len() as u64)?;
    rec.shape = shape;
    Ok(rec)
}

/// One IDX record's bytes (channels last, H × W × C) as channel-major values / 255.
pub fn planar(bytes: &[u8], s: crate::data::Shape) -> Vec<f32> {
    crate::data::prep::planar(bytes.iter().map(|&p| p as f32 / 255.0).collect(), s)
}

/// Reads an IDX images file into u8 pixels as stored (N × H × W [× C]). Returns (pixels, N).
pub fn read_images(path: &Path) -> Result<(Vec<u8>, usize)> {
    let f = std::fs::File::open(path).at(path)?;
    let size = f.metadata().at(path)?.len();
    read_images_from(std::io::BufReader::new(f), size, path)
}

/// [`read_images`] from any reader of `size` bytes (`path` names it in errors). The header is
/// checked against the file's size first, then against the memory available.
pub fn read_images_from<R: BufRead>(r: R, size: u64, path: &Path) -> Result<(Vec<u8>, usize)> {
    let (px, n, _) = read_images_shaped(r, size, path)?;
    Ok((px, n))
}

/// [`read_images_from`] that also returns the images' shape.
pub fn read_images_shaped<R: BufRead>(
    r: R,
    size: u64,
    path: &Path,
) -> Result<(Vec<u8>, usize, crate::data::Shape)> {
    let mut rec = open_images_from(r, size, path)?;
    let n = rec.n;
    let bytes = (n as u64).saturating_mul(rec.shape.len() as u64);
    // The loader keeps u8 pixels and then f32 copies: budget 5 bytes per pixel.
    let budget = memory_budget();
    if bytes.saturating_mul(5) > budget {
        return Err(fmt_err(
            path,
            format!(
                "header says {n} images ({} MiB as f32), more than the {} MiB of memory available",
                (bytes * 4) >> 20,
                budget >> 20
            ),
        ));
    }
    let shape = rec.shape;
    let body = rec.read(n)?;
    rec.finish()?;
    Ok((body, n, shape))
}

/// Reads an IDX labels file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).at(path)?;
    let size = f.metadata().at(path)?.len();
    read_labels_from(std::io::BufReader::new(f), size, path)
}

/// [`read_labels`] from any reader of `size` bytes.
pub fn read_labels_from<R: BufRead>(r: R, size: u64, path: &Path) -> Result<Vec<u8>> {
    let (mut r, bound) = open_body(r, size, path)?;
    let dims = read_header(&mut r, path, &[LABEL_MAGIC])?;
    let n = dims[0];
    if n as u64 > memory_budget() {
        return Err(fmt_err(
            path,
            format!("header says {n} labels, more than memory holds"),
        ));
    }
    let mut rec = Records::new(r, path, n, 1, bound, 8)?;
    let body = rec.read(n)?;
    rec.finish()?;
    Ok(body)
}

/// Writes an IDX images file of 28×28 images (used by tests and `metaclf data` exports).
pub fn write_images(path: &Path, pixels: &[u8]) -> Result<()> {
    write_images_shaped(path, pixels, crate::data::Shape::MNIST)
}

/// Writes an IDX images file of `shape` (channels last, magic 0x804, when it has more than one
/// channel).
pub fn write_images_shaped(path: &Path, pixels: &[u8], shape: crate::data::Shape) -> Result<()> {
    let n = (pixels.len() / shape.len()) as u32;
    let mut out = Vec::with_capacity(20 + pixels.len());
    let (h, w, c) = (shape.h as u32, shape.w as u32, shape.c as u32);
    let head: Vec<u32> = if shape.c == 1 {
        vec![IMAGE_MAGIC, n, h, w]
    } else {
        vec![IMAGE4_MAGIC, n, h, w, c]
    };
    for v in head {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    std::fs::write(path, out).at(path)
}

/// Writes an IDX labels file.
pub fn write_labels(path: &Path, labels: &[u8]) -> Result<()> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABEL_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    std::fs::write(path, out).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_plain_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let px: Vec<u8> = (0..3 * 784).map(|i| (i % 251) as u8).collect();
        let p = dir.path().join("i");
        write_images(&p, &px).unwrap();
        assert_eq!(read_images(&p).unwrap(), (px.clone(), 3));
        let gz = dir.path().join("i.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &std::fs::read(&p).unwrap()).unwrap();
        std::fs::write(&gz, e.finish().unwrap()).unwrap();
        assert_eq!(read_images(&gz).unwrap(), (px, 3));
        let l = dir.path().join("l");
        write_labels(&l, &[1, 2, 3]).unwrap();
        assert_eq!(read_labels(&l).unwrap(), vec![1, 2, 3]);
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, bytes).unwrap();
        e.finish().unwrap()
    }

    fn images_file(n: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [IMAGE_MAGIC, n, 28, 28] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend((0..n as usize * 784).map(|i| (i % 253) as u8));
        b
    }

    fn read_gz(bytes: &[u8]) -> Result<(Vec<u8>, usize)> {
        read_images_from(bytes, bytes.len() as u64, Path::new("x.gz"))
    }

    #[test]
    fn gzip_trailer_and_trailing_data_are_checked() {
        let good = gz(&images_file(2));
        assert_eq!(read_gz(&good).unwrap().1, 2);
        // wrong CRC-32 (the 8-byte trailer is CRC then length, little-endian)
        let mut bad = good.clone();
        let k = bad.len() - 8;
        bad[k] ^= 0xff;
        let e = read_gz(&bad).unwrap_err().to_string();
        assert!(e.contains("x.gz") && e.contains("gzip"), "{e}");
        // wrong length in the trailer
        let mut bad = good.clone();
        let k = bad.len() - 4;
        bad[k] ^= 0x01;
        assert!(read_gz(&bad).is_err());
        // extra bytes inside the compressed stream
        let mut more = images_file(2);
        more.extend_from_slice(&[7; 100]);
        let e = read_gz(&gz(&more)).unwrap_err().to_string();
        assert!(e.contains("100 bytes inside the gzip stream"), "{e}");
        // a second member, and plain garbage, after the stream
        let mut two = good.clone();
        two.extend_from_slice(&gz(b"more"));
        let e = read_gz(&two).unwrap_err().to_string();
        assert!(e.contains("after the end of the gzip stream"), "{e}");
        let mut junk = good.clone();
        junk.extend_from_slice(b"junk");
        assert!(read_gz(&junk).is_err());
        // truncated stream
        let e = read_gz(&good[..good.len() / 2]).unwrap_err().to_string();
        assert!(e.contains("x.gz"), "{e}");
    }

    #[test]
    fn gzip_header_is_checked_against_the_compressed_size_before_allocating() {
        // 4 million images promised by a tiny file: refused from the sizes alone
        let mut h = Vec::new();
        for v in [IMAGE_MAGIC, 4_000_000, 28, 28] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        let g = gz(&h);
        let e = read_gz(&g).unwrap_err().to_string();
        assert!(e.contains("more than a gzip file of"), "{e}");
        // labels too
        let mut l = Vec::new();
        for v in [LABEL_MAGIC, 3_000_000] {
            l.extend_from_slice(&v.to_be_bytes());
        }
        let g = gz(&l);
        let e = read_labels_from(&g[..], g.len() as u64, Path::new("l.gz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("l.gz") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad");
        let px = vec![0u8; 2 * 784];
        write_images(&p, &px).unwrap();
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 10]).unwrap();
        let e = read_images(&p).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("bad"), "{e}");
        // labels file given as images
        write_labels(&p, &[1, 2]).unwrap();
        let e = read_images(&p).unwrap_err().to_string();
        assert!(e.contains("wrong magic"), "{e}");
        // absurd count
        let mut h = Vec::new();
        for v in [IMAGE_MAGIC, u32::MAX, 28, 28] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        std::fs::write(&p, &h).unwrap();
        let e = read_images(&p).unwrap_err().to_string();
        assert!(e.contains("truncated: header promises"), "{e}");
        // garbled gzip
        std::fs::write(&p, [0x1f, 0x8b, 1, 2, 3]).unwrap();
        assert!(read_images(&p).is_err());
        // missing
        let e = read_images(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
    }
}
