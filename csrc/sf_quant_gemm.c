/*
 * sf_quant_gemm.c — the int8 implicit-GEMM convolution of the quantized layers: an AVX512-VNNI
 * micro-kernel (vpdpbusd: 4 products of unsigned activation bytes and signed weight bytes
 * summed into each int32 lane), and the same blocked algorithm in portable C.
 *
 * An AMX-INT8 kernel (tdpbusd on 16 x 64-byte tiles) runs the same packed data where the CPU
 * and OS offer it: a tile of 16 packed rows is 16 pixels x 64 reduction bytes at the row stride
 * SF_QGEMM_KCP, and 16 columns of a weight panel are 16 groups of 4 reduction steps at a stride
 * of 128 bytes, exactly the B operand tdpbusd expects.
 *
 * Layout:
 *   K = kh * kw * in, k = (ky * kw + kx) * in + c (the order of an NHWC patch), padded to K4, a
 *   multiple of 64. Packed weights: panels of SF_QGEMM_NR = 32 output channels,
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
#define SF_QGEMM_AMX_MR 16 /* output pixels per AMX tile (tile rows) */
#define SF_QGEMM_SCRATCH ((size_t)SF_QGEMM_TB * SF_QGEMM_AMX_MR * SF_QGEMM_KCP)
#define SF_QGEMM_MAX_K 65536 /* 255 * 128 * K < 2^31 */

struct sf_qgemm {
    size_t in, out, k, k4;
    uint32_t kh, kw;
    size_t panels;
    int isa;         /* SF_QGEMM_REF, SF_QGEMM_VNNI or SF_QGEMM_AMX */
    int8_t *packed;  /* [panels][k4 / 4][NR][4] */
    int32_t *colsum; /* (out,) */
};

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

int sf_qgemm_amx_supported(void) {
    return sf_qgemm_vnni_supported() && sf_amx_supported(SF_AMX_INT8);
}

static int sf_qgemm_isa_supported(int isa) {
    return isa == SF_QGEMM_REF || (isa == SF_QGEMM_VNNI && sf_qgemm_vnni_supported()) ||
           (isa == SF_QGEMM_AMX && sf_qgemm_amx_supported());
}

sf_status sf_qgemm_create(size_t in, size_t out, uint32_t kh, uint32_t kw, const int8_t *weight,
                          int isa, sf_qgemm **out_gemm) {
    sf_status st = SF_OK;
    sf_qgemm *g = NULL;
    size_t k, k4, panels, bytes;
    if (!out_gemm)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_create: out_gemm is NULL");
    *out_gemm = NULL;
    if (!weight || in == 0 || out == 0 || kh == 0 || kw == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_create: NULL weight or zero size");
    if (isa != SF_QGEMM_REF && isa != SF_QGEMM_VNNI && isa != SF_QGEMM_AMX)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_create: unknown kernel %d", isa);
    if (!sf_qgemm_isa_supported(isa))
        return sf_error(SF_ERR_UNSUPPORTED, "sf_qgemm_create: this CPU (or OS) cannot run the "
                        "%s kernel", isa == SF_QGEMM_AMX ? "AMX-INT8" : "AVX512-VNNI");
    if (!sf_mul_n_ok(&k, 3, in, (size_t)kh, (size_t)kw) || k > SF_QGEMM_MAX_K)
        return sf_error(SF_ERR_UNSUPPORTED, "sf_qgemm_create: %zu x %u x %u reduction steps "
                        "exceed %d (int32 accumulators could overflow)", in, kh, kw,
                        SF_QGEMM_MAX_K);
    k4 = (k + 63) / 64 * 64; /* whole AMX tiles of 64 reduction bytes (SD's K all are) */
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
    g->isa = isa;
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
/* AMX: tile registers 0-3 hold the int32 accumulators of up to 32 rows x 32 columns (tile
 * 2 * r + h: row tile r, column half h), 4-5 the two row tiles of activations, 6-7 the two
 * column halves of the weight panel (sf_amx_begin's configuration). */

/* Copy a rows x cols block of int32 between memory at row stride ld (elements) and a dense
 * 16 x 16 buffer (zero elsewhere when filling the buffer). */
__attribute__((target("avx512f"))) static void sf_amx_gather(int32_t buf[256], const char *c,
                                                             size_t ld, size_t rows,
                                                             __mmask16 m) {
    for (size_t r = 0; r < 16; r++)
        _mm512_store_si512((void *)(buf + 16 * r),
                           r < rows ? _mm512_maskz_loadu_epi32(m, c + r * ld * 4)
                                    : _mm512_setzero_si512());
}

/* Finish one 16 x 16 accumulator tile held in buf: y = alpha * acc + beta as float, or the
 * int32 partial sums, for rows x (mask m) elements at c. */
__attribute__((target("avx512f"))) static void sf_amx_scatter(const int32_t buf[256], char *c,
                                                              size_t ld, size_t rows,
                                                              __mmask16 m, int finish,
                                                              const float *alpha,
                                                              const float *beta) {
    if (finish) {
        __m512 al = _mm512_maskz_loadu_ps(m, alpha), be = _mm512_maskz_loadu_ps(m, beta);
        for (size_t r = 0; r < rows; r++) {
            __m512 acc = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(buf + 16 * r)));
            _mm512_mask_storeu_ps(c + r * ld * 4, m, _mm512_fmadd_ps(acc, al, be));
        }
    } else {
        for (size_t r = 0; r < rows; r++)
            _mm512_mask_storeu_epi32(c + r * ld * 4, m,
                                     _mm512_load_si512((const void *)(buf + 16 * r)));
    }
}

