/*
 * sf_xnn_winograd.c — Winograd F(2x2, 3x3) convolution on the own GEMM (see sf_xnn_winograd.h).
 *
 * Matrices (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015):
 *   B^T = [1  0 -1  0]     G = [  1    0    0 ]     A^T = [1  1  1  0]
 *         [0  1  1  0]         [ 1/2  1/2  1/2]           [0  1 -1 -1]
 *         [0 -1  1  0]         [ 1/2 -1/2  1/2]
 *         [0  1  0 -1]         [  0    0    1 ]
 * Output tile (2x2) = A^T [ (G g G^T) .* (B^T d B) ] A for a 4x4 input tile d and a 3x3 kernel g,
 * summed over input channels: the sum over channels of position k = 4i + j of the 4x4
 * transformed tile is a GEMM, M[k] = V[k] U[k].
 *
 * Layout of one chunk of `nt` tiles (tiles are numbered over (image, tile row, tile column)):
 *   V: [16][cap][in]   transformed input, row t of plane k = position k of tile t
 *   M: [16][cap][out]  GEMM results
 * Each plane is the (rows x channels) input or output of a 1x1 "convolution" for sf_gemm_run.
 * A run is one pool call: each thread takes chunks of tiles from a shared counter and does each
 * whole (input transform, the 16 GEMMs on its own thread, output transform) in its own scratch,
 * so that threads never wait for each other before the end (a first version with three
 * parallel steps per chunk ran 2-5x slower than the direct convolution on 2 threads when the
 * machine was shared: every step waited for the slowest, or a descheduled, thread). The
 * channel loops of the transforms use AVX-512 for blocks of 16 channels and plain C for the
 * rest (and everywhere on other CPUs). Every output is computed the same way whatever the
 * thread count and chunking.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "sf_xnn_winograd.h"

#if defined(__x86_64__) && !defined(SF_GEMM_PORTABLE_ONLY)
#include <immintrin.h>
#define SF_WINO_X86 1
#else
#define SF_WINO_X86 0
#endif

/* Chunks of tiles (rows of the 16 GEMMs), a multiple of the GEMM's 12-row register tiles: as
 * many as fit in SF_WINO_SCRATCH bytes of V and M per thread, within [SF_WINO_MIN_TILES,
 * SF_WINO_MAX_TILES] (96 is the GEMM's block of rows; each chunk reads all 16 weight matrices
 * once). Measured on one thread: 48 to 192 tiles within 5 % for 320 to 640 channels, but 1920
 * -> 640 channels 12 % slower at 48 than at 96 tiles and 33 % at 24; 8 MB gives 96 tiles up to
 * 640 + 640 channels and 48 at 1920 + 640. */
#define SF_WINO_MR 12
#ifndef SF_WINO_SCRATCH
#define SF_WINO_SCRATCH ((size_t)8 << 20)
#endif
#define SF_WINO_MIN_TILES 48
#define SF_WINO_MAX_TILES 96

struct sf_wino {
    size_t in, out;
    sf_gemm *gemm[16]; /* position k = 4i + j: (in x out) matrix U[k] */
    float *bias;       /* out floats (zeros without a bias) */
    float *zeros;      /* in floats of zeros: the channels of a pixel in the padding */
    float out_min, out_max;
    int clamp;
    int avx512;
};

sf_wino_mode sf_wino_env_mode(void) {
    const char *env = getenv("SNAPFUSION_WINOGRAD");
    if (env && strcmp(env, "0") == 0)
        return SF_WINO_OFF;
    if (env && strcmp(env, "force") == 0)
        return SF_WINO_FORCE;
    return SF_WINO_AUTO;
}

static bool sf_wino_cpu_avx512(void) {
#if SF_WINO_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
#else
    return false;
#endif
}

/* ---- creation ---------------------------------------------------------------------------- */

