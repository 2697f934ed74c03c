/*
 * sf_attention.c — memory-efficient multi-head scaled-dot-product attention.
 *
 * Flash-attention style. A work item is a block of up to ATT_NSUB_MAX * ATT_QB queries of one
 * (batch, head), cut into sub-tiles of ATT_QB queries; the keys are walked in equal tiles of
 * at most ATT_KB rows. Each key tile (and its value tile) is copied once into the thread's
 * slot and then used by every sub-tile of the block, which keeps a running maximum and a
 * running sum per query (online softmax) and rescales its output accumulator when the maximum
 * grows. Scratch memory is one slot per thread: O(block * head_dim + ATT_KB * (head_dim +
 * ATT_QB)), never O(q_len * kv_len).
 *
 * Everything is computed transposed, with the queries along the vector lanes:
 *
 *     S^T[j, i] = sum_d K[j, d] * Qt[d, i]          (Qt = Q^T * scale * log2(e), packed)
 *     P^T[j, i] = exp2(S^T[j, i] - m[i])            (m: running max per query)
 *     O^T[d, i] = alpha[i] * O^T[d, i] + sum_j V[j, d] * P^T[j, i]
 *
 * so that the per-query softmax statistics are plain vector operations (no horizontal
 * reductions) and the head dimension is a scalar loop (any head_dim works without padding).
 * A sub-tile is 2 vectors of 16 lanes; the score micro-kernel holds 12 keys x 32 queries and
 * the P.V micro-kernel up to 12 head-dimension rows x 32 queries in AVX-512 registers, both
 * broadcasting K and V elements from their packed rows. Exponentials are exp2 with the
 * softmax scale and log2(e) folded into the packed queries.
 *
 * Paths: AVX-512 intrinsics (x86-64, chosen at run time) and portable C (compiled for AVX2+FMA
 * as well on x86-64 through target_clones; the only path on other machines). The environment
 * variable SNAPFUSION_ATTENTION_ISA=generic forces the portable path (for tests).
 *
 * Work items are independent, and sub-tiles and key tiles sit at the same places whatever the
 * block size (which follows the thread count), so results are bitwise the same for any thread
 * count.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "sf_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SF_ATT_X86 1
#include <immintrin.h>
#define SF_AVX2 __attribute__((target("avx2,fma")))
#else
#define SF_ATT_X86 0
#endif

/* Whether the portable path may use fused multiply-adds without a library call. */
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define ATT_NATIVE_FMA 1
#else
#define ATT_NATIVE_FMA 0
#endif

/* Compute paths, best last. */
enum { ATT_ISA_GENERIC = 0, ATT_ISA_AVX2 = 1, ATT_ISA_AVX512 = 2 };

enum {
    ATT_QB = 32,       /* queries per sub-tile (2 vectors of 16 lanes) */
    ATT_NSUB_MAX = 16, /* sub-tiles per work item (512 queries) at most */
    ATT_MRJ = 12,      /* keys per score micro-kernel panel */
    ATT_MRD = 12,      /* largest group of head-dimension rows in the P.V micro-kernel */
    ATT_KB = 120,      /* keys per tile (a multiple of ATT_MRJ) */
    ATT_MAX_GROUPS = 64,
};

/* Largest head dimension: the P.V groups are described by fixed arrays. */
#define ATT_MAX_DIM ((size_t)ATT_MRD * ATT_MAX_GROUPS)

#define ATT_LOG2E 1.4426950408889634f

/* exp2 on [-0.5, 0.5]: near-minimax polynomial (relative error <= 1.9e-7, about 2 ulp). */
#define ATT_P0 1.0f
#define ATT_P1 6.931470037e-01f
#define ATT_P2 2.402224243e-01f
#define ATT_P3 5.550733954e-02f
#define ATT_P4 9.671508335e-03f
#define ATT_P5 1.326469588e-03f

/* Offsets (in floats) of the buffers inside one slot: per sub-tile the packed queries, the
 * output accumulator and the softmax statistics; shared by the sub-tiles the packed key and
 * value tiles and the score tile. Every offset is a multiple of 16 floats (64 bytes). */
typedef struct {
    size_t qt, ot, m, l, alpha, tmax; /* offsets inside a sub-tile's part */
    size_t sub;                       /* floats of one sub-tile's part */
    size_t kp, vp, st, total;
} att_layout;

/* How a call is cut into work items. */
typedef struct {
    size_t nsub;       /* sub-tiles per work item */
    size_t q_blocks;   /* work items per (batch, head) */
    size_t items;      /* batch * heads * q_blocks */
    size_t slots;      /* workspace slots (parallel tasks) */
    size_t slot_bytes; /* bytes of one slot */
    att_layout lay;
} att_plan;

/* Geometry and pointers of one call, shared by the workers. */
typedef struct {
    const float *q, *k, *v;
    float *out;
    size_t heads, q_len, kv_len, dim;
    size_t qs, ks, vs, os;
    float qscale; /* scale * log2(e) */
    int causal;
    int isa; /* ATT_ISA_* */
    att_plan plan;
    unsigned char *ws;
    size_t ngroups; /* P.V groups of head-dimension rows */
    size_t group_start[ATT_MAX_GROUPS];
    unsigned char group_rows[ATT_MAX_GROUPS];
    atomic_size_t next;
} att_ctx;

static size_t att_round16(size_t n) {
    return (n + 15) & ~(size_t)15;
}

static void att_layout_of(size_t dim, size_t nsub, att_layout *lay) {
    size_t off = 0;
    lay->qt = off;
    off += att_round16(dim * ATT_QB);
    lay->ot = off;
    off += att_round16(dim * ATT_QB);
    lay->m = off;
    off += ATT_QB;
    lay->l = off;
    off += ATT_QB;
    lay->alpha = off;
    off += ATT_QB;
    lay->tmax = off;
    off += ATT_QB;
    lay->sub = off;
    off *= nsub;
    lay->kp = off;
    off += att_round16((size_t)ATT_KB * dim);
    lay->vp = off;
    off += att_round16((size_t)ATT_KB * dim);
    lay->st = off;
    off += (size_t)ATT_KB * ATT_QB;
    lay->total = off;
}

/* ------------------------------------------------------------------------------------------ */
/* Portable path                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* 2^x for x <= 0 (larger x is clamped to 127), 0 below -126 (-inf included), NaN kept. The
 * clamps and selects work on the bits with integer operations only, so that loops calling it
 * vectorize (floating-point selects would stay branches) and no conversion sees a NaN. */
static inline __attribute__((always_inline)) float att_madd(float a, float b, float c,
                                                            const int fused) {
    return fused ? fmaf(a, b, c) : a * b + c;
}

static inline __attribute__((always_inline)) float att_exp2_scalar(float x, const int fused) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t mag = u & 0x7fffffffu, sign = u & 0x80000000u;
    uint32_t lim = 0x42fe0000u - (sign >> 31) * 0x20000u; /* |x| <= 126 below 0, 127 above */
    uint32_t cu = (mag < lim ? mag : lim) | sign;
    float xc;
    memcpy(&xc, &cu, sizeof xc);
    float n = (xc + 12582912.0f) - 12582912.0f; /* round to nearest */
    float f = xc - n;
    float p = ATT_P5;
    p = att_madd(p, f, ATT_P4, fused);
    p = att_madd(p, f, ATT_P3, fused);
    p = att_madd(p, f, ATT_P2, fused);
    p = att_madd(p, f, ATT_P1, fused);
    p = att_madd(p, f, ATT_P0, fused);
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float r = p * scale;
    uint32_t rb;
    memcpy(&rb, &r, sizeof rb);
    uint32_t under = 0u - ((sign >> 31) & (uint32_t)(mag > 0x42fc0000u)); /* x < -126 */
    uint32_t nan = 0u - (uint32_t)(mag > 0x7f800000u);
    rb = (rb & ~under & ~nan) | (u & nan);
    memcpy(&r, &rb, sizeof r);
    return r;
}

/* S^T rows [0, nk) of the tile (key rows at k, stride ks) and the running tile maximum;
 * with diag, lanes i < diag_t0 + j of row j are masked. Four key rows share each load of the
 * packed queries. */
