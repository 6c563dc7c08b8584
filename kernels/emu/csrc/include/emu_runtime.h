// The emulator's runtime interface: what the CUDA-language mapping (emu_cuda.h) calls into.
// One CTA runs at a time per OS thread; each CUDA thread is a fiber on that OS thread, so
// per-block state lives in thread-locals. Implemented in runtime.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace emu {

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Which CUDA thread the calling fiber is, and the block it belongs to.
struct ThreadView {
    dim3 thread_idx;
    unsigned lane;
};
struct BlockView {
    dim3 block_idx, block_dim, grid_dim;
    unsigned char* smem;
};
extern thread_local const ThreadView* t_thread;
extern thread_local const BlockView* t_block;

// Blocks the calling thread until every live thread of the block reached a barrier; reports
// (and abandons the block) if some thread exited or waits elsewhere.
void syncthreads(const char* file, int line);
// Deposits `value` for the warp's exchange named by `mask` and returns the 32 deposited values
// once every lane of the mask has arrived. Valid until the caller's next exchange.
const uint64_t* warp_exchange(unsigned mask, uint64_t value, const char* what);
// Ends the block with an error (device-side assert / __trap).
[[noreturn]] void trap(const char* what, const char* file, int line);

// Kernel registry: KV_EXPORT(name) in the .cu sources registers name -> invoker + signature.
using AnyFn = void (*)();
using Invoker = void (*)(AnyFn, void* const*);

template <typename T> constexpr char arg_code() {
    if constexpr (std::is_pointer_v<T>) return 'p';
    else if constexpr (std::is_same_v<T, int>) return 'i';
    else if constexpr (std::is_same_v<T, unsigned>) return 'u';
    else if constexpr (std::is_same_v<T, long long>) return 'l';
    else if constexpr (std::is_same_v<T, unsigned long long>) return 'L';
    else if constexpr (std::is_same_v<T, float>) return 'f';
    else return '?';
}

template <typename... A> struct Invoke {
    template <std::size_t... I>
    static void call_with(AnyFn fn, void* const* args, std::index_sequence<I...>) {
        reinterpret_cast<void (*)(A...)>(fn)(*static_cast<std::remove_cv_t<A>*>(args[I])...);
    }
    static void call(AnyFn fn, void* const* args) {
        call_with(fn, args, std::index_sequence_for<A...>{});
    }
};

void register_kernel(const char* name, AnyFn fn, Invoker invoker, const char* signature);

struct Registrar {
    template <typename... A> Registrar(const char* name, void (*fn)(A...)) {
        static const char signature[] = {arg_code<A>()..., '\0'};
        register_kernel(name, reinterpret_cast<AnyFn>(fn), &Invoke<A...>::call, signature);
    }
};

}  // namespace emu
