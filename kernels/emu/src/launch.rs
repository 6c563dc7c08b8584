//! Launching an emulated kernel: argument marshalling (the `void**` list cudarc would pass),
//! harness-owned copies of every buffer, and the schedule-independence check.
//!
//! Safety argument: kernels only ever see harness-owned copies sized from the caller's slices,
//! so a kernel bug can at worst corrupt those copies (or fault); results are copied back into the
//! caller's `Out` buffers only, and writes into `In` buffers are reported instead of leaking.
//! Must not know: any particular kernel's meaning.

use std::ffi::{c_char, c_void, CString};

use crate::ffi;
use crate::plan::LaunchConfig;

/// Element types a buffer argument may hold: plain bytes, no padding, any bit pattern valid.
pub trait Pod: Copy + 'static {}
impl Pod for f32 {}
impl Pod for f64 {}
impl Pod for u8 {}
impl Pod for u16 {}
impl Pod for i32 {}
impl Pod for u32 {}
impl Pod for i64 {}
impl Pod for u64 {}
impl Pod for half::f16 {}
impl Pod for half::bf16 {}

/// One kernel argument, in the kernel's parameter order.
pub enum Arg<'a> {
    /// A device buffer the kernel only reads.
    In(&'a [u8]),
    /// A device buffer the kernel writes (its initial contents are visible to the kernel).
    Out(&'a mut [u8]),
    /// A null pointer (optional buffers).
    Null,
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
}

impl<'a> Arg<'a> {
    pub fn input<T: Pod>(s: &'a [T]) -> Self {
        // SAFETY: T is Pod (no padding, every byte initialised), the view has the same lifetime.
        Arg::In(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) })
    }

    pub fn output<T: Pod>(s: &'a mut [T]) -> Self {
        // SAFETY: as above; any byte pattern written back is a valid T because T is Pod.
        Arg::Out(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) })
    }

    fn code(&self) -> u8 {
        match self {
            Arg::In(_) | Arg::Out(_) | Arg::Null => b'p',
            Arg::I32(_) => b'i',
            Arg::U32(_) => b'u',
            Arg::I64(_) => b'l',
            Arg::F32(_) => b'f',
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Arg::In(b) => Some(b),
            Arg::Out(b) => Some(b),
            _ => None,
        }
    }
}

/// Order in which the scheduler resumes a block's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Forward,
    Reverse,
}

/// What one emulated launch did (summed over runs for [`launch_checked`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchStats {
    pub blocks: u64,
    pub threads: u64,
    /// Fiber switches: a proxy for how many scheduling points the kernel has.
    pub switches: u64,
    /// Barrier releases (per block).
    pub barriers: u64,
    /// Lane arrivals at warp shuffles/votes.
    pub exchanges: u64,
}

impl std::ops::AddAssign for LaunchStats {
    fn add_assign(&mut self, o: Self) {
        self.blocks += o.blocks;
        self.threads += o.threads;
        self.switches += o.switches;
        self.barriers += o.barriers;
        self.exchanges += o.exchanges;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    /// Reported by the harness while running the kernel (partial or divergent barrier, shuffle
    /// waiting for an exited lane, trap, bad signature, unknown kernel, bad geometry).
    #[error("{0}")]
    Kernel(String),
    #[error(
        "{kernel}: argument {arg} differs at byte {offset} between forward and reverse thread \
         order: the result depends on the schedule (missing barrier or shared-memory race)"
    )]
    ScheduleDependent { kernel: String, arg: usize, offset: usize },
    #[error("{kernel}: kernel wrote to read-only argument {arg} at byte {offset}")]
    WroteReadOnly { kernel: String, arg: usize, offset: usize },
    #[error("{0}")]
    Invalid(String),
}

/// 16-byte aligned copy of one buffer argument.
struct Owned {
    words: Vec<u128>,
    len: usize,
}

impl Owned {
    fn copy_of(bytes: &[u8]) -> Self {
        let mut words = vec![0u128; bytes.len().div_ceil(16).max(1)];
        // SAFETY: `words` holds at least bytes.len() bytes; u128 has no invalid bit patterns.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast::<u8>(), bytes.len()) };
        Owned { words, len: bytes.len() }
    }

