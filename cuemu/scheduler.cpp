// scheduler.cpp -- runtime of the CUDA kernel emulator: fibers, block scheduling, barriers,
// warp operations, the worker pool, the kernel registry and the C API (cuemu_api.h).
//
// Model: a block runs all its threads as fibers on ONE OS thread (a fiber never migrates, so
// TLS addresses the compiler cached stay valid). Runnable fibers form a circular doubly linked
// list; a fiber that blocks unlinks itself and switches directly to its successor. Only when
// the list is empty does control return to the worker's scheduler context: then the block is
// either done or deadlocked. Blocks are spread over a persistent pool of worker OS threads.
#include "cuemu.h"
#include "cuemu_api.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) && !defined(CUEMU_FORCE_UCONTEXT)
#define CUEMU_ASM_SWITCH 1
#else
#define CUEMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CUEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUEMU_ASAN 1
#endif
#endif
#ifndef CUEMU_ASAN
#define CUEMU_ASAN 0
#endif
#if CUEMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// The harness (harness.cpp) defines this. Referencing it makes the linker pull harness.o, and
// with it the kernels' static registrars, out of a static library whenever this file is used.
extern "C" const int cuemu_harness_anchor;

namespace cuemu {

// ------------------------------------------------------------------------------------------
// Context switch
// ------------------------------------------------------------------------------------------
#if CUEMU_ASM_SWITCH
// void cuemu_ctx_switch(void** save_sp, void* new_sp): saves the callee-saved registers,
// MXCSR and the x87 control word on the current stack, stores rsp in *save_sp, loads new_sp
// and restores the same from there. A new fiber's frame "returns" into cuemu_fiber_entry,
// which calls r12(r13).
asm(R"(
  .text
  .globl cuemu_ctx_switch
  .hidden cuemu_ctx_switch
  .type cuemu_ctx_switch, @function
  .p2align 4
cuemu_ctx_switch:
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
  .size cuemu_ctx_switch, .-cuemu_ctx_switch

  .globl cuemu_fiber_entry
  .hidden cuemu_fiber_entry
  .type cuemu_fiber_entry, @function
  .p2align 4
cuemu_fiber_entry:
  movq %r13, %rdi
  callq *%r12
  ud2
  .size cuemu_fiber_entry, .-cuemu_fiber_entry
)");
extern "C" __attribute__((visibility("hidden"))) void cuemu_ctx_switch(void** save_sp, void* new_sp);
extern "C" __attribute__((visibility("hidden"))) void cuemu_fiber_entry();
struct Ctx {
  void* sp = nullptr;
};
static inline void raw_switch(Ctx* from, Ctx* to) { cuemu_ctx_switch(&from->sp, to->sp); }
#else
struct Ctx {
  ucontext_t uc;
};
static inline void raw_switch(Ctx* from, Ctx* to) { swapcontext(&from->uc, &to->uc); }
#endif

// ------------------------------------------------------------------------------------------
// Data structures
// ------------------------------------------------------------------------------------------
enum FiberState : std::uint8_t { kRunnable, kAtBarrier, kAtWarp, kExited };

struct Fiber {
  Ctx ctx;
  Fiber* next = nullptr;  // runnable ring
  Fiber* prev = nullptr;
  uint3 tid{0, 0, 0};
  unsigned linear = 0;
  unsigned lane = 0;
  unsigned warp = 0;
  unsigned want = 0;  // mask of the warp sync this fiber waits in
  FiberState state = kRunnable;
  char* stack_lo = nullptr;  // usable stack [stack_lo, stack_lo + stack_size)
  char* top = nullptr;       // staggered initial stack top
};

struct WarpState {
  std::uint32_t exist = 0;    // lanes that exist in this block
  std::uint32_t arrived = 0;  // lanes waiting in a warp sync
  int nwait = 0;
  std::uint8_t wait_order[32];  // waiting lanes in arrival order
  Fiber* lanes[32];
  std::uint64_t slots[32];
};

struct Entry {
  const char* name;
  Invoke invoke;
  int num_params;
};

static std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}

void register_kernel(const char* name, Invoke invoke, int num_params) {
  for (const Entry& e : registry())
    if (std::strcmp(e.name, name) == 0) return;  // first registration wins
  registry().push_back(Entry{name, invoke, num_params});
}

