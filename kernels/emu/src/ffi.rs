//! Raw bindings to the C ABI at the bottom of csrc/runtime.cpp. Must not be used outside
//! `launch`, which owns the safety argument.

use std::ffi::{c_char, c_int, c_uint, c_void};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KvEmuStats {
    pub blocks: u64,
    pub threads: u64,
    pub switches: u64,
    pub barriers: u64,
    pub exchanges: u64,
}

extern "C" {
    pub(crate) fn kv_emu_launch(
        name: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        smem_bytes: usize,
        args: *const *mut c_void,
        arg_codes: *const c_char,
        reverse: c_int,
        stats: *mut KvEmuStats,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;

    pub(crate) fn kv_emu_kernel_names(out: *mut c_char, out_len: usize) -> usize;

    pub(crate) fn kv_emu_signature(name: *const c_char, out: *mut c_char, out_len: usize) -> c_int;
}
