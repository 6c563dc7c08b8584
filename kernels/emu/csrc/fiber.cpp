// Fiber switching and stack pool (see fiber.h for why the switch is hand-written on x86-64).
#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#if defined(__x86_64__)
// void emu_fiber_switch_asm(void** save_sp, void* load_sp)
// Saves callee-saved state on the current stack, stores rsp, loads the other stack, restores.
asm(R"(
    .text
    .globl emu_fiber_switch_asm
    .type emu_fiber_switch_asm, @function
emu_fiber_switch_asm:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_fiber_switch_asm, .-emu_fiber_switch_asm
    .section .note.GNU-stack,"",@progbits
    .text
)");
extern "C" void emu_fiber_switch_asm(void** save_sp, void* load_sp);
#endif

namespace emu {

#if defined(__x86_64__)
void fiber_switch(FiberContext* from, FiberContext* to) { emu_fiber_switch_asm(&from->sp, to->sp); }

void fiber_prepare(FiberContext* ctx, void* stack, std::size_t size, void (*entry)()) {
    auto top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
    auto* slot = reinterpret_cast<uint64_t*>(top);
    // Mirrors the frame emu_fiber_switch_asm pops: [csr word][r15 r14 r13 r12 rbx rbp][ret].
    // The extra zero above the return slot makes rsp % 16 == 8 at entry, as after a call.
    *--slot = 0;                                      // fake return address of entry()
    *--slot = reinterpret_cast<uint64_t>(entry);      // ret target
    for (int i = 0; i < 6; ++i) *--slot = 0;          // rbp rbx r12 r13 r14 r15
    *--slot = (uint64_t(0x037f) << 32) | 0x1f80;      // MXCSR default, x87 control word default
    ctx->sp = slot;
}
#else
void fiber_switch(FiberContext* from, FiberContext* to) { swapcontext(&from->uc, &to->uc); }

void fiber_prepare(FiberContext* ctx, void* stack, std::size_t size, void (*entry)()) {
    getcontext(&ctx->uc);
    ctx->uc.uc_stack.ss_sp = stack;
    ctx->uc.uc_stack.ss_size = size;
    ctx->uc.uc_link = nullptr;
    makecontext(&ctx->uc, entry, 0);
}
#endif

StackPool::~StackPool() {
    const std::size_t page = (std::size_t)sysconf(_SC_PAGESIZE);
    for (void* m : mappings_) munmap(m, kStackBytes + page);
}

bool StackPool::reserve(std::size_t n) {
    const std::size_t page = (std::size_t)sysconf(_SC_PAGESIZE);
    while (stacks_.size() < n) {
        void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return false;
        mprotect(m, page, PROT_NONE);
        mappings_.push_back(m);
        stacks_.push_back(static_cast<char*>(m) + page);
    }
    return true;
}

}  // namespace emu
