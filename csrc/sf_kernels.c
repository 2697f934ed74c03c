/*
 * sf_kernels.c — our own float32 kernels: group/layer norm, activations, GEGLU, softmax,
 * upsampling, elementwise ops, embeddings.
 *
 * Vectorization: the hot loops use GCC vector extensions on 16-float vectors (sf_vf). On x86-64
 * each hot loop is compiled three times (x86-64-v4 = AVX-512, x86-64-v3 = AVX2 + FMA, baseline
 * SSE2) with target_clones, and the dynamic loader picks the best clone for the CPU; on other
 * architectures (Arm64) the compiler lowers the same code to the native vector width.
 * Floating-point contraction (a * b + c -> fma) is enabled for this file: ISO C mode turns it
 * off by default and the polynomial evaluations below are built around it.
 *
 * Transcendentals (exp, erfc) are our own vectorizable approximations with a maximum relative
 * error of a few float ulps (polynomial coefficients fitted for this file; see vf_exp and
 * vf_erfc_scaled). NaN inputs propagate to NaN outputs.
 *
 * Threading: large problems (more than SF_PAR_MIN elements) run on the engine's shared pool in
 * fixed-size tiles, so results do not depend on the thread count; small ones run inline.
 */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
/* Vector helpers are always inlined and never cross an ABI boundary. */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sf_internal.h"

/* SF_NO_TARGET_CLONES (a compile-time switch) builds only the baseline path, for testing. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                         \
    !defined(SF_NO_TARGET_CLONES)
#define SF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define SF_HAVE_CLONES 1
#else
#define SF_CLONES
#define SF_HAVE_CLONES 0
#endif

#define SF_INLINE static inline __attribute__((always_inline))

/* Problems with fewer elements than this run on the calling thread. */
#define SF_PAR_MIN ((size_t)1 << 16)
/* Elements per task of the elementwise kernels (a multiple of SF_VL). */
#define SF_CHUNK ((size_t)1 << 14)

/* The clone the loader picks (the same tests as the target_clones resolver), or, without
 * clones, what the baseline was compiled for. */
const char *sf_kernel_isa(void) {
#if SF_HAVE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return "avx512";
    if (__builtin_cpu_supports("x86-64-v3"))
        return "avx2";
#elif defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#endif
    return "generic";
}

/* ------------------------------------------------------------------------------------------ */
/* Vector helpers. Vector arguments are passed by pointer (no ABI questions when a helper is  */
/* compiled for a target without 512-bit registers).                                         */
/* ------------------------------------------------------------------------------------------ */

#define SF_VL 16
typedef float sf_vf __attribute__((vector_size(64)));
typedef int32_t sf_vi __attribute__((vector_size(64)));
typedef uint32_t sf_vu __attribute__((vector_size(64)));

#define VF(c) ((sf_vf){(c), (c), (c), (c), (c), (c), (c), (c), \
                       (c), (c), (c), (c), (c), (c), (c), (c)})

