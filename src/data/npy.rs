//! NumPy `.npy` arrays as data (`npy:IMAGES[,LABELS]`): images (N, H, W) or (N, H, W, C) of
//! uint8 (divided by 255) or float32 (already in [0, 1]), labels (N,) of any integer type.
//! Read with `ndarray-npy` into `ndarray` arrays, then laid out channel-major.

use super::Shape;
use crate::error::{Error, IoContext, Result};
use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt};
use std::path::Path;

fn fmt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>> {
    let f = std::fs::File::open(path).at(path)?;
    let size = f.metadata().at(path)?.len();
    // the arrays are held once as read and once as f32
    let budget = super::idx::memory_budget();
    if size.saturating_mul(5) > budget {
        return Err(fmt_err(
            path,
            format!(
                "{} MiB is more than the {} MiB of memory available can hold as f32",
                size >> 20,
                budget >> 20
            ),
        ));
    }
    Ok(std::io::BufReader::new(f))
}

fn read_as<T: ndarray_npy::ReadableElement>(
    path: &Path,
) -> Result<std::result::Result<ArrayD<T>, ReadNpyError>> {
    Ok(ArrayD::<T>::read_npy(open(path)?))
}

fn npy_err(path: &Path, e: ReadNpyError) -> Error {
    fmt_err(path, format!("not a readable .npy file: {e}"))
}

/// Reads an images array: returns the images channel-major in [0, 1], their count and shape.
pub fn read_images(path: &Path) -> Result<(Vec<f32>, usize, Shape)> {
    let (dims, values): (Vec<usize>, Vec<f32>) = match read_as::<u8>(path)? {
        Ok(a) => (
            a.shape().to_vec(),
            a.iter().map(|&v| v as f32 / 255.0).collect(),
        ),
        Err(ReadNpyError::WrongDescriptor(_)) => match read_as::<f32>(path)? {
            Ok(a) => {
                if let Some((i, v)) = a
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !(v.is_finite() && (0.0..=1.0).contains(*v)))
                {
                    return Err(fmt_err(
                        path,
                        format!(
                            "float32 value {v} at flat index {i} is outside [0, 1] (scale float images to [0, 1], or store uint8)"
                        ),
                    ));
                }
                (a.shape().to_vec(), a.iter().copied().collect())
            }
            Err(ReadNpyError::WrongDescriptor(d)) => {
                return Err(fmt_err(
                    path,
                    format!(
                    "dtype {d} is not supported for images: store uint8 (0-255) or float32 (0-1)"
                ),
                ))
            }
            Err(e) => return Err(npy_err(path, e)),
        },
        Err(e) => return Err(npy_err(path, e)),
    };
    let shape = match dims[..] {
        [_, h, w] => Shape::new(1, h, w),
        [_, h, w, c] => Shape::new(c, h, w),
        _ => {
            return Err(fmt_err(
                path,
                format!("images array has shape {dims:?}; expected (N, H, W) or (N, H, W, C)"),
            ))
        }
    };
    if shape.h == 0 || shape.w == 0 || shape.c == 0 {
        return Err(fmt_err(
            path,
            format!("images array has shape {dims:?}: an empty axis"),
        ));
    }
    if shape.h > super::idx::MAX_SIDE
        || shape.w > super::idx::MAX_SIDE
        || shape.c > super::idx::MAX_CHANNELS
    {
        return Err(fmt_err(
            path,
            format!(
                "images array has shape {dims:?}; at most {} pixels a side and {} channels",
                super::idx::MAX_SIDE,
                super::idx::MAX_CHANNELS
            ),
        ));
    }
    let n = dims[0];
    Ok((super::prep::planar(values, shape), n, shape))
}

