//! s3gd-kernels: the CUDA backend of s3gd. CUDA C kernels in `kernels/*.cu`, compiled at run time
//! with NVRTC for the device's architecture (and cached on disk), cuBLAS for the dense method's
//! GEMMs, and `CudaBackend`, which implements `s3gd_core::Backend`.
//!
//! The driver, NVRTC and cuBLAS are loaded dynamically, so this crate builds with no CUDA installed;
//! whether a GPU is usable is one `Result` at run time (`CudaBackend::new`, `probe`).

pub mod backend;
pub mod device;
pub mod error;
pub mod fp16_scaled;
pub mod fp64_widened;
pub mod int8_split;

pub use backend::{
    CudaBackend, CudaSpikes, CudaTape, CudaTensor, FloatWeightGradPath, InputGradPath,
};
pub use device::{compile_ptx, probe, GemmPrecision, Probe, INT8_SPLIT_SLICES};
pub use error::CudaError;