struct Launch {
  const Entry* kernel = nullptr;
  void** args = nullptr;
  dim3 grid, block;
  std::size_t smem = 0;
  unsigned long long nblocks = 0;
  unsigned nthreads = 0;
  int order = 0;
  unsigned long long seed = 0;
  const unsigned* block_perm = nullptr;  // shuffled block order (or null)
  int participants = 0;
  std::atomic<unsigned long long> next_block{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::string err;
  void fail(const std::string& msg) {
    std::lock_guard<std::mutex> g(err_mu);
    if (!failed.load(std::memory_order_relaxed)) {
      err = msg;
      failed.store(true, std::memory_order_relaxed);
    }
  }
};

static std::size_t page_size() {
  static const std::size_t p = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

static std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static std::string format(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

// One worker OS thread: its stack arena, its fibers and the state of the block it runs.
struct Worker {
  int index = 0;
  // Stack arena: `cap` slots of [guard page][stack], reused across blocks and launches.
  char* arena = nullptr;
  std::size_t arena_bytes = 0;
  std::size_t slot_bytes = 0;
  std::size_t stack_bytes = 0;
  unsigned cap = 0;
  bool arena_dirty = false;  // fibers were abandoned on it (ASan: stale poisoned frames)

  std::vector<Fiber> fibers;
  std::vector<WarpState> warps;
  std::vector<Fiber*> bar_waiters;
  std::vector<unsigned> order;
  unsigned nthreads = 0;
  unsigned bar_count = 0;
  int bar_acc = 0;
  int bar_result = 0;
  unsigned exited = 0;
  Fiber* cur = nullptr;
  Ctx sched;
  std::string block_err;  // first error raised inside the block (mask mismatch, exception)

  Launch* launch = nullptr;
  void* dyn_smem = nullptr;
  std::size_t dyn_smem_bytes = 0;

  // Bounds of this OS thread's own stack (for ASan's fiber annotations).
  const void* os_stack_lo = nullptr;
  std::size_t os_stack_size = 0;

  ~Worker() {
    if (arena) munmap(arena, arena_bytes);
    ::operator delete(dyn_smem, std::align_val_t(64));
  }
};

static thread_local Worker* tl_worker CUEMU_TLS_MODEL = nullptr;

// ------------------------------------------------------------------------------------------
// Switching between fibers (with AddressSanitizer annotations)
// ------------------------------------------------------------------------------------------
static inline void switch_fiber_to_fiber(Fiber* from, Fiber* to) {
  threadIdx = to->tid;
#if CUEMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, to->stack_lo, tl_worker->stack_bytes);
  raw_switch(&from->ctx, &to->ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  raw_switch(&from->ctx, &to->ctx);
#endif
}

static inline void switch_fiber_to_sched(Worker* w, Fiber* from) {
#if CUEMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, w->os_stack_lo, w->os_stack_size);
  raw_switch(&from->ctx, &w->sched);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  raw_switch(&from->ctx, &w->sched);
#endif
}

// A fiber that exited never resumes: it hands over without keeping its ASan fake stack.
[[noreturn]] static void switch_exiting(Worker* w, Fiber* from, Fiber* to) {
#if CUEMU_ASAN
  if (to)
    __sanitizer_start_switch_fiber(nullptr, to->stack_lo, w->stack_bytes);
  else
    __sanitizer_start_switch_fiber(nullptr, w->os_stack_lo, w->os_stack_size);
#endif
  if (to) {
    threadIdx = to->tid;
    raw_switch(&from->ctx, &to->ctx);
  } else {
    raw_switch(&from->ctx, &w->sched);
  }
  __builtin_unreachable();
}

static inline void unlink(Fiber* f) {
  f->prev->next = f->next;
  f->next->prev = f->prev;
}

static inline void insert_after(Fiber* pos, Fiber* f) {
  f->prev = pos;
  f->next = pos->next;
  pos->next->prev = f;
  pos->next = f;
}

// The current fiber stops being runnable (its state is already set): switch to the next
// runnable fiber, or back to the scheduler when there is none.
static void block_current(Worker* w) {
  Fiber* f = w->cur;
  Fiber* n = f->next;
  unlink(f);
  if (n == f) {
    w->cur = nullptr;
    switch_fiber_to_sched(w, f);
  } else {
    w->cur = n;
    switch_fiber_to_fiber(f, n);
  }
  // Resumed: whoever switched here set w->cur = f and threadIdx.
}

static std::string block_name(const Worker* w) {
  return format("kernel %s, block (%u,%u,%u)", w->launch->kernel->name, blockIdx.x, blockIdx.y, blockIdx.z);
}

static void block_error(Worker* w, const std::string& msg) {
  if (w->block_err.empty()) w->block_err = msg;
}

static void fiber_main(Fiber* f) {
  Worker* w = tl_worker;
#if CUEMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  try {
    w->launch->kernel->invoke(w->launch->args);
  } catch (const std::exception& e) {
    block_error(w, format("%s: thread (%u,%u,%u) threw an exception: %s", block_name(w).c_str(), f->tid.x,
                          f->tid.y, f->tid.z, e.what()));
  } catch (...) {
    block_error(w, format("%s: thread (%u,%u,%u) threw an exception", block_name(w).c_str(), f->tid.x, f->tid.y,
                          f->tid.z));
  }
  w = tl_worker;
  f->state = kExited;
  ++w->exited;
  Fiber* n = f->next;
  unlink(f);
  if (n == f) {
    w->cur = nullptr;
    switch_exiting(w, f, nullptr);
  }
  w->cur = n;
  switch_exiting(w, f, n);
}

#if !CUEMU_ASM_SWITCH
static void fiber_entry_ucontext() { fiber_main(tl_worker->cur); }
#endif

// ------------------------------------------------------------------------------------------
// Barriers and warp operations (called from kernels through cuemu.h)
// ------------------------------------------------------------------------------------------
namespace detail {

void syncthreads() {
  Worker* w = tl_worker;
  Fiber* f = w->cur;
  if (w->bar_count + 1 == w->nthreads) {
    // Last arrival: release everybody, in arrival order, right after this fiber.
    w->bar_result = w->bar_acc;
    w->bar_acc = 0;
    Fiber* pos = f;
    for (unsigned i = 0; i < w->bar_count; ++i) {
      Fiber* x = w->bar_waiters[i];
      x->state = kRunnable;
      insert_after(pos, x);
      pos = x;
    }
    w->bar_count = 0;
    return;
  }
  w->bar_waiters[w->bar_count++] = f;
  f->state = kAtBarrier;
  block_current(w);
}

int syncthreads_count(int pred) {
  Worker* w = tl_worker;
  w->bar_acc += pred != 0;
  syncthreads();
  // The result cannot change before every thread has read it: the next barrier completes only
  // after all threads arrive there.
  return tl_worker->bar_result;
}

static void syncwarp_impl(Worker* w, Fiber* f, unsigned mask, const char* what) {
  WarpState& ws = w->warps[f->warp];
  const std::uint32_t me = 1u << f->lane;
  if (!(mask & me)) {
    block_error(w, format("%s: thread (%u,%u,%u) called %s with mask 0x%08x that does not include its own lane %u",
                          block_name(w).c_str(), f->tid.x, f->tid.y, f->tid.z, what, mask, f->lane));
  }
  // Lanes of a partial last warp that do not exist count as arrived.
  const std::uint32_t need = (mask | me) & ws.exist;
  if (need == me) return;
  if ((ws.arrived & need) == (need & ~me)) {
    // Everybody else named in the mask is waiting: release them (arrival order) after us.
    Fiber* pos = f;
    int kept = 0;
    for (int i = 0; i < ws.nwait; ++i) {
      const unsigned l = ws.wait_order[i];
      if (need & (1u << l)) {
        Fiber* x = ws.lanes[l];
        if (x->want != need) {
          block_error(w, format("%s: warp %u: lanes synchronized with different masks (lane %u: 0x%08x, lane "
                                "%u: 0x%08x) in %s",
                                block_name(w).c_str(), f->warp, l, x->want, f->lane, need, what));
        }
        x->state = kRunnable;
        insert_after(pos, x);
        pos = x;
      } else {
        ws.wait_order[kept++] = static_cast<std::uint8_t>(l);
      }
    }
    ws.nwait = kept;
    ws.arrived &= ~need;
    return;
  }
  ws.arrived |= me;
  ws.wait_order[ws.nwait++] = static_cast<std::uint8_t>(f->lane);
  f->want = need;
  f->state = kAtWarp;
  block_current(w);
}

void syncwarp(unsigned mask) {
  Worker* w = tl_worker;
  syncwarp_impl(w, w->cur, mask, "__syncwarp");
}

std::uint64_t shfl(unsigned mask, std::uint64_t v, int mode, int b, int c) {
  Worker* w = tl_worker;
  Fiber* f = w->cur;
  WarpState& ws = w->warps[f->warp];
  const int lane = static_cast<int>(f->lane);
  ws.slots[lane] = v;
  syncwarp_impl(w, f, mask, "a warp shuffle");
  // PTX shfl.sync: segment mask and clamp come packed in c.
  const int bval = b & 31, cval = c & 31, segmask = (c >> 8) & 31;
  const int max_lane = (lane & segmask) | (cval & ~segmask);
  const int min_lane = lane & segmask;
  int j = lane;
  bool ok = false;
  switch (mode) {
    case kShflUp:
      j = lane - bval;
      ok = j >= max_lane;
      break;
    case kShflDown:
      j = lane + bval;
      ok = j <= max_lane;
      break;
    case kShflBfly:
      j = lane ^ bval;
      ok = j <= max_lane;
      break;
    default:
      j = min_lane | (bval & ~segmask);
      ok = j <= max_lane;
      break;
  }
  const std::uint64_t r = ws.slots[ok ? j : lane];
  syncwarp_impl(w, f, mask, "a warp shuffle");
  return r;
}

const std::uint64_t* warp_exchange(unsigned mask, std::uint64_t v) {
  Worker* w = tl_worker;
  Fiber* f = w->cur;
  WarpState& ws = w->warps[f->warp];
  ws.slots[f->lane] = v;
  syncwarp_impl(w, f, mask, "a warp reduction");
  return ws.slots;
}

unsigned lane_id() { return tl_worker->cur->lane; }

unsigned ballot(unsigned mask, int pred, unsigned* participants) {
  Worker* w = tl_worker;
  Fiber* f = w->cur;
  WarpState& ws = w->warps[f->warp];
  ws.slots[f->lane] = pred != 0;
  syncwarp_impl(w, f, mask, "a warp vote");
  const std::uint32_t need = (mask | (1u << f->lane)) & ws.exist;
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((need >> l & 1u) && ws.slots[l]) bits |= 1u << l;
  syncwarp_impl(w, f, mask, "a warp vote");
  if (participants) *participants = need;
  return bits;
}

}  // namespace detail

// ------------------------------------------------------------------------------------------
// Running one block
// ------------------------------------------------------------------------------------------
static std::uint64_t splitmix64(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static std::size_t g_stack_bytes_default = 64 * 1024;

// Makes sure the arena holds `n` stacks of the configured size. Returns false with a message
// when memory cannot be mapped.
static bool ensure_arena(Worker* w, unsigned n, std::size_t stack_bytes, std::string& err) {
  if (w->arena && w->cap >= n && w->stack_bytes == stack_bytes) return true;
  if (w->arena) {
    munmap(w->arena, w->arena_bytes);
    w->arena = nullptr;
  }
  unsigned cap = 32;
  while (cap < n) cap *= 2;
  const std::size_t pg = page_size();
  const std::size_t slot = pg + stack_bytes;
  const std::size_t bytes = slot * cap;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    err = format("cuemu: cannot map %zu bytes of fiber stacks: %s", bytes, std::strerror(errno));
    return false;
  }
  char* base = static_cast<char*>(p);
  static std::atomic<bool> warned{false};
  for (unsigned i = 0; i < cap; ++i) {
    if (mprotect(base + i * slot, pg, PROT_NONE) != 0) {
      // Out of memory mappings (vm.max_map_count): run without the remaining guard pages.
      if (!warned.exchange(true))
        std::fprintf(stderr, "cuemu: warning: cannot protect fiber stack guard pages (%s); stack overflows "
                             "will not be caught\n", std::strerror(errno));
      break;
    }
  }
  w->arena = base;
  w->arena_bytes = bytes;
  w->slot_bytes = slot;
  w->stack_bytes = stack_bytes;
  w->cap = cap;
  w->arena_dirty = false;
  w->fibers.assign(cap, Fiber{});
  for (unsigned i = 0; i < cap; ++i) {
    Fiber& f = w->fibers[i];
    f.stack_lo = base + i * slot + pg;
    // Cache colouring: stagger the stack tops by (i mod 61) * 80 bytes.
    std::uintptr_t top = reinterpret_cast<std::uintptr_t>(f.stack_lo + stack_bytes) - (i % 61) * 80;
    f.top = reinterpret_cast<char*>(top & ~static_cast<std::uintptr_t>(15));
  }
  return true;
}

static void init_fiber_context(Worker* w, Fiber* f) {
#if CUEMU_ASAN
  // Frames that never returned (the exit path of finished fibers, or whole stacks of fibers
  // abandoned at a deadlock) leave poisoned shadow behind; clear what the new fiber will use.
  if (w->arena_dirty)
    __asan_unpoison_memory_region(f->stack_lo, w->stack_bytes);
  else
    __asan_unpoison_memory_region(f->top - 4096, 4096);
#endif
  (void)w;  // used only under ASan
#if CUEMU_ASM_SWITCH
  // Frame popped by cuemu_ctx_switch: [mxcsr|fpucw][r15][r14][r13][r12][rbx][rbp][ret]
  // followed by a zero "return address" slot; after `ret` rsp is 16-byte aligned.
  std::uint64_t* sp = reinterpret_cast<std::uint64_t*>(f->top - 80);
  std::uint32_t mxcsr, fpucw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = static_cast<std::uint64_t>(mxcsr) | (static_cast<std::uint64_t>(fpucw & 0xffffu) << 32);
  sp[1] = 0;                                             // r15
  sp[2] = 0;                                             // r14
  sp[3] = reinterpret_cast<std::uint64_t>(f);            // r13: argument
  sp[4] = reinterpret_cast<std::uint64_t>(&fiber_main);  // r12: function
  sp[5] = 0;                                             // rbx
  sp[6] = 0;                                             // rbp
  sp[7] = reinterpret_cast<std::uint64_t>(&cuemu_fiber_entry);
  sp[8] = 0;
  sp[9] = 0;
  f->ctx.sp = sp;
#else
  getcontext(&f->ctx.uc);
  f->ctx.uc.uc_stack.ss_sp = f->stack_lo;
  f->ctx.uc.uc_stack.ss_size = static_cast<std::size_t>(f->top - 64 - f->stack_lo);
  f->ctx.uc.uc_link = nullptr;
  makecontext(&f->ctx.uc, fiber_entry_ucontext, 0);
#endif
}

// Runs block number `b` (already mapped to a launch-order index). Returns false on error.
static bool run_block(Worker* w, unsigned long long b) {
  Launch* L = w->launch;
  const unsigned n = L->nthreads;
  blockIdx.x = static_cast<unsigned>(b % L->grid.x);
  blockIdx.y = static_cast<unsigned>((b / L->grid.x) % L->grid.y);
  blockIdx.z = static_cast<unsigned>(b / (static_cast<unsigned long long>(L->grid.x) * L->grid.y));

  // Fibers: fiber i is CUDA thread i (linear id) on stack slot i.
  const unsigned bx = L->block.x, bxy = L->block.x * L->block.y;
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = w->fibers[i];
    f.tid = uint3{i % bx, (i / bx) % L->block.y, i / bxy};
    f.linear = i;
    f.lane = i & 31u;
    f.warp = i >> 5;
    f.want = 0;
    f.state = kRunnable;
    init_fiber_context(w, &f);
  }
  w->arena_dirty = false;
  const unsigned nwarps = (n + 31) / 32;
  for (unsigned k = 0; k < nwarps; ++k) {
    WarpState& ws = w->warps[k];
    const unsigned lanes = std::min(32u, n - k * 32);
    ws.exist = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    ws.arrived = 0;
    ws.nwait = 0;
    for (unsigned l = 0; l < 32; ++l) {
      ws.lanes[l] = l < lanes ? &w->fibers[k * 32 + l] : nullptr;
      ws.slots[l] = 0;
    }
  }
  w->nthreads = n;
  w->bar_count = 0;
  w->bar_acc = 0;
  w->bar_result = 0;
  w->exited = 0;
  w->block_err.clear();

  // Start order.
  std::vector<unsigned>& ord = w->order;
  ord.resize(n);
  for (unsigned i = 0; i < n; ++i) ord[i] = (L->order == 1) ? n - 1 - i : i;
  if (L->order == 2) {
    std::uint64_t s = L->seed ^ (b * 0xd1b54a32d192ed03ull) ^ 0x5851f42d4c957f2dull;
    for (unsigned i = n - 1; i > 0; --i) std::swap(ord[i], ord[splitmix64(s) % (i + 1)]);
  }
  Fiber* first = &w->fibers[ord[0]];
  first->next = first->prev = first;
  for (unsigned i = 1; i < n; ++i) insert_after(&w->fibers[ord[i - 1]], &w->fibers[ord[i]]);

  w->cur = first;
  threadIdx = first->tid;
#if CUEMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, first->stack_lo, w->stack_bytes);
  raw_switch(&w->sched, &first->ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  raw_switch(&w->sched, &first->ctx);
#endif

  if (!w->block_err.empty()) {
    if (w->exited != n) w->arena_dirty = true;
    L->fail(w->block_err);
    return false;
  }
  if (w->exited != n) {
    unsigned at_bar = 0, at_warp = 0;
    for (unsigned i = 0; i < n; ++i) {
      at_bar += w->fibers[i].state == kAtBarrier;
      at_warp += w->fibers[i].state == kAtWarp;
    }
    // The stuck fibers are abandoned; their stacks are reused by the next block.
    w->arena_dirty = true;
    L->fail(format("deadlock in %s: %u threads at __syncthreads, %u at a warp sync, %u exited",
                   block_name(w).c_str(), at_bar, at_warp, w->exited));
    return false;
  }
  return true;
}

static void run_launch(Worker* w, Launch* L) {
  w->launch = L;
  blockDim = L->block;
  gridDim = L->grid;
  // Dynamic shared memory: exactly the requested size (so ASan catches overruns), reused.
  if (!w->dyn_smem || w->dyn_smem_bytes != L->smem) {
    ::operator delete(w->dyn_smem, std::align_val_t(64));
    w->dyn_smem = ::operator new(L->smem, std::align_val_t(64));
    w->dyn_smem_bytes = L->smem;
  }
  detail::tl_dynamic_smem = w->dyn_smem;
  std::string err;
  if (!ensure_arena(w, L->nthreads, g_stack_bytes_default, err)) {
    L->fail(err);
    return;
  }
  const unsigned nwarps = (L->nthreads + 31) / 32;
  if (w->warps.size() < nwarps) w->warps.resize(nwarps);
  if (w->bar_waiters.size() < L->nthreads) w->bar_waiters.resize(L->nthreads);
  for (;;) {
    if (L->failed.load(std::memory_order_relaxed)) break;
    const unsigned long long i = L->next_block.fetch_add(1, std::memory_order_relaxed);
    if (i >= L->nblocks) break;
    unsigned long long b = i;
    if (L->block_perm)
      b = L->block_perm[i];
    else if (L->order == 1)
      b = L->nblocks - 1 - i;
    if (!run_block(w, b)) break;
  }
  w->launch = nullptr;
}

// ------------------------------------------------------------------------------------------
// Worker pool
// ------------------------------------------------------------------------------------------
struct Pool {
  std::mutex mu;
  std::condition_variable cv_work, cv_done;
  std::vector<std::thread> threads;
  std::vector<Worker*> workers;
  unsigned long long generation = 0;
  Launch* current = nullptr;
  int remaining = 0;
  bool stop = false;
};

static Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: workers may outlive static destructors
  return *p;
}

static void worker_main(Worker* w) {
  tl_worker = w;
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void* addr = nullptr;
    std::size_t size = 0;
    pthread_attr_getstack(&attr, &addr, &size);
    w->os_stack_lo = addr;
    w->os_stack_size = size;
    pthread_attr_destroy(&attr);
  }
  Pool& P = pool();
  unsigned long long seen = 0;
  for (;;) {
    Launch* L;
    {
      std::unique_lock<std::mutex> g(P.mu);
      P.cv_work.wait(g, [&] { return P.stop || P.generation != seen; });
      if (P.stop) return;
      seen = P.generation;
      L = P.current;
      // Decide under the lock: the Launch lives on the launching thread's stack, and once this
      // launch is over (it may not wait for a non-participant) the next launch reuses that
      // memory. Reading `participants` after unlocking let a late worker join the next launch
      // under the old generation, decrement its counter twice, and hang or corrupt it.
      if (L && w->index >= L->participants) L = nullptr;
    }
    // L is null when this worker takes no part in the launch, or slept through all of it.
    if (!L) continue;
    run_launch(w, L);
    std::lock_guard<std::mutex> g(P.mu);
    if (--P.remaining == 0) P.cv_done.notify_one();
  }
}

struct Config {
  std::mutex launch_mu;  // serializes launches and configuration changes
  bool env_read = false;
  int order = 0;
  unsigned long long seed = 0;
  int workers = 0;  // 0: hardware concurrency
  std::size_t max_smem = 227 * 1024;
};

static Config& config() {
  static Config* c = new Config;
  return *c;
}

static void read_env(Config& c) {
  if (c.env_read) return;
  c.env_read = true;
  if (const char* o = std::getenv("CUEMU_ORDER")) {
    std::string s(o);
    std::string head = s.substr(0, s.find(':'));
    if (head == "desc" || head == "descending" || head == "1") c.order = 1;
    if (head == "shuffle" || head == "shuffled" || head == "2") c.order = 2;
    if (s.find(':') != std::string::npos) c.seed = std::strtoull(s.c_str() + s.find(':') + 1, nullptr, 0);
  }
  if (const char* n = std::getenv("CUEMU_WORKERS")) c.workers = std::atoi(n);
  if (const char* k = std::getenv("CUEMU_STACK_KB")) {
    long kb = std::atol(k);
    if (kb > 0) g_stack_bytes_default = static_cast<std::size_t>(kb) * 1024;
  }
}

static void stop_pool() {
  Pool& P = pool();
  {
    std::lock_guard<std::mutex> g(P.mu);
    P.stop = true;
  }
  P.cv_work.notify_all();
  for (std::thread& t : P.threads) t.join();
  for (Worker* w : P.workers) delete w;
  P.threads.clear();
  P.workers.clear();
  P.stop = false;
}

static void ensure_pool(int n) {
  Pool& P = pool();
  if (static_cast<int>(P.threads.size()) == n) return;
  stop_pool();
  P.generation = 0;
  for (int i = 0; i < n; ++i) {
    Worker* w = new Worker;
    w->index = i;
    P.workers.push_back(w);
    P.threads.emplace_back(worker_main, w);
  }
}

static int fail_launch(char* err, std::size_t err_len, int code, const std::string& msg) {
  if (err && err_len > 0) {
    std::size_t k = std::min(err_len - 1, msg.size());
    std::memcpy(err, msg.data(), k);
    err[k] = '\0';
  }
  return code;
}

static const Entry* find_kernel(const char* name) {
  for (const Entry& e : registry())
    if (std::strcmp(e.name, name) == 0) return &e;
  return nullptr;
}

}  // namespace cuemu