static inline __attribute__((always_inline)) void
att_score_body(const float *restrict qt, const float *restrict k, size_t ks, size_t dim,
               size_t nk, ptrdiff_t diag_t0, int diag, float *restrict st,
               float *restrict tmax, const int fused) {
    enum { R = 4 };
    for (size_t j0 = 0; j0 < nk; j0 += R) {
        size_t nr = nk - j0 < R ? nk - j0 : R;
        const float *krow[R];
        for (size_t r = 0; r < R; r++)
            krow[r] = k + (j0 + (r < nr ? r : 0)) * ks; /* rows past nk repeat row j0 */
        float acc[R][ATT_QB];
        for (size_t r = 0; r < R; r++)
            for (int i = 0; i < ATT_QB; i++)
                acc[r][i] = 0.0f;
        for (size_t d = 0; d < dim; d++) {
            const float *qrow = qt + d * ATT_QB;
            float k0 = krow[0][d], k1 = krow[1][d], k2 = krow[2][d], k3 = krow[3][d];
            for (int i = 0; i < ATT_QB; i++) {
                float qv = qrow[i];
                acc[0][i] = att_madd(k0, qv, acc[0][i], fused);
                acc[1][i] = att_madd(k1, qv, acc[1][i], fused);
                acc[2][i] = att_madd(k2, qv, acc[2][i], fused);
                acc[3][i] = att_madd(k3, qv, acc[3][i], fused);
            }
        }
        for (size_t r = 0; r < nr; r++) {
            float *srow = st + (j0 + r) * ATT_QB;
            ptrdiff_t t = diag_t0 + (ptrdiff_t)(j0 + r); /* lanes i < t are masked */
            for (int i = 0; i < ATT_QB; i++) {
                float sv = (diag && (ptrdiff_t)i < t) ? -INFINITY : acc[r][i];
                srow[i] = sv;
                tmax[i] = sv > tmax[i] ? sv : tmax[i];
            }
        }
    }
}

/* Online-softmax update: new maximum, rescale factor alpha, P^T = exp2(S^T - m), sums. */
static inline __attribute__((always_inline)) void
att_softmax_body(float *restrict st, size_t nk, float *restrict m, float *restrict l,
                 float *restrict alpha, const float *restrict tmax, int first, const int fused) {
    float mn[ATT_QB], sum[ATT_QB];
    for (int i = 0; i < ATT_QB; i++) {
        mn[i] = tmax[i] > m[i] ? tmax[i] : m[i];
        alpha[i] = first ? 0.0f : att_exp2_scalar(m[i] - mn[i], fused);
        sum[i] = 0.0f;
    }
    for (size_t j = 0; j < nk; j++) {
        float *row = st + j * ATT_QB;
        for (int i = 0; i < ATT_QB; i++) {
            float p = att_exp2_scalar(row[i] - mn[i], fused);
            row[i] = p;
            sum[i] += p;
        }
    }
    for (int i = 0; i < ATT_QB; i++) {
        l[i] = (first ? 0.0f : l[i] * alpha[i]) + sum[i];
        m[i] = mn[i];
    }
}

/* O^T = alpha * O^T + V^T P^T over the rows [0, nk) of the tile (value rows at v, stride
 * vs). Four head-dimension rows share each load of P^T. */
static inline __attribute__((always_inline)) void
att_pv_body(const float *restrict pt, size_t nk, const float *restrict v, size_t vs, size_t dim,
            const float *restrict alpha, int first, float *restrict ot, const int fused) {
    enum { R = 4 };
    for (size_t d0 = 0; d0 < dim; d0 += R) {
        size_t nr = dim - d0 < R ? dim - d0 : R;
        size_t col[R];
        for (size_t r = 0; r < R; r++)
            col[r] = d0 + (r < nr ? r : 0); /* columns past dim repeat column d0 */
        float acc[R][ATT_QB];
        for (size_t r = 0; r < R; r++)
            for (int i = 0; i < ATT_QB; i++)
                acc[r][i] = first ? 0.0f : ot[col[r] * ATT_QB + i] * alpha[i];
        for (size_t j = 0; j < nk; j++) {
            const float *vrow = v + j * vs;
            const float *prow = pt + j * ATT_QB;
            float v0 = vrow[col[0]], v1 = vrow[col[1]], v2 = vrow[col[2]], v3 = vrow[col[3]];
            for (int i = 0; i < ATT_QB; i++) {
                float pv = prow[i];
                acc[0][i] = att_madd(v0, pv, acc[0][i], fused);
                acc[1][i] = att_madd(v1, pv, acc[1][i], fused);
                acc[2][i] = att_madd(v2, pv, acc[2][i], fused);
                acc[3][i] = att_madd(v3, pv, acc[3][i], fused);
            }
        }
        for (size_t r = 0; r < nr; r++)
            for (int i = 0; i < ATT_QB; i++)
                ot[(d0 + r) * ATT_QB + i] = acc[r][i];
    }
}

/* The portable kernels, compiled for the baseline ISA and (x86-64) for AVX2 + FMA. */
#define ATT_PORTABLE_KERNELS(suffix, attr, fused)                                              \
    attr static void att_score_##suffix(const float *restrict qt, const float *restrict k,    \
                                        size_t ks, size_t dim, size_t nk, ptrdiff_t diag_t0,  \
                                        int diag, float *restrict st, float *restrict tmax) { \
        att_score_body(qt, k, ks, dim, nk, diag_t0, diag, st, tmax, fused);                   \
    }                                                                                          \
    attr static void att_softmax_##suffix(float *restrict st, size_t nk, float *restrict m,   \
                                          float *restrict l, float *restrict alpha,           \
                                          const float *restrict tmax, int first) {            \
        att_softmax_body(st, nk, m, l, alpha, tmax, first, fused);                            \
    }                                                                                          \
    attr static void att_pv_##suffix(const float *restrict pt, size_t nk,                     \
                                     const float *restrict v, size_t vs, size_t dim,          \
                                     const float *restrict alpha, int first,                  \
                                     float *restrict ot) {                                    \
        att_pv_body(pt, nk, v, vs, dim, alpha, first, ot, fused);                             \
    }

ATT_PORTABLE_KERNELS(generic, , ATT_NATIVE_FMA)
#if SF_ATT_X86
ATT_PORTABLE_KERNELS(avx2, SF_AVX2, 1)
#endif

/* Qt[d, i] = q[i, d] * qscale for the nq rows of the sub-tile, zero beyond. */
static void att_pack_q_generic(const float *q, size_t qs, size_t nq, size_t dim, float qscale,
                               float *restrict qt) {
    for (size_t i = 0; i < ATT_QB; i++) {
        if (i < nq) {
            const float *row = q + i * qs;
            for (size_t d = 0; d < dim; d++)
                qt[d * ATT_QB + i] = row[d] * qscale;
        } else {
            for (size_t d = 0; d < dim; d++)
                qt[d * ATT_QB + i] = 0.0f;
        }
    }
}

/* out[i, d] = O^T[d, i] / l[i] for the nq rows of the sub-tile. */
static void att_store_out_generic(const float *restrict ot, const float *restrict l, size_t nq,
                                  size_t dim, float *out, size_t os) {
    for (size_t i = 0; i < nq; i++) {
        float inv = 1.0f / l[i];
        float *row = out + i * os;
        for (size_t d = 0; d < dim; d++)
            row[d] = ot[d * ATT_QB + i] * inv;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* AVX-512 path                                                                               */
/* ------------------------------------------------------------------------------------------ */

#if SF_ATT_X86
#define SF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define SF_AVX512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"), \
                                        always_inline)) inline

/* 2^x for x <= 0: 0 for x < -150 and -inf (exactly), NaN kept. bf16 (a constant): only to
 * the precision of bfloat16, with a degree-3 polynomial on [-0.5, 0.5] (relative error < 1e-4,
 * well below bfloat16's 2^-9) instead of the degree-5 one. */
SF_AVX512_INLINE static __m512 att_exp2_avx512(__m512 x, const int bf16) {
    x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x); /* second operand kept when NaN */
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p;
    if (bf16) {
        p = _mm512_set1_ps(5.5504108664e-02f);
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650696e-01f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718056e-01f));
    } else {
        p = _mm512_set1_ps(ATT_P5);
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATT_P4));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATT_P3));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATT_P2));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATT_P1));
    }
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(ATT_P0));
    return _mm512_scalef_ps(p, n);
}

