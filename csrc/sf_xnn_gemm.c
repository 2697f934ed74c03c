/*
 * sf_xnn_gemm.c — the engine's own blocked GEMM / implicit-im2col convolution (AVX-512).
 *
 * Layout:
 *   K = kh * kw * in, indexed k = (ky * kw + kx) * in + c (the order of an NHWC input patch).
 *   Packed weights: panels of SF_GEMM_NR output channels, [panel][K][NR], zero-padded past
 *   `out`; a block of kc reduction steps of one panel is contiguous.
 *   Packed input block: up to SF_GEMM_TB tiles of SF_GEMM_MR output pixels; row i holds the kc
 *   input values of pixel i at a fixed stride of SF_GEMM_KCP floats (so the micro-kernel
 *   addresses all 12 rows from one pointer with constant offsets). Rows are copied straight
 *   from the NHWC input (one run of channels per kernel tap), zeros where the patch falls into
 *   the padding.
 *
 * Loop nest of one work item (a block of output rows x a group of panels):
 *   for each reduction block [k0, k0 + kc):     pack the input rows (L2)
 *     for each panel p of the group:            weights kc x 32 (L2), streamed from L3 by the
 *       for each 12-row tile:                   first tile, prefetched during the previous
 *                                               panel's last tile; 12x32 sums in registers
 * The first reduction block starts from the bias, the last one applies the clamp and every
 * block stores the tile; each output element is always summed in the same order, so results do
 * not depend on the thread count.
 *
 * Measured on SD's 3x3 convolutions (Xeon, AVX-512): ~90 % of the FMA peak on 1-2 threads,
 * against 40-73 % for XNNPACK 2022 (whose 32x32x640 convolution re-reads 14.7 MB of weights
 * per tile of 7 output pixels). Building with -DSF_GEMM_PORTABLE_ONLY compiles the non-x86
 * path (no own GEMM: sf_gemm_supported() is false) on x86 too, for testing.
 *
 * Work items are handed out by an atomic counter to `workers` pool tasks, so that threads that
 * start late or run slower take fewer items. Each thread packs into its own buffer of fixed size
 * (SF_GEMM_SCRATCH bytes), allocated on its first use and freed when the thread exits.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "sf_xnn_gemm.h"

#if defined(__x86_64__) && !defined(SF_GEMM_PORTABLE_ONLY)
#include <immintrin.h>
#define SF_GEMM_X86 1
#else
#define SF_GEMM_X86 0
#endif

#define SF_GEMM_MR 12  /* output pixels per register tile */
#define SF_GEMM_NR 32  /* output channels per register tile (two zmm) */
#ifndef SF_GEMM_KC
#define SF_GEMM_KC 512 /* most reduction steps per block */
#endif
#define SF_GEMM_KCP (SF_GEMM_KC + 16) /* row stride of the packed input (floats) */
#ifndef SF_GEMM_TB
#define SF_GEMM_TB 8   /* most register tiles per block of output rows */
#endif

/* Bytes of the per-thread packing buffer: one block of output rows x one reduction block. */
#define SF_GEMM_SCRATCH ((size_t)SF_GEMM_TB * SF_GEMM_MR * SF_GEMM_KCP * sizeof(float))

#if SF_GEMM_X86
static pthread_once_t sf_gemm_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t sf_gemm_key;
static int sf_gemm_key_ok = 0;

static void sf_gemm_scratch_free(void *p) {
    sf_aligned_free(p);
}

static void sf_gemm_key_init(void) {
    sf_gemm_key_ok = pthread_key_create(&sf_gemm_key, sf_gemm_scratch_free) == 0;
}

/* The calling thread's packing buffer (NULL if out of memory). */
static float *sf_gemm_scratch(void) {
    pthread_once(&sf_gemm_key_once, sf_gemm_key_init);
    if (!sf_gemm_key_ok)
        return NULL;
    float *p = pthread_getspecific(sf_gemm_key);
    if (!p) {
        p = sf_aligned_alloc(SF_GEMM_SCRATCH);
        if (p && pthread_setspecific(sf_gemm_key, p) != 0) {
            sf_aligned_free(p);
            p = NULL;
        }
    }
    return p;
}
#endif /* SF_GEMM_X86 */

struct sf_gemm {
    size_t in, out, k;
    uint32_t kh, kw;
    size_t panels;
    float *packed; /* [panels][k][NR] */
    float *bias;   /* [panels * NR], zero-padded */
    float out_min, out_max;
    int clamp;
};

static bool sf_gemm_cpu_ok(void) {
#if SF_GEMM_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
#else
    return false;
#endif
}