SF_INLINE sf_vf vf_load(const float *p) {
    sf_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

SF_INLINE void vf_store(float *p, const sf_vf *v) {
    memcpy(p, v, sizeof *v);
}

/* Lanes of `a` where the mask is set, of `b` elsewhere. */
SF_INLINE sf_vf vf_select(const sf_vi *mask, const sf_vf *a, const sf_vf *b) {
    return (sf_vf)((*mask & (sf_vi)*a) | (~*mask & (sf_vi)*b));
}

/* The first n (< SF_VL) floats of p into a vector padded with `pad`. */
SF_INLINE sf_vf vf_load_partial(const float *p, size_t n, float pad) {
    float buf[SF_VL];
    for (size_t i = 0; i < SF_VL; i++)
        buf[i] = pad;
    memcpy(buf, p, n * sizeof(float));
    return vf_load(buf);
}

SF_INLINE void vf_store_partial(float *p, size_t n, const sf_vf *v) {
    float buf[SF_VL];
    vf_store(buf, v);
    memcpy(p, buf, n * sizeof(float));
}

/* Sum of the lanes (pairwise tree: short dependency chain, small rounding error). */
SF_INLINE float vf_sum_lanes(const sf_vf *v) {
    float b[SF_VL];
    vf_store(b, v);
    for (int w = SF_VL / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++)
            b[i] += b[i + w];
    return b[0];
}

/* Largest lane (NaN lanes are skipped unless all are NaN). */
SF_INLINE float vf_max_lanes(const sf_vf *v) {
    float b[SF_VL];
    vf_store(b, v);
    for (int w = SF_VL / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++)
            b[i] = b[i + w] > b[i] ? b[i + w] : b[i];
    return b[0];
}

/*
 * exp(x): x = n ln2 + r with |r| <= ln2/2 and n = round(x / ln2), obtained with the 1.5 * 2^23
 * rounding trick (no float-to-int conversion); exp(r) = 1 + r + r^2 q(r) with q of degree 4
 * (weighted least-squares fit, approximation error 3e-9 relative). Max error ~2 ulp; NaN
 * propagates.
 *
 * vf_exp covers the whole float range: x is clamped to [-104, 89] and 2^n is applied as two
 * factors 2^(n/2), so that overflow to +inf, gradual underflow and exp(-inf) = 0 come out
 * right. vf_exp_lim is cheaper (one scale factor) and clamps x to [-87, 88], so results
 * saturate at about 1.6e-38 and 1.6e38: it serves the fused group norm + SiLU, where the
 * argument is finite (or NaN) and only 1 + exp(x) matters.
 */
SF_INLINE sf_vf vf_exp_core(const sf_vf *xp, float lo_c, float hi_c, float bias, sf_vf *t_out) {
    const sf_vf lo = VF(lo_c), hi = VF(hi_c);
    sf_vf x = *xp;
    sf_vi m = x < lo;
    x = vf_select(&m, &lo, &x);
    m = x > hi;
    x = vf_select(&m, &hi, &x);
    /* t = magic + bias + n with n in the low mantissa bits (magic = 1.5 * 2^23) */
    const sf_vf magic = VF(12582912.0f + bias);
    sf_vf t = x * 1.44269504088896341f + magic;
    sf_vf nf = t - magic;
    sf_vf r = x - nf * 0.693359375f;       /* ln2 split: exact high part ... */
    r = r - nf * -2.12194440054690583e-4f; /* ... and the rest */
    sf_vf q = VF(1.3814536934962944e-3f);
    q = q * r + 8.368745432673505e-3f;
    q = q * r + 4.1668390852179035e-2f;
    q = q * r + 1.66665203955588e-1f;
    q = q * r + 4.9999993431783113e-1f;
    *t_out = t;
    return q * (r * r) + r + 1.0f;
}

SF_INLINE sf_vf vf_exp(const sf_vf *xp) {
    sf_vf t;
    sf_vf p = vf_exp_core(xp, -104.0f, 89.0f, 0.0f, &t);
    sf_vi n = (sf_vi)((sf_vu)t - 0x4B400000u);
    sf_vi h = n >> 1;
    sf_vf s1 = (sf_vf)(((sf_vu)h + 127u) << 23);
    sf_vf s2 = (sf_vf)(((sf_vu)n - (sf_vu)h + 127u) << 23);
    return p * s1 * s2;
}

SF_INLINE sf_vf vf_exp_lim(const sf_vf *xp) {
    sf_vf t;
    /* with the bias 127 the low 9 bits of t hold n + 127, shifted into the exponent field */
    sf_vf p = vf_exp_core(xp, -87.0f, 88.0f, 127.0f, &t);
    return p * (sf_vf)((sf_vu)t << 23);
}

/*
 * erfc(|x| / sqrt 2) for a = |x| (or NaN): with z = a / sqrt 2, erfc(z) = t exp(-z^2 + P(t)),
 * t = 1 / (1 + z/2), P of degree 9 fitted (weighted least squares, minimax-like) to
 * log(erfc(z) / t) + z^2 over z in [0, 10]. The fit error is 4.5e-8 relative everywhere,
 * including the far tail; z^2 is formed as a^2 / 2 (one rounding), whose error adds up to
 * ~z^2 * 6e-8 relative (1e-5 only where the result is below 1e-28).
 */
SF_INLINE sf_vf vf_erfc_scaled(const sf_vf *ap) {
    sf_vf a = *ap;
    sf_vf t = 1.0f / (a * (0.5f * 0.70710678118654752f) + 1.0f);
    sf_vf p = VF(0.1421968729634057f);
    p = p * t + -0.6660773229687784f;
    p = p * t + 1.1224342807387322f;
    p = p * t + -0.6512924122929572f;
    p = p * t + -0.11675163053695754f;
    p = p * t + 0.020177250122868487f;
    p = p * t + 0.028363330369783474f;
    p = p * t + 0.38789846314825294f;
    p = p * t + 0.9984926583812441f;
    p = p * t + -1.265441444702084f;
    sf_vf arg = p - (a * a) * 0.5f;
    return t * vf_exp(&arg);
}

/* x / (1 + exp(-k x)): SiLU (k = 1), quick GELU (k = 1.702). */
SF_INLINE sf_vf vf_silu_k(const sf_vf *xp, float k) {
    sf_vf a = *xp * -k;
    return *xp / (vf_exp(&a) + 1.0f);
}

/* SiLU for finite (or NaN) x, with the cheaper exp: silu(x) for |x| <= 87, and the right
 * limits (x or -0) beyond. */
SF_INLINE sf_vf vf_silu_fast(const sf_vf *xp) {
    sf_vf a = -*xp;
    return *xp / (vf_exp_lim(&a) + 1.0f);
}

SF_INLINE sf_vf vf_sigmoid(const sf_vf *xp) {
    sf_vf a = -*xp;
    return 1.0f / (vf_exp(&a) + 1.0f);
}

/* Exact GELU x * Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, from erfc(|x| / sqrt 2) (no
 * cancellation for negative x). */
SF_INLINE sf_vf vf_gelu(const sf_vf *xp) {
    sf_vf x = *xp;
    sf_vi neg = x < 0.0f;
    sf_vf a = (sf_vf)((sf_vu)x & 0x7fffffffu); /* |x| */
    sf_vf half_e = vf_erfc_scaled(&a) * 0.5f;
    sf_vf pos = 1.0f - half_e;
    sf_vf phi = vf_select(&neg, &half_e, &pos);
    return x * phi;
}

/* tanh GELU: 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3). */
SF_INLINE sf_vf vf_gelu_tanh(const sf_vf *xp) {
    sf_vf x = *xp;
    const float c0 = -2.0f * 0.79788456080286536f;
    const float c1 = -2.0f * 0.79788456080286536f * 0.044715f;
    sf_vf a = x * (x * x * c1 + c0);
    return x / (vf_exp(&a) + 1.0f);
}

SF_INLINE sf_vf vf_act(sf_activation act, const sf_vf *x) {
    switch (act) {
    case SF_ACT_SILU: return vf_silu_k(x, 1.0f);
    case SF_ACT_GELU: return vf_gelu(x);
    case SF_ACT_GELU_TANH: return vf_gelu_tanh(x);
    case SF_ACT_QUICK_GELU: return vf_silu_k(x, 1.702f);
    case SF_ACT_SIGMOID: return vf_sigmoid(x);
    }
    return *x;
}

/* ------------------------------------------------------------------------------------------ */
/* Threading                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Run fn over `tasks` tasks: on the shared pool if `work` (elements) is large, else inline. */
static sf_status run_1d(pthreadpool_task_1d_t fn, void *ctx, size_t tasks, size_t work) {
    if (tasks < 2 || work < SF_PAR_MIN) {
        for (size_t i = 0; i < tasks; i++)
            fn(ctx, i);
        return SF_OK;
    }
    pthreadpool_t pool = NULL;
    sf_status st = sf_compute_begin(&pool);
    if (st != SF_OK)
        return st;
    pthreadpool_parallelize_1d(pool, fn, ctx, tasks, 0);
    sf_compute_end();
    return SF_OK;
}

static sf_status run_2d(pthreadpool_task_2d_t fn, void *ctx, size_t ni, size_t nj,
                        size_t work) {
    if (ni * nj < 2 || work < SF_PAR_MIN) {
        for (size_t i = 0; i < ni; i++)
            for (size_t j = 0; j < nj; j++)
                fn(ctx, i, j);
        return SF_OK;
    }
    pthreadpool_t pool = NULL;
    sf_status st = sf_compute_begin(&pool);
    if (st != SF_OK)
        return st;
    pthreadpool_parallelize_2d(pool, fn, ctx, ni, nj, 0);
    sf_compute_end();
    return SF_OK;
}

static size_t div_up(size_t a, size_t b) {
    return a / b + (a % b != 0);
}

/* a * b * c, or SF_ERR_INVALID_ARG naming the function. */
static sf_status checked_size(const char *fn, size_t *out, size_t a, size_t b, size_t c) {
    if (!sf_mul_n_ok(out, 3, a, b, c))
        return sf_error(SF_ERR_INVALID_ARG, "%s: size overflow (%zu x %zu x %zu)", fn, a, b, c);
    return SF_OK;
}

#define REQUIRE_PTR(fn, p)                                                                     \
    do {                                                                                       \
        if (!(p))                                                                              \
            return sf_error(SF_ERR_INVALID_ARG, "%s: %s is NULL", fn, #p);                     \
    } while (0)

#define REQUIRE_SIZE(fn, v)                                                                    \
    do {                                                                                       \
        if ((v) == 0)                                                                          \
            return sf_error(SF_ERR_INVALID_ARG, "%s: %s must be > 0", fn, #v);                 \
    } while (0)

static sf_status check_eps(const char *fn, float eps) {
    if (!(eps > 0.0f) || !isfinite(eps))
        return sf_error(SF_ERR_INVALID_ARG, "%s: eps must be finite and > 0, got %g", fn,
                        (double)eps);
    return SF_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Group norm                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Channels per stack accumulator slice of the statistics pass. */
#define SF_GN_CB 1024

/* Per-channel shifted sums over `rows` rows of x (row stride c): d1 = sum(x - k), d2 =
 * sum((x - k)^2), accumulated in float within the block (<= 256 rows) and stored as double. */
static SF_CLONES void gn_stats_block(const float *restrict x, size_t rows, size_t c,
                                     const float *restrict k, double *restrict d1,
                                     double *restrict d2) {
    float a1[SF_GN_CB], a2[SF_GN_CB];
    for (size_t c0 = 0; c0 < c; c0 += SF_GN_CB) {
        size_t cn = c - c0 < SF_GN_CB ? c - c0 : SF_GN_CB;
        const float *kc = k + c0;
        for (size_t i = 0; i < cn; i++)
            a1[i] = a2[i] = 0.0f;
        for (size_t r = 0; r < rows; r++) {
            const float *xr = x + r * c + c0;
            for (size_t i = 0; i < cn; i++) {
                float d = xr[i] - kc[i];
                a1[i] += d;
                a2[i] += d * d;
            }
        }
        for (size_t i = 0; i < cn; i++) {
            d1[c0 + i] = (double)a1[i];
            d2[c0 + i] = (double)a2[i];
        }
    }
}

/* y = (x - mh) * sc + bt per channel, then SiLU if asked (silu is a constant after
 * inlining); x may equal y. */
SF_INLINE void gn_norm_loop(const float *x, float *y, size_t rows, size_t c, const float *mh,
                            const float *sc, const float *bt, int silu) {
    size_t cv = c - c % SF_VL;
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * c;
        float *yr = y + r * c;
        size_t i = 0;
        for (; i < cv; i += SF_VL) {
            sf_vf v = (vf_load(xr + i) - vf_load(mh + i)) * vf_load(sc + i) + vf_load(bt + i);
            if (silu)
                v = vf_silu_fast(&v);
            vf_store(yr + i, &v);
        }
        if (i < c) {
            size_t n = c - i;
            sf_vf v = (vf_load_partial(xr + i, n, 0.0f) - vf_load_partial(mh + i, n, 0.0f)) *
                          vf_load_partial(sc + i, n, 0.0f) +
                      vf_load_partial(bt + i, n, 0.0f);
            if (silu)
                v = vf_silu_fast(&v);
            vf_store_partial(yr + i, n, &v);
        }
    }
}

static SF_CLONES void gn_norm_rows(const float *x, float *y, size_t rows, size_t c,
                                   const float *mh, const float *sc, const float *bt, int silu) {
    if (silu)
        gn_norm_loop(x, y, rows, c, mh, sc, bt, 1);
    else
        gn_norm_loop(x, y, rows, c, mh, sc, bt, 0);
}

typedef struct {
    const float *x;
    float *y;
    size_t hw, c;
    size_t stat_rows, stat_blocks; /* statistics pass tiling */
    size_t norm_rows, norm_blocks; /* normalization pass tiling */
    double *part;                  /* (batch, stat_blocks, 2, c) */
    const float *mh, *sc, *bt;     /* (batch, c) each */
    int silu;
} gn_ctx;

static void gn_stats_task(void *arg, size_t b, size_t blk) {
    const gn_ctx *g = arg;
    size_t r0 = blk * g->stat_rows;
    size_t rows = g->hw - r0 < g->stat_rows ? g->hw - r0 : g->stat_rows;
    const float *xb = g->x + b * g->hw * g->c;
    double *d = g->part + (b * g->stat_blocks + blk) * 2 * g->c;
    gn_stats_block(xb + r0 * g->c, rows, g->c, xb, d, d + g->c);
}

static void gn_norm_task(void *arg, size_t b, size_t blk) {
    const gn_ctx *g = arg;
    size_t r0 = blk * g->norm_rows;
    size_t rows = g->hw - r0 < g->norm_rows ? g->hw - r0 : g->norm_rows;
    size_t off = (b * g->hw + r0) * g->c;
    size_t po = b * g->c;
    gn_norm_rows(g->x + off, g->y + off, rows, g->c, g->mh + po, g->sc + po, g->bt + po,
                 g->silu);
}

/* Combine the per-block sums of one batch item into per-channel parameters of
 * y = (x - mh) * sc + bt: mh is the group mean rounded to float, sc = gamma * rstd and bt =
 * beta - (mean - mh) * sc carries the rounding of the mean (robust for large means). */
static void gn_combine(const gn_ctx *g, const float *xb, size_t groups, float eps,
                       const float *gamma, const float *beta, double *part_b, float *mh,
                       float *sc, float *bt) {
    size_t c = g->c, cg = c / groups;
    double *s1 = part_b, *s2 = part_b + c;
    for (size_t blk = 1; blk < g->stat_blocks; blk++) {
        const double *p = part_b + blk * 2 * c;
        for (size_t i = 0; i < c; i++) {
            s1[i] += p[i];
            s2[i] += p[c + i];
        }
    }
    double hw = (double)g->hw;
    for (size_t grp = 0; grp < groups; grp++) {
        size_t c0 = grp * cg;
        double mean_sum = 0.0;
        for (size_t i = c0; i < c0 + cg; i++)
            mean_sum += (double)xb[i] + s1[i] / hw;
        double mu = mean_sum / (double)cg;
        double m2 = 0.0;
        for (size_t i = c0; i < c0 + cg; i++) {
            double mean_c = (double)xb[i] + s1[i] / hw;
            double dev = mean_c - mu;
            m2 += (s2[i] - s1[i] * s1[i] / hw) + hw * dev * dev;
        }
        double var = m2 / (hw * (double)cg);
        if (var < 0.0)
            var = 0.0;
        double rstd = 1.0 / sqrt(var + (double)eps);
        float mu_hi = (float)mu;
        double mu_lo = mu - (double)mu_hi;
        for (size_t i = c0; i < c0 + cg; i++) {
            double s = (gamma ? (double)gamma[i] : 1.0) * rstd;
            mh[i] = mu_hi;
            sc[i] = (float)s;
            bt[i] = (float)((beta ? (double)beta[i] : 0.0) - mu_lo * s);
        }
    }
}

sf_status sf_group_norm(const float *x, size_t batch, size_t hw, size_t channels, size_t groups,
                        float eps, const float *gamma, const float *beta, int fuse_silu,
                        float *y) {
    static const char fn[] = "sf_group_norm";
    REQUIRE_PTR(fn, x);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, batch);
    REQUIRE_SIZE(fn, hw);
    REQUIRE_SIZE(fn, channels);
    REQUIRE_SIZE(fn, groups);
    if (channels % groups != 0)
        return sf_error(SF_ERR_INVALID_ARG, "%s: groups (%zu) must divide channels (%zu)", fn,
                        groups, channels);
    sf_status st = check_eps(fn, eps);
    if (st != SF_OK)
        return st;
    size_t total, bc;
    st = checked_size(fn, &total, batch, hw, channels);
    if (st != SF_OK)
        return st;
    st = checked_size(fn, &bc, batch, channels, 1);
    if (st != SF_OK)
        return st;

    gn_ctx g = {.x = x, .y = y, .hw = hw, .c = channels, .silu = fuse_silu != 0};
    /* Statistics tiles of ~64K elements (at most 256 rows, float accumulation inside a tile);
     * normalization tiles of ~16K elements. Both depend only on the shape. */
    g.stat_rows = (size_t)65536 / channels;
    g.stat_rows = g.stat_rows < 1 ? 1 : g.stat_rows > 256 ? 256 : g.stat_rows;
    g.stat_blocks = div_up(hw, g.stat_rows);
    g.norm_rows = SF_CHUNK / channels;
    g.norm_rows = g.norm_rows < 1 ? 1 : g.norm_rows;
    g.norm_blocks = div_up(hw, g.norm_rows);

    size_t part_n, part_bytes, par_bytes;
    double *part = NULL;
    float *params = NULL;
    if (!sf_mul_n_ok(&part_n, 4, batch, g.stat_blocks, (size_t)2, channels) ||
        !sf_mul_ok(part_n, sizeof(double), &part_bytes) ||
        !sf_mul_n_ok(&par_bytes, 3, bc, (size_t)3, sizeof(float)))
        return sf_error(SF_ERR_INVALID_ARG, "%s: size overflow", fn);
    part = malloc(part_bytes);
    params = malloc(par_bytes);
    if (!part || !params)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory for %zu bytes of statistics", fn,
                part_bytes + par_bytes);
    g.part = part;
    SF_CHECK(run_2d(gn_stats_task, &g, batch, g.stat_blocks, total));
    float *mh = params, *sc = params + bc, *bt = params + 2 * bc;
    for (size_t b = 0; b < batch; b++)
        gn_combine(&g, x + b * hw * channels, groups, eps, gamma, beta,
                   part + b * g.stat_blocks * 2 * channels, mh + b * channels,
                   sc + b * channels, bt + b * channels);
    g.mh = mh;
    g.sc = sc;
    g.bt = bt;
    SF_CHECK(run_2d(gn_norm_task, &g, batch, g.norm_blocks, total));
fail:
    free(part);
    free(params);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* Layer norm                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Two-pass mean/variance per row (shifted by the row's first value, sums reduced in double),
 * then y = (x - mean) * rstd * gamma + beta. x may equal y. */
static SF_CLONES void ln_rows(const float *x, float *y, size_t rows, size_t dim, float eps,
                              const float *gamma, const float *beta) {
    size_t dv = dim - dim % SF_VL, tail = dim - dv;
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        float k = xr[0];
        sf_vf acc = VF(0.0f);
        for (size_t i = 0; i < dv; i += SF_VL)
            acc += vf_load(xr + i) - k;
        double s = vf_sum_lanes(&acc);
        for (size_t i = dv; i < dim; i++)
            s += (double)(xr[i] - k);
        double mean = (double)k + s / (double)dim;
        float mh = (float)mean, ml = (float)(mean - (double)mh);
        acc = VF(0.0f);
        for (size_t i = 0; i < dv; i += SF_VL) {
            sf_vf d = (vf_load(xr + i) - mh) - ml;
            acc += d * d;
        }
        double ss = vf_sum_lanes(&acc);
        for (size_t i = dv; i < dim; i++) {
            float d = (xr[i] - mh) - ml;
            ss += (double)(d * d);
        }
        float rstd = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
        for (size_t i = 0; i < dv; i += SF_VL) {
            sf_vf v = ((vf_load(xr + i) - mh) - ml) * rstd;
            if (gamma)
                v *= vf_load(gamma + i);
            if (beta)
                v += vf_load(beta + i);
            vf_store(yr + i, &v);
        }
        if (tail) {
            sf_vf v = ((vf_load_partial(xr + dv, tail, 0.0f) - mh) - ml) * rstd;
            if (gamma)
                v *= vf_load_partial(gamma + dv, tail, 0.0f);
            if (beta)
                v += vf_load_partial(beta + dv, tail, 0.0f);
            vf_store_partial(yr + dv, tail, &v);
        }
    }
}

typedef struct {
    const float *x;
    float *y;
    size_t rows, dim, block;
    float eps;
    const float *gamma, *beta;
} ln_ctx;

static void ln_task(void *arg, size_t blk) {
    const ln_ctx *l = arg;
    size_t r0 = blk * l->block;
    size_t n = l->rows - r0 < l->block ? l->rows - r0 : l->block;
    ln_rows(l->x + r0 * l->dim, l->y + r0 * l->dim, n, l->dim, l->eps, l->gamma, l->beta);
}

sf_status sf_layer_norm(const float *x, size_t rows, size_t dim, float eps, const float *gamma,
                        const float *beta, float *y) {
    static const char fn[] = "sf_layer_norm";
    REQUIRE_PTR(fn, x);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, rows);
    REQUIRE_SIZE(fn, dim);
    sf_status st = check_eps(fn, eps);
    if (st != SF_OK)
        return st;
    size_t total;
    st = checked_size(fn, &total, rows, dim, 1);
    if (st != SF_OK)
        return st;
    ln_ctx l = {.x = x, .y = y, .rows = rows, .dim = dim, .eps = eps, .gamma = gamma,
                .beta = beta};
    l.block = SF_CHUNK / dim;
    l.block = l.block < 1 ? 1 : l.block;
    return run_1d(ln_task, &l, div_up(rows, l.block), total);
}

/* ------------------------------------------------------------------------------------------ */
/* Activations and GEGLU                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Loop body specialized per activation (act is a constant after inlining). */
SF_INLINE void act_loop(sf_activation act, const float *x, size_t n, float *y) {
    size_t i = 0;
    for (; i + SF_VL <= n; i += SF_VL) {
        sf_vf v = vf_load(x + i);
        v = vf_act(act, &v);
        vf_store(y + i, &v);
    }
    if (i < n) {
        sf_vf v = vf_load_partial(x + i, n - i, 0.0f);
        v = vf_act(act, &v);
        vf_store_partial(y + i, n - i, &v);
    }
}

static SF_CLONES void act_range(sf_activation act, const float *x, size_t n, float *y) {
    switch (act) {
    case SF_ACT_SILU: act_loop(SF_ACT_SILU, x, n, y); break;
    case SF_ACT_GELU: act_loop(SF_ACT_GELU, x, n, y); break;
    case SF_ACT_GELU_TANH: act_loop(SF_ACT_GELU_TANH, x, n, y); break;
    case SF_ACT_QUICK_GELU: act_loop(SF_ACT_QUICK_GELU, x, n, y); break;
    case SF_ACT_SIGMOID: act_loop(SF_ACT_SIGMOID, x, n, y); break;
    }
}

typedef struct {
    sf_activation act;
    const float *x;
    float *y;
    size_t n;
} act_ctx;

static void act_task(void *arg, size_t t) {
    const act_ctx *a = arg;
    size_t i0 = t * SF_CHUNK;
    size_t n = a->n - i0 < SF_CHUNK ? a->n - i0 : SF_CHUNK;
    act_range(a->act, a->x + i0, n, a->y + i0);
}

sf_status sf_activation_run(sf_activation act, const float *x, size_t n, float *y) {
    static const char fn[] = "sf_activation_run";
    REQUIRE_PTR(fn, x);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, n);
    switch (act) {
    case SF_ACT_SILU:
    case SF_ACT_GELU:
    case SF_ACT_GELU_TANH:
    case SF_ACT_QUICK_GELU:
    case SF_ACT_SIGMOID:
        break;
    default:
        return sf_error(SF_ERR_INVALID_ARG, "%s: unknown activation %d", fn, (int)act);
    }
    act_ctx a = {.act = act, .x = x, .y = y, .n = n};
    return run_1d(act_task, &a, div_up(n, SF_CHUNK), n);
}

