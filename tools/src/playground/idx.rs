//! The idx file format of MNIST (`train-images-idx3-ubyte`, ...), plain or gzipped.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then
//! each dimension as a big-endian u32, then the data row-major.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// An idx array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

fn bad(file: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        file: file.display().to_string(),
        reason: reason.into(),
    }
}

/// Read an idx file of unsigned bytes; gzip is detected from the magic bytes.
pub fn read(file: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(file).map_err(|e| bad(file, e.to_string()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(file, format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    parse(&bytes).map_err(|r| bad(file, r))
}

/// Parse idx bytes.
pub fn parse(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("not an idx file (bad magic)".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "element type 0x{:02x} is not unsigned byte (0x08)",
            bytes[2]
        ));
    }
    let ndims = usize::from(bytes[3]);
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err("truncated header".into());
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| {
            let at = 4 + 4 * d;
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("dimensions overflow")?;
    let data = &bytes[header..];
    if data.len() != count {
        return Err(format!(
            "dimensions {dims:?} need {count} bytes of data, the file has {}",
            data.len()
        ));
    }
    Ok(IdxArray {
        dims,
        data: data.to_vec(),
    })
}

/// Encode an idx array (used by tests and to write small fixtures).
pub fn encode(array: &IdxArray) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, array.dims.len() as u8];
    for &d in &array.dims {
        out.extend((d as u32).to_be_bytes());
    }
    out.extend(&array.data);
    out
}

/// MNIST in memory: images scaled to [0, 1] (rows of 784) and labels.
#[derive(Clone, Debug)]
pub struct Mnist {
    /// Training images, one row each.
    pub train_images: ndarray::Array2<f64>,
    /// Training labels.
    pub train_labels: Vec<usize>,
    /// Test images.
    pub test_images: ndarray::Array2<f64>,
    /// Test labels.
    pub test_labels: Vec<usize>,
}

/// The four standard files in `dir`, each either plain or with a `.gz` suffix.
pub fn load_mnist(dir: &Path) -> Result<Mnist> {
    let find = |stem: &str| -> Result<std::path::PathBuf> {
        for name in [stem.to_string(), format!("{stem}.gz")] {
            let p = dir.join(&name);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(bad(&dir.join(stem), "not found (plain or .gz)"))
    };
    let images = |stem: &str| -> Result<ndarray::Array2<f64>> {
        let f = find(stem)?;
        let a = read(&f)?;
        if a.dims.len() != 3 {
            return Err(bad(
                &f,
                format!("images need 3 dimensions, found {:?}", a.dims),
            ));
        }
        let (n, pixels) = (a.dims[0], a.dims[1] * a.dims[2]);
        let values: Vec<f64> = a.data.iter().map(|&v| f64::from(v) / 255.0).collect();
        ndarray::Array2::from_shape_vec((n, pixels), values).map_err(|e| bad(&f, e.to_string()))
    };
    let labels = |stem: &str| -> Result<Vec<usize>> {
        let f = find(stem)?;
        let a = read(&f)?;
        if a.dims.len() != 1 {
            return Err(bad(
                &f,
                format!("labels need 1 dimension, found {:?}", a.dims),
            ));
        }
        Ok(a.data.iter().map(|&v| usize::from(v)).collect())
    };
    let m = Mnist {
        train_images: images("train-images-idx3-ubyte")?,
        train_labels: labels("train-labels-idx1-ubyte")?,
        test_images: images("t10k-images-idx3-ubyte")?,
        test_labels: labels("t10k-labels-idx1-ubyte")?,
    };
    if m.train_images.nrows() != m.train_labels.len()
        || m.test_images.nrows() != m.test_labels.len()
    {
        return Err(bad(dir, "image and label counts differ"));
    }
    Ok(m)
}