bool sf_gemm_supported(void) {
    const char *env = getenv("SNAPFUSION_GEMM");
    if (env && strcmp(env, "xnnpack") == 0)
        return false;
    return sf_gemm_cpu_ok();
}

sf_status sf_gemm_create(size_t in, size_t out, uint32_t kh, uint32_t kw, const float *weight,
                         const float *bias, float out_min, float out_max, sf_gemm **out_gemm) {
    sf_status st = SF_OK;
    sf_gemm *g = NULL;
    size_t k, panels, packed_n, bytes;
    if (!weight || !out_gemm || in == 0 || out == 0 || kh == 0 || kw == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_gemm_create: bad arguments");
    *out_gemm = NULL;
    panels = (out + SF_GEMM_NR - 1) / SF_GEMM_NR;
    if (!sf_mul_n_ok(&k, 3, in, (size_t)kh, (size_t)kw) ||
        !sf_mul_n_ok(&packed_n, 3, panels, k, (size_t)SF_GEMM_NR) ||
        !sf_mul_ok(packed_n, sizeof(float), &bytes))
        return sf_error(SF_ERR_INVALID_ARG, "sf_gemm_create: weights of %zu x %zu x %u x %u "
                        "floats overflow size_t", out, in, kh, kw);
    g = calloc(1, sizeof *g);
    if (!g)
        SF_FAIL(SF_ERR_OOM, "sf_gemm_create: out of memory");
    g->in = in;
    g->out = out;
    g->k = k;
    g->kh = kh;
    g->kw = kw;
    g->panels = panels;
    g->out_min = out_min;
    g->out_max = out_max;
    g->clamp = !(out_min == -INFINITY && out_max == INFINITY);
    g->packed = sf_aligned_alloc(bytes);
    g->bias = sf_aligned_alloc(panels * SF_GEMM_NR * sizeof(float));
    if (!g->packed || !g->bias)
        SF_FAIL(SF_ERR_OOM, "sf_gemm_create: out of memory packing %zu bytes of weights", bytes);
    memset(g->bias, 0, panels * SF_GEMM_NR * sizeof(float));
    if (bias)
        memcpy(g->bias, bias, out * sizeof(float));
    /* packed[p][kk][j] = weight[o = p*NR + j][c][ky][kx] with kk = (ky*kw + kx)*in + c */
    for (size_t p = 0; p < panels; p++) {
        float *dst = g->packed + p * k * SF_GEMM_NR;
        for (size_t tap = 0; tap < (size_t)kh * kw; tap++) {
            for (size_t c = 0; c < in; c++) {
                float *row = dst + (tap * in + c) * SF_GEMM_NR;
                for (size_t j = 0; j < SF_GEMM_NR; j++) {
                    size_t o = p * SF_GEMM_NR + j;
                    row[j] = o < out ? weight[(o * in + c) * kh * kw + tap] : 0.0f;
                }
            }
        }
    }
    *out_gemm = g;
    return SF_OK;
fail:
    sf_gemm_destroy(g);
    return st;
}

void sf_gemm_destroy(sf_gemm *g) {
    if (!g)
        return;
    sf_aligned_free(g->packed);
    sf_aligned_free(g->bias);
    free(g);
}

#if SF_GEMM_X86

/* One register tile of R rows x 32 columns: c[r][0..cols) (+)= sum_k a[r*KCP + k] * b[k*32 + j].
 * bias != NULL: start from bias (first reduction block), else from c. Only rows < rows are
 * loaded and stored (every caller passes rows == R); m0/m1 mask the columns of the two halves.
 * pf != NULL: the next kc x 32 block of weights, fetched into L2 meanwhile (it comes from L3:
 * the hardware prefetchers stop at every 4 KiB page).
 * R is a compile-time constant of each instance (below): a tile of fewer than SF_GEMM_MR rows
 * (the last tile of a block; every tile when the output has few pixels: the 1-8 Winograd tiles
 * of a 2x2-4x4 feature map, a 1-row time-embedding layer) runs as a tile of its row count,
 * R = rows, and costs R rows of FMAs instead of SF_GEMM_MR. Each output element is summed in
 * the same order whatever the tile, so the results do not change. */
__attribute__((target("avx512f"), always_inline)) static inline void
sf_gemm_tile_body(const int R, size_t kc, const float *restrict a, const float *restrict b,
                  float *restrict c, size_t ldc, size_t rows, __mmask16 m0, __mmask16 m1,
                  const float *bias, int clamp, float lo, float hi, const float *pf) {
    __m512 acc[SF_GEMM_MR][2];
    if (bias) {
        __m512 b0 = _mm512_load_ps(bias), b1 = _mm512_load_ps(bias + 16);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            acc[r][0] = b0;
            acc[r][1] = b1;
        }
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            if ((size_t)r < rows) {
                acc[r][0] = _mm512_maskz_loadu_ps(m0, c + (size_t)r * ldc);
                acc[r][1] = _mm512_maskz_loadu_ps(m1, c + (size_t)r * ldc + 16);
            } else {
                acc[r][0] = _mm512_setzero_ps();
                acc[r][1] = _mm512_setzero_ps();
            }
        }
    }