#define SF_AMX_LOAD_ACC(T, R, H)                                                            \
    do {                                                                                    \
        size_t rr_ = rows > 16 * (R) ? rows - 16 * (R) : 0;                                 \
        char *ct_ = cb + ((size_t)16 * (R) * ldc + 16 * (H)) * 4;                           \
        __mmask16 m_ = (H) ? m1 : m0;                                                       \
        if (first) {                                                                        \
            _tile_zero(T);                                                                  \
        } else if (rr_ >= 16 && m_ == 0xffff) {                                             \
            _tile_loadd(T, ct_, ldc * 4);                                                   \
        } else {                                                                            \
            sf_amx_gather(buf, ct_, ldc, rr_ < 16 ? rr_ : 16, m_);                          \
            SF_AMX_BARRIER();                                                               \
            _tile_loadd(T, buf, 64);                                                        \
        }                                                                                   \
    } while (0)

#define SF_AMX_STORE_ACC(T, R, H)                                                           \
    do {                                                                                    \
        size_t rr_ = rows > 16 * (R) ? rows - 16 * (R) : 0;                                 \
        char *ct_ = cb + ((size_t)16 * (R) * ldc + 16 * (H)) * 4;                           \
        __mmask16 m_ = (H) ? m1 : m0;                                                       \
        if (!finish && rr_ >= 16 && m_ == 0xffff) {                                         \
            _tile_stored(T, ct_, ldc * 4);                                                  \
        } else if (rr_ > 0 && m_ != 0) {                                                    \
            _tile_stored(T, buf, 64);                                                       \
            SF_AMX_BARRIER();                                                               \
            sf_amx_scatter(buf, ct_, ldc, rr_ < 16 ? rr_ : 16, m_, finish,                  \
                           alpha + 16 * (H), beta + 16 * (H));                              \
        }                                                                                   \
    } while (0)

/* One or two row tiles (16 packed rows each at stride SF_QGEMM_KCP; `rows` of them are real)
 * times one panel (cols <= 32 real columns), kc64 steps of 64 reduction bytes; the same
 * first/last contract as the other kernels. Needs sf_amx_begin() on this thread. */