/* Score micro-kernel: S^T rows [0, mr) (mr <= 12) for key rows at k (row stride ks), masked
 * (lanes i < t0 + r of row r, when diag), stored at srow and folded into the running maxima. */
SF_AVX512_INLINE static void att_score_rows_avx512(const float *restrict qt,
                                                   const float *restrict k, ptrdiff_t ks,
                                                   size_t dim, ptrdiff_t t0, int diag,
                                                   float *restrict srow, __m512 *tm0,
                                                   __m512 *tm1, const int mr) {
    __m512 a[ATT_MRJ][2];
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        a[r][0] = _mm512_setzero_ps();
        a[r][1] = _mm512_setzero_ps();
    }
    const float *qp = qt;
    /* Rows 4g + u are read at p[g] + u * ks: three pointers and three strides. */
    const float *p[3] = {k, k + 4 * ks, k + 8 * ks};
    const ptrdiff_t off[4] = {0, ks, 2 * ks, 3 * ks};
    for (size_t d = 0; d < dim; d++) {
        __m512 q0 = _mm512_load_ps(qp), q1 = _mm512_load_ps(qp + 16);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            __m512 b = _mm512_set1_ps(p[r / 4][off[r % 4]]);
            a[r][0] = _mm512_fmadd_ps(b, q0, a[r][0]);
            a[r][1] = _mm512_fmadd_ps(b, q1, a[r][1]);
        }
        qp += ATT_QB;
        p[0]++;
        p[1]++;
        p[2]++;
    }
    if (diag) {
        const __m512i iota0 =
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i iota1 = _mm512_add_epi32(iota0, _mm512_set1_epi32(16));
        const __m512 ninf = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            ptrdiff_t t = t0 + r;
            int ti = t < 0 ? 0 : (t > ATT_QB ? ATT_QB : (int)t);
            __m512i tv = _mm512_set1_epi32(ti);
            a[r][0] = _mm512_mask_mov_ps(a[r][0], _mm512_cmplt_epi32_mask(iota0, tv), ninf);
            a[r][1] = _mm512_mask_mov_ps(a[r][1], _mm512_cmplt_epi32_mask(iota1, tv), ninf);
        }
    }
    __m512 m0 = *tm0, m1 = *tm1;
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        _mm512_store_ps(srow + r * ATT_QB, a[r][0]);
        _mm512_store_ps(srow + r * ATT_QB + 16, a[r][1]);
        m0 = _mm512_max_ps(a[r][0], m0);
        m1 = _mm512_max_ps(a[r][1], m1);
    }
    *tm0 = m0;
    *tm1 = m1;
}

#define ATT_SCORE_TAIL(n)                                                                      \
    case n:                                                                                    \
        att_score_rows_avx512(qt, k + j0 * ks, (ptrdiff_t)ks, dim, diag_t0 + (ptrdiff_t)j0,    \
                              diag, st + j0 * ATT_QB, &tm0, &tm1, n);                          \
        break;

/* S^T rows [0, nk) of the tile (key rows at k, stride ks) and the running tile maximum per
 * query; with diag, lanes i < diag_t0 + j of row j are masked (causal). */
SF_AVX512
static void att_score_avx512(const float *restrict qt, const float *restrict k, size_t ks,
                             size_t dim, size_t nk, ptrdiff_t diag_t0, int diag,
                             float *restrict st, float *restrict tmax) {
    __m512 tm0 = _mm512_loadu_ps(tmax), tm1 = _mm512_loadu_ps(tmax + 16);
    size_t j0 = 0;
    for (; j0 + ATT_MRJ <= nk; j0 += ATT_MRJ)
        att_score_rows_avx512(qt, k + j0 * ks, (ptrdiff_t)ks, dim, diag_t0 + (ptrdiff_t)j0,
                              diag, st + j0 * ATT_QB, &tm0, &tm1, ATT_MRJ);
    switch (nk - j0) {
        ATT_SCORE_TAIL(1)
        ATT_SCORE_TAIL(2)
        ATT_SCORE_TAIL(3)
        ATT_SCORE_TAIL(4)
        ATT_SCORE_TAIL(5)
        ATT_SCORE_TAIL(6)
        ATT_SCORE_TAIL(7)
        ATT_SCORE_TAIL(8)
        ATT_SCORE_TAIL(9)
        ATT_SCORE_TAIL(10)
        ATT_SCORE_TAIL(11)
    default:
        break;
    }
    _mm512_storeu_ps(tmax, tm0);
    _mm512_storeu_ps(tmax + 16, tm1);
}

SF_AVX512
static void att_softmax_avx512(float *restrict st, size_t nk, float *restrict m,
                               float *restrict l, float *restrict alpha,
                               const float *restrict tmax, int first) {
    __m512 mo0 = _mm512_loadu_ps(m), mo1 = _mm512_loadu_ps(m + 16);
    __m512 mn0 = _mm512_max_ps(_mm512_loadu_ps(tmax), mo0);
    __m512 mn1 = _mm512_max_ps(_mm512_loadu_ps(tmax + 16), mo1);
    __m512 al0 = _mm512_setzero_ps(), al1 = _mm512_setzero_ps();
    if (!first) {
        al0 = att_exp2_avx512(_mm512_sub_ps(mo0, mn0), 0);
        al1 = att_exp2_avx512(_mm512_sub_ps(mo1, mn1), 0);
    }
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 2 <= nk; j += 2) {
        float *row = st + j * ATT_QB;
        __m512 p0 = att_exp2_avx512(_mm512_sub_ps(_mm512_load_ps(row), mn0), 0);
        __m512 p1 = att_exp2_avx512(_mm512_sub_ps(_mm512_load_ps(row + 16), mn1), 0);
        __m512 p2 = att_exp2_avx512(_mm512_sub_ps(_mm512_load_ps(row + 32), mn0), 0);
        __m512 p3 = att_exp2_avx512(_mm512_sub_ps(_mm512_load_ps(row + 48), mn1), 0);
        _mm512_store_ps(row, p0);
        _mm512_store_ps(row + 16, p1);
        _mm512_store_ps(row + 32, p2);
        _mm512_store_ps(row + 48, p3);
        s0 = _mm512_add_ps(s0, p0);
        s1 = _mm512_add_ps(s1, p1);
        s2 = _mm512_add_ps(s2, p2);
        s3 = _mm512_add_ps(s3, p3);
    }
    for (; j < nk; j++) {
        float *row = st + j * ATT_QB;
        __m512 p0 = att_exp2_avx512(_mm512_sub_ps(_mm512_load_ps(row), mn0), 0);
        __m512 p1 = att_exp2_avx512(_mm512_sub_ps(_mm512_load_ps(row + 16), mn1), 0);
        _mm512_store_ps(row, p0);
        _mm512_store_ps(row + 16, p1);
        s0 = _mm512_add_ps(s0, p0);
        s1 = _mm512_add_ps(s1, p1);
    }
    s0 = _mm512_add_ps(s0, s2);
    s1 = _mm512_add_ps(s1, s3);
    __m512 l0 = s0, l1 = s1;
    if (!first) {
        l0 = _mm512_fmadd_ps(_mm512_loadu_ps(l), al0, s0);
        l1 = _mm512_fmadd_ps(_mm512_loadu_ps(l + 16), al1, s1);
    }
    _mm512_storeu_ps(l, l0);
    _mm512_storeu_ps(l + 16, l1);
    _mm512_storeu_ps(m, mn0);
    _mm512_storeu_ps(m + 16, mn1);
    _mm512_storeu_ps(alpha, al0);
    _mm512_storeu_ps(alpha + 16, al1);
}