sf_status sf_wino_create(size_t in, size_t out, const float *weight, const float *bias,
                         float out_min, float out_max, sf_wino **out_wino) {
    static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
    sf_status st = SF_OK;
    sf_wino *w = NULL;
    float *u = NULL;
    size_t n;
    if (!out_wino)
        return sf_error(SF_ERR_INVALID_ARG, "sf_wino_create: out is NULL");
    *out_wino = NULL;
    if (!weight || in == 0 || out == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_wino_create: bad arguments");
    if (!sf_mul_n_ok(&n, 4, in, out, (size_t)4, sizeof(float)))
        return sf_error(SF_ERR_INVALID_ARG, "sf_wino_create: weights of %zu x %zu x 3 x 3 "
                        "floats overflow size_t", out, in);
    w = calloc(1, sizeof *w);
    if (!w)
        SF_FAIL(SF_ERR_OOM, "sf_wino_create: out of memory");
    w->in = in;
    w->out = out;
    w->out_min = out_min;
    w->out_max = out_max;
    w->clamp = !(out_min == -INFINITY && out_max == INFINITY);
    w->avx512 = sf_wino_cpu_avx512();
    w->bias = sf_aligned_alloc(out * sizeof(float));
    w->zeros = sf_aligned_alloc(in * sizeof(float));
    u = malloc(n);
    if (!w->bias || !w->zeros || !u)
        SF_FAIL(SF_ERR_OOM, "sf_wino_create: out of memory (%zu bytes)", n);
    memset(w->zeros, 0, in * sizeof(float));
    if (bias)
        memcpy(w->bias, bias, out * sizeof(float));
    else
        memset(w->bias, 0, out * sizeof(float));
    /* U[k][o][c] = (G g[o][c] G^T)[i][j], k = 4i + j, in double (exact but for the last
     * rounding to float); one row i of positions at a time (one pass over the weights), packed
     * (as the (out, in, 1, 1) weights of a 1x1 convolution) before the next */
    for (int i = 0; i < 4; i++) {
        for (size_t o = 0; o < out; o++)
            for (size_t c = 0; c < in; c++) {
                const float *g = weight + (o * in + c) * 9;
                double r[3];
                for (int b = 0; b < 3; b++)
                    r[b] = G[i][0] * g[b] + G[i][1] * g[3 + b] + G[i][2] * g[6 + b];
                for (int j = 0; j < 4; j++)
                    u[(size_t)j * in * out + o * in + c] =
                        (float)(G[j][0] * r[0] + G[j][1] * r[1] + G[j][2] * r[2]);
            }
        for (int j = 0; j < 4; j++)
            SF_CHECK(sf_gemm_create(in, out, 1, 1, u + (size_t)j * in * out, NULL, -INFINITY,
                                    INFINITY, &w->gemm[4 * i + j]));
    }
    free(u);
    *out_wino = w;
    return SF_OK;
fail:
    free(u);
    sf_wino_destroy(w);
    return st;
}

void sf_wino_destroy(sf_wino *w) {
    if (!w)
        return;
    for (int k = 0; k < 16; k++)
        sf_gemm_destroy(w->gemm[k]);
    sf_aligned_free(w->bias);
    sf_aligned_free(w->zeros);
    free(w);
}

/* ---- transforms -------------------------------------------------------------------------- */

/* V = B^T d B for channels [c0, n): s[4r + q] points to the channels of input pixel (r, q) of
 * the tile; position k of the result goes to d + k * ps. */
static void sf_wino_input_c(const float *const *s, float *d, size_t ps, size_t c0, size_t n) {
    for (size_t c = c0; c < n; c++) {
        float t[4][4];
        for (int q = 0; q < 4; q++) {
            float d0 = s[q][c], d1 = s[4 + q][c], d2 = s[8 + q][c], d3 = s[12 + q][c];
            t[0][q] = d0 - d2;
            t[1][q] = d1 + d2;
            t[2][q] = d2 - d1;
            t[3][q] = d1 - d3;
        }
        for (int r = 0; r < 4; r++) {
            d[(4 * r + 0) * ps + c] = t[r][0] - t[r][2];
            d[(4 * r + 1) * ps + c] = t[r][1] + t[r][2];
            d[(4 * r + 2) * ps + c] = t[r][2] - t[r][1];
            d[(4 * r + 3) * ps + c] = t[r][1] - t[r][3];
        }
    }
}

/* y = A^T m A + bias, clamped, for channels [c0, n): m + k * ps holds position k; y[2r + q] is
 * output pixel (r, q) of the tile, NULL if cropped. */
static void sf_wino_output_c(const float *m, size_t ps, float *const *y, const float *bias,
                             int clamp, float lo, float hi, size_t c0, size_t n) {
    for (size_t c = c0; c < n; c++) {
        float s[2][4], v[4];
        for (int q = 0; q < 4; q++) {
            float m0 = m[q * ps + c], m1 = m[(4 + q) * ps + c];
            float m2 = m[(8 + q) * ps + c], m3 = m[(12 + q) * ps + c];
            s[0][q] = m0 + m1 + m2;
            s[1][q] = m1 - m2 - m3;
        }
        for (int r = 0; r < 2; r++) {
            v[2 * r + 0] = s[r][0] + s[r][1] + s[r][2];
            v[2 * r + 1] = s[r][1] - s[r][2] - s[r][3];
        }
        for (int k = 0; k < 4; k++) {
            float a = v[k] + bias[c];
            if (clamp) {
                /* as the GEMM: NaN stays NaN */
                a = a < lo ? lo : a;
                a = a > hi ? hi : a;
            }
            if (y[k])
                y[k][c] = a;
        }
    }
}

#if SF_WINO_X86
/* The AVX-512 versions for whole blocks of 16 channels; return the channels done. */
__attribute__((target("avx512f"))) static size_t
sf_wino_input_avx512(const float *const *s, float *d, size_t ps, size_t n) {
    size_t c = 0;
    for (; c + 16 <= n; c += 16) {
        __m512 t[4][4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            __m512 d0 = _mm512_loadu_ps(s[q] + c), d1 = _mm512_loadu_ps(s[4 + q] + c);
            __m512 d2 = _mm512_loadu_ps(s[8 + q] + c), d3 = _mm512_loadu_ps(s[12 + q] + c);
            t[0][q] = _mm512_sub_ps(d0, d2);
            t[1][q] = _mm512_add_ps(d1, d2);
            t[2][q] = _mm512_sub_ps(d2, d1);
            t[3][q] = _mm512_sub_ps(d1, d3);
        }
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            _mm512_storeu_ps(d + (4 * r + 0) * ps + c, _mm512_sub_ps(t[r][0], t[r][2]));
            _mm512_storeu_ps(d + (4 * r + 1) * ps + c, _mm512_add_ps(t[r][1], t[r][2]));
            _mm512_storeu_ps(d + (4 * r + 2) * ps + c, _mm512_sub_ps(t[r][2], t[r][1]));
            _mm512_storeu_ps(d + (4 * r + 3) * ps + c, _mm512_sub_ps(t[r][1], t[r][3]));
        }
    }
    return c;
}