__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"))) static void
sf_qtile_amx(size_t kc64, const uint8_t *restrict a, int two, const int8_t *restrict b, void *c,
             size_t ldc, size_t rows, size_t cols, int first, int last, const float *alpha,
             const float *beta) {
    int32_t buf[256] __attribute__((aligned(64)));
    char *cb = c;
    const int finish = last && alpha;
    __mmask16 m0 = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1u);
    __mmask16 m1 = cols >= 32 ? (__mmask16)0xffff
                   : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1u)
                               : (__mmask16)0;
    SF_AMX_BARRIER(); /* the packed rows, weights and partial sums are in memory */
    SF_AMX_LOAD_ACC(0, 0, 0);
    SF_AMX_LOAD_ACC(1, 0, 1);
    if (two) {
        SF_AMX_LOAD_ACC(2, 1, 0);
        SF_AMX_LOAD_ACC(3, 1, 1);
        for (size_t k = 0; k < kc64; k++) {
            _tile_loadd(6, b + k * 2048, 128);
            _tile_loadd(7, b + k * 2048 + 64, 128);
            _tile_loadd(4, a + k * 64, SF_QGEMM_KCP);
            _tile_loadd(5, a + 16 * SF_QGEMM_KCP + k * 64, SF_QGEMM_KCP);
            _tile_dpbusd(0, 4, 6);
            _tile_dpbusd(1, 4, 7);
            _tile_dpbusd(2, 5, 6);
            _tile_dpbusd(3, 5, 7);
        }
        SF_AMX_STORE_ACC(2, 1, 0);
        SF_AMX_STORE_ACC(3, 1, 1);
    } else {
        for (size_t k = 0; k < kc64; k++) {
            _tile_loadd(6, b + k * 2048, 128);
            _tile_loadd(7, b + k * 2048 + 64, 128);
            _tile_loadd(4, a + k * 64, SF_QGEMM_KCP);
            _tile_dpbusd(0, 4, 6);
            _tile_dpbusd(1, 4, 7);
        }
    }
    SF_AMX_STORE_ACC(0, 0, 0);
    SF_AMX_STORE_ACC(1, 0, 1);
    SF_AMX_BARRIER(); /* the outputs are in memory */
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
    sf_gemm_split sp; /* tiles of SF_QGEMM_MR rows, or SF_QGEMM_AMX_MR for AMX */
    atomic_size_t next, done;
} sf_qgemm_ctx;

/* Pack output rows [row0, row0 + n_rows) (zero rows up to n_tiles * mr) for the reduction
 * steps [k0, k0 + kl), padded with zeros to span bytes. */
