/*
 * sf_quant_gemm.c — the int8 implicit-GEMM convolution of the quantized layers: an AVX512-VNNI
 * micro-kernel (vpdpbusd: 4 products of unsigned activation bytes and signed weight bytes
 * summed into each int32 lane), and the same blocked algorithm in portable C.
 *
 * Layout:
 *   K = kh * kw * in, k = (ky * kw + kx) * in + c (the order of an NHWC patch), padded to K4, a
 *   multiple of 4. Packed weights: panels of SF_QGEMM_NR = 32 output channels,
 *   [panel][K4 / 4][32][4] int8 (zero past `out` and past K): one group of 4 reduction steps of
 *   a panel is 128 bytes, two zmm registers of 16 channels x 4 bytes.
 *   Packed activations: blocks of up to SF_QGEMM_TB tiles of SF_QGEMM_MR output pixels; row i
 *   holds the kc reduction bytes of pixel i (copied from the uint8 NHWC input, pad_value where
 *   the patch falls into the padding, 0 past K) at a stride of SF_QGEMM_KCP bytes.
 *
 * The micro-kernel computes a 12 x 32 tile: per group of 4 reduction steps it loads the two
 * weight vectors once and broadcasts 4 activation bytes of each of the 12 rows (one 32-bit
 * broadcast load), 24 vpdpbusd. Reduction blocks of kc steps keep a panel's weight slice
 * (kc x 32 bytes) in L1 and the packed rows in L2; between blocks the int32 partial sums are
 * kept in the output's memory (same element size as float), the last block applies
 * y = alpha[n] * acc + beta[n] (scale and bias with the zero-point compensation folded in).
 * Integer sums are exact, so results do not depend on the thread count or blocking.
 *
 * Work items (a block of output rows x a group of panels) are handed out by an atomic counter
 * to pool tasks; each thread packs into its own buffer (allocated on first use, freed when the
 * thread exits).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "sf_internal.h"
#include "sf_quant.h"

#if defined(__x86_64__) && !defined(SF_QGEMM_PORTABLE_ONLY)
#include <immintrin.h>
#define SF_QGEMM_X86 1
#else
#define SF_QGEMM_X86 0
#endif

#define SF_QGEMM_MR 12     /* output pixels per register tile */
#ifndef SF_QGEMM_KC
#define SF_QGEMM_KC 1024   /* most reduction steps (bytes) per block; a multiple of 64 */
#endif
#define SF_QGEMM_KCP (SF_QGEMM_KC + 64) /* row stride of the packed activations (bytes) */
#ifndef SF_QGEMM_TB
#define SF_QGEMM_TB 8      /* most register tiles per block of output rows */
#endif
#define SF_QGEMM_SCRATCH ((size_t)SF_QGEMM_TB * SF_QGEMM_MR * SF_QGEMM_KCP)
#define SF_QGEMM_MAX_K 65536 /* 255 * 128 * K < 2^31 */

struct sf_qgemm {
    size_t in, out, k, k4;
    uint32_t kh, kw;
    size_t panels;
    int vnni;
    int8_t *packed;  /* [panels][k4 / 4][NR][4] */
    int32_t *colsum; /* (out,) */
};

/* ---- per-thread packing buffers ---- */

static pthread_once_t sf_qgemm_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t sf_qgemm_key;
static int sf_qgemm_key_ok = 0;

static void sf_qgemm_scratch_free(void *p) {
    sf_aligned_free(p);
}

static void sf_qgemm_key_init(void) {
    sf_qgemm_key_ok = pthread_key_create(&sf_qgemm_key, sf_qgemm_scratch_free) == 0;
}

static uint8_t *sf_qgemm_scratch(void) {
    pthread_once(&sf_qgemm_key_once, sf_qgemm_key_init);
    if (!sf_qgemm_key_ok)
        return NULL;
    uint8_t *p = pthread_getspecific(sf_qgemm_key);
    if (!p) {
        p = sf_aligned_alloc(SF_QGEMM_SCRATCH);
        if (p && pthread_setspecific(sf_qgemm_key, p) != 0) {
            sf_aligned_free(p);
            p = NULL;
        }
    }
    return p;
}

/* ---- creation ---- */