__attribute__((target("avx512f"))) static size_t
sf_wino_output_avx512(const float *m, size_t ps, float *const *y, const float *bias, int clamp,
                      float lo, float hi, size_t n) {
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    size_t c = 0;
    for (; c + 16 <= n; c += 16) {
        __m512 s[2][4], v[4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            __m512 m0 = _mm512_loadu_ps(m + q * ps + c), m1 = _mm512_loadu_ps(m + (4 + q) * ps + c);
            __m512 m2 = _mm512_loadu_ps(m + (8 + q) * ps + c);
            __m512 m3 = _mm512_loadu_ps(m + (12 + q) * ps + c);
            s[0][q] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
            s[1][q] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        __m512 b = _mm512_loadu_ps(bias + c);
#pragma GCC unroll 2
        for (int r = 0; r < 2; r++) {
            v[2 * r + 0] = _mm512_add_ps(_mm512_add_ps(s[r][0], s[r][1]), s[r][2]);
            v[2 * r + 1] = _mm512_sub_ps(_mm512_sub_ps(s[r][1], s[r][2]), s[r][3]);
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m512 a = _mm512_add_ps(v[k], b);
            if (clamp) /* max/min return the second operand (a) when it is NaN */
                a = _mm512_min_ps(vhi, _mm512_max_ps(vlo, a));
            if (y[k])
                _mm512_storeu_ps(y[k] + c, a);
        }
    }
    return c;
}
#endif /* SF_WINO_X86 */

/* ---- run --------------------------------------------------------------------------------- */

typedef struct {
    const sf_wino *w;
    const sf_gemm_geometry *geo;
    const float *x;
    float *y;
    size_t tiles_w, tiles_plane; /* tiles per row, per image */
    size_t n_tiles, chunk, n_chunks;
    size_t scratch_bytes;        /* per thread: V and M of one chunk */
    atomic_size_t next;          /* next chunk */
    atomic_size_t done;          /* chunks completed */
} sf_wino_ctx;

/* V (plane k at v + k * cap * in, row i) of tile t. */
static void sf_wino_input_tile(const sf_wino_ctx *ctx, size_t t, float *v, size_t cap) {
    const sf_wino *w = ctx->w;
    const sf_gemm_geometry *geo = ctx->geo;
    const size_t in = w->in;
    const size_t b = t / ctx->tiles_plane, ty = t % ctx->tiles_plane / ctx->tiles_w;
    const size_t tx = t % ctx->tiles_w;
    const ptrdiff_t iy0 = (ptrdiff_t)(2 * ty) - (ptrdiff_t)geo->pad_top;
    const ptrdiff_t ix0 = (ptrdiff_t)(2 * tx) - (ptrdiff_t)geo->pad_left;
    const float *img = ctx->x + b * geo->h * geo->w * in;
    const float *s[16];
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) {
            ptrdiff_t iy = iy0 + r, ix = ix0 + q;
            s[4 * r + q] = iy < 0 || ix < 0 || iy >= (ptrdiff_t)geo->h || ix >= (ptrdiff_t)geo->w
                               ? w->zeros
                               : img + ((size_t)iy * geo->w + (size_t)ix) * in;
        }
    size_t done = 0;
#if SF_WINO_X86
    if (w->avx512)
        done = sf_wino_input_avx512(s, v, cap * in, in);
#endif
    sf_wino_input_c(s, v, cap * in, done, in);
}