static void sf_qgemm_pack(const sf_qgemm_ctx *ctx, uint8_t *a, size_t row0, size_t n_rows,
                          size_t n_tiles, size_t k0, size_t kl, size_t span) {
    const sf_qgemm *g = ctx->g;
    const sf_qgemm_geometry *geo = ctx->geo;
    const size_t in = g->in, plane = geo->out_h * geo->out_w;
    const size_t tap0 = k0 / in, c0 = k0 % in;
    size_t b = row0 / plane, oy = row0 % plane / geo->out_w, ox = row0 % geo->out_w;
    for (size_t i = 0; i < n_tiles * ctx->sp.mr; i++) {
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
    uint8_t *a = sf_thread_scratch(SF_SCRATCH_QGEMM_PACK, SF_QGEMM_SCRATCH);
    const size_t items = ctx->sp.items, n = g->out, mr = ctx->sp.mr;
    (void)worker;
    if (!a)
        return; /* other workers take the items; sf_qgemm_run reports if none could */
#if SF_QGEMM_X86
    if (g->isa == SF_QGEMM_AMX)
        sf_amx_begin();
#endif
    for (;;) {
        size_t item = atomic_fetch_add_explicit(&ctx->next, 1, memory_order_relaxed);
        if (item >= items)
            break;
        size_t t0, t1, row0, row1, p0, p1;
        sf_gemm_split_item(&ctx->sp, item, &t0, &t1, &row0, &row1, &p0, &p1);
        for (size_t kb = 0; kb < ctx->sp.k_blocks; kb++) {
            size_t k0 = kb * ctx->sp.kc;
            size_t kl = g->k - k0 < ctx->sp.kc ? g->k - k0 : ctx->sp.kc;
            size_t kl4 = (kl + 3) / 4, kl64 = (kl + 63) / 64;
            int first = kb == 0, last = kb + 1 == ctx->sp.k_blocks;
            sf_qgemm_pack(ctx, a, row0, row1 - row0, t1 - t0, k0, kl,
                          g->isa == SF_QGEMM_AMX ? kl64 * 64 : kl4 * 4);
            for (size_t p = p0; p < p1; p++) {
                const int8_t *bp = g->packed + (p * g->k4 + k0) * SF_QGEMM_NR;
                size_t cols = n - p * SF_QGEMM_NR < SF_QGEMM_NR ? n - p * SF_QGEMM_NR
                                                                : SF_QGEMM_NR;
                const float *al = ctx->alpha ? ctx->alpha + p * SF_QGEMM_NR : NULL;
                const float *be = ctx->beta ? ctx->beta + p * SF_QGEMM_NR : NULL;
#if SF_QGEMM_X86
                if (g->isa == SF_QGEMM_AMX) {
                    for (size_t t = 0; t < t1 - t0; t += 2) {
                        size_t r0 = row0 + t * mr;
                        size_t rows = row1 - r0 < 2 * mr ? row1 - r0 : 2 * mr;
                        sf_qtile_amx(kl64, a + t * mr * SF_QGEMM_KCP, t + 1 < t1 - t0, bp,
                                     ctx->y + (r0 * n + p * SF_QGEMM_NR) * 4, n, rows, cols,
                                     first, last, al, be);
                    }
                    continue;
                }
#endif
                for (size_t t = 0; t < t1 - t0; t++) {
                    size_t r0 = row0 + t * mr;
                    size_t rows = row1 - r0 < mr ? row1 - r0 : mr;
                    const uint8_t *at = a + t * mr * SF_QGEMM_KCP;
                    char *ct = ctx->y + (r0 * n + p * SF_QGEMM_NR) * 4;
#if SF_QGEMM_X86
                    if (g->isa == SF_QGEMM_VNNI)
                        sf_qtile_vnni(kl4, at, bp, ct, n, rows, cols, first, last, al, be);
                    else
#endif
                        sf_qtile_ref(kl4, at, bp, ct, n, rows, cols, first, last, al, be);
                }
            }
        }
        atomic_fetch_add_explicit(&ctx->done, 1, memory_order_relaxed);
    }
#if SF_QGEMM_X86
    if (g->isa == SF_QGEMM_AMX)
        sf_amx_end();
#endif
}

sf_status sf_qgemm_run(const sf_qgemm *g, const sf_qgemm_geometry *geo, const uint8_t *x,
                       uint8_t pad_value, const float *alpha, const float *beta, void *y,
                       pthreadpool_t pool) {
    sf_qgemm_ctx ctx;
    size_t m;
    if (!g || !geo || !x || !y || (alpha && !beta))
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_run: NULL argument");
    if (!sf_qgemm_isa_supported(g->isa))
        return sf_error(SF_ERR_UNSUPPORTED, "sf_qgemm_run: this CPU cannot run the layer's "
                        "kernel");
    memset(&ctx, 0, sizeof ctx);
    ctx.g = g;
    ctx.geo = geo;
    ctx.x = x;
    ctx.pad = pad_value;
    ctx.alpha = alpha;
    ctx.beta = beta;
    ctx.y = y;
    if (!sf_mul_n_ok(&m, 3, geo->batch, geo->out_h, geo->out_w) || m == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_run: bad output size");
    sf_gemm_split_make(m, g->isa == SF_QGEMM_AMX ? SF_QGEMM_AMX_MR : SF_QGEMM_MR, SF_QGEMM_TB,
                       g->panels, g->k, SF_QGEMM_KC, 64,
                       pool ? pthreadpool_get_threads_count(pool) : 1, &ctx.sp);
    atomic_init(&ctx.next, 0);
    atomic_init(&ctx.done, 0);
    if (ctx.sp.workers > 1)
        pthreadpool_parallelize_1d(pool, sf_qgemm_worker, &ctx, ctx.sp.workers, 0);
    else
        sf_qgemm_worker(&ctx, 0);
    if (atomic_load(&ctx.done) != ctx.sp.items)
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
    if (backend != SF_QBACKEND_AMX && backend != SF_QBACKEND_VNNI &&
        backend != SF_QBACKEND_REFERENCE)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qgemm_u8s8_test: backend must be amx, vnni or "
                        "reference");
    SF_CHECK(sf_qgemm_create(k, n, 1, 1, b, sf_qgemm_isa_of(backend), &g));
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
