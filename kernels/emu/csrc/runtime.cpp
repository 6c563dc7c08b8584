// The emulator's scheduler: runs a grid one block at a time on the calling OS thread, each CUDA
// thread a fiber. Fibers run round-robin (forward or reverse thread order, chosen per launch)
// until they block at a barrier or a warp exchange, or exit. When nothing is runnable the
// scheduler resolves: all live threads at the same barrier -> release; anything else (a thread
// exited while others wait at a barrier, threads at different barriers, a warp exchange whose
// lanes never arrive) is an error for the caller, never a hang or an abort.
//
// Owns: block/thread bookkeeping, barrier and warp-exchange semantics, the dynamic shared-memory
// arena (poisoned with NaN bytes at every block start), the kernel registry and the C ABI.
// Must not know: any particular kernel.
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "emu_runtime.h"
#include "fiber.h"

namespace emu {

thread_local const ThreadView* t_thread = nullptr;
thread_local const BlockView* t_block = nullptr;

namespace {

enum class State { Runnable, AtBarrier, AtWarp, Done };

struct Thread {
    FiberContext ctx;
    ThreadView view;
    unsigned warp;
    State state;
    const char* bar_file;
    int bar_line;
    const uint64_t* exchange_result;
};

struct Warp {
    unsigned existing = 0;  // lanes that exist in this block
    unsigned mask = 0;      // mask of the exchange in progress
    unsigned arrived = 0;
    unsigned generation = 0;
    const char* what = nullptr;
    uint64_t values[2][32];  // double-buffered: see warp_exchange
};

struct Kernel {
    AnyFn fn;
    Invoker invoker;
    std::string signature;
};

struct Launch {
    const Kernel* kernel;
    void* const* args;
    BlockView block;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    std::vector<unsigned char> smem;
    FiberContext scheduler;
    Thread* current = nullptr;
    std::string error;
    uint64_t switches = 0;
    uint64_t barriers = 0;
    uint64_t exchanges = 0;
};

thread_local Launch* t_launch = nullptr;
thread_local StackPool t_stacks;

std::map<std::string, Kernel>& registry() {
    static std::map<std::string, Kernel> kernels;
    return kernels;
}

std::string site(const char* file, int line) {
    const char* base = std::strrchr(file, '/');
    return std::string(base ? base + 1 : file) + ":" + std::to_string(line);
}

std::string thread_name(const Thread& t) {
    return "thread (" + std::to_string(t.view.thread_idx.x) + "," + std::to_string(t.view.thread_idx.y) +
           "," + std::to_string(t.view.thread_idx.z) + ")";
}

// Hands control back to the scheduler; returns when this fiber is resumed.
void yield_to_scheduler() {
    Launch& l = *t_launch;
    Thread* self = l.current;
    ++l.switches;
    fiber_switch(&self->ctx, &l.scheduler);
}

[[noreturn]] void fail(std::string message) {
    Launch& l = *t_launch;
    if (l.error.empty()) l.error = std::move(message);
    l.current->state = State::Done;
    yield_to_scheduler();
    __builtin_trap();  // the scheduler never resumes a failed block
}

void fiber_entry() {
    Launch& l = *t_launch;
    l.kernel->invoker(l.kernel->fn, l.args);
    l.current->state = State::Done;
    yield_to_scheduler();
    __builtin_trap();
}

std::string describe_block() {
    const BlockView& b = t_launch->block;
    return "block (" + std::to_string(b.block_idx.x) + "," + std::to_string(b.block_idx.y) + "," +
           std::to_string(b.block_idx.z) + ")";
}

// Nothing is runnable: either the block is done, or every live thread waits somewhere.
// Returns false (with l.error set) when the wait can never be satisfied.
bool resolve_waits(Launch& l, bool* finished) {
    std::size_t done = 0, at_barrier = 0;
    const Thread* first_barrier = nullptr;
    for (const Thread& t : l.threads) {
        if (t.state == State::Done) ++done;
        if (t.state == State::AtBarrier) {
            ++at_barrier;
            if (!first_barrier) first_barrier = &t;
        }
        if (t.state == State::AtWarp) {
            const Warp& w = l.warps[t.warp];
            unsigned missing = w.mask & ~w.arrived;
            l.error = describe_block() + ": " + thread_name(t) + " waits in " + w.what + " (mask 0x" +
                      [&] { char b[16]; std::snprintf(b, sizeof b, "%08x", w.mask); return std::string(b); }() +
                      ") for lanes that never arrive (first missing lane " +
                      std::to_string(__builtin_ctz(missing)) + ": exited or waiting at a barrier)";
            return false;
        }
    }
    if (done == l.threads.size()) {
        *finished = true;
        return true;
    }
    const std::string where = site(first_barrier->bar_file, first_barrier->bar_line);
    for (const Thread& t : l.threads) {
        if (t.state == State::AtBarrier && (t.bar_line != first_barrier->bar_line ||
                                             std::strcmp(t.bar_file, first_barrier->bar_file) != 0)) {
            l.error = describe_block() + ": divergent barriers: " + thread_name(*first_barrier) +
                      " waits at __syncthreads " + where + " but " + thread_name(t) + " at " +
                      site(t.bar_file, t.bar_line);
            return false;
        }
    }
    if (done > 0) {
        l.error = describe_block() + ": barrier reached by only part of the block: " +
                  std::to_string(at_barrier) + " of " + std::to_string(l.threads.size()) +
                  " threads wait at __syncthreads " + where + " while " + std::to_string(done) +
                  " have exited";
        return false;
    }
    ++l.barriers;
    for (Thread& t : l.threads) t.state = State::Runnable;
    return true;
}

bool run_block(Launch& l, bool reverse) {
    const std::size_t n = l.threads.size();
    std::memset(l.smem.data(), 0xff, l.smem.size());  // NaN for floats: stale reads show up
    for (std::size_t i = 0; i < n; ++i) {
        fiber_prepare(&l.threads[i].ctx, t_stacks.stack(i), StackPool::kStackBytes, &fiber_entry);
        l.threads[i].state = State::Runnable;
    }
    for (Warp& w : l.warps) w.arrived = 0;
    for (;;) {
        bool progressed = false;
        for (std::size_t k = 0; k < n; ++k) {
            Thread& t = l.threads[reverse ? n - 1 - k : k];
            if (t.state != State::Runnable) continue;
            progressed = true;
            l.current = &t;
            t_thread = &t.view;
            ++l.switches;
            fiber_switch(&l.scheduler, &t.ctx);
            if (!l.error.empty()) return false;
        }
        if (!progressed) {
            bool finished = false;
            if (!resolve_waits(l, &finished)) return false;
            if (finished) return true;
        }
    }
}

}  // namespace

void register_kernel(const char* name, AnyFn fn, Invoker invoker, const char* signature) {
    registry()[name] = Kernel{fn, invoker, signature};
}

void syncthreads(const char* file, int line) {
    Thread* self = t_launch->current;
    self->state = State::AtBarrier;
    self->bar_file = file;
    self->bar_line = line;
    yield_to_scheduler();
}

const uint64_t* warp_exchange(unsigned mask, uint64_t value, const char* what) {
    Launch& l = *t_launch;
    Thread* self = l.current;
    Warp& w = l.warps[self->warp];
    const unsigned lane = self->view.lane;
    if (!(mask >> lane & 1u)) fail(describe_block() + ": " + thread_name(*self) + " calls " + what + " with a mask that excludes its own lane");
    if (mask & ~w.existing) fail(describe_block() + ": " + what + " mask names lanes that do not exist in this block");
    if (w.arrived == 0) {
        w.mask = mask;
        w.what = what;
    } else if (w.mask != mask) {
        fail(describe_block() + ": lanes of one warp disagree on the " + what + " mask");
    }
    // Double buffering: the last lane to arrive runs on and may start the next exchange before
    // the others have read this one's values; it cannot get two exchanges ahead, because the
    // next one needs every lane of the mask to arrive first.
    uint64_t* values = w.values[w.generation & 1u];
    values[lane] = value;
    w.arrived |= 1u << lane;
    ++l.exchanges;
    if (w.arrived == w.mask) {
        w.arrived = 0;
        ++w.generation;
        const unsigned base = self->warp * 32;
        for (unsigned m = mask; m; m &= m - 1) {
            Thread& t = l.threads[base + __builtin_ctz(m)];
            t.exchange_result = values;
            if (&t != self) t.state = State::Runnable;
        }
        return values;
    }
    self->state = State::AtWarp;
    yield_to_scheduler();
    return self->exchange_result;
}

[[noreturn]] void trap(const char* what, const char* file, int line) {
    fail(describe_block() + ": " + thread_name(*t_launch->current) + " hit " + what + " at " + site(file, line));
}

}  // namespace emu