/* The outputs of tile t from M (plane k at m + k * cap * out, row i). */
static void sf_wino_output_tile(const sf_wino_ctx *ctx, size_t t, const float *m, size_t cap) {
    const sf_wino *w = ctx->w;
    const sf_gemm_geometry *geo = ctx->geo;
    const size_t out = w->out;
    const size_t b = t / ctx->tiles_plane, ty = t % ctx->tiles_plane / ctx->tiles_w;
    const size_t tx = t % ctx->tiles_w;
    float *img = ctx->y + b * geo->out_h * geo->out_w * out;
    float *y[4];
    for (int r = 0; r < 2; r++)
        for (int q = 0; q < 2; q++) {
            size_t oy = 2 * ty + (size_t)r, ox = 2 * tx + (size_t)q;
            y[2 * r + q] = oy < geo->out_h && ox < geo->out_w
                               ? img + (oy * geo->out_w + ox) * out
                               : NULL;
        }
    size_t done = 0;
#if SF_WINO_X86
    if (w->avx512)
        done = sf_wino_output_avx512(m, cap * out, y, w->bias, w->clamp, w->out_min, w->out_max,
                                     out);
#endif
    sf_wino_output_c(m, cap * out, y, w->bias, w->clamp, w->out_min, w->out_max, done, out);
}

/* One pool task: chunks taken from a shared counter, each done whole on this thread (input
 * transform, 16 GEMMs, output transform) in this thread's scratch: no waiting on other threads
 * between the steps, and a thread that starts late or runs slower takes fewer chunks. */