/* One group of MR head-dimension rows of O^T (rows [0, MR) of ot, columns [0, MR) of v). */
SF_AVX512_INLINE static void att_pv_group_avx512(const float *restrict pt, size_t nk,
                                                 const float *restrict v, size_t vs,
                                                 const float *restrict alpha, int first,
                                                 float *restrict ot, const int mr) {
    __m512 a[ATT_MRD][2];
    if (first) {
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            a[r][0] = _mm512_setzero_ps();
            a[r][1] = _mm512_setzero_ps();
        }
    } else {
        __m512 al0 = _mm512_loadu_ps(alpha), al1 = _mm512_loadu_ps(alpha + 16);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            a[r][0] = _mm512_mul_ps(_mm512_load_ps(ot + r * ATT_QB), al0);
            a[r][1] = _mm512_mul_ps(_mm512_load_ps(ot + r * ATT_QB + 16), al1);
        }
    }
    const float *vr = v;
    const float *pp = pt;
    for (size_t j = 0; j < nk; j++) {
        __m512 p0 = _mm512_load_ps(pp), p1 = _mm512_load_ps(pp + 16);
#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
            __m512 b = _mm512_set1_ps(vr[r]);
            a[r][0] = _mm512_fmadd_ps(b, p0, a[r][0]);
            a[r][1] = _mm512_fmadd_ps(b, p1, a[r][1]);
        }
        vr += vs;
        pp += ATT_QB;
    }
#pragma GCC unroll 12
    for (int r = 0; r < mr; r++) {
        _mm512_store_ps(ot + r * ATT_QB, a[r][0]);
        _mm512_store_ps(ot + r * ATT_QB + 16, a[r][1]);
    }
}

#define ATT_PV_CASE(n)                                                                         \
    case n:                                                                                    \
        att_pv_group_avx512(pt, nk, v + d0, vs, alpha, first, ot + d0 * ATT_QB, n);            \
        break;

SF_AVX512
static void att_pv_avx512(const att_ctx *c, const float *restrict pt, size_t nk,
                          const float *restrict v, size_t vs, const float *restrict alpha,
                          int first, float *restrict ot) {
    for (size_t g = 0; g < c->ngroups; g++) {
        size_t d0 = c->group_start[g];
        switch (c->group_rows[g]) {
            ATT_PV_CASE(1)
            ATT_PV_CASE(2)
            ATT_PV_CASE(3)
            ATT_PV_CASE(4)
            ATT_PV_CASE(5)
            ATT_PV_CASE(6)
            ATT_PV_CASE(7)
            ATT_PV_CASE(8)
            ATT_PV_CASE(9)
            ATT_PV_CASE(10)
            ATT_PV_CASE(11)
            ATT_PV_CASE(12)
        default:
            break;
        }
    }
}
/* In-register transpose of a 16 x 16 block: r[i] lane j <- r[j] lane i. */
SF_AVX512_INLINE static void att_transpose16_avx512(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

/* Qt[d, i] = q[i, d] * qscale for the nq rows of the sub-tile, zero beyond (16 x 16 blocks). */
SF_AVX512
static void att_pack_q_avx512(const float *q, size_t qs, size_t nq, size_t dim, float qscale,
                              float *restrict qt) {
    const __m512 sc = _mm512_set1_ps(qscale);
    for (size_t i0 = 0; i0 < ATT_QB; i0 += 16) {
        for (size_t d0 = 0; d0 < dim; d0 += 16) {
            size_t nd = dim - d0 < 16 ? dim - d0 : 16;
            __mmask16 dm = (__mmask16)((1u << nd) - 1u);
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                r[i] = i0 + (size_t)i < nq
                           ? _mm512_mul_ps(_mm512_maskz_loadu_ps(dm, q + (i0 + i) * qs + d0), sc)
                           : _mm512_setzero_ps();
            }
            att_transpose16_avx512(r);
            for (size_t d = 0; d < nd; d++)
                _mm512_store_ps(qt + (d0 + d) * ATT_QB + i0, r[d]);
        }
    }
}

/* out[i, d] = O^T[d, i] / l[i] for the nq rows of the sub-tile (16 x 16 blocks). */
SF_AVX512
static void att_store_out_avx512(const float *restrict ot, const float *restrict l, size_t nq,
                                 size_t dim, float *out, size_t os) {
    for (size_t i0 = 0; i0 < nq; i0 += 16) {
        __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_loadu_ps(l + i0));
        size_t ni = nq - i0 < 16 ? nq - i0 : 16;
        for (size_t d0 = 0; d0 < dim; d0 += 16) {
            size_t nd = dim - d0 < 16 ? dim - d0 : 16;
            __mmask16 dm = (__mmask16)((1u << nd) - 1u);
            __m512 r[16];
#pragma GCC unroll 16
            for (int d = 0; d < 16; d++) {
                r[d] = (size_t)d < nd
                           ? _mm512_mul_ps(_mm512_load_ps(ot + (d0 + d) * ATT_QB + i0), inv)
                           : _mm512_setzero_ps();
            }
            att_transpose16_avx512(r);
            for (size_t i = 0; i < ni; i++)
                _mm512_mask_storeu_ps(out + (i0 + i) * os + d0, dm, r[i]);
        }
    }
}

#endif /* SF_ATT_X86 */

/* ------------------------------------------------------------------------------------------ */
/* Driver                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Contiguous copy (row stride dim) of nk rows. */
static void att_pack_rows(const float *src, size_t stride, size_t nk, size_t dim,
                          float *restrict dst) {
    for (size_t j = 0; j < nk; j++)
        memcpy(dst + j * dim, src + j * stride, dim * sizeof(float));
}

/* Bring the cache lines of `rows` rows of dim floats (row stride `stride`) towards L1, for
 * reading or (write) for writing. */
static inline void att_prefetch_rows(const float *base, size_t rows, size_t stride, size_t dim,
                                     int write) {
    const size_t bytes = dim * sizeof(float);
    for (size_t r = 0; r < rows; r++) {
        const char *p = (const char *)(base + r * stride);
        for (size_t off = 0; off < bytes; off += 64) {
            if (write)
                __builtin_prefetch(p + off, 1, 3);
            else
                __builtin_prefetch(p + off, 0, 3);
        }
        if (write)
            __builtin_prefetch(p + bytes - 1, 1, 3);
        else
            __builtin_prefetch(p + bytes - 1, 0, 3);
    }
}

/* One work item: up to nsub * ATT_QB queries of one (batch, head) against all its keys. A
 * sub-tile packs its queries at the first key tile and writes its rows of the output right
 * after its last one, so that the memory traffic of the block overlaps its arithmetic. */