#define SF_GEMM_STEP(k)                                                                        \
    do {                                                                                       \
        __m512 w0 = _mm512_load_ps(b + (k) * SF_GEMM_NR);                                      \
        __m512 w1 = _mm512_load_ps(b + (k) * SF_GEMM_NR + 16);                                 \
        _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) {                                 \
            __m512 av = _mm512_set1_ps(a[r * SF_GEMM_KCP + (k)]);                              \
            acc[r][0] = _mm512_fmadd_ps(av, w0, acc[r][0]);                                    \
            acc[r][1] = _mm512_fmadd_ps(av, w1, acc[r][1]);                                    \
        }                                                                                      \
    } while (0)
    if (pf) {
        for (size_t k = 0; k < kc; k++) {
            _mm_prefetch((const char *)(pf + k * SF_GEMM_NR), _MM_HINT_T1);
            _mm_prefetch((const char *)(pf + k * SF_GEMM_NR + 16), _MM_HINT_T1);
            SF_GEMM_STEP(k);
        }
    } else {
        for (size_t k = 0; k < kc; k++)
            SF_GEMM_STEP(k);
    }
#undef SF_GEMM_STEP
    if (clamp) {
        /* max(lo, x) and min(hi, x) return x when x is NaN (second operand). */
        __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            acc[r][0] = _mm512_min_ps(vhi, _mm512_max_ps(vlo, acc[r][0]));
            acc[r][1] = _mm512_min_ps(vhi, _mm512_max_ps(vlo, acc[r][1]));
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) {
        if ((size_t)r < rows) {
            _mm512_mask_storeu_ps(c + (size_t)r * ldc, m0, acc[r][0]);
            _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16, m1, acc[r][1]);
        }
    }
}

typedef void (*sf_gemm_tile_fn)(size_t kc, const float *restrict a, const float *restrict b,
                                float *restrict c, size_t ldc, __mmask16 m0, __mmask16 m1,
                                const float *bias, int clamp, float lo, float hi,
                                const float *pf);

/* noipa (GCC): the full tile is compiled with its row count unknown, as it was before the
 * smaller tiles existed; compiled knowing that it is always 12, GCC 12 keeps a weight vector
 * on the stack and the tile runs 10-20 % slower on 16x16 feature maps. */
#if defined(__GNUC__) && !defined(__clang__)
#define SF_GEMM_NOIPA __attribute__((noipa))
#else
#define SF_GEMM_NOIPA __attribute__((noinline))
#endif
SF_GEMM_NOIPA __attribute__((target("avx512f"))) static void
sf_gemm_tile_full(size_t kc, const float *restrict a, const float *restrict b, float *restrict c,
                  size_t ldc, size_t rows, __mmask16 m0, __mmask16 m1, const float *bias,
                  int clamp, float lo, float hi, const float *pf) {
    sf_gemm_tile_body(SF_GEMM_MR, kc, a, b, c, ldc, rows, m0, m1, bias, clamp, lo, hi, pf);
}

#define SF_GEMM_SMALL_TILE(R)                                                                  \
    __attribute__((target("avx512f"))) static void sf_gemm_tile_##R(                           \
        size_t kc, const float *restrict a, const float *restrict b, float *restrict c,        \
        size_t ldc, __mmask16 m0, __mmask16 m1, const float *bias, int clamp, float lo,        \
        float hi, const float *pf) {                                                           \
        sf_gemm_tile_body(R, kc, a, b, c, ldc, R, m0, m1, bias, clamp, lo, hi, pf);            \
    }
SF_GEMM_SMALL_TILE(1)
SF_GEMM_SMALL_TILE(2)
SF_GEMM_SMALL_TILE(3)
SF_GEMM_SMALL_TILE(4)
SF_GEMM_SMALL_TILE(5)
SF_GEMM_SMALL_TILE(6)
SF_GEMM_SMALL_TILE(7)
SF_GEMM_SMALL_TILE(8)
SF_GEMM_SMALL_TILE(9)
SF_GEMM_SMALL_TILE(10)
SF_GEMM_SMALL_TILE(11)
#undef SF_GEMM_SMALL_TILE