/// Reads a labels array (N,) of any integer dtype; every label must be in 0..`max_label`.
pub fn read_labels(path: &Path, n: usize, images: &Path, max_label: u32) -> Result<Vec<u32>> {
    macro_rules! try_int {
        ($($t:ty),*) => {{
            let mut got: Option<(Vec<usize>, Vec<i128>)> = None;
            $(
                if got.is_none() {
                    match read_as::<$t>(path)? {
                        Ok(a) => got = Some((a.shape().to_vec(), a.iter().map(|&v| v as i128).collect())),
                        Err(ReadNpyError::WrongDescriptor(_)) => {}
                        Err(e) => return Err(npy_err(path, e)),
                    }
                }
            )*
            got
        }};
    }
    let Some((dims, v)) = try_int!(u8, i64, i32, u16, i16, u32, u64, i8) else {
        return Err(fmt_err(
            path,
            "labels must be an integer array (uint8, int32, int64, ...)",
        ));
    };
    if dims.len() != 1 {
        return Err(fmt_err(
            path,
            format!("labels array has shape {dims:?}; expected (N,)"),
        ));
    }
    if v.len() != n {
        return Err(fmt_err(
            path,
            format!("{} labels for {n} images in {}", v.len(), images.display()),
        ));
    }
    if let Some((i, l)) = v
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l >= max_label as i128)
    {
        return Err(fmt_err(
            path,
            format!("label {l} at index {i} is out of range 0..{max_label}"),
        ));
    }
    Ok(v.into_iter().map(|l| l as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array3, Array4};
    use ndarray_npy::WriteNpyExt;

    fn write<T: ndarray_npy::WritableElement, D: ndarray::Dimension>(
        p: &Path,
        a: &ndarray::Array<T, D>,
    ) {
        a.write_npy(std::fs::File::create(p).unwrap()).unwrap();
    }

    #[test]
    fn reads_u8_f32_and_channels_last() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.npy");
        // (N=2, H=2, W=3, C=2): value = 100·n + 10·(h·3+w) + c
        let a = Array4::from_shape_fn((2, 2, 3, 2), |(n, h, w, c)| {
            (100 * n + 10 * (h * 3 + w) + c) as u8
        });
        write(&p, &a);
        let (px, n, s) = read_images(&p).unwrap();
        assert_eq!((n, s), (2, Shape::new(2, 2, 3)));
        // channel-major: image 1, channel 1, pixel (1, 2) = 100 + 50 + 1
        assert_eq!(px[12 + 6 + 5], 151.0 / 255.0);
        assert_eq!(px[0], 0.0);
        let f = Array3::from_shape_fn((3, 4, 5), |(n, h, w)| (n + h + w) as f32 / 10.0);
        write(&p, &f);
        let (px, n, s) = read_images(&p).unwrap();
        assert_eq!((n, s, px[19]), (3, Shape::new(1, 4, 5), 0.7));
        let l = d.path().join("l.npy");
        write(&l, &Array1::from(vec![3i64, 0, 9]));
        assert_eq!(read_labels(&l, 3, &p, 10).unwrap(), vec![3, 0, 9]);
        let e = read_labels(&l, 3, &p, 5).unwrap_err().to_string();
        assert!(e.contains("label 9 at index 2"), "{e}");
    }

    #[test]
    fn wrong_dtype_rank_and_range_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.npy");
        write(&p, &Array3::<f64>::zeros((2, 3, 3)));
        let e = read_images(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad.npy") && e.contains("uint8") && e.contains("float32"),
            "{e}"
        );
        write(&p, &Array1::<u8>::zeros(5));
        let e = read_images(&p).unwrap_err().to_string();
        assert!(e.contains("(N, H, W)"), "{e}");
        write(&p, &Array3::from_elem((1, 2, 2), 2.0f32));
        let e = read_images(&p).unwrap_err().to_string();
        assert!(e.contains("outside [0, 1]"), "{e}");
        std::fs::write(&p, b"not numpy").unwrap();
        let e = read_images(&p).unwrap_err().to_string();
        assert!(e.contains("bad.npy") && e.contains(".npy"), "{e}");
        write(&p, &Array1::from(vec![0.5f32]));
        let e = read_labels(&p, 1, &p, 10).unwrap_err().to_string();
        assert!(e.contains("integer"), "{e}");
    }
}
