// Minimal stackful fibers: a pool of guarded stacks and a context switch. On x86-64 the switch
// is a few instructions of assembly (callee-saved registers + MXCSR/x87 control word): the
// emulator switches once per thread per barrier or warp shuffle, and ucontext's swapcontext
// makes a sigprocmask syscall each time, which made the attention tests ~50x slower. Other
// architectures fall back to ucontext.
//
// Owns: stacks and switching. Must not know: CUDA, blocks, barriers (runtime.cpp).
#pragma once
#include <cstddef>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {

struct FiberContext {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

// Switches from `from` (saved) to `to` (resumed).
void fiber_switch(FiberContext* from, FiberContext* to);
// Prepares `ctx` so the first switch into it calls `entry()` on `stack` (which must not return).
void fiber_prepare(FiberContext* ctx, void* stack, std::size_t size, void (*entry)());

// Reusable stacks of `kStackBytes` each, with a PROT_NONE guard page below every stack so an
// overflow faults instead of silently corrupting a neighbour. Per OS thread; grows on demand.
class StackPool {
  public:
    static constexpr std::size_t kStackBytes = 64 * 1024;
    ~StackPool();
    // Returns at least n stacks; pointers stay valid for the pool's lifetime.
    bool reserve(std::size_t n);
    void* stack(std::size_t i) const { return stacks_[i]; }

  private:
    std::vector<void*> mappings_;
    std::vector<void*> stacks_;
};

}  // namespace emu
