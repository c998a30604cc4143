// run_shim_tests.cpp -- standalone tests of the kernel emulator. Launches the kernels of
// shim_test_kernels.cu through the C API (cuemu_launch), exactly as Rust will, and checks them
// against plain loops in several thread orders and worker counts. Prints PASS/FAIL lines and a
// few timings; exits nonzero on failure. Build and run: cuemu/tests/build_and_run.sh
#include "cuemu_api.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

int g_failures = 0;
int g_checks = 0;
std::string g_config;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) ++g_failures;
  std::printf("%s  %s%s\n", ok ? "PASS" : "FAIL", what.c_str(), g_config.c_str());
}

struct Dim {
  unsigned v[3];
};

int launch(const char* name, Dim grid, Dim block, size_t smem, std::vector<void*> args, std::string* err = nullptr) {
  char buf[512];
  buf[0] = '\0';
  int rc = cuemu_launch(name, grid.v, block.v, smem, args.empty() ? nullptr : args.data(), buf, sizeof buf);
  if (err) *err = buf;
  if (rc != 0 && !err) std::printf("      launch of %s failed: %s\n", name, buf);
  return rc;
}

bool close(float a, float b, float rel = 1e-4f, float abs_tol = 1e-3f) {
  return std::fabs(a - b) <= abs_tol + rel * std::fabs(b);
}

std::vector<float> ramp(int n) {
  std::vector<float> x(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) x[static_cast<size_t>(i)] = static_cast<float>((i * 37) % 101) * 0.25f - 12.0f;
  return x;
}

void test_block_reduce(unsigned bs) {
  int n = 5000;
  std::vector<float> x = ramp(n);
  unsigned nb = (static_cast<unsigned>(n) + bs - 1) / bs;
  std::vector<float> out(nb, -1.0f);
  const float* px = x.data();
  float* po = out.data();
  int rc = launch("cuemu_test_block_reduce", {{nb, 1, 1}}, {{bs, 1, 1}}, 0, {&px, &po, &n});
  bool ok = rc == 0;
  for (unsigned b = 0; b < nb && ok; ++b) {
    float ref = 0;
    for (unsigned i = b * bs; i < std::min<unsigned>((b + 1) * bs, static_cast<unsigned>(n)); ++i) ref += x[i];
    ok = close(out[b], ref);
  }
  check(ok, "block reduce, " + std::to_string(bs) + " threads");
}

void test_warp_reduce(unsigned bs) {
  int n = 7001;
  std::vector<float> x = ramp(n);
  unsigned nb = (static_cast<unsigned>(n) + bs - 1) / bs;
  std::vector<float> out(nb, -1.0f);
  const float* px = x.data();
  float* po = out.data();
  int rc = launch("cuemu_test_warp_reduce", {{nb, 1, 1}}, {{bs, 1, 1}}, 0, {&px, &po, &n});
  bool ok = rc == 0;
  for (unsigned b = 0; b < nb && ok; ++b) {
    float ref = 0;
    for (unsigned i = b * bs; i < std::min<unsigned>((b + 1) * bs, static_cast<unsigned>(n)); ++i) ref += x[i];
    ok = close(out[b], ref);
  }
  check(ok, "warp reduce (shfl_xor, shfl_down in if (warp == 0)), " + std::to_string(bs) + " threads");
}

void test_shuffles() {
  bool ok = true;
  const int nt = 64;
  for (int width : {32, 16, 8, 4, 1}) {
    for (int delta : {0, 1, 3, 9}) {
      for (int src : {0, 5, 37, -1}) {
        std::vector<int> out(4 * nt, -1);
        int* po = out.data();
        int s = src, d = delta, w = width;
        if (launch("cuemu_test_shuffles", {{1, 1, 1}}, {{nt, 1, 1}}, 0, {&po, &s, &d, &w}) != 0) {
          ok = false;
          continue;
        }
        for (int t = 0; t < nt; ++t) {
          const int lane = t % 32, base = t - lane;  // warp base
          const int seg = lane / width * width;
          const int idx = seg + ((src % width) + width) % width;
          const int up = (lane % width) >= delta ? lane - delta : lane;
          const int down = (lane % width) + delta < width ? lane + delta : lane;
          const int x = lane ^ delta;
          const int xr = x < seg + width ? x : lane;  // later groups return own value
          const int ref[4] = {idx, up, down, xr};
          for (int k = 0; k < 4; ++k) {
            if (out[static_cast<size_t>(4 * t + k)] != 1000 + base + ref[k]) {
              if (ok)
                std::printf("      shuffle mismatch: width %d delta %d src %d thread %d op %d: got %d want %d\n",
                            width, delta, src, t, k, out[static_cast<size_t>(4 * t + k)], 1000 + base + ref[k]);
              ok = false;
            }
          }
        }
      }
    }
  }
  check(ok, "shfl idx/up/down/xor with widths 32..1");
}