static void att_run_item(const att_ctx *c, float *slot, size_t item) {
    const att_layout *lay = &c->plan.lay;
    float *kp = slot + lay->kp, *vp = slot + lay->vp, *st = slot + lay->st;
    const size_t block = c->plan.nsub * ATT_QB;
    const size_t dim = c->dim;
#if SF_ATT_X86
    const int isa = c->isa;
#endif

    size_t qblk = item % c->plan.q_blocks;
    size_t bh = item / c->plan.q_blocks;
    size_t h = bh % c->heads, b = bh / c->heads;
    size_t i0 = qblk * block;
    size_t nq = c->q_len - i0 < block ? c->q_len - i0 : block;
    size_t nsub = (nq + ATT_QB - 1) / ATT_QB;
    const int pack = nsub > 2;

    const float *qb = c->q + (b * c->q_len + i0) * c->qs + h * dim;
    const float *kb = c->k + b * c->kv_len * c->ks + h * dim;
    const float *vb = c->v + b * c->kv_len * c->vs + h * dim;
    float *ob = c->out + (b * c->q_len + i0) * c->os + h * dim;
    /* With the causal mask no query of the block sees keys past its last query. */
    size_t kv_end = c->kv_len;
    if (c->causal && i0 + nq < kv_end)
        kv_end = i0 + nq;
    /* Key tiles of equal size (a multiple of ATT_MRJ, at most ATT_KB), laid over the whole
     * key range so that every block cuts the keys at the same places. */
    size_t ntiles = (c->kv_len + ATT_KB - 1) / ATT_KB;
    size_t kt = (c->kv_len + ntiles - 1) / ntiles;
    kt = (kt + ATT_MRJ - 1) / ATT_MRJ * ATT_MRJ;
    for (size_t j0 = 0; j0 < kv_end; j0 += kt) {
        size_t nk = kv_end - j0 < kt ? kv_end - j0 : kt;
        /* Blocks of a few sub-tiles read the keys and values in place; larger ones copy each
         * tile once into contiguous rows that all their sub-tiles then read. */
        const float *ktile = kb + j0 * c->ks, *vtile = vb + j0 * c->vs;
        size_t kts = c->ks, vts = c->vs;
        if (pack) {
            att_pack_rows(ktile, kts, nk, dim, kp);
            att_pack_rows(vtile, vts, nk, dim, vp);
            ktile = kp;
            vtile = vp;
            kts = vts = dim;
        }
        for (size_t s = 0; s < nsub; s++) {
            float *sub = slot + s * lay->sub;
            float *qt = sub + lay->qt, *ot = sub + lay->ot, *m = sub + lay->m;
            float *l = sub + lay->l, *alpha = sub + lay->alpha, *tmax = sub + lay->tmax;
            size_t si0 = i0 + s * ATT_QB;
            size_t snq = nq - s * ATT_QB < ATT_QB ? nq - s * ATT_QB : ATT_QB;
            size_t s_end = c->causal ? si0 + snq : kv_end; /* keys this sub-tile sees */
            if (j0 >= s_end)
                continue; /* every key of the tile is masked for this sub-tile */
            size_t snk = s_end - j0 < nk ? s_end - j0 : nk;
            int first = j0 == 0, last = j0 + snk >= s_end;
            if (first) {
                const float *qs0 = qb + s * ATT_QB * c->qs;
#if SF_ATT_X86
                if (isa == ATT_ISA_AVX512)
                    att_pack_q_avx512(qs0, c->qs, snq, dim, c->qscale, qt);
                else
#endif
                    att_pack_q_generic(qs0, c->qs, snq, dim, c->qscale, qt);
                for (int i = 0; i < ATT_QB; i++)
                    m[i] = -INFINITY;
                if (s + 1 < nsub) {
                    size_t nnext = nq - (s + 1) * ATT_QB < ATT_QB ? nq - (s + 1) * ATT_QB
                                                                  : ATT_QB;
                    att_prefetch_rows(qs0 + ATT_QB * c->qs, nnext, c->qs, dim, 0);
                }
            }
            if (last)
                att_prefetch_rows(ob + s * ATT_QB * c->os, snq, c->os, dim, 1);
            if (j0 + kt < kv_end) {
                /* A slice of the next key and value tiles per sub-tile. */
                size_t nn = kv_end - j0 - kt < kt ? kv_end - j0 - kt : kt;
                size_t pf0 = nn * s / nsub, pf1 = nn * (s + 1) / nsub;
                att_prefetch_rows(kb + (j0 + kt + pf0) * c->ks, pf1 - pf0, c->ks, dim, 0);
                att_prefetch_rows(vb + (j0 + kt + pf0) * c->vs, pf1 - pf0, c->vs, dim, 0);
            }
            /* Keys j > query i are masked only in tiles reaching past the first query. */
            int diag = c->causal && j0 + snk - 1 > si0;
            ptrdiff_t diag_t0 = (ptrdiff_t)j0 - (ptrdiff_t)si0;
            for (int i = 0; i < ATT_QB; i++)
                tmax[i] = -INFINITY;
            float *os0 = ob + s * ATT_QB * c->os;
#if SF_ATT_X86
            if (isa == ATT_ISA_AVX512) {
                att_score_avx512(qt, ktile, kts, dim, snk, diag_t0, diag, st, tmax);
                att_softmax_avx512(st, snk, m, l, alpha, tmax, first);
                att_pv_avx512(c, st, snk, vtile, vts, alpha, first, ot);
                if (last)
                    att_store_out_avx512(ot, l, snq, dim, os0, c->os);
                continue;
            }
            if (isa == ATT_ISA_AVX2) {
                att_score_avx2(qt, ktile, kts, dim, snk, diag_t0, diag, st, tmax);
                att_softmax_avx2(st, snk, m, l, alpha, tmax, first);
                att_pv_avx2(st, snk, vtile, vts, dim, alpha, first, ot);
                if (last)
                    att_store_out_generic(ot, l, snq, dim, os0, c->os);
                continue;
            }
#endif
            att_score_generic(qt, ktile, kts, dim, snk, diag_t0, diag, st, tmax);
            att_softmax_generic(st, snk, m, l, alpha, tmax, first);
            att_pv_generic(st, snk, vtile, vts, dim, alpha, first, ot);
            if (last)
                att_store_out_generic(ot, l, snq, dim, os0, c->os);
        }
    }
}

/* One task per workspace slot; the tasks take work items from a shared counter. */
static void att_task(void *ctx, size_t slot_index) {
    att_ctx *c = ctx;
    float *slot = (float *)(c->ws + slot_index * c->plan.slot_bytes);
    for (;;) {
        size_t item = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
        if (item >= c->plan.items)
            break;
        att_run_item(c, slot, item);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* AMX path: bfloat16 products, float32 sums                                                  */
/* ------------------------------------------------------------------------------------------ */
/*
 * Calls with sf_attention_params.bf16 and no causal mask run here on CPUs with AMX-BF16 and
 * AVX512-BF16. First the keys and values of every (batch, head) are rounded to bfloat16 and
 * packed, zero-padded (head_dim to dpad, a multiple of 32; keys to nkp, a multiple of 32), in
 * the layouts of the tile operands (in the workspace):
 *   keys:   [key block of 16][d block of 32][16 pairs of d][16 keys][2]  (B of S = Q K^T)
 *   values: [key block of 32][d block of 16][16 pairs of keys][16 d][2]  (B of O = P V)
 * (ATTX_GROUP pairs at a time). Then a work item is ATTX_QB = 32 queries of one of those
 * (batch, head) pairs, in the thread's scratch:
 *   Q * scale * log2(e) in bfloat16; S = Q K^T over all keys (2 x 2 tiles of 16 x 16 float32
 *   accumulators); per row the exact softmax (exp2 in float32 to bfloat16 precision, P rounded
 *   to bfloat16, the sum in float32; the shift is a bound from the norms where that is safe,
 *   else the row's maximum); O = P V (2 x 2 tiles); out = O / sum.
 * Scratch is O(32 * (kv_len + head_dim)) per thread and the packed copies O((q + k) * dim):
 * never O(q_len * kv_len). Items are independent: results do not depend on the thread count.
 */
#if SF_ATT_X86
#define SF_ATTX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq," \
                                      "avx512bf16,fma")))

/* ATTX_QB queries per work item; ATTX_GROUP (batch, head) pairs packed and run per round (the
 * packed copies of a round are the workspace); exp2 arguments stay above -ATTX_SHIFT. */
enum { ATTX_QB = 32, ATTX_GROUP = 4, ATTX_SHIFT = 64 };

typedef struct {
    const float *q, *k, *v;
    float *out;
    size_t heads, q_len, kv_len, dim, dpad, nkp;
    size_t qs, ks, vs, os;
    float qscale;
    uint16_t *kp, *vp; /* nkp * dpad values per (batch, head) of the round each */
    float *knorm;      /* per (batch, head) of the round: the largest norm of its keys */
    size_t bh0, nbh;   /* the round: (batch, head) pairs [bh0, bh0 + nbh) */
    size_t q_blocks, items, scratch_bytes;
    atomic_size_t next;
} attx_ctx;

static uint64_t att_macs(const sf_attention_params *p);

static int attx_available(void) {
    const char *env = getenv("SNAPFUSION_ATTENTION_ISA");
    if (env && *env && strcmp(env, "amx") != 0)
        return 0; /* a lower path was asked for */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16") && sf_amx_supported(SF_AMX_BF16);
}

static void attx_geometry(const sf_attention_params *p, size_t *dpad, size_t *nkp) {
    *dpad = (p->head_dim + 31) / 32 * 32;
    *nkp = (p->kv_len + 31) / 32 * 32;
}

/* Bytes of the packed keys and values of a round (the workspace of the AMX path). */
static int attx_workspace_bytes(const sf_attention_params *p, size_t *bytes) {
    size_t dpad, nkp, per_head; /* packed keys and values, the key norm (64 bytes) */
    attx_geometry(p, &dpad, &nkp);
    if (!sf_mul_n_ok(&per_head, 3, nkp, dpad, 2 * sizeof(uint16_t)))
        return 0;
    return sf_mul_n_ok(bytes, 2, (size_t)ATTX_GROUP, per_head + 64);
}