static void sf_wino_worker(void *arg, size_t worker) {
    sf_wino_ctx *ctx = arg;
    const sf_wino *w = ctx->w;
    const size_t cap = ctx->chunk;
    (void)worker;
    float *v = sf_thread_scratch(SF_SCRATCH_WINOGRAD, ctx->scratch_bytes);
    if (!v)
        return; /* the other workers take the chunks; sf_wino_run reports if none could */
    float *m = v + 16 * cap * w->in;
    for (;;) {
        size_t c = atomic_fetch_add_explicit(&ctx->next, 1, memory_order_relaxed);
        if (c >= ctx->n_chunks)
            break;
        const size_t t0 = c * cap;
        const size_t nt = ctx->n_tiles - t0 < cap ? ctx->n_tiles - t0 : cap;
        for (size_t i = 0; i < nt; i++)
            sf_wino_input_tile(ctx, t0 + i, v + i * w->in, cap);
        sf_gemm_geometry g = {1, nt, 1, nt, 1, 1, 1, 0, 0};
        for (int k = 0; k < 16; k++)
            if (sf_gemm_run(w->gemm[k], &g, v + k * cap * w->in, m + k * cap * w->out, NULL) !=
                SF_OK)
                return; /* out of memory for this thread's packing buffer */
        for (size_t i = 0; i < nt; i++)
            sf_wino_output_tile(ctx, t0 + i, m + i * w->out, cap);
        atomic_fetch_add_explicit(&ctx->done, 1, memory_order_relaxed);
    }
}

sf_status sf_wino_run(const sf_wino *w, const sf_gemm_geometry *geo, const float *x, float *y,
                      pthreadpool_t pool) {
    sf_wino_ctx ctx;
    if (!w || !geo || !x || !y)
        return sf_error(SF_ERR_INVALID_ARG, "sf_wino_run: NULL argument");
    if (geo->stride_h != 1 || geo->stride_w != 1 || geo->batch == 0 || geo->out_h == 0 ||
        geo->out_w == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_wino_run: needs stride 1 and a non-empty "
                        "output");
    memset(&ctx, 0, sizeof ctx);
    ctx.w = w;
    ctx.geo = geo;
    ctx.x = x;
    ctx.y = y;
    ctx.tiles_w = (geo->out_w + 1) / 2;
    ctx.tiles_plane = (geo->out_h + 1) / 2 * ctx.tiles_w;
    /* at most one tile per output pixel: no overflow (the output's size was checked) */
    ctx.n_tiles = geo->batch * ctx.tiles_plane;
    const size_t tile_bytes = 16 * (w->in + w->out) * sizeof(float);
    size_t threads = pool ? pthreadpool_get_threads_count(pool) : 1;
    if (threads < 1)
        threads = 1;
    /* chunks: what fits in SF_WINO_SCRATCH, within [SF_WINO_MIN_TILES, SF_WINO_MAX_TILES]
     * tiles; their number rounded up to a multiple of the thread count (equal shares, down to
     * one register tile of 12 rows per chunk), then their size evened out */
    size_t chunk = SF_WINO_SCRATCH / tile_bytes / SF_WINO_MR * SF_WINO_MR;
    chunk = chunk < SF_WINO_MIN_TILES ? SF_WINO_MIN_TILES
            : chunk > SF_WINO_MAX_TILES ? SF_WINO_MAX_TILES : chunk;
    size_t n_chunks = (ctx.n_tiles + chunk - 1) / chunk;
    const size_t most = (ctx.n_tiles + SF_WINO_MR - 1) / SF_WINO_MR;
    n_chunks = (n_chunks + threads - 1) / threads * threads;
    if (n_chunks > most)
        n_chunks = most;
    chunk = ((ctx.n_tiles + n_chunks - 1) / n_chunks + SF_WINO_MR - 1) / SF_WINO_MR * SF_WINO_MR;
    ctx.chunk = chunk;
    ctx.n_chunks = (ctx.n_tiles + chunk - 1) / chunk;
    ctx.scratch_bytes = chunk * tile_bytes;
    atomic_init(&ctx.next, 0);
    atomic_init(&ctx.done, 0);
    const size_t workers = ctx.n_chunks < threads ? ctx.n_chunks : threads;
    if (workers > 1)
        pthreadpool_parallelize_1d(pool, sf_wino_worker, &ctx, workers, 0);
    else
        sf_wino_worker(&ctx, 0);
    if (atomic_load(&ctx.done) != ctx.n_chunks)
        return sf_error(SF_ERR_OOM, "sf_wino_run: out of memory (%zu bytes of scratch per "
                        "thread, or the GEMM's packing buffer)", ctx.scratch_bytes);
    return SF_OK;
}