void test_ballot() {
  const unsigned nt = 128;
  std::vector<int> pred(nt);
  for (unsigned t = 0; t < nt; ++t) pred[t] = (t / 32 == 2) ? 1 : (t / 32 == 3 ? 0 : ((t * 7) % 5 == 1));
  std::vector<unsigned> out(3 * nt / 32, 99);
  const int* pp = pred.data();
  unsigned* po = out.data();
  bool ok = launch("cuemu_test_ballot", {{1, 1, 1}}, {{nt, 1, 1}}, 0, {&pp, &po}) == 0;
  for (unsigned w = 0; w < nt / 32 && ok; ++w) {
    unsigned b = 0;
    for (unsigned l = 0; l < 32; ++l)
      if (pred[w * 32 + l]) b |= 1u << l;
    ok = out[3 * w] == b && out[3 * w + 1] == (b != 0) && out[3 * w + 2] == (b == 0xffffffffu);
  }
  check(ok, "ballot/any/all");
}

void test_atomics() {
  int n = 10000;
  std::vector<float> x(static_cast<size_t>(n));
  double ref = 0;
  for (int i = 0; i < n; ++i) ref += (x[static_cast<size_t>(i)] = static_cast<float>(i % 7));
  float sum = 0;
  int count = 0, maxv = -1;
  unsigned minv = 0xffffffffu;
  const float* px = x.data();
  float* ps = &sum;
  int* pc = &count;
  int* pm = &maxv;
  unsigned* pn = &minv;
  bool ok = launch("cuemu_test_atomics", {{40, 1, 1}}, {{256, 1, 1}}, 0, {&px, &n, &ps, &pc, &pm, &pn}) == 0;
  ok = ok && sum == static_cast<float>(ref) && count == n && maxv == n - 1 && minv == 5u;
  check(ok, "atomicAdd float/int, atomicMax, atomicMin across 40 blocks");
}

void test_dyn_smem() {
  int n = 1000;
  std::vector<float> x = ramp(n), out(static_cast<size_t>(n), 0.0f);
  const float* px = x.data();
  float* po = out.data();
  const unsigned bs = 128, nb = (static_cast<unsigned>(n) + bs - 1) / bs;
  bool ok = launch("cuemu_test_dyn_smem", {{nb, 1, 1}}, {{bs, 1, 1}}, bs * sizeof(float), {&px, &po, &n}) == 0;
  for (unsigned b = 0; b < nb && ok; ++b)
    for (unsigned t = 0; t < bs; ++t) {
      unsigned i = b * bs + t, j = b * bs + (bs - 1 - t);
      if (j < static_cast<unsigned>(n) && i < static_cast<unsigned>(n) && out[j] != x[i]) ok = false;
    }
  check(ok, "dynamic shared memory (MOCSE_DYNAMIC_SMEM)");
}

void test_index3d() {
  const Dim grid{{3, 2, 2}}, block{{4, 3, 2}};
  const unsigned total = 3 * 2 * 2 * 4 * 3 * 2;
  std::vector<unsigned> out(total, 0xdeadbeefu);
  unsigned* po = out.data();
  bool ok = launch("cuemu_test_index3d", grid, block, 0, {&po}) == 0;
  unsigned g = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 2; ++tz)
          for (unsigned ty = 0; ty < 3; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx, ++g)
              ok = ok && out[g] == ((bz << 24) | (by << 20) | (bx << 16) | (tz << 8) | (ty << 4) | tx);
  check(ok, "2-D/3-D grid and block indexing");
}

void test_sync_count() {
  bool ok = true;
  for (int variant = 0; variant < 3; ++variant) {
    const unsigned nt = 100;  // partial last warp
    std::vector<int> pred(nt);
    int ref = 0;
    for (unsigned t = 0; t < nt; ++t) ref += (pred[t] = variant == 0 ? (t % 3 == 0) : (variant == 1 ? 1 : 0));
    std::vector<int> out(3, -1);
    const int* pp = pred.data();
    int* po = out.data();
    ok = ok && launch("cuemu_test_sync_count", {{1, 1, 1}}, {{nt, 1, 1}}, 0, {&pp, &po}) == 0;
    ok = ok && out[0] == ref && out[1] == (ref == static_cast<int>(nt)) && out[2] == (ref > 0);
  }
  check(ok, "__syncthreads_count/and/or, 100 threads");
}