/* n floats (a row of the head) * scale to bfloat16 at dst, zero up to dpad. */
SF_ATTX static void attx_row_bf16(const float *src, size_t n, float scale, size_t dpad,
                                  uint16_t *dst) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (size_t d = 0; d < dpad; d += 16) {
        __mmask16 m = d >= n ? 0 : n - d >= 16 ? (__mmask16)0xffff
                                                : (__mmask16)((1u << (n - d)) - 1u);
        __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, src ? src + d : src), sc);
        __m256bh h = _mm512_cvtneps_pbh(x);
        _mm256_storeu_si256((__m256i *)(dst + d), (__m256i)h);
    }
}

/* Euclidean norm of n bfloat16 values (n a multiple of 16), rounded up by a relative 2^-10
 * to cover the float32 sums of the tiles; NaN if a value is. */
SF_ATTX static float attx_norm_bf16(const uint16_t *x, size_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (size_t d = 0; d < n; d += 16) {
        __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + d))), 16));
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    return sqrtf(_mm512_reduce_add_ps(acc)) * (1.0f + 1.0f / 1024.0f);
}

/* Task t < nbh packs the keys of (batch, head) bh0 + t (and the largest key norm) into slot
 * t of the round, the others the values. */
SF_ATTX static void attx_pack_task(void *arg, size_t t) {
    attx_ctx *c = arg;
    const size_t bhs = c->nbh, slot = t % bhs, bh = c->bh0 + slot;
    const size_t b = bh / c->heads, h = bh % c->heads;
    const size_t dpad = c->dpad, nkp = c->nkp, nk = c->kv_len, dim = c->dim;
    uint16_t r0[ATT_MAX_DIM + 32] __attribute__((aligned(64)));
    uint16_t r1[ATT_MAX_DIM + 32] __attribute__((aligned(64)));
    if (t < bhs) {
        const float *kb = c->k + b * nk * c->ks + h * dim;
        uint32_t *dst = (uint32_t *)(c->kp + slot * nkp * dpad);
        const size_t nds = dpad / 32;
        float knorm = 0.0f;
        for (size_t j = 0; j < nkp; j++) {
            attx_row_bf16(j < nk ? kb + j * c->ks : NULL, j < nk ? dim : 0, 1.0f, dpad, r0);
            float n = attx_norm_bf16(r0, dpad);
            knorm = isnan(knorm) || n <= knorm ? knorm : n; /* NaN sticks */
            const uint32_t *pairs = (const uint32_t *)r0;
            uint32_t *col = dst + (j / 16) * nds * 256 + j % 16;
            for (size_t ds = 0; ds < nds; ds++)
                for (size_t r = 0; r < 16; r++)
                    col[(ds * 16 + r) * 16] = pairs[ds * 16 + r];
        }
        c->knorm[slot] = knorm;
    } else {
        const float *vb = c->v + b * nk * c->vs + h * dim;
        uint16_t *dst = c->vp + slot * nkp * dpad;
        const size_t ndc = dpad / 16;
        for (size_t j = 0; j < nkp; j += 2) {
            attx_row_bf16(j < nk ? vb + j * c->vs : NULL, j < nk ? dim : 0, 1.0f, dpad, r0);
            attx_row_bf16(j + 1 < nk ? vb + (j + 1) * c->vs : NULL, j + 1 < nk ? dim : 0, 1.0f,
                          dpad, r1);
            uint16_t *row = dst + ((j / 32) * ndc * 16 + (j % 32) / 2) * 32;
            for (size_t dc = 0; dc < ndc; dc++) {
                __m512i lo = _mm512_cvtepu16_epi32(_mm256_load_si256((const __m256i *)(r0 + 16 * dc)));
                __m512i hi = _mm512_cvtepu16_epi32(_mm256_load_si256((const __m256i *)(r1 + 16 * dc)));
                _mm512_storeu_si512((void *)(row + dc * 512),
                                    _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
    }
}

/* c[32][32] (row stride ldc floats) = sum over n steps of a 32 x 32 bfloat16 block of A
 * (rows at a stride of lda values, step i at a + i * a_step; the second row tile 16 rows
 * down) times the 32 x 32 block of B whose two column tiles are at b0 + i * b_step and
 * b1 + i * b_step (16 rows of 64 bytes each): accumulator tiles 0-3, A tiles 4-5, B 6-7. */
SF_ATTX static void attx_tiles_2x2(const uint16_t *a, size_t lda, size_t a_step,
                                   const uint16_t *b0, const uint16_t *b1, size_t b_step,
                                   size_t n, float *c, size_t ldc) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (size_t i = 0; i < n; i++) {
        _tile_loadd(4, a + i * a_step, lda * 2);
        _tile_loadd(5, a + 16 * lda + i * a_step, lda * 2);
        _tile_loadd(6, b0 + i * b_step, 64);
        _tile_loadd(7, b1 + i * b_step, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, ldc * 4);
    _tile_stored(1, c + 16, ldc * 4);
    _tile_stored(2, c + 16 * ldc, ldc * 4);
    _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
}

/* One work item (see above). scratch: attx_ctx.scratch_bytes. */
SF_ATTX static void attx_item(const attx_ctx *c, unsigned char *scratch, size_t item) {
    const size_t dpad = c->dpad, nkp = c->nkp, nk = c->kv_len, dim = c->dim;
    const size_t qblk = item % c->q_blocks, slot = item / c->q_blocks, bh = c->bh0 + slot;
    const size_t b = bh / c->heads, h = bh % c->heads, i0 = qblk * ATTX_QB;
    const size_t nq = c->q_len - i0 < ATTX_QB ? c->q_len - i0 : ATTX_QB;
    uint16_t *qp = (uint16_t *)scratch;                       /* [32][dpad] */
    float *s = (float *)(scratch + ATTX_QB * dpad * 2);       /* [32][nkp] */
    uint16_t *p = (uint16_t *)(s + ATTX_QB * nkp);            /* [32][nkp] */
    float *o = (float *)(p + ATTX_QB * nkp);                  /* [32][dpad] */
    float l[ATTX_QB];
    const uint16_t *kp = c->kp + slot * nkp * dpad, *vp = c->vp + slot * nkp * dpad;
    const float *qb = c->q + (b * c->q_len + i0) * c->qs + h * dim;

    float qn[ATTX_QB];
    for (size_t i = 0; i < ATTX_QB; i++) {
        attx_row_bf16(i < nq ? qb + i * c->qs : NULL, i < nq ? dim : 0, c->qscale, dpad,
                      qp + i * dpad);
        qn[i] = attx_norm_bf16(qp + i * dpad, dpad);
    }
    SF_AMX_BARRIER();
    const size_t nds = dpad / 32; /* S: 32 keys (two key blocks) at a time */
    for (size_t kb = 0; kb < nkp / 16; kb += 2)
        attx_tiles_2x2(qp, dpad, 32, kp + kb * nds * 512, kp + (kb + 1) * nds * 512, 512, nds,
                       s + kb * 16, nkp);
    SF_AMX_BARRIER();
    for (size_t i = 0; i < ATTX_QB; i++) {
        const float *sr = s + i * nkp;
        uint16_t *pr = p + i * nkp;
        /* The shift of the softmax: any m >= max_j s[j] is exact; the bound
         * |s[j]| <= |q| max|k| (Cauchy-Schwarz) avoids a pass over the row when it leaves every
         * exp2 above 2^-ATTX_SHIFT (far from bfloat16's and the tiles' flushed denormals). */
        float bound = qn[i] * c->knorm[slot];
        if (!(bound <= 0.5f * ATTX_SHIFT)) { /* large (or NaN): the row's maximum */
            __m512 mx = _mm512_set1_ps(-INFINITY);
            size_t j = 0;
            for (; j + 16 <= nk; j += 16)
                mx = _mm512_max_ps(_mm512_loadu_ps(sr + j), mx);
            if (j < nk) {
                __mmask16 tail = (__mmask16)((1u << (nk - j)) - 1u);
                mx = _mm512_mask_max_ps(mx, tail, _mm512_maskz_loadu_ps(tail, sr + j), mx);
            }
            bound = _mm512_reduce_max_ps(mx);
            if (isnan(qn[i]) || isnan(c->knorm[slot]))
                bound = NAN;
        }
        const __m512 m = _mm512_set1_ps(bound);
        __m512 sum = _mm512_setzero_ps();
        for (size_t j = 0; j < nkp; j += 16) {
            __mmask16 live = j + 16 <= nk ? (__mmask16)0xffff
                             : j < nk      ? (__mmask16)((1u << (nk - j)) - 1u)
                                           : (__mmask16)0;
            __m512 e = att_exp2_avx512(_mm512_sub_ps(_mm512_loadu_ps(sr + j), m), 1);
            e = _mm512_maskz_mov_ps(live, e);
            _mm256_storeu_si256((__m256i *)(pr + j), (__m256i)_mm512_cvtneps_pbh(e));
            sum = _mm512_add_ps(sum, e);
        }
        l[i] = _mm512_reduce_add_ps(sum);
    }
    SF_AMX_BARRIER();
    const size_t ndc = dpad / 16; /* O: 32 columns (two d blocks) at a time */
    for (size_t dc = 0; dc < ndc; dc += 2)
        attx_tiles_2x2(p, nkp, 32, vp + dc * 512, vp + (dc + 1) * 512, ndc * 512, nkp / 32,
                       o + dc * 16, dpad);
    SF_AMX_BARRIER();
    float *ob = c->out + (b * c->q_len + i0) * c->os + h * dim;
    for (size_t i = 0; i < nq; i++) {
        const __m512 inv = _mm512_set1_ps(1.0f / l[i]);
        for (size_t d = 0; d < dim; d += 16) {
            __mmask16 m = dim - d >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (dim - d)) - 1u);
            _mm512_mask_storeu_ps(ob + i * c->os + d, m,
                                  _mm512_mul_ps(_mm512_loadu_ps(o + i * dpad + d), inv));
        }
    }
}

static void attx_task(void *arg, size_t t) {
    attx_ctx *c = arg;
    (void)t;
    unsigned char *scratch = sf_thread_scratch(SF_SCRATCH_ATTENTION_AMX, c->scratch_bytes);
    if (!scratch)
        return; /* the other tasks take the items; attx_run reports if none could */
    sf_amx_begin();
    for (;;) {
        size_t item = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
        if (item >= c->items)
            break;
        attx_item(c, scratch, item);
    }
    sf_amx_end();
}

/* A validated call on the AMX path; workspace: attx_workspace_bytes, or NULL. */
static sf_status attx_run(const sf_attention_params *p, const size_t strides[4], const float *q,
                          const float *k, const float *v, float *out, void *workspace) {
    static const char fn[] = "sf_attention";
    sf_status st = SF_OK;
    pthreadpool_t pool = NULL;
    void *own = NULL;
    int began = 0;
    size_t ws_bytes, threads, bhs;
    attx_ctx c;
    memset(&c, 0, sizeof c);
    c.q = q;
    c.k = k;
    c.v = v;
    c.out = out;
    c.heads = p->heads;
    c.q_len = p->q_len;
    c.kv_len = p->kv_len;
    c.dim = p->head_dim;
    attx_geometry(p, &c.dpad, &c.nkp);
    c.qs = strides[0];
    c.ks = strides[1];
    c.vs = strides[2];
    c.os = strides[3];
    c.qscale = (p->scale != 0.0f ? p->scale : 1.0f / sqrtf((float)p->head_dim)) * ATT_LOG2E;
    c.q_blocks = (p->q_len + ATTX_QB - 1) / ATTX_QB;
    if (!attx_workspace_bytes(p, &ws_bytes) || !sf_mul_ok(p->batch, p->heads, &bhs) ||
        !sf_mul_n_ok(&c.items, 3, bhs, c.q_blocks, (size_t)1) ||
        !sf_mul_n_ok(&c.scratch_bytes, 3, (size_t)ATTX_QB, c.nkp + c.dpad, (size_t)6))
        SF_FAIL(SF_ERR_INVALID_ARG, "%s: sizes overflow", fn);
    if (workspace) {
        c.kp = workspace;
    } else {
        own = sf_aligned_alloc(ws_bytes);
        if (!own)
            SF_FAIL(SF_ERR_OOM, "%s: cannot allocate %zu bytes of workspace", fn, ws_bytes);
        c.kp = own;
    }
    c.vp = c.kp + (size_t)ATTX_GROUP * c.nkp * c.dpad;
    c.knorm = (float *)(c.vp + (size_t)ATTX_GROUP * c.nkp * c.dpad);
    SF_CHECK(sf_compute_begin(&pool));
    began = 1;
    threads = pool ? pthreadpool_get_threads_count(pool) : 1;
    for (c.bh0 = 0; c.bh0 < bhs; c.bh0 += c.nbh) {
        c.nbh = bhs - c.bh0 < ATTX_GROUP ? bhs - c.bh0 : ATTX_GROUP;
        c.items = c.nbh * c.q_blocks;
        atomic_init(&c.next, 0);
        pthreadpool_parallelize_1d(pool, attx_pack_task, &c, 2 * c.nbh,
                                   PTHREADPOOL_FLAG_DISABLE_DENORMALS);
        pthreadpool_parallelize_1d(pool, attx_task, &c, threads < c.items ? threads : c.items,
                                   PTHREADPOOL_FLAG_DISABLE_DENORMALS);
        if (atomic_load(&c.next) < c.items) /* every task failed to get its scratch */
            SF_FAIL(SF_ERR_OOM, "%s: out of memory (%zu bytes of scratch per thread)", fn,
                    c.scratch_bytes);
    }
    sf_mac_counter_add(att_macs(p));
fail:
    if (began)
        sf_compute_end();
    sf_aligned_free(own);
    return st;
}
#endif /* SF_ATT_X86 */

/* Whether a validated call runs on the AMX path. */
static int att_use_amx(const sf_attention_params *p) {
#if SF_ATT_X86
    return p->bf16 && !p->causal && attx_available();
#else
    (void)p;
    return 0;
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Public functions                                                                           */
/* ------------------------------------------------------------------------------------------ */

/* Validate the parameters and fill the resolved strides (q, k, v, out). */
static sf_status att_check(const char *fn, const sf_attention_params *p, size_t strides[4]) {
    if (!p)
        return sf_error(SF_ERR_INVALID_ARG, "%s: params is NULL", fn);
    const char *names[5] = {"batch", "heads", "q_len", "kv_len", "head_dim"};
    size_t vals[5] = {p->batch, p->heads, p->q_len, p->kv_len, p->head_dim};
    for (int i = 0; i < 5; i++)
        if (vals[i] == 0)
            return sf_error(SF_ERR_INVALID_ARG, "%s: %s must be > 0", fn, names[i]);
    if (p->head_dim > ATT_MAX_DIM)
        return sf_error(SF_ERR_UNSUPPORTED, "%s: head_dim %zu exceeds the supported maximum %zu",
                        fn, p->head_dim, ATT_MAX_DIM);
    size_t width;
    if (!sf_mul_ok(p->heads, p->head_dim, &width))
        return sf_error(SF_ERR_INVALID_ARG, "%s: heads * head_dim overflows", fn);
    const char *snames[4] = {"q_stride", "k_stride", "v_stride", "out_stride"};
    size_t svals[4] = {p->q_stride, p->k_stride, p->v_stride, p->out_stride};
    size_t lens[4] = {p->q_len, p->kv_len, p->kv_len, p->q_len};
    for (int i = 0; i < 4; i++) {
        strides[i] = svals[i] ? svals[i] : width;
        if (strides[i] < width)
            return sf_error(SF_ERR_INVALID_ARG,
                            "%s: %s %zu is smaller than heads * head_dim = %zu", fn, snames[i],
                            svals[i], width);
        /* Every element offset must be representable: batch * len * stride floats. */
        size_t n;
        if (!sf_mul_n_ok(&n, 4, p->batch, lens[i], strides[i], sizeof(float)) ||
            n > (size_t)PTRDIFF_MAX)
            return sf_error(SF_ERR_INVALID_ARG, "%s: tensor size overflows (%s %zu)", fn,
                            snames[i], strides[i]);
    }
    if (!isfinite(p->scale))
        return sf_error(SF_ERR_INVALID_ARG, "%s: scale must be finite, got %g", fn,
                        (double)p->scale);
    if (p->causal && p->q_len != p->kv_len)
        return sf_error(SF_ERR_SHAPE, "%s: causal attention needs q_len == kv_len (got %zu, %zu)",
                        fn, p->q_len, p->kv_len);
    return SF_OK;
}

/* Cut a validated call into work items for `threads` threads: blocks of up to 16 sub-tiles,
 * smaller while there are fewer than 4 items per thread. */
static sf_status att_make_plan(const char *fn, const sf_attention_params *p, size_t threads,
                               att_plan *plan) {
    size_t q_tiles = p->q_len / ATT_QB + (p->q_len % ATT_QB != 0);
    size_t bh;
    if (!sf_mul_ok(p->batch, p->heads, &bh))
        return sf_error(SF_ERR_INVALID_ARG, "%s: batch * heads overflows", fn);
    size_t nsub = ATT_NSUB_MAX;
    while (nsub > 1 && nsub / 2 >= q_tiles)
        nsub /= 2;
    while (nsub > 1) {
        size_t blocks = q_tiles / nsub + (q_tiles % nsub != 0);
        size_t items;
        if (!sf_mul_ok(bh, blocks, &items) || items / 4 >= threads)
            break;
        nsub /= 2;
    }
    plan->nsub = nsub;
    plan->q_blocks = q_tiles / nsub + (q_tiles % nsub != 0);
    if (!sf_mul_ok(bh, plan->q_blocks, &plan->items))
        return sf_error(SF_ERR_INVALID_ARG, "%s: batch * heads * query blocks overflows", fn);
    plan->slots = threads < plan->items ? threads : plan->items;
    att_layout_of(p->head_dim, nsub, &plan->lay);
    plan->slot_bytes = plan->lay.total * sizeof(float);
    return SF_OK;
}

/* Multiply-accumulates of a call, for the engine's MAC counter: Q K^T and P V over the keys
 * each query sees (saturating). */
static uint64_t att_macs(const sf_attention_params *p) {
    uint64_t pairs, macs;
    if (p->causal) {
        uint64_t n = p->q_len; /* query i sees keys 0..i: n (n + 1) / 2 pairs */
        if (n > UINT32_MAX)
            return UINT64_MAX;
        pairs = n % 2 == 0 ? (n / 2) * (n + 1) : n * ((n + 1) / 2);
    } else if (__builtin_mul_overflow((uint64_t)p->q_len, (uint64_t)p->kv_len, &pairs)) {
        return UINT64_MAX;
    }
    if (__builtin_mul_overflow(pairs, (uint64_t)p->batch, &macs) ||
        __builtin_mul_overflow(macs, (uint64_t)p->heads, &macs) ||
        __builtin_mul_overflow(macs, (uint64_t)p->head_dim, &macs) ||
        __builtin_mul_overflow(macs, (uint64_t)2, &macs))
        return UINT64_MAX;
    return macs;
}

sf_status sf_attention_workspace_size(const sf_attention_params *p, size_t *bytes) {
    static const char fn[] = "sf_attention_workspace_size";
    size_t strides[4];
    att_plan plan;
    if (!bytes)
        return sf_error(SF_ERR_INVALID_ARG, "%s: bytes is NULL", fn);
    *bytes = 0;
    sf_status st = att_check(fn, p, strides);
    if (st != SF_OK)
        return st;
    st = sf_init();
    if (st != SF_OK)
        return st;
#if SF_ATT_X86
    if (att_use_amx(p)) {
        if (!attx_workspace_bytes(p, bytes))
            return sf_error(SF_ERR_INVALID_ARG, "%s: workspace size overflows", fn);
        return SF_OK;
    }
#endif
    st = att_make_plan(fn, p, (size_t)sf_get_num_threads(), &plan);
    if (st != SF_OK)
        return st;
    if (!sf_mul_ok(plan.slots, plan.slot_bytes, bytes))
        return sf_error(SF_ERR_INVALID_ARG, "%s: workspace size overflows", fn);
    return SF_OK;
}

/* The best path this machine runs; SNAPFUSION_ATTENTION_ISA=generic or avx2 asks for a lower
 * one (for tests and comparisons). */
static int att_choose_isa(void) {
#if SF_ATT_X86
    const char *env = getenv("SNAPFUSION_ATTENTION_ISA");
    int cap = ATT_ISA_AVX512;
    if (env && strcmp(env, "generic") == 0)
        cap = ATT_ISA_GENERIC;
    else if (env && strcmp(env, "avx2") == 0)
        cap = ATT_ISA_AVX2;
    __builtin_cpu_init();
    if (cap >= ATT_ISA_AVX512 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
        return ATT_ISA_AVX512;
    if (cap >= ATT_ISA_AVX2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return ATT_ISA_AVX2;
#endif
    return ATT_ISA_GENERIC;
}

sf_status sf_attention(const sf_attention_params *p, const float *q, const float *k,
                       const float *v, float *out, void *workspace) {
    static const char fn[] = "sf_attention";
    sf_status st = SF_OK;
    att_ctx *c = NULL;
    void *own = NULL;
    pthreadpool_t pool = NULL;
    int began = 0;
    size_t strides[4];

    SF_CHECK(att_check(fn, p, strides));
    if (!q || !k || !v || !out)
        SF_FAIL(SF_ERR_INVALID_ARG, "%s: %s is NULL", fn,
                !q ? "q" : !k ? "k" : !v ? "v" : "out");
    if (workspace && ((uintptr_t)workspace % SF_ALIGN) != 0)
        SF_FAIL(SF_ERR_INVALID_ARG, "%s: workspace must be %d-byte aligned", fn, SF_ALIGN);
#if SF_ATT_X86
    if (att_use_amx(p))
        return attx_run(p, strides, q, k, v, out, workspace);
#endif

    c = calloc(1, sizeof *c);
    if (!c)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", fn);
    c->q = q;
    c->k = k;
    c->v = v;
    c->out = out;
    c->heads = p->heads;
    c->q_len = p->q_len;
    c->kv_len = p->kv_len;
    c->dim = p->head_dim;
    c->qs = strides[0];
    c->ks = strides[1];
    c->vs = strides[2];
    c->os = strides[3];
    float scale = p->scale != 0.0f ? p->scale : 1.0f / sqrtf((float)p->head_dim);
    c->qscale = scale * ATT_LOG2E;
    c->causal = p->causal != 0;
    c->isa = att_choose_isa();
    /* Head-dimension groups of at most ATT_MRD rows, sizes as even as possible. */
    c->ngroups = (c->dim + ATT_MRD - 1) / ATT_MRD;
    for (size_t g = 0, d0 = 0; g < c->ngroups; g++) {
        size_t rows = c->dim / c->ngroups + (g < c->dim % c->ngroups);
        c->group_start[g] = d0;
        c->group_rows[g] = (unsigned char)rows;
        d0 += rows;
    }
    atomic_init(&c->next, 0);

    SF_CHECK(sf_compute_begin(&pool));
    began = 1;
    SF_CHECK(att_make_plan(fn, p, pool ? pthreadpool_get_threads_count(pool) : 1, &c->plan));
    if (workspace) {
        c->ws = workspace;
    } else {
        size_t bytes;
        if (!sf_mul_ok(c->plan.slots, c->plan.slot_bytes, &bytes))
            SF_FAIL(SF_ERR_INVALID_ARG, "%s: workspace size overflows", fn);
        own = sf_aligned_alloc(bytes);
        if (!own)
            SF_FAIL(SF_ERR_OOM, "%s: cannot allocate %zu bytes of workspace", fn, bytes);
        c->ws = own;
    }
    pthreadpool_parallelize_1d(pool, att_task, c, c->plan.slots,
                               PTHREADPOOL_FLAG_DISABLE_DENORMALS);
    sf_mac_counter_add(att_macs(p));

fail:
    if (began)
        sf_compute_end();
    sf_aligned_free(own);
    free(c);
    return st;
}
