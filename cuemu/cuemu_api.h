/* cuemu_api.h -- C API of the CUDA kernel emulator (see README.md). */
#ifndef CUEMU_API_H
#define CUEMU_API_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Runs the kernel registered under `name` on grid x block threads, synchronously.
 * args[i] points to the i-th parameter's value, exactly as for cuLaunchKernel (for a pointer
 * parameter, to a variable holding the pointer); device pointers are host pointers.
 * Returns 0 on success. Otherwise writes a NUL-terminated message into err (if err != NULL and
 * err_len > 0) and returns nonzero: 1 invalid launch (unknown kernel, bad sizes, ...),
 * 2 the kernel failed while running (deadlock, warp mask mismatch, exception).
 * Launches from several OS threads are serialized. */
int cuemu_launch(const char* name, const unsigned grid[3], const unsigned block[3], size_t dynamic_smem,
                 void** args, char* err, size_t err_len);

/* Start order of the threads of each block (and of the blocks): 0 ascending, 1 descending,
 * 2 shuffled with `seed`. Default: environment CUEMU_ORDER (asc|desc|shuffle[:seed]), else 0. */
void cuemu_set_order(int order, unsigned long long seed);

/* Number of worker OS threads; 0 = std::thread::hardware_concurrency().
 * Default: environment CUEMU_WORKERS, else 0. */
void cuemu_set_workers(int n);

/* The registry: kernels named by CUEMU_KERNEL lines, in registration order. */
int cuemu_kernel_count(void);
const char* cuemu_kernel_name(int i); /* NULL when i is out of range */

/* Extras. Number of parameters of a kernel (-1 if unknown): lets the caller check args. */
int cuemu_kernel_num_params(const char* name);
/* Fiber stack size in bytes (rounded up to pages, minimum 16 KiB); 0 = default 64 KiB or
 * environment CUEMU_STACK_KB. */
void cuemu_set_stack_size(size_t bytes);
/* Largest dynamic shared memory a launch may ask for; 0 = default 227 KiB (H100's limit). */
void cuemu_set_max_dynamic_smem(size_t bytes);

#ifdef __cplusplus
}
#endif

#endif /* CUEMU_API_H */