void test_float2int() {
  std::vector<int> out(7, 12345);
  int* po = out.data();
  bool ok = launch("cuemu_test_float2int", {{1, 1, 1}}, {{32, 1, 1}}, 0, {&po}) == 0;
  ok = ok && out == std::vector<int>{0, 2147483647, -2147483647 - 1, 2, 0, 0, 0};
  check(ok, "__float2int/__float2uint: NaN gives 0, out of range saturates (as on a GPU)");
}

void test_half() {
  int n = 300;
  std::vector<float> x(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) x[static_cast<size_t>(i)] = (static_cast<float>(i) - 150.0f) * 0.0137f;
  x[0] = 1.00390625f;   // 1 + 2^-8: bf16 tie -> even (1.0)
  x[1] = 1.01171875f;   // 1 + 3 * 2^-8: bf16 tie -> even (1 + 2^-6)
  x[2] = 65504.0f;      // largest half
  std::vector<float> out(static_cast<size_t>(3 * n));
  const float* px = x.data();
  float* po = out.data();
  bool ok = launch("cuemu_test_half", {{2, 1, 1}}, {{256, 1, 1}}, 0, {&px, &po, &n}) == 0;
  for (int i = 0; i < n && ok; ++i) {
    const float h = static_cast<float>(static_cast<_Float16>(x[static_cast<size_t>(i)]));
    const float h3 = static_cast<float>(static_cast<_Float16>(static_cast<float>(static_cast<_Float16>(h * 2.0f)) + h));
    const float b = out[static_cast<size_t>(3 * i + 2)];
    unsigned bits;
    std::memcpy(&bits, &b, 4);
    ok = out[static_cast<size_t>(3 * i)] == h && out[static_cast<size_t>(3 * i + 1)] == h3 && (bits & 0xffffu) == 0 &&
         std::fabs(b - x[static_cast<size_t>(i)]) <= std::fabs(x[static_cast<size_t>(i)]) * (1.0f / 256.0f);
  }
  ok = ok && out[2] == 1.0f && out[5] == 1.015625f && out[6] == 65504.0f;
  check(ok, "__half and __nv_bfloat16 conversions and arithmetic");
}

// A missing barrier between a write and a read of s[255 - t]: wrong in every order, and differently so.
void test_race() {
  std::vector<float> asc(256), desc(256);
  float* pa = asc.data();
  float* pd = desc.data();
  static int seed = 1;
  int s1 = ++seed, s2 = ++seed;
  cuemu_set_order(0, 0);
  bool ok = launch("cuemu_test_missing_sync", {{1, 1, 1}}, {{256, 1, 1}}, 0, {&pa, &s1}) == 0;
  cuemu_set_order(1, 0);
  ok = ok && launch("cuemu_test_missing_sync", {{1, 1, 1}}, {{256, 1, 1}}, 0, {&pd, &s2}) == 0;
  int wrong_a = 0, wrong_d = 0, differ = 0;
  for (unsigned t = 0; t < 256; ++t) {
    wrong_a += asc[t] != static_cast<float>((255 - t) * 7 + static_cast<unsigned>(s1));
    wrong_d += desc[t] != static_cast<float>((255 - t) * 7 + static_cast<unsigned>(s2));
    differ += (asc[t] == static_cast<float>((255 - t) * 7 + static_cast<unsigned>(s1))) !=
              (desc[t] == static_cast<float>((255 - t) * 7 + static_cast<unsigned>(s2)));
  }
  std::printf("      missing __syncthreads: %d/256 wrong ascending, %d/256 wrong descending\n", wrong_a, wrong_d);
  check(ok && wrong_a > 0 && wrong_d > 0 && differ > 0, "missing __syncthreads is caught, ascending vs descending differ");
}

