//! `CudaError`: what can go wrong on the CUDA backend (no driver, no NVRTC or cuBLAS, no device,
//! kernel compile errors, launch failures, out of memory with the sizes that did not fit).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda.so could not be loaded); install the NVIDIA driver or use --device cpu")]
    NoDriver,
    #[error("NVRTC (libnvrtc.so) could not be loaded; the CUDA backend compiles its kernels at run time and needs the CUDA runtime compiler library")]
    NoNvrtc,
    #[error("cuBLAS (libcublas.so) could not be loaded; the dense method on CUDA needs it (the sparse method does not)")]
    NoCublas,
    #[error("cuBLASLt (libcublasLt.so) could not be loaded; the GEMM algorithm probe needs it")]
    NoCublasLt,
    #[error("cuBLASLt call {op} failed: {status}")]
    CublasLt {
        op: &'static str,
        status: cudarc::cublaslt::result::CublasError,
    },
    #[error("CUDA device {ordinal} does not exist ({count} device(s) found)")]
    NoDevice { ordinal: usize, count: usize },
    #[error("CUDA driver call {op} failed: {source:?}")]
    Driver {
        op: &'static str,
        source: cudarc::driver::DriverError,
    },
    #[error("NVRTC failed to compile the s3gd kernels for {arch}:\n{log}")]
    Compile { arch: String, log: String },
    #[error("cuBLAS call {op} failed: {status:?}")]
    Cublas {
        op: &'static str,
        status: cudarc::cublas::result::CublasError,
    },
    #[error("out of device memory allocating {what}: {bytes} bytes requested, {free} of {total} bytes free")]
    OutOfMemory {
        what: &'static str,
        bytes: usize,
        free: usize,
        total: usize,
    },
    #[error("{what} is too large for the kernels: {value} (limit {limit})")]
    TooLarge {
        what: &'static str,
        value: usize,
        limit: usize,
    },
}

impl CudaError {
    pub(crate) fn driver(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Self {
        move |source| CudaError::Driver { op, source }
    }
}

impl From<CudaError> for s3gd_core::CoreError {
    fn from(e: CudaError) -> Self {
        s3gd_core::CoreError::Device(Box::new(e))
    }
}