static SF_CLONES void geglu_rows(const float *x, size_t rows, size_t dim, int approximate,
                                 float *y) {
    size_t dv = dim - dim % SF_VL;
    for (size_t r = 0; r < rows; r++) {
        const float *h = x + r * 2 * dim, *gate = h + dim;
        float *yr = y + r * dim;
        size_t i = 0;
        for (; i < dv; i += SF_VL) {
            sf_vf gv = vf_load(gate + i);
            sf_vf v = vf_load(h + i) * (approximate ? vf_gelu_tanh(&gv) : vf_gelu(&gv));
            vf_store(yr + i, &v);
        }
        if (i < dim) {
            size_t n = dim - i;
            sf_vf gv = vf_load_partial(gate + i, n, 0.0f);
            sf_vf v = vf_load_partial(h + i, n, 0.0f) *
                      (approximate ? vf_gelu_tanh(&gv) : vf_gelu(&gv));
            vf_store_partial(yr + i, n, &v);
        }
    }
}

typedef struct {
    const float *x;
    float *y;
    size_t rows, dim, block;
    int approximate;
} geglu_ctx;

static void geglu_task(void *arg, size_t blk) {
    const geglu_ctx *g = arg;
    size_t r0 = blk * g->block;
    size_t n = g->rows - r0 < g->block ? g->rows - r0 : g->block;
    geglu_rows(g->x + r0 * 2 * g->dim, n, g->dim, g->approximate, g->y + r0 * g->dim);
}