/* The tile of `rows` rows, for 1 <= rows < SF_GEMM_MR. */
static const sf_gemm_tile_fn sf_gemm_small_tiles[SF_GEMM_MR] = {
    NULL,           sf_gemm_tile_1, sf_gemm_tile_2, sf_gemm_tile_3,  sf_gemm_tile_4,
    sf_gemm_tile_5, sf_gemm_tile_6, sf_gemm_tile_7, sf_gemm_tile_8,  sf_gemm_tile_9,
    sf_gemm_tile_10, sf_gemm_tile_11};
_Static_assert(SF_GEMM_MR == 12, "sf_gemm_small_tiles has one instance per row count below 12");

#endif /* SF_GEMM_X86 */

typedef struct {
    const sf_gemm *g;
    const sf_gemm_geometry *geo;
    const float *x;
    float *y;
    sf_gemm_split sp;   /* rows: batch * out_h * out_w in tiles of SF_GEMM_MR */
    atomic_size_t next; /* next work item */
    atomic_size_t done; /* work items completed */
} sf_gemm_ctx;

#if SF_GEMM_X86
/* Copy or zero n floats: short runs (the few channels of a first layer, the segments of a
 * patch) with masked vector moves instead of a library call. */
__attribute__((target("avx512f"))) static inline void
sf_gemm_copy(float *restrict dst, const float *restrict src, size_t n) {
    if (n > 64) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_loadu_ps(src + i));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
    }
}

__attribute__((target("avx512f"))) static inline void sf_gemm_zero(float *dst, size_t n) {
    if (n > 64) {
        memset(dst, 0, n * sizeof(float));
        return;
    }
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_setzero_ps());
    if (i < n)
        _mm512_mask_storeu_ps(dst + i, (__mmask16)((1u << (n - i)) - 1u), _mm512_setzero_ps());
}

/* Pack output rows [row0, row0 + n_rows) for the reduction steps [k0, k0 + kl). A last tile of
 * fewer than MR rows runs as a tile of its row count, which reads no further row. */
__attribute__((target("avx512f"))) static void
sf_gemm_pack(const sf_gemm_ctx *ctx, float *a, size_t row0, size_t n_rows, size_t k0,
             size_t kl) {
    const sf_gemm *g = ctx->g;
    const sf_gemm_geometry *geo = ctx->geo;
    const size_t in = g->in, plane = geo->out_h * geo->out_w;
    /* the first tap and channel of the block (the same for every row) */
    const size_t tap0 = k0 / in, c0 = k0 % in;
    /* output coordinates of row0, then advanced row by row */
    size_t b = row0 / plane, oy = row0 % plane / geo->out_w, ox = row0 % geo->out_w;
    for (size_t i = 0; i < n_rows; i++) {
        float *dst = a + i * SF_GEMM_KCP;
        /* input coordinates of the patch's top-left tap (may be negative: padding) */
        ptrdiff_t iy0 = (ptrdiff_t)(oy * geo->stride_h) - (ptrdiff_t)geo->pad_top;
        ptrdiff_t ix0 = (ptrdiff_t)(ox * geo->stride_w) - (ptrdiff_t)geo->pad_left;
        const float *img = ctx->x + b * geo->h * geo->w * in;
        size_t ky = tap0 / g->kw, kx = tap0 % g->kw, c = c0, done = 0;
        while (done < kl) {
            size_t len = in - c < kl - done ? in - c : kl - done;
            ptrdiff_t iy = iy0 + (ptrdiff_t)ky, ix = ix0 + (ptrdiff_t)kx;
            if (iy < 0 || ix < 0 || iy >= (ptrdiff_t)geo->h || ix >= (ptrdiff_t)geo->w)
                sf_gemm_zero(dst + done, len);
            else
                sf_gemm_copy(dst + done, img + ((size_t)iy * geo->w + (size_t)ix) * in + c, len);
            done += len;
            c = 0;
            if (++kx == g->kw) {
                kx = 0;
                ky++;
            }
        }
        if (++ox == geo->out_w) {
            ox = 0;
            if (++oy == geo->out_h) {
                oy = 0;
                b++;
            }
        }
    }
}

#endif /* SF_GEMM_X86 */

