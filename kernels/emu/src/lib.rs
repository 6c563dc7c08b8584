//! Host emulation harness for kvault's CUDA kernels (test-only).
//!
//! build.rs compiles every `kernels/cuda/*.cu` unchanged as C++ against a header that maps the
//! CUDA language onto the host (csrc/include/emu_cuda.h): each CUDA thread becomes a fiber,
//! blocks run one at a time, `__syncthreads` and warp shuffles/votes are scheduling points, and
//! misuse (a barrier reached by part of a block, divergent barriers, a shuffle waiting for an
//! exited lane) comes back as an [`EmuError`], never a hang or an abort. [`launch_checked`] also
//! runs every grid twice, in forward and reverse thread order, and reports any output that
//! depends on the order: that is how a missing barrier is caught even when it happens to give
//! plausible numbers.
//!
//! Owns: launching emulated kernels by name, the way cudarc launches them on a device, with the
//! same launch geometry (`plan`, shared with the device glue). Must not know: what any kernel
//! computes; the tests in kernels/tests compare results with the CPU ops.

mod ffi;
mod launch;
#[path = "../../src/cuda/plan.rs"]
pub mod plan;

pub use launch::{kernel_names, launch_checked, launch_raw, signature, Arg, EmuError, LaunchStats, Pod, Schedule};
