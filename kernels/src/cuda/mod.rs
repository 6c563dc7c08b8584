//! The CUDA side of kvault-kernels (only with the `cuda` feature): finding and opening devices,
//! getting the kernels' PTX (precompiled by build.rs, else NVRTC at first use), and the
//! `cuda_fwd` bodies of the ops' CustomOps.
//!
//! Owns: everything between a candle `CudaStorage` and a kernel launch. Must not know: the CPU
//! implementations, models, or scheduling. Launch geometry lives in [`plan`] (pure Rust, shared
//! with the host-emulation tests, which run the same kernels on the CPU).

pub mod device;
mod kv_policy;
pub mod libs;
pub mod nvcc;
pub mod ops;
pub mod plan;
pub mod ptx;
mod sparse;

pub use device::{cuda_report, open_device, CudaDeviceInfo, CudaReport, LibraryStatus};
