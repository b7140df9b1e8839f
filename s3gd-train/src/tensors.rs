//! Owned tensors for safetensors files (checkpoints and gradient dumps): building them from host
//! arrays, writing a file atomically, and reading named tensors back with their shapes checked.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors, View};

/// A tensor that owns its little-endian bytes.
pub struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl OwnedTensor {
    /// An f32 tensor; `values.len()` must equal the product of `shape`.
    pub fn f32(shape: &[usize], values: impl IntoIterator<Item = f32>) -> Result<Self> {
        let bytes: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
        Self::checked(Dtype::F32, shape, bytes)
    }

    /// An f32 tensor from f64 values (rounded to nearest).
    pub fn f32_from_f64(shape: &[usize], values: &[f64]) -> Result<Self> {
        Self::f32(shape, values.iter().map(|&v| v as f32))
    }

    /// A one-element u64 tensor.
    pub fn u64_scalar(value: u64) -> Self {
        Self {
            dtype: Dtype::U64,
            shape: vec![1],
            bytes: value.to_le_bytes().to_vec(),
        }
    }

    fn checked(dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> Result<Self> {
        let want = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        if bytes.len() != want {
            bail!(
                "a {dtype:?} tensor of shape {shape:?} needs {want} bytes, got {}",
                bytes.len()
            );
        }
        Ok(Self {
            dtype,
            shape: shape.to_vec(),
            bytes,
        })
    }
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serialises `tensors` with `metadata` and writes the file atomically.
pub fn write_file(
    path: &Path,
    tensors: &[(String, OwnedTensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views = tensors.iter().map(|(name, t)| (name.as_str(), t));
    let bytes = safetensors::serialize(views, Some(metadata))
        .with_context(|| format!("serialising {}", path.display()))?;
    crate::record::write_atomic(path, &bytes)
}

/// A safetensors file read into memory.
pub struct TensorFile {
    path: String,
    bytes: Vec<u8>,
    metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        // Validate the whole file once, so later reads only fail on names and shapes.
        SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        Ok(Self {
            path: path.display().to_string(),
            bytes,
            metadata,
        })
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// A metadata value that must be present.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{}: no metadata key \"{key}\"", self.path))
    }

    fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let tensors = SafeTensors::deserialize(&self.bytes)
            .with_context(|| format!("{} is not a valid safetensors file", self.path))?;
        tensors
            .tensor(name)
            .with_context(|| format!("{}: no tensor \"{name}\"", self.path))
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.shape().to_vec())
    }

    /// Tensor `name` as f32 values, checked to be f32 with shape `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let view = self.view(name)?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            bail!(
                "{}: tensor \"{name}\" is {:?} {:?}, expected F32 {shape:?}",
                self.path,
                view.dtype(),
                view.shape()
            );
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// A one-element u64 tensor.
    pub fn u64_scalar(&self, name: &str) -> Result<u64> {
        let view = self.view(name)?;
        if view.dtype() != Dtype::U64 || view.shape() != [1] {
            bail!(
                "{}: tensor \"{name}\" is {:?} {:?}, expected U64 [1]",
                self.path,
                view.dtype(),
                view.shape()
            );
        }
        let mut le = [0u8; 8];
        le.copy_from_slice(view.data());
        Ok(u64::from_le_bytes(le))
    }
}