int sf_qgemm_vnni_supported(void) {
#if SF_QGEMM_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

sf_status sf_qgemm_create(size_t in, size_t out, uint32_t kh, uint32_t kw, const int8_t *weight,
                          int vnni, sf_qgemm **out_gemm) {
    sf_status st = SF_OK;
    sf_qgemm *g = NULL;
    size_t k, k4, panels, bytes;
    if (!out_gemm)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_create: out_gemm is NULL");
    *out_gemm = NULL;
    if (!weight || in == 0 || out == 0 || kh == 0 || kw == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_create: NULL weight or zero size");
    if (vnni && !sf_qgemm_vnni_supported())
        return sf_error(SF_ERR_UNSUPPORTED, "sf_qgemm_create: this CPU has no AVX512-VNNI");
    if (!sf_mul_n_ok(&k, 3, in, (size_t)kh, (size_t)kw) || k > SF_QGEMM_MAX_K)
        return sf_error(SF_ERR_UNSUPPORTED, "sf_qgemm_create: %zu x %u x %u reduction steps "
                        "exceed %d (int32 accumulators could overflow)", in, kh, kw,
                        SF_QGEMM_MAX_K);
    k4 = (k + 3) / 4 * 4;
    panels = (out + SF_QGEMM_NR - 1) / SF_QGEMM_NR;
    if (!sf_mul_n_ok(&bytes, 3, panels, k4, (size_t)SF_QGEMM_NR))
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_create: weights too large");
    g = calloc(1, sizeof *g);
    if (!g)
        SF_FAIL(SF_ERR_OOM, "sf_qgemm_create: out of memory");
    g->in = in;
    g->out = out;
    g->k = k;
    g->k4 = k4;
    g->kh = kh;
    g->kw = kw;
    g->panels = panels;
    g->vnni = vnni;
    g->packed = sf_aligned_alloc(bytes);
    g->colsum = sf_aligned_alloc(out * sizeof(int32_t));
    if (!g->packed || !g->colsum)
        SF_FAIL(SF_ERR_OOM, "sf_qgemm_create: out of memory packing %zu bytes of weights", bytes);
    memset(g->packed, 0, bytes);
    const size_t taps = (size_t)kh * kw;
    for (size_t o = 0; o < out; o++) {
        size_t p = o / SF_QGEMM_NR, j = o % SF_QGEMM_NR;
        int8_t *panel = g->packed + p * k4 * SF_QGEMM_NR;
        int32_t sum = 0;
        for (size_t tap = 0; tap < taps; tap++)
            for (size_t c = 0; c < in; c++) {
                size_t kk = tap * in + c;
                int8_t v = weight[(o * in + c) * taps + tap];
                panel[(kk / 4) * (4 * SF_QGEMM_NR) + j * 4 + kk % 4] = v;
                sum += v;
            }
        g->colsum[o] = sum;
    }
    *out_gemm = g;
    return SF_OK;
fail:
    sf_qgemm_destroy(g);
    return st;
}

void sf_qgemm_destroy(sf_qgemm *g) {
    if (!g)
        return;
    sf_aligned_free(g->packed);
    sf_aligned_free(g->colsum);
    free(g);
}

const int32_t *sf_qgemm_colsum(const sf_qgemm *g) {
    return g ? g->colsum : NULL;
}

size_t sf_qgemm_padded_out(const sf_qgemm *g) {
    return g ? g->panels * SF_QGEMM_NR : 0;
}

size_t sf_qgemm_bytes(const sf_qgemm *g) {
    return g ? g->panels * g->k4 * SF_QGEMM_NR + g->out * sizeof(int32_t) : 0;
}

/* ---- micro-kernels ---- */

/* Shared contract: a: SF_QGEMM_MR rows at stride SF_QGEMM_KCP (rows >= `rows` are zero),
 * kc4 groups of 4 bytes each; b: kc4 groups of 128 bytes; c: the tile's first output element,
 * rows at stride ldc elements; first: start from 0 (else from the int32 partial sums in c);
 * last with alpha: store alpha * acc + beta as float, else store int32 partial sums. */

#if defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void sf_qtile_ref(size_t kc4, const uint8_t *restrict a, const int8_t *restrict b,
                         void *c, size_t ldc, size_t rows, size_t cols, int first, int last,
                         const float *alpha, const float *beta) {
    int32_t acc[SF_QGEMM_MR][SF_QGEMM_NR];
    char *cb = c;
    for (size_t r = 0; r < SF_QGEMM_MR; r++)
        for (size_t j = 0; j < SF_QGEMM_NR; j++) {
            int32_t v = 0;
            if (!first && r < rows && j < cols)
                memcpy(&v, cb + (r * ldc + j) * 4, 4);
            acc[r][j] = v;
        }
    for (size_t k = 0; k < kc4; k++) {
        const int8_t *bk = b + k * 4 * SF_QGEMM_NR;
        for (size_t r = 0; r < SF_QGEMM_MR; r++) {
            const uint8_t *ar = a + r * SF_QGEMM_KCP + 4 * k;
            int32_t a0 = ar[0], a1 = ar[1], a2 = ar[2], a3 = ar[3];
            for (size_t j = 0; j < SF_QGEMM_NR; j++)
                acc[r][j] += a0 * bk[4 * j] + a1 * bk[4 * j + 1] + a2 * bk[4 * j + 2] +
                             a3 * bk[4 * j + 3];
        }
    }
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < cols; j++) {
            if (last && alpha) {
                float y = (float)acc[r][j] * alpha[j] + beta[j];
                memcpy(cb + (r * ldc + j) * 4, &y, 4);
            } else {
                memcpy(cb + (r * ldc + j) * 4, &acc[r][j], 4);
            }
        }
}

