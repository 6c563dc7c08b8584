//! Which CUDA shared libraries this machine can load, asked with a plain `dlopen` before cudarc
//! is allowed to touch them.
//!
//! Why: a `cuda` build made by scripts/build-cuda.sh has cudarc in `dynamic-loading` mode, where
//! the first call into a library that cannot be found panics. Asking first turns "no driver" or
//! "no cuBLAS" into an error message. (A plain `cargo build --features cuda` links the libraries
//! instead; then the probe only confirms what the loader already guaranteed.)
//! Must not know: devices, kernels, candle.

use std::ffi::CString;

/// A library the CUDA path loads, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaLibrary {
    /// As cudarc names it: `cuda` for libcuda.so, `cublasLt` for libcublasLt.so.
    pub name: &'static str,
    pub needed_for: &'static str,
    /// Only needed when no PTX was built in (kernels are then compiled at first use).
    pub only_without_ptx: bool,
}

/// The driver, and what `Device::new_cuda` opens: candle creates a cuBLAS handle (which loads
/// cuBLASLt) and a cuRAND generator for every device.
pub const LIBRARIES: [CudaLibrary; 5] = [
    CudaLibrary { name: "cuda", needed_for: "the NVIDIA driver", only_without_ptx: false },
    CudaLibrary { name: "cublas", needed_for: "candle's matmuls", only_without_ptx: false },
    CudaLibrary { name: "cublasLt", needed_for: "candle's matmuls", only_without_ptx: false },
    CudaLibrary { name: "curand", needed_for: "candle's device setup", only_without_ptx: false },
    CudaLibrary { name: "nvrtc", needed_for: "compiling kvault's kernels at first use", only_without_ptx: true },
];

/// File names to try, in cudarc's order for Linux: the unversioned development link, then the
/// toolkit major the bindings were generated for, older majors, and `.so.1` (libcuda's soname).
pub fn candidates(name: &str, cuda_major: u32) -> Vec<String> {
    let mut names = vec![format!("lib{name}.so"), format!("lib{name}.so.{cuda_major}")];
    for major in [12, 11, 10, 9, 1] {
        if major != cuda_major {
            names.push(format!("lib{name}.so.{major}"));
        }
    }
    names
}

/// The first candidate the dynamic loader can open, if any.
pub fn find(name: &str, cuda_major: u32) -> Option<String> {
    candidates(name, cuda_major).into_iter().find(|file| loadable(file))
}

fn loadable(file: &str) -> bool {
    let Ok(c) = CString::new(file) else { return false };
    // SAFETY: dlopen with a valid NUL-terminated name; a non-null handle is closed right away.
    // RTLD_LOCAL keeps the library's symbols out of the global namespace.
    unsafe {
        let handle = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            false
        } else {
            libc::dlclose(handle);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_try_the_bindings_major_right_after_the_development_link() {
        let c = candidates("cublas", 13);
        assert_eq!(c[..2], ["libcublas.so", "libcublas.so.13"]);
        assert!(c.contains(&"libcublas.so.12".to_string()));
        assert_eq!(c.iter().filter(|n| *n == "libcublas.so.12").count(), 1);
        assert_eq!(candidates("cuda", 12).last().map(String::as_str), Some("libcuda.so.1"));
        assert_eq!(candidates("cuda", 12).iter().filter(|n| n.ends_with(".so.12")).count(), 1);
    }

    #[test]
    fn find_reports_the_file_that_loads_and_none_for_a_missing_library() {
        // libc is loadable wherever this test runs (the test binary itself links it).
        let libc = find("c", 6);
        assert!(libc.as_deref().is_some_and(|f| f.starts_with("libc.so")), "{libc:?}");
        assert_eq!(find("kvault_no_such_library", 13), None);
    }
}
