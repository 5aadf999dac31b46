//! The one place that turns a device name into a burn [`Device`].
//!
//! Pipelines name devices as `"cpu"`, `"cuda"` or `"cuda:N"`. Everything else in ropelens is
//! device-agnostic: it takes a `&Device` and never asks which backend it is. The CPU device is
//! burn's `flex` backend (SIMD, rayon). CUDA exists only when ropelens is built with
//! `--features cuda` (see docs/model.md); without it, asking for CUDA is an error rather than a
//! silent fallback to the CPU.

use burn::tensor::Device;

/// A device name that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// Not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device `{0}` (expected \"cpu\", \"cuda\" or \"cuda:N\")")]
    Unknown(String),
    /// CUDA asked for, but this binary was built without the `cuda` feature.
    #[error(
        "device `{0}` needs CUDA, but this ropelens was built without it; rebuild with `cargo build --release --features cuda`"
    )]
    CudaNotBuilt(String),
}

/// What a device name asks for, parsed without touching any hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU (burn flex).
    Cpu,
    /// CUDA device with this index.
    Cuda(usize),
}

impl DeviceSpec {
    /// Parse `"cpu"`, `"cuda"` (= `cuda:0`) or `"cuda:N"`.
    pub fn parse(name: &str) -> Result<Self, DeviceError> {
        let name_trim = name.trim();
        match name_trim {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => name_trim
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::Unknown(name.to_string())),
        }
    }
}

/// The burn device for a device name (inference; call `.autodiff()` on it for training).
///
/// A CUDA device is created only here and only when asked for, since the CUDA runtime aborts
/// at run time on a machine without a driver.
pub fn device(name: &str) -> Result<Device, DeviceError> {
    match DeviceSpec::parse(name)? {
        DeviceSpec::Cpu => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(index) => Ok(Device::cuda(index)),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(DeviceError::CudaNotBuilt(name.to_string())),
    }
}

/// Ask the C allocator to keep freed memory for reuse instead of returning it to the OS.
///
/// A training step allocates and frees the same large buffers (logits, attention scores, their
/// gradients) every step. glibc serves blocks above its mmap threshold (at most 32 MiB) with
/// fresh mappings, so every step pays page faults and zeroing again (about 10% of a CPU
/// training step, measured with perf). Raising the mmap and trim thresholds keeps those pages
/// mapped. Process-wide: call once at start-up (the `pipe` binary does); a no-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before heavy allocation.
    unsafe {
        // Large blocks from the heap rather than fresh mappings (the mmap threshold itself is
        // capped at 32 MiB, below the size of a training batch's logits).
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(DeviceSpec::parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(DeviceSpec::parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(
            DeviceSpec::parse("gpu").unwrap_err().to_string(),
            "unknown device `gpu` (expected \"cpu\", \"cuda\" or \"cuda:N\")"
        );
        assert!(DeviceSpec::parse("cuda:x").is_err());
    }

    #[test]
    fn cpu_device_works_and_cuda_needs_the_feature() {
        assert!(device("cpu").is_ok());
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(
            device("cuda:1"),
            Err(DeviceError::CudaNotBuilt(_))
        ));
    }
}