    fn as_bytes(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of `words` were initialised from the caller's buffer.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Runs the grid once in the given thread order on copies of the buffers; returns the copies.
fn run(cfg: &LaunchConfig, args: &[Arg], schedule: Schedule) -> Result<(Vec<Option<Owned>>, LaunchStats), EmuError> {
    let name = CString::new(cfg.kernel.as_str()).map_err(|_| EmuError::Invalid("kernel name has a NUL".into()))?;
    let mut owned: Vec<Option<Owned>> = args.iter().map(|a| a.bytes().map(Owned::copy_of)).collect();
    let mut slots: Vec<u64> = Vec::with_capacity(args.len());
    for (arg, buf) in args.iter().zip(owned.iter_mut()) {
        slots.push(match (arg, buf) {
            (_, Some(b)) => b.words.as_mut_ptr() as u64,
            (Arg::Null, None) => 0,
            (Arg::I32(v), None) => *v as u32 as u64,
            (Arg::U32(v), None) => *v as u64,
            (Arg::I64(v), None) => *v as u64,
            (Arg::F32(v), None) => v.to_bits() as u64,
            (Arg::In(_) | Arg::Out(_), None) => unreachable!("buffers always have a copy"),
        });
    }
    let ptrs: Vec<*mut c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast::<c_void>()).collect();
    let codes = CString::new(args.iter().map(Arg::code).collect::<Vec<u8>>()).map_err(|_| EmuError::Invalid("codes".into()))?;
    let mut stats = ffi::KvEmuStats::default();
    let mut err = vec![0u8; 1024];
    // SAFETY: every pointer argument points into `owned`, which outlives the call; the runtime
    // checks the argument kinds against the kernel's registered signature before calling it.
    let rc = unsafe {
        ffi::kv_emu_launch(
            name.as_ptr(),
            cfg.grid.as_ptr(),
            cfg.block.as_ptr(),
            cfg.shared_bytes as usize,
            ptrs.as_ptr(),
            codes.as_ptr(),
            (schedule == Schedule::Reverse) as i32,
            &mut stats,
            err.as_mut_ptr().cast::<c_char>(),
            err.len(),
        )
    };
    if rc != 0 {
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        return Err(EmuError::Kernel(String::from_utf8_lossy(&err[..end]).into_owned()));
    }
    let stats = LaunchStats {
        blocks: stats.blocks,
        threads: stats.threads,
        switches: stats.switches,
        barriers: stats.barriers,
        exchanges: stats.exchanges,
    };
    Ok((owned, stats))
}

fn check_inputs_untouched(cfg: &LaunchConfig, args: &[Arg], owned: &[Option<Owned>]) -> Result<(), EmuError> {
    for (i, (arg, buf)) in args.iter().zip(owned).enumerate() {
        if let (Arg::In(orig), Some(buf)) = (arg, buf) {
            if let Some(offset) = first_difference(orig, buf.as_bytes()) {
                return Err(EmuError::WroteReadOnly { kernel: cfg.kernel.clone(), arg: i, offset });
            }
        }
    }
    Ok(())
}

fn copy_back(args: &mut [Arg], owned: &[Option<Owned>]) {
    for (arg, buf) in args.iter_mut().zip(owned) {
        if let (Arg::Out(dst), Some(buf)) = (arg, buf) {
            dst.copy_from_slice(buf.as_bytes());
        }
    }
}

/// Runs the grid once in one thread order and writes the results into the `Out` buffers.
pub fn launch_raw(cfg: &LaunchConfig, args: &mut [Arg], schedule: Schedule) -> Result<LaunchStats, EmuError> {
    let (owned, stats) = run(cfg, args, schedule)?;
    check_inputs_untouched(cfg, args, &owned)?;
    copy_back(args, &owned);
    Ok(stats)
}

/// Runs the grid in forward and in reverse thread order from the same inputs and requires
/// bit-identical buffers: barrier-correct, atomics-free kernels cannot tell the orders apart.
pub fn launch_checked(cfg: &LaunchConfig, args: &mut [Arg]) -> Result<LaunchStats, EmuError> {
    let (forward, mut stats) = run(cfg, args, Schedule::Forward)?;
    let (reverse, reverse_stats) = run(cfg, args, Schedule::Reverse)?;
    stats += reverse_stats;
    for (i, (f, r)) in forward.iter().zip(&reverse).enumerate() {
        if let (Some(f), Some(r)) = (f, r) {
            if let Some(offset) = first_difference(f.as_bytes(), r.as_bytes()) {
                return Err(EmuError::ScheduleDependent { kernel: cfg.kernel.clone(), arg: i, offset });
            }
        }
    }
    check_inputs_untouched(cfg, args, &forward)?;
    copy_back(args, &forward);
    Ok(stats)
}

/// The argument kinds the named kernel was registered with (p/i/u/l/f), if it exists.
pub fn signature(kernel: &str) -> Option<String> {
    let name = CString::new(kernel).ok()?;
    let mut out = vec![0u8; 64];
    // SAFETY: `out` is writable for its length; the runtime NUL-terminates within it.
    let rc = unsafe { ffi::kv_emu_signature(name.as_ptr(), out.as_mut_ptr().cast::<c_char>(), out.len()) };
    if rc != 0 {
        return None;
    }
    let end = out.iter().position(|&b| b == 0).unwrap_or(out.len());
    Some(String::from_utf8_lossy(&out[..end]).into_owned())
}

/// Names of every kernel the emulator registered (the real ones and the broken test kernels).
pub fn kernel_names() -> Vec<String> {
    // SAFETY: a zero-length buffer is never written; the call only reports the size needed.
    let needed = unsafe { ffi::kv_emu_kernel_names(std::ptr::null_mut(), 0) };
    let mut out = vec![0u8; needed];
    // SAFETY: `out` is writable for `needed` bytes, enough for the names and the NUL.
    unsafe { ffi::kv_emu_kernel_names(out.as_mut_ptr().cast::<c_char>(), out.len()) };
    let end = out.iter().position(|&b| b == 0).unwrap_or(out.len());
    String::from_utf8_lossy(&out[..end]).lines().map(str::to_string).collect()
}