#if SF_QGEMM_X86
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
sf_qtile_vnni(size_t kc4, const uint8_t *restrict a, const int8_t *restrict b, void *c,
              size_t ldc, size_t rows, size_t cols, int first, int last, const float *alpha,
              const float *beta) {
    __m512i acc[SF_QGEMM_MR][2];
    char *cb = c;
    __mmask16 m0 = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1u);
    __mmask16 m1 = cols >= 32 ? (__mmask16)0xffff
                   : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1u)
                               : (__mmask16)0;
    if (first) {
#pragma GCC unroll 16
        for (int r = 0; r < SF_QGEMM_MR; r++) {
            acc[r][0] = _mm512_setzero_si512();
            acc[r][1] = _mm512_setzero_si512();
        }
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < SF_QGEMM_MR; r++) {
            if ((size_t)r < rows) {
                acc[r][0] = _mm512_maskz_loadu_epi32(m0, cb + (size_t)r * ldc * 4);
                acc[r][1] = _mm512_maskz_loadu_epi32(m1, cb + ((size_t)r * ldc + 16) * 4);
            } else {
                acc[r][0] = _mm512_setzero_si512();
                acc[r][1] = _mm512_setzero_si512();
            }
        }
    }
    for (size_t k = 0; k < kc4; k++) {
        __m512i w0 = _mm512_load_si512((const void *)(b + k * 128));
        __m512i w1 = _mm512_load_si512((const void *)(b + k * 128 + 64));
#pragma GCC unroll 16
        for (int r = 0; r < SF_QGEMM_MR; r++) {
            int32_t q;
            memcpy(&q, a + (size_t)r * SF_QGEMM_KCP + 4 * k, 4);
            __m512i av = _mm512_set1_epi32(q);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, w0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, w1);
        }
    }
    if (last && alpha) {
        __m512 al0 = _mm512_loadu_ps(alpha), al1 = _mm512_loadu_ps(alpha + 16);
        __m512 be0 = _mm512_loadu_ps(beta), be1 = _mm512_loadu_ps(beta + 16);
#pragma GCC unroll 16
        for (int r = 0; r < SF_QGEMM_MR; r++) {
            if ((size_t)r < rows) {
                __m512 y0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][0]), al0, be0);
                __m512 y1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][1]), al1, be1);
                _mm512_mask_storeu_ps(cb + (size_t)r * ldc * 4, m0, y0);
                _mm512_mask_storeu_ps(cb + ((size_t)r * ldc + 16) * 4, m1, y1);
            }
        }
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < SF_QGEMM_MR; r++) {
            if ((size_t)r < rows) {
                _mm512_mask_storeu_epi32(cb + (size_t)r * ldc * 4, m0, acc[r][0]);
                _mm512_mask_storeu_epi32(cb + ((size_t)r * ldc + 16) * 4, m1, acc[r][1]);
            }
        }
    }
}
#endif

/* ---- driver ---- */

typedef struct {
    const sf_qgemm *g;
    const sf_qgemm_geometry *geo;
    const uint8_t *x;
    uint8_t pad;
    const float *alpha, *beta;
    char *y;
    size_t m, m_tiles, m_blocks, n_groups, kc, k_blocks;
    atomic_size_t next, done;
} sf_qgemm_ctx;

/* Pack output rows [row0, row0 + n_rows) (zero rows up to n_tiles * MR) for the reduction
 * steps [k0, k0 + kl), padded with zeros to kl4 groups of 4. */
