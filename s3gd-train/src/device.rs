//! Choosing and opening the device a run uses: `--device auto|cpu|cuda|cuda:N`, parsed into
//! [`DeviceChoice`] and opened into [`Device`], whose backend every training function takes as a
//! generic `B: s3gd_core::Backend` through [`with_backend!`](crate::with_backend).
//!
//! Wiring in a new backend (the CUDA one) touches only this file: a variant of [`Device`], its arm
//! in `with_backend!` and in [`Device::describe`], and the body of [`open_cuda`].

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result};
use s3gd_core::{Backend, CpuBackend};
use s3gd_kernels::CudaBackend;

use crate::cli::{EnvArgs, GemmArg};

/// The device the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first CUDA device if this build can open one, else the CPU.
    Auto,
    Cpu,
    /// A CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "auto" => return Ok(DeviceChoice::Auto),
            "cpu" => return Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => return Ok(DeviceChoice::Cuda(0)),
            _ => {}
        }
        let ordinal = lower
            .strip_prefix("cuda:")
            .ok_or_else(|| {
                format!("`{s}` is not a device: expected auto, cpu, cuda or cuda:N (N a GPU ordinal such as 0)")
            })?;
        ordinal
            .parse::<usize>()
            .map(DeviceChoice::Cuda)
            .map_err(|_| {
                format!(
                    "`{s}`: `{ordinal}` is not a GPU ordinal (expected cuda:N with N = 0, 1, ...)"
                )
            })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// An opened device: one variant per backend this build can run on.
pub enum Device {
    Cpu(CpuBackend<f32>),
    Cuda(Box<CudaBackend>),
}

impl Device {
    /// Human-readable name and precision of the device, as the backend reports it.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu(backend) => backend.describe(),
            Device::Cuda(backend) => backend.describe(),
        }
    }
}

/// Runs `$body` with `$backend` bound to the opened device's backend (a `&B` with `B: Backend`), so
/// that generic training code is monomorphised once per backend without trait objects.
#[macro_export]
macro_rules! with_backend {
    ($device:expr, |$backend:ident| $body:expr) => {
        match $device {
            $crate::device::Device::Cpu($backend) => $body,
            $crate::device::Device::Cuda(cuda) => {
                let $backend: &s3gd_kernels::CudaBackend = &**cuda;
                $body
            }
        }
    };
}

/// Opens CUDA device `ordinal` (the driver, NVRTC and the kernels) with its GEMMs in `gemm`, or
/// says why it cannot.
pub fn open_cuda(ordinal: usize, gemm: GemmArg) -> Result<Device> {
    let backend =
        CudaBackend::new(ordinal).with_context(|| format!("opening device cuda:{ordinal}"))?;
    backend
        .set_gemm_precision(gemm.into())
        .with_context(|| format!("setting cuBLAS's math mode for {gemm:?} GEMMs"))?;
    Ok(Device::Cuda(Box::new(backend)))
}

/// Opens the CPU backend with `threads` worker threads (all cores when `None`).
pub fn open_cpu(threads: Option<usize>) -> Result<Device> {
    let backend = match threads {
        Some(n) => CpuBackend::<f32>::with_threads(n)
            .with_context(|| format!("starting a pool of {n} CPU threads"))?,
        None => CpuBackend::<f32>::new(),
    };
    Ok(Device::Cpu(backend))
}

/// Opens the device `env` names; `auto` falls back to the CPU when no CUDA device opens.
pub fn open(env: &EnvArgs) -> Result<Device> {
    let threads = env.threads;
    match env.device {
        DeviceChoice::Cpu => open_cpu(threads),
        DeviceChoice::Cuda(ordinal) => open_cuda(ordinal, env.gemm),
        DeviceChoice::Auto => match open_cuda(0, env.gemm) {
            Ok(device) => {
                tracing::info!("device auto: using {}", device.describe());
                Ok(device)
            }
            Err(why) => {
                tracing::info!("device auto: no usable CUDA device ({why:#}); using the CPU");
                open_cpu(threads)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_explains_bad_ones() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        let bad = "cuda:x".parse::<DeviceChoice>().unwrap_err();
        assert!(bad.contains("not a GPU ordinal"), "{bad}");
        let bad = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(bad.contains("expected auto, cpu, cuda or cuda:N"), "{bad}");
        assert!("cuda:-1".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn cuda_without_a_driver_is_one_clear_error_and_auto_falls_back() {
        if s3gd_kernels::probe().devices > 0 {
            println!("a CUDA device is present: the no-driver path is not exercised here");
            return;
        }
        let env = |device, threads| EnvArgs {
            device,
            threads,
            gemm: GemmArg::Fp32,
            data_dir: None,
        };
        let err = open(&env(DeviceChoice::Cuda(0), None))
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("cuda:0") && e.contains("driver")),
            "{err:?}"
        );
        let device = open(&env(DeviceChoice::Auto, Some(1))).unwrap();
        assert!(
            device.describe().starts_with("cpu"),
            "{}",
            device.describe()
        );
    }
}
