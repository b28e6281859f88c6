//! IDX (ubyte) reader, plain or gzip: the header is validated (magic, dtype, dims, counts, size
//! limits) before any allocation.

use crate::error::{Error, IoContext, Result};
use std::io::Read;
use std::path::Path;

const IMAGE_MAGIC: u32 = 0x0000_0803;
const LABEL_MAGIC: u32 = 0x0000_0801;

fn fmt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Opens a file, transparently un-gzipping it when it starts with the gzip magic.
/// Returns the reader and, for plain files, the file size.
fn open(path: &Path) -> Result<(Box<dyn Read>, Option<u64>)> {
    let mut f = std::fs::File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    let mut magic = [0u8; 2];
    let got = read_full(&mut f, &mut magic).at(path)?;
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0)).at(path)?;
    if got == 2 && magic == [0x1f, 0x8b] {
        Ok((
            Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f))),
            None,
        ))
    } else {
        Ok((Box::new(std::io::BufReader::new(f)), Some(len)))
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

fn read_header(r: &mut dyn Read, path: &Path, magic: u32, ndim: usize) -> Result<Vec<usize>> {
    let mut head = vec![0u8; 4 + 4 * ndim];
    let got = read_full(r, &mut head).at(path)?;
    if got < 4 {
        return Err(fmt_err(
            path,
            format!("truncated: only {got} bytes, no IDX header"),
        ));
    }
    let m = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if m != magic {
        let what = if magic == IMAGE_MAGIC {
            "images"
        } else {
            "labels"
        };
        return Err(fmt_err(
            path,
            format!("wrong magic 0x{m:08x}; IDX {what} files start with 0x{magic:08x}"),
        ));
    }
    if got < head.len() {
        return Err(fmt_err(path, "truncated IDX header"));
    }
    Ok((0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]) as usize
        })
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

fn read_body(
    r: &mut dyn Read,
    path: &Path,
    len: usize,
    plain_size: Option<u64>,
    head: usize,
) -> Result<Vec<u8>> {
    if let Some(size) = plain_size {
        let want = head as u64 + len as u64;
        if size < want {
            return Err(fmt_err(
                path,
                format!("truncated: header promises {want} bytes, file has {size}"),
            ));
        }
        if size > want {
            return Err(fmt_err(
                path,
                format!(
                    "{} bytes of trailing garbage after the data the header describes",
                    size - want
                ),
            ));
        }
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body).at(path)?;
    if got < len {
        return Err(fmt_err(
            path,
            format!("truncated: header promises {len} data bytes, found {got}"),
        ));
    }
    Ok(body)
}

/// Reads an IDX images file into u8 pixels (N × 28 × 28). Returns (pixels, N).
pub fn read_images(path: &Path) -> Result<(Vec<u8>, usize)> {
    let (mut r, size) = open(path)?;
    let dims = read_header(&mut *r, path, IMAGE_MAGIC, 3)?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if (rows, cols) != (28, 28) {
        return Err(fmt_err(
            path,
            format!("images are {rows}×{cols}; metaclf needs 28×28"),
        ));
    }
    let bytes = (n as u64) * 784;
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
    let body = read_body(&mut *r, path, bytes as usize, size, 16)?;
    Ok((body, n))
}

/// Reads an IDX labels file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let (mut r, size) = open(path)?;
    let dims = read_header(&mut *r, path, LABEL_MAGIC, 1)?;
    let n = dims[0];
    if n as u64 > memory_budget() {
        return Err(fmt_err(
            path,
            format!("header says {n} labels, more than memory holds"),
        ));
    }
    read_body(&mut *r, path, n, size, 8)
}

/// Writes an IDX images file (used by tests and `metaclf data` exports).
pub fn write_images(path: &Path, pixels: &[u8]) -> Result<()> {
    let n = (pixels.len() / 784) as u32;
    let mut out = Vec::with_capacity(16 + pixels.len());
    for v in [IMAGE_MAGIC, n, 28, 28] {
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
        assert!(e.contains("memory"), "{e}");
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