sf_status sf_geglu(const float *x, size_t rows, size_t dim, int approximate, float *y) {
    static const char fn[] = "sf_geglu";
    REQUIRE_PTR(fn, x);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, rows);
    REQUIRE_SIZE(fn, dim);
    size_t total;
    sf_status st = checked_size(fn, &total, rows, dim, 2);
    if (st != SF_OK)
        return st;
    geglu_ctx g = {.x = x, .y = y, .rows = rows, .dim = dim, .approximate = approximate != 0};
    g.block = SF_CHUNK / dim;
    g.block = g.block < 1 ? 1 : g.block;
    return run_1d(geglu_task, &g, div_up(rows, g.block), total);
}

/* ------------------------------------------------------------------------------------------ */
/* Softmax                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Max-subtracted softmax per row; x may equal y. The partial tail vector is padded with -inf
 * (no effect on the max, exp gives 0). A NaN anywhere in a row makes the whole row NaN. */
static SF_CLONES void softmax_rows(const float *x, size_t rows, size_t n, float *y) {
    size_t nv = n - n % SF_VL, tail = n - nv;
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        sf_vf m = VF(-INFINITY);
        for (size_t i = 0; i < nv; i += SF_VL) {
            sf_vf v = vf_load(xr + i);
            sf_vi gt = v > m;
            m = vf_select(&gt, &v, &m);
        }
        if (tail) {
            sf_vf v = vf_load_partial(xr + nv, tail, -INFINITY);
            sf_vi gt = v > m;
            m = vf_select(&gt, &v, &m);
        }
        float mx = vf_max_lanes(&m);
        sf_vf acc = VF(0.0f);
        for (size_t i = 0; i < nv; i += SF_VL) {
            sf_vf v = vf_load(xr + i) - mx;
            v = vf_exp(&v);
            acc += v;
            vf_store(yr + i, &v);
        }
        if (tail) {
            sf_vf v = vf_load_partial(xr + nv, tail, -INFINITY) - mx;
            v = vf_exp(&v);
            acc += v;
            vf_store_partial(yr + nv, tail, &v);
        }
        float inv = 1.0f / vf_sum_lanes(&acc);
        for (size_t i = 0; i < nv; i += SF_VL) {
            sf_vf v = vf_load(yr + i) * inv;
            vf_store(yr + i, &v);
        }
        for (size_t i = nv; i < n; i++)
            yr[i] *= inv;
    }
}

