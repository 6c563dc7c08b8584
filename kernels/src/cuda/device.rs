//! Opening a CUDA device with a clear error instead of a panic, and the `kvault doctor` report
//! (libraries, driver, devices, compiled architectures).
//!
//! Why the library probe comes first: in the dynamic-loading build (scripts/build-cuda.sh) the
//! binary starts without any CUDA library, and cudarc panics on the first call into one it
//! cannot load. So nothing here calls the driver before [`libs::find`] found libcuda, and
//! [`open_device`] checks every library candle's device setup loads before calling it.
//! Must not know: kernels or ops.

use candle_core::cuda_backend::cudarc;
use candle_core::{Device, Result};
use cudarc::driver::sys;

use super::libs::{self, CudaLibrary};
use super::ptx;

/// The toolkit major cudarc's bindings were generated for (its library names carry it).
fn cuda_major() -> u32 {
    sys::CUDA_VERSION / 1000
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_library_present() -> bool {
    libs::find("cuda", cuda_major()).is_some()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mem_bytes: usize,
    pub sm_count: i32,
}

/// One library of [`libs::LIBRARIES`] and the file it loads as, if it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibraryStatus {
    pub library: CudaLibrary,
    pub found: Option<String>,
}

impl LibraryStatus {
    /// Missing and needed by this build (nvrtc only matters when no PTX is built in).
    pub fn missing_and_needed(&self, have_ptx: bool) -> bool {
        self.found.is_none() && !(self.library.only_without_ptx && have_ptx)
    }
}

/// What `kvault doctor` prints about CUDA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaReport {
    pub driver_library: bool,
    pub libraries: Vec<LibraryStatus>,
    /// CUDA toolkit version cudarc's bindings target, e.g. (13, 0).
    pub bindings_version: (u32, u32),
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
    let major = cuda_major();
    let libraries: Vec<LibraryStatus> =
        libs::LIBRARIES.iter().map(|&library| LibraryStatus { library, found: libs::find(library.name, major) }).collect();
    let driver_library = libraries.iter().any(|l| l.library.name == "cuda" && l.found.is_some());
    let mut report = CudaReport {
        driver_library,
        libraries,
        bindings_version: (major, sys::CUDA_VERSION % 1000 / 10),
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
        candle_core::bail!("--device cuda:{ordinal}: no NVIDIA driver found (libcuda.so.1 cannot be loaded); `kvault doctor` shows what was found")
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
    let have_ptx = !report.compiled_archs.is_empty();
    let missing: Vec<String> = report
        .libraries
        .iter()
        .filter(|l| l.missing_and_needed(have_ptx))
        .map(|l| format!("lib{}.so ({})", l.library.name, l.library.needed_for))
        .collect();
    if !missing.is_empty() {
        candle_core::bail!(
            "--device cuda:{ordinal}: CUDA {}.x libraries not found: {}; install the CUDA runtime libraries \
             (e.g. pip install nvidia-cublas nvidia-curand) and add their directory to LD_LIBRARY_PATH",
            report.bindings_version.0,
            missing.join(", ")
        )
    }
    Device::new_cuda(ordinal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &'static str, only_without_ptx: bool, found: bool) -> LibraryStatus {
        LibraryStatus {
            library: CudaLibrary { name, needed_for: "test", only_without_ptx },
            found: found.then(|| format!("lib{name}.so")),
        }
    }

    #[test]
    fn nvrtc_is_needed_only_when_no_ptx_is_built_in() {
        assert!(!status("nvrtc", true, false).missing_and_needed(true));
        assert!(status("nvrtc", true, false).missing_and_needed(false));
        assert!(status("cublas", false, false).missing_and_needed(true));
        assert!(!status("cublas", false, true).missing_and_needed(false));
    }

    #[test]
    fn report_and_open_device_agree_on_what_is_missing_without_panicking() {
        let report = cuda_report();
        assert_eq!(report.libraries.len(), libs::LIBRARIES.len());
        // An ordinal no machine has: always an error, and one that names the cause.
        let err = open_device(4096).expect_err("no machine has 4097 GPUs").to_string();
        if report.driver_library {
            assert!(err.contains("CUDA device(s) found"), "{err}");
        } else {
            assert!(report.problem.as_deref().is_some_and(|p| p.contains("libcuda")), "{report:?}");
            assert!(report.devices.is_empty() && report.driver_version.is_none());
            assert!(err.contains("no NVIDIA driver found"), "{err}");
        }
    }
}
