/*
 * sf_internal.h — helpers shared by the engine's C files (never installed, never included by
 * the Python glue except through snapfusion.h).
 */
#ifndef SF_INTERNAL_H
#define SF_INTERNAL_H

#include <pthreadpool.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "snapfusion.h"

/* Record a failure for the calling thread and return `status` (printf-style message). */
sf_status sf_error(sf_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Evaluate an sf_status expression; on failure jump to `fail` with `st` set. */
#define SF_CHECK(expr)                                                                         \
    do {                                                                                       \
        st = (expr);                                                                           \
        if (st != SF_OK)                                                                       \
            goto fail;                                                                         \
    } while (0)

/* Fail with a message: set st and jump to `fail`. */
#define SF_FAIL(status, ...)                                                                   \
    do {                                                                                       \
        st = sf_error((status), __VA_ARGS__);                                                  \
        goto fail;                                                                             \
    } while (0)

/* Overflow-checked size arithmetic: return false on overflow. */
static inline bool sf_mul_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool sf_add_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}
/* a*b*c*... for n factors; false on overflow. */
bool sf_mul_n_ok(size_t *out, int n, ...);

/* Aligned allocation (64 bytes) with `SF_EXTRA_BYTES` of readable padding past the end. */
#define SF_ALIGN 64
#define SF_EXTRA_BYTES 64
void *sf_aligned_alloc(size_t bytes);
void sf_aligned_free(void *p);

/* Per-thread growable scratch: the calling thread's buffer `slot` of at least `bytes` (aligned
 * as sf_aligned_alloc; NULL if out of memory). It stays valid until the same thread asks for
 * the same slot again and is freed when the thread exits. */
enum {
    SF_SCRATCH_QUANT_IN,
    SF_SCRATCH_QUANT_OUT,
    SF_SCRATCH_QGEMM_PACK,
    SF_SCRATCH_WINOGRAD,
    SF_SCRATCH_ATTENTION_AMX,
    SF_SCRATCH_SLOTS
};
void *sf_thread_scratch(int slot, size_t bytes);

/* How a blocked GEMM (the float32 and int8 implicit-GEMM convolutions) is cut into work
 * items: m output rows in tiles of mr rows, blocks of at most tb tiles (as many blocks as a
 * multiple of the thread count where the rows allow, sizes differing by at most one tile),
 * the panels split into groups too when there are few blocks (a linear layer on a few
 * tokens), and the k reduction steps in k_blocks blocks of kc (at most kc_max, a multiple of
 * kc_align). Item i is row block i / n_groups and panel group i % n_groups; `workers` pool
 * tasks take items from a shared counter. */
typedef struct {
    size_t m, mr, m_tiles, m_blocks, panels, n_groups, k, kc, k_blocks, items, workers;
} sf_gemm_split;
void sf_gemm_split_make(size_t m, size_t mr, size_t tb, size_t panels, size_t k, size_t kc_max,
                        size_t kc_align, size_t threads, sf_gemm_split *s);
/* Item i's output rows [*row0, *row1), their tiles [*t0, *t1), and panels [*p0, *p1). */
void sf_gemm_split_item(const sf_gemm_split *s, size_t item, size_t *t0, size_t *t1,
                        size_t *row0, size_t *row1, size_t *p0, size_t *p1);

/* Hand the heap's free memory back to the system (glibc keeps freed memory, and after large
 * frees serves big blocks from the heap rather than mmap): called when a model or an arena
 * frees its memory, so that the resident set really shrinks. */
void sf_heap_release(void);

/* Intel AMX (Sapphire Rapids and later). sf_amx_supported: 1 if the CPU has the tile unit with
 * the parts asked for (SF_AMX_INT8 | SF_AMX_BF16), the OS enables the tile state, and Linux
 * granted this process its use (requested on the first call). sf_amx_begin loads the engine's
 * one tile configuration on the calling thread (tiles 0-7: 16 rows of 64 bytes: int32 or
 * float32 16 x 16 accumulators, int8 16 x 64 or bfloat16 16 x 32 operands) and sf_amx_end
 * releases it; kernels bracket their tile code with the two. GCC's AMX intrinsics are asm
 * statements that do not tell the compiler which memory they read or write: SF_AMX_BARRIER()
 * goes between C code and tile loads or stores of the same memory. */
enum { SF_AMX_INT8 = 1, SF_AMX_BF16 = 2 };
int sf_amx_supported(unsigned need);
void sf_amx_begin(void);
void sf_amx_end(void);
#define SF_AMX_BARRIER() __asm__ volatile("" ::: "memory")

/* The shared thread pool. Compute code brackets its use of the pool with sf_compute_begin /
 * sf_compute_end (a read lock: sf_set_num_threads waits until no computation runs).
 * sf_compute_begin initializes the engine on first use. */
sf_status sf_compute_begin(pthreadpool_t *pool_out);
void sf_compute_end(void);

/* Let the pool's worker threads sleep instead of spinning after a whole forward pass (so
 * they do not steal the cores from other work between calls). */
void sf_pool_yield(void);

/* Add to the MAC counter (relaxed atomic). */
void sf_mac_counter_add(uint64_t macs);

/* Name of an XNNPACK status (for messages). */
const char *sf_xnn_status_str(int xnn_status);

#endif /* SF_INTERNAL_H */