// ---- C ABI for the Rust side (src/ffi.rs) -------------------------------------------------------
extern "C" {

struct KvEmuStats {
    uint64_t blocks;
    uint64_t threads;
    uint64_t switches;
    uint64_t barriers;
    uint64_t exchanges;
};

// Max dynamic shared memory without the opt-in attribute; the plans stay below it.
static const std::size_t kMaxSmem = 48 * 1024;

static int kv_emu_error(char* err, std::size_t err_len, const std::string& msg) {
    if (err_len) {
        std::snprintf(err, err_len, "%s", msg.c_str());
    }
    return 1;
}

int kv_emu_signature(const char* name, char* out, std::size_t out_len) {
    auto it = emu::registry().find(name);
    if (it == emu::registry().end()) return 1;
    std::snprintf(out, out_len, "%s", it->second.signature.c_str());
    return 0;
}

// Newline-separated names of every registered kernel; returns the length needed.
std::size_t kv_emu_kernel_names(char* out, std::size_t out_len) {
    std::string all;
    for (const auto& entry : emu::registry()) all += entry.first + "\n";
    if (out_len) std::snprintf(out, out_len, "%s", all.c_str());
    return all.size() + 1;
}

int kv_emu_launch(const char* name, const unsigned* grid, const unsigned* block, std::size_t smem_bytes,
                  void* const* args, const char* arg_codes, int reverse, KvEmuStats* stats, char* err,
                  std::size_t err_len) {
    using namespace emu;
    auto it = registry().find(name);
    if (it == registry().end()) return kv_emu_error(err, err_len, std::string("no emulated kernel named ") + name);
    const Kernel& kernel = it->second;
    if (kernel.signature != arg_codes)
        return kv_emu_error(err, err_len, std::string(name) + ": argument kinds " + arg_codes +
                                              " do not match the kernel's signature " + kernel.signature +
                                              " (p=pointer i=int u=unsigned l=long long f=float)");
    const unsigned threads = block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || block[2] > 64)
        return kv_emu_error(err, err_len, std::string(name) + ": invalid block size " + std::to_string(threads));
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535)
        return kv_emu_error(err, err_len, std::string(name) + ": invalid grid");
    if (smem_bytes > kMaxSmem)
        return kv_emu_error(err, err_len, std::string(name) + ": " + std::to_string(smem_bytes) +
                                              " bytes of dynamic shared memory exceed the 48 KiB default limit");
    if (t_launch) return kv_emu_error(err, err_len, "nested emulated launch");
    if (!t_stacks.reserve(threads)) return kv_emu_error(err, err_len, "cannot map fiber stacks");

    Launch l;
    l.kernel = &kernel;
    l.args = args;
    l.block.block_dim = dim3(block[0], block[1], block[2]);
    l.block.grid_dim = dim3(grid[0], grid[1], grid[2]);
    l.smem.assign(smem_bytes + 16, 0);  // +16: a zero-size arena still has a valid pointer
    l.block.smem = l.smem.data();
    l.threads.resize(threads);
    l.warps.resize((threads + 31) / 32);
    for (unsigned i = 0; i < threads; ++i) {
        Thread& t = l.threads[i];
        t.view.thread_idx = dim3(i % block[0], i / block[0] % block[1], i / (block[0] * block[1]));
        t.view.lane = i % 32;
        t.warp = i / 32;
        l.warps[t.warp].existing |= 1u << t.view.lane;
    }
    t_launch = &l;
    t_block = &l.block;
    bool ok = true;
    uint64_t blocks = 0;
    for (unsigned z = 0; ok && z < grid[2]; ++z)
        for (unsigned y = 0; ok && y < grid[1]; ++y)
            for (unsigned x = 0; ok && x < grid[0]; ++x) {
                l.block.block_idx = dim3(x, y, z);
                ok = run_block(l, reverse != 0);
                ++blocks;
            }
    t_launch = nullptr;
    t_block = nullptr;
    t_thread = nullptr;
    if (stats) {
        stats->blocks = blocks;
        stats->threads = blocks * threads;
        stats->switches = l.switches;
        stats->barriers = l.barriers;
        stats->exchanges = l.exchanges;
    }
    if (!ok) return kv_emu_error(err, err_len, std::string(name) + ": " + l.error);
    return 0;
}

}  // extern "C"
