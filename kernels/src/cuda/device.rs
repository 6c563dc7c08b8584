//! Opening a CUDA device with a clear error instead of a panic, and the `kvault doctor` report
//! (driver, devices, compiled architectures).
//!
//! Why the explicit driver probe: cudarc panics when libcuda cannot be loaded, so nothing may
//! touch the driver API before [`driver_library_present`] said yes. (With candle's CUDA backend
//! linked dynamically against libcuda the process would not start at all without it; the probe
//! still guards every path that could panic.) Must not know: kernels or ops.

use candle_core::cuda_backend::cudarc;
use candle_core::{Device, Result};
use cudarc::driver::sys;

use super::ptx;

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_library_present() -> bool {
    const CANDIDATES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];
    CANDIDATES.iter().any(|name| {
        let Ok(c) = std::ffi::CString::new(*name) else { return false };
        // SAFETY: dlopen with a valid C string; the handle is closed right away.
        unsafe {
            let handle = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if handle.is_null() {
                false
            } else {
                libc::dlclose(handle);
                true
            }
        }
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mem_bytes: usize,
    pub sm_count: i32,
}

/// What `kvault doctor` prints about CUDA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaReport {
    pub driver_library: bool,
    /// e.g. (12, 4) from cuDriverGetVersion.
    pub driver_version: Option<(i32, i32)>,
    pub devices: Vec<CudaDeviceInfo>,
    /// Architectures with PTX built in (empty: NVRTC compiles at first use).
    pub compiled_archs: Vec<&'static str>,
    /// nvcc that built the PTX, if any.
    pub ptx_compiler: Option<&'static str>,
    /// Why the device list is empty, if it is.
    pub problem: Option<String>,
}

fn driver_err(e: cudarc::driver::DriverError) -> String {
    format!("{e:?}")
}

pub fn cuda_report() -> CudaReport {
    let mut report = CudaReport {
        driver_library: driver_library_present(),
        driver_version: None,
        devices: Vec::new(),
        compiled_archs: ptx::compiled_archs(),
        ptx_compiler: ptx::compiler(),
        problem: None,
    };
    if !report.driver_library {
        report.problem = Some("libcuda (the NVIDIA driver) is not installed".to_string());
        return report;
    }
    if let Err(e) = cudarc::driver::result::init() {
        report.problem = Some(format!("cuInit failed: {}", driver_err(e)));
        return report;
    }
    let mut version = 0i32;
    // SAFETY: the driver library is loaded and initialised; `version` is a valid out pointer.
    if unsafe { sys::cuDriverGetVersion(&mut version) } == sys::CUresult::CUDA_SUCCESS {
        report.driver_version = Some((version / 1000, version % 1000 / 10));
    }
    let count = match cudarc::driver::CudaContext::device_count() {
        Ok(n) => n.max(0) as usize,
        Err(e) => {
            report.problem = Some(format!("cannot count devices: {}", driver_err(e)));
            return report;
        }
    };
    for ordinal in 0..count {
        match describe(ordinal) {
            Ok(info) => report.devices.push(info),
            Err(e) => report.problem = Some(format!("device {ordinal}: {e}")),
        }
    }
    if count == 0 {
        report.problem = Some("the driver reports no CUDA devices".to_string());
    }
    report
}

fn describe(ordinal: usize) -> std::result::Result<CudaDeviceInfo, String> {
    let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(driver_err)?;
    Ok(CudaDeviceInfo {
        ordinal,
        name: ctx.name().map_err(driver_err)?,
        compute_capability: ctx.compute_capability().map_err(driver_err)?,
        total_mem_bytes: ctx.total_mem().map_err(driver_err)?,
        sm_count: ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err)?,
    })
}

/// `--device cuda:N`: the candle device, or an error that says what is missing.
pub fn open_device(ordinal: usize) -> Result<Device> {
    let report = cuda_report();
    if !report.driver_library {
        candle_core::bail!("--device cuda:{ordinal}: no NVIDIA driver found (libcuda.so.1 cannot be loaded)")
    }
    let Some(info) = report.devices.iter().find(|d| d.ordinal == ordinal) else {
        candle_core::bail!(
            "--device cuda:{ordinal}: {} CUDA device(s) found{}",
            report.devices.len(),
            report.problem.map(|p| format!(" ({p})")).unwrap_or_default()
        )
    };
    if info.compute_capability < (8, 0) {
        candle_core::bail!(
            "--device cuda:{ordinal}: {} has compute capability {}.{}; kvault's kernels need 8.0 or newer",
            info.name,
            info.compute_capability.0,
            info.compute_capability.1
        )
    }
    Device::new_cuda(ordinal)
}