void test_deadlocks() {
  std::vector<float> out(64);
  float* po = out.data();
  std::string err;
  int rc = launch("cuemu_test_deadlock", {{1, 1, 1}}, {{32, 1, 1}}, 0, {&po}, &err);
  const char* want = "deadlock in kernel cuemu_test_deadlock, block (0,0,0): 16 threads at __syncthreads, 0 at a warp "
                     "sync, 16 exited";
  check(rc != 0 && err.find(want) != std::string::npos, "deadlock at __syncthreads is reported: \"" + err + "\"");

  rc = launch("cuemu_test_deadlock_warp", {{1, 1, 1}}, {{32, 1, 1}}, 0, {&po}, &err);
  check(rc != 0 && err.find("0 threads at __syncthreads, 16 at a warp sync, 16 exited") != std::string::npos &&
            err.find("cuemu_test_deadlock_warp") != std::string::npos,
        "deadlock at __syncwarp is reported: \"" + err + "\"");

  rc = launch("cuemu_test_deadlock", {{8, 2, 1}}, {{64, 1, 1}}, 0, {&po}, &err);
  check(rc != 0 && err.find("deadlock in kernel cuemu_test_deadlock, block (") != std::string::npos,
        "deadlock in a multi-block launch is reported");
  // The next launches (reusing the arenas with abandoned fibers) still work.
  test_block_reduce(1024);
  test_warp_reduce(256);
}

void test_limits() {
  std::vector<float> out(16);
  float* po = out.data();
  int n = 0;
  const float* px = out.data();
  std::string err;
  bool ok = launch("cuemu_test_block_reduce", {{1, 1, 1}}, {{1025, 1, 1}}, 0, {&px, &po, &n}, &err) != 0 &&
            err.find("1025") != std::string::npos;
  check(ok, "block of 1025 threads refused: \"" + err + "\"");
  ok = launch("cuemu_test_block_reduce", {{1, 1, 1}}, {{32, 32, 2}}, 0, {&px, &po, &n}, &err) != 0;
  check(ok, "block of 32x32x2 threads refused");
  ok = launch("cuemu_test_block_reduce", {{0, 1, 1}}, {{32, 1, 1}}, 0, {&px, &po, &n}, &err) != 0 &&
       err.find("zero-sized") != std::string::npos;
  check(ok, "zero-sized grid refused: \"" + err + "\"");
  ok = launch("cuemu_test_dyn_smem", {{1, 1, 1}}, {{32, 1, 1}}, 300 * 1024, {&px, &po, &n}, &err) != 0 &&
       err.find("dynamic shared memory") != std::string::npos;
  check(ok, "300 KiB of dynamic shared memory refused: \"" + err + "\"");
  ok = launch("no_such_kernel", {{1, 1, 1}}, {{32, 1, 1}}, 0, {}, &err) != 0 &&
       err.find("unknown kernel 'no_such_kernel'") != std::string::npos;
  check(ok, "unknown kernel refused: \"" + err + "\"");
  ok = launch("cuemu_test_block_reduce", {{1, 1, 1}}, {{32, 1, 1}}, 0, {}, &err) != 0;
  check(ok, "null args refused: \"" + err + "\"");
  ok = cuemu_kernel_num_params("cuemu_test_atomics") == 6 && cuemu_kernel_num_params("cuemu_test_noop") == 0 &&
       cuemu_kernel_num_params("nope") == -1;
  check(ok, "cuemu_kernel_num_params");
  // A tiny error buffer is NUL-terminated.
  char small[8];
  std::memset(small, 'x', sizeof small);
  unsigned g[3] = {1, 1, 1}, b[3] = {1, 1, 1};
  ok = cuemu_launch("no_such_kernel", g, b, 0, nullptr, small, sizeof small) != 0 && small[7] == '\0';
  check(ok, "error message truncated and NUL-terminated");
}