static void sf_qgemm_pack(const sf_qgemm_ctx *ctx, uint8_t *a, size_t row0, size_t n_rows,
                          size_t n_tiles, size_t k0, size_t kl, size_t kl4) {
    const sf_qgemm *g = ctx->g;
    const sf_qgemm_geometry *geo = ctx->geo;
    const size_t in = g->in, plane = geo->out_h * geo->out_w, span = kl4 * 4;
    const size_t tap0 = k0 / in, c0 = k0 % in;
    size_t b = row0 / plane, oy = row0 % plane / geo->out_w, ox = row0 % geo->out_w;
    for (size_t i = 0; i < n_tiles * SF_QGEMM_MR; i++) {
        uint8_t *dst = a + i * SF_QGEMM_KCP;
        if (i >= n_rows) {
            memset(dst, 0, span);
            continue;
        }
        ptrdiff_t iy0 = (ptrdiff_t)(oy * geo->stride_h) - (ptrdiff_t)geo->pad_top;
        ptrdiff_t ix0 = (ptrdiff_t)(ox * geo->stride_w) - (ptrdiff_t)geo->pad_left;
        const uint8_t *img = ctx->x + b * geo->h * geo->w * in;
        size_t ky = tap0 / g->kw, kx = tap0 % g->kw, c = c0, done = 0;
        while (done < kl) {
            size_t len = in - c < kl - done ? in - c : kl - done;
            ptrdiff_t iy = iy0 + (ptrdiff_t)ky, ix = ix0 + (ptrdiff_t)kx;
            if (iy < 0 || ix < 0 || iy >= (ptrdiff_t)geo->h || ix >= (ptrdiff_t)geo->w)
                memset(dst + done, ctx->pad, len);
            else
                memcpy(dst + done, img + ((size_t)iy * geo->w + (size_t)ix) * in + c, len);
            done += len;
            c = 0;
            if (++kx == g->kw) {
                kx = 0;
                ky++;
            }
        }
        if (span > kl)
            memset(dst + kl, 0, span - kl);
        if (++ox == geo->out_w) {
            ox = 0;
            if (++oy == geo->out_h) {
                oy = 0;
                b++;
            }
        }
    }
}

static void sf_qgemm_worker(void *arg, size_t worker) {
    sf_qgemm_ctx *ctx = arg;
    const sf_qgemm *g = ctx->g;
    uint8_t *a = sf_qgemm_scratch();
    const size_t items = ctx->m_blocks * ctx->n_groups, n = g->out;
    (void)worker;
    if (!a)
        return; /* other workers take the items; sf_qgemm_run reports if none could */
    for (;;) {
        size_t item = atomic_fetch_add_explicit(&ctx->next, 1, memory_order_relaxed);
        if (item >= items)
            break;
        size_t mb = item / ctx->n_groups, ng = item % ctx->n_groups;
        size_t t0 = mb * ctx->m_tiles / ctx->m_blocks;
        size_t t1 = (mb + 1) * ctx->m_tiles / ctx->m_blocks;
        size_t row0 = t0 * SF_QGEMM_MR;
        size_t row1 = t1 * SF_QGEMM_MR < ctx->m ? t1 * SF_QGEMM_MR : ctx->m;
        size_t p0 = ng * g->panels / ctx->n_groups, p1 = (ng + 1) * g->panels / ctx->n_groups;
        for (size_t kb = 0; kb < ctx->k_blocks; kb++) {
            size_t k0 = kb * ctx->kc;
            size_t kl = g->k - k0 < ctx->kc ? g->k - k0 : ctx->kc;
            size_t kl4 = (kl + 3) / 4;
            int first = kb == 0, last = kb + 1 == ctx->k_blocks;
            sf_qgemm_pack(ctx, a, row0, row1 - row0, t1 - t0, k0, kl, kl4);
            for (size_t p = p0; p < p1; p++) {
                const int8_t *bp = g->packed + (p * g->k4 + k0) * SF_QGEMM_NR;
                size_t cols = n - p * SF_QGEMM_NR < SF_QGEMM_NR ? n - p * SF_QGEMM_NR
                                                                : SF_QGEMM_NR;
                const float *al = ctx->alpha ? ctx->alpha + p * SF_QGEMM_NR : NULL;
                const float *be = ctx->beta ? ctx->beta + p * SF_QGEMM_NR : NULL;
                for (size_t t = 0; t < t1 - t0; t++) {
                    size_t r0 = row0 + t * SF_QGEMM_MR;
                    size_t rows = row1 - r0 < SF_QGEMM_MR ? row1 - r0 : SF_QGEMM_MR;
                    const uint8_t *at = a + t * SF_QGEMM_MR * SF_QGEMM_KCP;
                    char *ct = ctx->y + (r0 * n + p * SF_QGEMM_NR) * 4;
#if SF_QGEMM_X86
                    if (g->vnni)
                        sf_qtile_vnni(kl4, at, bp, ct, n, rows, cols, first, last, al, be);
                    else
#endif
                        sf_qtile_ref(kl4, at, bp, ct, n, rows, cols, first, last, al, be);
                }
            }
        }
        atomic_fetch_add_explicit(&ctx->done, 1, memory_order_relaxed);
    }
}