typedef struct {
    const float *x;
    float *y;
    size_t rows, n, block;
} softmax_ctx;

static void softmax_task(void *arg, size_t blk) {
    const softmax_ctx *s = arg;
    size_t r0 = blk * s->block;
    size_t rows = s->rows - r0 < s->block ? s->rows - r0 : s->block;
    softmax_rows(s->x + r0 * s->n, rows, s->n, s->y + r0 * s->n);
}

sf_status sf_softmax(const float *x, size_t rows, size_t n, float *y) {
    static const char fn[] = "sf_softmax";
    REQUIRE_PTR(fn, x);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, rows);
    REQUIRE_SIZE(fn, n);
    size_t total;
    sf_status st = checked_size(fn, &total, rows, n, 1);
    if (st != SF_OK)
        return st;
    softmax_ctx s = {.x = x, .y = y, .rows = rows, .n = n};
    s.block = SF_CHUNK / n;
    s.block = s.block < 1 ? 1 : s.block;
    return run_1d(softmax_task, &s, div_up(rows, s.block), total);
}

/* ------------------------------------------------------------------------------------------ */
/* Nearest 2x upsampling                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    const float *x;
    float *y;
    size_t w, c; /* input width, channels */
} up_ctx;

/* One input row (b, i) -> output rows (b, 2i) and (b, 2i + 1). */
static void up_task(void *arg, size_t row) {
    const up_ctx *u = arg;
    size_t c = u->c, w = u->w;
    const float *src = u->x + row * w * c;
    float *dst = u->y + row * 4 * w * c;
    if (c == 1) {
        for (size_t j = 0; j < w; j++)
            dst[2 * j] = dst[2 * j + 1] = src[j];
    } else {
        for (size_t j = 0; j < w; j++) {
            memcpy(dst + 2 * j * c, src + j * c, c * sizeof(float));
            memcpy(dst + (2 * j + 1) * c, src + j * c, c * sizeof(float));
        }
    }
    memcpy(dst + 2 * w * c, dst, 2 * w * c * sizeof(float));
}