static void sf_gemm_worker(void *arg, size_t worker) {
#if SF_GEMM_X86
    sf_gemm_ctx *ctx = arg;
    const sf_gemm *g = ctx->g;
    float *a = sf_gemm_scratch();
    const size_t items = ctx->sp.items;
    (void)worker;
    if (!a)
        return; /* the other workers take the items; sf_gemm_run reports if none could */
    const size_t n = g->out;
    for (;;) {
        size_t item = atomic_fetch_add_explicit(&ctx->next, 1, memory_order_relaxed);
        if (item >= items)
            break;
        size_t t0, t1, row0, row1, p0, p1;
        sf_gemm_split_item(&ctx->sp, item, &t0, &t1, &row0, &row1, &p0, &p1);
        for (size_t kb = 0; kb < ctx->sp.k_blocks; kb++) {
            size_t k0 = kb * ctx->sp.kc;
            size_t kl = g->k - k0 < ctx->sp.kc ? g->k - k0 : ctx->sp.kc;
            sf_gemm_pack(ctx, a, row0, row1 - row0, k0, kl);
            int last = kb + 1 == ctx->sp.k_blocks;
            for (size_t p = p0; p < p1; p++) {
                const float *bp = g->packed + (p * g->k + k0) * SF_GEMM_NR;
                size_t cols = n - p * SF_GEMM_NR < SF_GEMM_NR ? n - p * SF_GEMM_NR : SF_GEMM_NR;
                __mmask16 m0 = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1u);
                __mmask16 m1 = cols >= 32   ? (__mmask16)0xffff
                               : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1u)
                                           : (__mmask16)0;
                const float *bias = kb == 0 ? g->bias + p * SF_GEMM_NR : NULL;
                /* the weights used next: the next panel, else the next reduction block's first
                 * panel (of the same length unless it is the last, shorter one) */
                const float *next = NULL;
                if (p + 1 < p1)
                    next = g->packed + ((p + 1) * g->k + k0) * SF_GEMM_NR;
                else if (kb + 1 < ctx->sp.k_blocks && g->k - (k0 + ctx->sp.kc) >= kl)
                    next = g->packed + (p0 * g->k + k0 + ctx->sp.kc) * SF_GEMM_NR;
                for (size_t t = 0; t < t1 - t0; t++) {
                    size_t r0 = row0 + t * SF_GEMM_MR;
                    size_t rows = row1 - r0 < SF_GEMM_MR ? row1 - r0 : SF_GEMM_MR;
                    const float *at = a + t * SF_GEMM_MR * SF_GEMM_KCP;
                    float *ct = ctx->y + r0 * n + p * SF_GEMM_NR;
                    const float *pf = t + 1 == t1 - t0 ? next : NULL;
                    int clamp = last && g->clamp;
                    if (rows == SF_GEMM_MR)
                        sf_gemm_tile_full(kl, at, bp, ct, n, rows, m0, m1, bias, clamp,
                                          g->out_min, g->out_max, pf);
                    else
                        sf_gemm_small_tiles[rows](kl, at, bp, ct, n, m0, m1, bias, clamp,
                                                  g->out_min, g->out_max, pf);
                }
            }
        }
        atomic_fetch_add_explicit(&ctx->done, 1, memory_order_relaxed);
    }
#else
    (void)arg;
    (void)worker;
#endif
}

sf_status sf_gemm_run(const sf_gemm *g, const sf_gemm_geometry *geo, const float *x, float *y,
                      pthreadpool_t pool) {
    sf_gemm_ctx ctx;
    size_t m;
    if (!g || !geo || !x || !y)
        return sf_error(SF_ERR_INVALID_ARG, "sf_gemm_run: NULL argument");
    if (!sf_gemm_cpu_ok())
        return sf_error(SF_ERR_UNSUPPORTED, "sf_gemm_run: this CPU has no AVX-512F");
    memset(&ctx, 0, sizeof ctx);
    ctx.g = g;
    ctx.geo = geo;
    ctx.x = x;
    ctx.y = y;
    if (!sf_mul_n_ok(&m, 3, geo->batch, geo->out_h, geo->out_w) || m == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_gemm_run: bad output size");
    sf_gemm_split_make(m, SF_GEMM_MR, SF_GEMM_TB, g->panels, g->k, SF_GEMM_KC, 1,
                       pool ? pthreadpool_get_threads_count(pool) : 1, &ctx.sp);
    atomic_init(&ctx.next, 0);
    atomic_init(&ctx.done, 0);
    if (ctx.sp.workers > 1)
        pthreadpool_parallelize_1d(pool, sf_gemm_worker, &ctx, ctx.sp.workers, 0);
    else
        sf_gemm_worker(&ctx, 0);
    if (atomic_load(&ctx.done) != ctx.sp.items)
        return sf_error(SF_ERR_OOM, "sf_gemm_run: out of memory (%zu bytes of packing buffer "
                        "per thread)", SF_GEMM_SCRATCH);
    return SF_OK;
}