// ------------------------------------------------------------------------------------------
// C API
// ------------------------------------------------------------------------------------------
using namespace cuemu;

extern "C" int cuemu_launch(const char* name, const unsigned grid[3], const unsigned block[3], size_t dynamic_smem,
                            void** args, char* err, size_t err_len) {
  if (!name) return fail_launch(err, err_len, 1, "cuemu_launch: kernel name is null");
  const Entry* k = find_kernel(name);
  if (!k) {
    return fail_launch(err, err_len, 1,
                       format("cuemu_launch: unknown kernel '%s' (%d kernels registered; %s)", name,
                              static_cast<int>(registry().size()),
                              cuemu_harness_anchor ? "harness linked" : "no harness"));
  }
  if (!grid || !block) return fail_launch(err, err_len, 1, format("cuemu_launch(%s): grid or block is null", name));
  const dim3 g(grid[0], grid[1], grid[2]), b(block[0], block[1], block[2]);
  if (g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0)
    return fail_launch(err, err_len, 1,
                       format("cuemu_launch(%s): zero-sized grid (%u,%u,%u) or block (%u,%u,%u)", name, g.x, g.y,
                              g.z, b.x, b.y, b.z));
  const unsigned long long nthreads = static_cast<unsigned long long>(b.x) * b.y * b.z;
  if (nthreads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
    return fail_launch(err, err_len, 1,
                       format("cuemu_launch(%s): block (%u,%u,%u) has %llu threads; the limits are 1024 threads, "
                              "x,y <= 1024, z <= 64",
                              name, b.x, b.y, b.z, nthreads));
  if (g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
    return fail_launch(err, err_len, 1,
                       format("cuemu_launch(%s): grid (%u,%u,%u) exceeds the limits (2^31-1, 65535, 65535)", name,
                              g.x, g.y, g.z));
  if (k->num_params > 0 && !args)
    return fail_launch(err, err_len, 1,
                       format("cuemu_launch(%s): args is null but the kernel takes %d parameters", name,
                              k->num_params));
  for (int i = 0; i < k->num_params; ++i)
    if (!args[i]) return fail_launch(err, err_len, 1, format("cuemu_launch(%s): args[%d] is null", name, i));

  Config& C = config();
  std::lock_guard<std::mutex> lock(C.launch_mu);
  read_env(C);
  if (dynamic_smem > C.max_smem)
    return fail_launch(err, err_len, 1,
                       format("cuemu_launch(%s): %zu bytes of dynamic shared memory requested, the maximum is %zu",
                              name, dynamic_smem, C.max_smem));

  Launch L;
  L.kernel = k;
  L.args = args;
  L.grid = g;
  L.block = b;
  L.smem = dynamic_smem;
  L.nblocks = static_cast<unsigned long long>(g.x) * g.y * g.z;
  L.nthreads = static_cast<unsigned>(nthreads);
  L.order = C.order;
  L.seed = C.seed;
  std::vector<unsigned> perm;
  if (C.order == 2 && L.nblocks > 1 && L.nblocks <= (1u << 22)) {
    perm.resize(L.nblocks);
    for (unsigned i = 0; i < perm.size(); ++i) perm[i] = i;
    std::uint64_t s = C.seed ^ 0x2545f4914f6cdd1dull;
    for (std::size_t i = perm.size() - 1; i > 0; --i) std::swap(perm[i], perm[splitmix64(s) % (i + 1)]);
    L.block_perm = perm.data();
  }
  int nworkers = C.workers > 0 ? C.workers : static_cast<int>(std::thread::hardware_concurrency());
  if (nworkers <= 0) nworkers = 1;
  ensure_pool(nworkers);
  L.participants = static_cast<int>(std::min<unsigned long long>(L.nblocks, static_cast<unsigned long long>(nworkers)));

  Pool& P = pool();
  {
    std::unique_lock<std::mutex> gl(P.mu);
    P.current = &L;
    P.remaining = L.participants;
    ++P.generation;
    P.cv_work.notify_all();
    P.cv_done.wait(gl, [&] { return P.remaining == 0; });
    P.current = nullptr;
  }
  if (L.failed.load()) return fail_launch(err, err_len, 2, L.err);
  if (err && err_len > 0) err[0] = '\0';
  return 0;
}

extern "C" void cuemu_set_order(int order, unsigned long long seed) {
  Config& C = config();
  std::lock_guard<std::mutex> lock(C.launch_mu);
  read_env(C);
  C.order = (order == 1 || order == 2) ? order : 0;
  C.seed = seed;
}

extern "C" void cuemu_set_workers(int n) {
  Config& C = config();
  std::lock_guard<std::mutex> lock(C.launch_mu);
  read_env(C);
  C.workers = n > 0 ? n : 0;
}

extern "C" void cuemu_set_stack_size(size_t bytes) {
  Config& C = config();
  std::lock_guard<std::mutex> lock(C.launch_mu);
  read_env(C);
  if (bytes == 0) bytes = 64 * 1024;
  bytes = std::max<std::size_t>(bytes, 16 * 1024);
  const std::size_t pg = page_size();
  g_stack_bytes_default = (bytes + pg - 1) / pg * pg;
}

extern "C" void cuemu_set_max_dynamic_smem(size_t bytes) {
  Config& C = config();
  std::lock_guard<std::mutex> lock(C.launch_mu);
  C.max_smem = bytes ? bytes : 227 * 1024;
}

extern "C" int cuemu_kernel_count(void) { return static_cast<int>(registry().size()); }

extern "C" const char* cuemu_kernel_name(int i) {
  if (i < 0 || i >= static_cast<int>(registry().size())) return nullptr;
  return registry()[static_cast<std::size_t>(i)].name;
}

extern "C" int cuemu_kernel_num_params(const char* name) {
  if (!name) return -1;
  const Entry* e = find_kernel(name);
  return e ? e->num_params : -1;
}