sf_status sf_upsample_nearest2x(const float *x, size_t batch, size_t h, size_t w, size_t c,
                                float *y) {
    static const char fn[] = "sf_upsample_nearest2x";
    REQUIRE_PTR(fn, x);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, batch);
    REQUIRE_SIZE(fn, h);
    REQUIRE_SIZE(fn, w);
    REQUIRE_SIZE(fn, c);
    size_t rows, in_total, out_total;
    sf_status st = checked_size(fn, &rows, batch, h, 1);
    if (st == SF_OK)
        st = checked_size(fn, &in_total, rows, w, c);
    if (st == SF_OK)
        st = checked_size(fn, &out_total, in_total, 4, 1);
    if (st != SF_OK)
        return st;
    up_ctx u = {.x = x, .y = y, .w = w, .c = c};
    return run_1d(up_task, &u, rows, out_total);
}

/* ------------------------------------------------------------------------------------------ */
/* Elementwise: add, axpby, add_rows, concat                                                 */
/* ------------------------------------------------------------------------------------------ */

/* op 0: y = a + b; op 1: y = alpha a + beta b. y may alias a or b. */
static SF_CLONES void binary_range(int op, float alpha, const float *a, float beta,
                                   const float *b, size_t n, float *y) {
    if (op == 0) {
        for (size_t i = 0; i < n; i++)
            y[i] = a[i] + b[i];
    } else {
        for (size_t i = 0; i < n; i++)
            y[i] = alpha * a[i] + beta * b[i];
    }
}