// Several host threads launching at once (the Rust test harness does this): launches are
// serialized and each gets its own correct result.
void test_concurrent_launches() {
  const int nthreads = 3, reps = 20;
  std::vector<int> bad(nthreads, 0);
  std::vector<std::thread> threads;
  for (int h = 0; h < nthreads; ++h) {
    threads.emplace_back([h, &bad] {
      int n = 3000 + 100 * h;
      std::vector<float> x(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) x[static_cast<size_t>(i)] = static_cast<float>((i + h) % 13);
      const unsigned bs = 256, nb = (static_cast<unsigned>(n) + bs - 1) / bs;
      std::vector<float> out(nb);
      const float* px = x.data();
      float* po = out.data();
      for (int r = 0; r < reps; ++r) {
        std::fill(out.begin(), out.end(), -1.0f);
        void* args[] = {&px, &po, &n};
        unsigned g[3] = {nb, 1, 1}, b[3] = {bs, 1, 1};
        char err[256];
        if (cuemu_launch(r % 2 ? "cuemu_test_block_reduce" : "cuemu_test_warp_reduce", g, b, 0, args, err, sizeof err)) {
          ++bad[static_cast<size_t>(h)];
          continue;
        }
        for (unsigned k = 0; k < nb; ++k) {
          float ref = 0;
          for (unsigned i = k * bs; i < std::min<unsigned>((k + 1) * bs, static_cast<unsigned>(n)); ++i) ref += x[i];
          if (out[k] != ref) ++bad[static_cast<size_t>(h)];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  int total = 0;
  for (int v : bad) total += v;
  check(total == 0, "concurrent launches from 3 host threads");
}

void functional_suite() {
  test_block_reduce(256);
  test_block_reduce(1024);
  test_block_reduce(32);
  test_warp_reduce(256);
  test_warp_reduce(1024);
  test_shuffles();
  test_ballot();
  test_atomics();
  test_dyn_smem();
  test_index3d();
  test_sync_count();
  test_half();
  test_float2int();
}

double seconds_of(const char* name, Dim grid, Dim block, std::vector<void*> args, int reps) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    launch(name, grid, block, 0, args);
    auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}

void benchmarks() {
  std::vector<float> out(64);
  float* po = out.data();
  cuemu_set_order(0, 0);
  cuemu_set_workers(1);
  for (unsigned bs : {32u, 256u, 1024u}) {
    int iters = 1000;
    double t = seconds_of("cuemu_test_barrier_loop", {{1, 1, 1}}, {{bs, 1, 1}}, {&iters, &po}, 3);
    std::printf("BENCH __syncthreads, block %4u: %6.1f ns per thread per barrier (%.1f us per block-wide barrier)\n",
                bs, t * 1e9 / (iters * bs), t * 1e6 / iters);
  }
  {
    int iters = 1000;
    double t = seconds_of("cuemu_test_shfl_loop", {{1, 1, 1}}, {{256, 1, 1}}, {&iters, &po}, 3);
    std::printf("BENCH __shfl_xor_sync, block 256: %6.1f ns per lane per shuffle\n", t * 1e9 / (iters * 256));
  }
  for (int workers : {1, 2}) {
    cuemu_set_workers(workers);
    seconds_of("cuemu_test_noop", {{64, 1, 1}}, {{1024, 1, 1}}, {}, 2);  // warm the arenas
    double t1 = seconds_of("cuemu_test_noop", {{1, 1, 1}}, {{1024, 1, 1}}, {}, 10);
    double t64 = seconds_of("cuemu_test_noop", {{64, 1, 1}}, {{1024, 1, 1}}, {}, 10);
    double t0 = seconds_of("cuemu_test_noop", {{1, 1, 1}}, {{1, 1, 1}}, {}, 20);
    std::printf("BENCH no-op launch, %d worker(s): 1x1 %.3f ms, 1x1024 %.3f ms, 64x1024 %.3f ms (%.1f ns per thread)\n",
                workers, t0 * 1e3, t1 * 1e3, t64 * 1e3, t64 * 1e9 / (64 * 1024));
  }
  cuemu_set_workers(0);
}

}  // namespace

int main(int argc, char** argv) {
  bool bench = true;
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--no-bench") == 0) bench = false;

  std::printf("cuemu: %d kernels registered\n", cuemu_kernel_count());
  check(cuemu_kernel_count() == 16 && cuemu_kernel_name(0) && cuemu_kernel_name(16) == nullptr, "registry");

  const struct {
    int order;
    unsigned long long seed;
    const char* name;
  } orders[] = {{0, 0, "ascending"}, {1, 0, "descending"}, {2, 12345, "shuffled(12345)"}, {2, 777, "shuffled(777)"}};
  for (int workers : {1, 2}) {
    for (const auto& o : orders) {
      cuemu_set_workers(workers);
      cuemu_set_order(o.order, o.seed);
      g_config = std::string("  [") + o.name + ", " + std::to_string(workers) + " worker(s)]";
      functional_suite();
    }
  }
  for (int workers : {1, 2}) {
    cuemu_set_workers(workers);
    cuemu_set_order(0, 0);
    g_config = "  [" + std::to_string(workers) + " worker(s)]";
    test_deadlocks();
    test_limits();
    test_concurrent_launches();
    test_race();
  }
  g_config.clear();
  if (bench) benchmarks();

  std::printf("%s: %d of %d checks failed\n", g_failures ? "FAILED" : "OK", g_failures, g_checks);
  return g_failures ? 1 : 0;
}