sf_status sf_qgemm_run(const sf_qgemm *g, const sf_qgemm_geometry *geo, const uint8_t *x,
                       uint8_t pad_value, const float *alpha, const float *beta, void *y,
                       pthreadpool_t pool) {
    sf_qgemm_ctx ctx;
    size_t threads, workers, items;
    if (!g || !geo || !x || !y || (alpha && !beta))
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_run: NULL argument");
    if (g->vnni && !sf_qgemm_vnni_supported())
        return sf_error(SF_ERR_UNSUPPORTED, "sf_qgemm_run: this CPU has no AVX512-VNNI");
    memset(&ctx, 0, sizeof ctx);
    ctx.g = g;
    ctx.geo = geo;
    ctx.x = x;
    ctx.pad = pad_value;
    ctx.alpha = alpha;
    ctx.beta = beta;
    ctx.y = y;
    if (!sf_mul_n_ok(&ctx.m, 3, geo->batch, geo->out_h, geo->out_w) || ctx.m == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_run: bad output size");
    threads = pool ? pthreadpool_get_threads_count(pool) : 1;
    if (threads < 1)
        threads = 1;
    ctx.m_tiles = (ctx.m + SF_QGEMM_MR - 1) / SF_QGEMM_MR;
    ctx.m_blocks = (ctx.m_tiles + SF_QGEMM_TB - 1) / SF_QGEMM_TB;
    if (threads > 1) {
        ctx.m_blocks = (ctx.m_blocks + threads - 1) / threads * threads;
        if (ctx.m_blocks > ctx.m_tiles)
            ctx.m_blocks = ctx.m_tiles;
    }
    ctx.n_groups = 1;
    if (threads > 1 && ctx.m_blocks < 2 * threads) {
        /* few output rows (a linear layer on a few tokens): split the output channels too */
        ctx.n_groups = (4 * threads + ctx.m_blocks - 1) / ctx.m_blocks;
        if (ctx.n_groups > g->panels)
            ctx.n_groups = g->panels;
    }
    ctx.k_blocks = (g->k + SF_QGEMM_KC - 1) / SF_QGEMM_KC;
    ctx.kc = ((g->k + ctx.k_blocks - 1) / ctx.k_blocks + 3) / 4 * 4;
    items = ctx.m_blocks * ctx.n_groups;
    workers = items < threads ? items : threads;
    atomic_init(&ctx.next, 0);
    atomic_init(&ctx.done, 0);
    if (workers > 1)
        pthreadpool_parallelize_1d(pool, sf_qgemm_worker, &ctx, workers, 0);
    else
        sf_qgemm_worker(&ctx, 0);
    if (atomic_load(&ctx.done) != items)
        return sf_error(SF_ERR_OOM, "sf_qgemm_run: out of memory (%zu bytes of packing buffer "
                        "per thread)", SF_QGEMM_SCRATCH);
    return SF_OK;
}

sf_status sf_qgemm_u8s8_test(sf_qbackend backend, const uint8_t *a, const int8_t *b, size_t m,
                             size_t n, size_t k, int32_t *c) {
    sf_status st = SF_OK;
    sf_qgemm *g = NULL;
    pthreadpool_t pool = NULL;
    int computing = 0;
    if (!a || !b || !c || !m || !n || !k)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_u8s8_test: NULL pointer or zero size");
    if (backend != SF_QBACKEND_VNNI && backend != SF_QBACKEND_REFERENCE)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_u8s8_test: backend must be vnni or "
                        "reference");
    SF_CHECK(sf_qgemm_create(k, n, 1, 1, b, backend == SF_QBACKEND_VNNI, &g));
    SF_CHECK(sf_compute_begin(&pool));
    computing = 1;
    sf_qgemm_geometry geo = {m, 1, 1, 1, 1, 1, 1, 0, 0};
    SF_CHECK(sf_qgemm_run(g, &geo, a, 0, NULL, NULL, c, pool));
fail:
    if (computing)
        sf_compute_end();
    sf_qgemm_destroy(g);
    return st;
}