typedef struct {
    int op;
    float alpha, beta;
    const float *a, *b;
    float *y;
    size_t n;
} binary_ctx;

static void binary_task(void *arg, size_t t) {
    const binary_ctx *e = arg;
    size_t i0 = t * SF_CHUNK;
    size_t n = e->n - i0 < SF_CHUNK ? e->n - i0 : SF_CHUNK;
    binary_range(e->op, e->alpha, e->a + i0, e->beta, e->b + i0, n, e->y + i0);
}

static sf_status binary_run(const char *fn, int op, float alpha, const float *a, float beta,
                            const float *b, size_t n, float *y) {
    REQUIRE_PTR(fn, a);
    REQUIRE_PTR(fn, b);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, n);
    binary_ctx e = {.op = op, .alpha = alpha, .beta = beta, .a = a, .b = b, .y = y, .n = n};
    return run_1d(binary_task, &e, div_up(n, SF_CHUNK), n);
}

sf_status sf_add(const float *a, const float *b, size_t n, float *y) {
    return binary_run("sf_add", 0, 1.0f, a, 1.0f, b, n, y);
}

sf_status sf_axpby(float alpha, const float *a, float beta, const float *b, size_t n, float *y) {
    return binary_run("sf_axpby", 1, alpha, a, beta, b, n, y);
}

static SF_CLONES void add_rows_range(const float *x, size_t rows, size_t c, const float *v,
                                     float *y) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * c;
        float *yr = y + r * c;
        for (size_t i = 0; i < c; i++)
            yr[i] = xr[i] + v[i];
    }
}

typedef struct {
    const float *x, *v;
    float *y;
    size_t rows, c, block, blocks;
} add_rows_ctx;

static void add_rows_task(void *arg, size_t b, size_t blk) {
    const add_rows_ctx *a = arg;
    size_t r0 = blk * a->block;
    size_t n = a->rows - r0 < a->block ? a->rows - r0 : a->block;
    size_t off = (b * a->rows + r0) * a->c;
    add_rows_range(a->x + off, n, a->c, a->v + b * a->c, a->y + off);
}

sf_status sf_add_rows(const float *x, size_t batch, size_t rows, size_t c, const float *v,
                      float *y) {
    static const char fn[] = "sf_add_rows";
    REQUIRE_PTR(fn, x);
    REQUIRE_PTR(fn, v);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, batch);
    REQUIRE_SIZE(fn, rows);
    REQUIRE_SIZE(fn, c);
    size_t total;
    sf_status st = checked_size(fn, &total, batch, rows, c);
    if (st != SF_OK)
        return st;
    add_rows_ctx a = {.x = x, .v = v, .y = y, .rows = rows, .c = c};
    a.block = SF_CHUNK / c;
    a.block = a.block < 1 ? 1 : a.block;
    a.blocks = div_up(rows, a.block);
    return run_2d(add_rows_task, &a, batch, a.blocks, total);
}

typedef struct {
    const float *a, *b;
    float *y;
    size_t ca, cb, rows, block;
} concat_ctx;

static void concat_task(void *arg, size_t blk) {
    const concat_ctx *k = arg;
    size_t r0 = blk * k->block;
    size_t n = k->rows - r0 < k->block ? k->rows - r0 : k->block;
    size_t cy = k->ca + k->cb;
    for (size_t r = r0; r < r0 + n; r++) {
        memcpy(k->y + r * cy, k->a + r * k->ca, k->ca * sizeof(float));
        memcpy(k->y + r * cy + k->ca, k->b + r * k->cb, k->cb * sizeof(float));
    }
}

sf_status sf_concat_channels(const float *a, size_t ca, const float *b, size_t cb, size_t rows,
                             float *y) {
    static const char fn[] = "sf_concat_channels";
    REQUIRE_PTR(fn, a);
    REQUIRE_PTR(fn, b);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, ca);
    REQUIRE_SIZE(fn, cb);
    REQUIRE_SIZE(fn, rows);
    size_t cy, total;
    if (!sf_add_ok(ca, cb, &cy))
        return sf_error(SF_ERR_INVALID_ARG, "%s: size overflow (%zu + %zu)", fn, ca, cb);
    sf_status st = checked_size(fn, &total, rows, cy, 1);
    if (st != SF_OK)
        return st;
    concat_ctx k = {.a = a, .b = b, .y = y, .ca = ca, .cb = cb, .rows = rows};
    k.block = SF_CHUNK / cy;
    k.block = k.block < 1 ? 1 : k.block;
    return run_1d(concat_task, &k, div_up(rows, k.block), total);
}

/* ------------------------------------------------------------------------------------------ */
/* Embeddings                                                                                 */
/* ------------------------------------------------------------------------------------------ */

sf_status sf_embedding(const float *table, size_t vocab, size_t dim, const int64_t *ids,
                       size_t n, float *y) {
    static const char fn[] = "sf_embedding";
    REQUIRE_PTR(fn, table);
    REQUIRE_PTR(fn, ids);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, vocab);
    REQUIRE_SIZE(fn, dim);
    REQUIRE_SIZE(fn, n);
    size_t total;
    sf_status st = checked_size(fn, &total, vocab, dim, 1);
    if (st == SF_OK)
        st = checked_size(fn, &total, n, dim, 1);
    if (st != SF_OK)
        return st;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint64_t)ids[i] >= (uint64_t)vocab)
            return sf_error(SF_ERR_INVALID_ARG,
                            "%s: id %lld at position %zu is out of range [0, %zu)", fn,
                            (long long)ids[i], i, vocab);
    }
    for (size_t i = 0; i < n; i++)
        memcpy(y + i * dim, table + (size_t)ids[i] * dim, dim * sizeof(float));
    return SF_OK;
}

/* Follows diffusers' get_timestep_embedding operation by operation in float32: exponent_i =
 * float(-ln max_period) * i / float(half - shift); freq = exp(exponent); arg = scale * (t *
 * freq); y = [sin(arg), cos(arg)] (or [cos, sin]) plus a zero column when dim is odd. */
sf_status sf_timestep_embedding(const float *t, size_t n, size_t dim, int flip_sin_to_cos,
                                float downscale_freq_shift, float scale, float max_period,
                                float *y) {
    static const char fn[] = "sf_timestep_embedding";
    REQUIRE_PTR(fn, t);
    REQUIRE_PTR(fn, y);
    REQUIRE_SIZE(fn, n);
    REQUIRE_SIZE(fn, dim);
    size_t total;
    sf_status st = checked_size(fn, &total, n, dim, 1);
    if (st != SF_OK)
        return st;
    if (!(max_period > 0.0f) || !isfinite(max_period))
        return sf_error(SF_ERR_INVALID_ARG, "%s: max_period must be finite and > 0, got %g", fn,
                        (double)max_period);
    if (!isfinite(downscale_freq_shift) || !isfinite(scale))
        return sf_error(SF_ERR_INVALID_ARG,
                        "%s: downscale_freq_shift and scale must be finite, got %g and %g", fn,
                        (double)downscale_freq_shift, (double)scale);
    size_t half = dim / 2;
    float denom = (float)((double)half - (double)downscale_freq_shift);
    if (half > 0 && denom == 0.0f)
        return sf_error(SF_ERR_INVALID_ARG,
                        "%s: half the dimension (%zu) minus downscale_freq_shift (%g) is 0", fn,
                        half, (double)downscale_freq_shift);
    float *freq = NULL;
    if (half > 0) {
        freq = malloc(half * sizeof(float));
        if (!freq)
            return sf_error(SF_ERR_OOM, "%s: out of memory", fn);
    }
    float neg_log = (float)(-log((double)max_period));
    for (size_t i = 0; i < half; i++) {
        float e = neg_log * (float)i;
        e = e / denom;
        freq[i] = expf(e);
    }
    for (size_t r = 0; r < n; r++) {
        float *yr = y + r * dim;
        float *sin_part = yr + (flip_sin_to_cos ? half : 0);
        float *cos_part = yr + (flip_sin_to_cos ? 0 : half);
        for (size_t i = 0; i < half; i++) {
            float arg = t[r] * freq[i];
            arg = scale * arg;
            sin_part[i] = sinf(arg);
            cos_part[i] = cosf(arg);
        }
        if (dim % 2)
            yr[dim - 1] = 0.0f;
    }
    free(freq);
    return SF_OK;
}
