/*
 * sf_quant.c — quantized (W8A8) convolution and linear layers: activation quantization, the
 * back ends (our packed int8 GEMM of sf_quant_gemm.c, XNNPACK's qc8 convolution), and the
 * observer that calibration installs. See sf_quant.h.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xnnpack.h>

#include "sf_internal.h"
#include "sf_quant.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define SF_QUANT_X86 1
#else
#define SF_QUANT_X86 0
#endif

/* ------------------------------------------------------------------------------------------ */
/* Back ends                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static const char *const sf_qbackend_names[] = {"auto", "vnni", "xnnpack", "reference", "amx"};
#define SF_QBACKENDS 5

const char *sf_qbackend_name(sf_qbackend b) {
    return (unsigned)b < SF_QBACKENDS ? sf_qbackend_names[b] : "unknown";
}

sf_status sf_qbackend_from_name(const char *name, sf_qbackend *out) {
    if (!name || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qbackend_from_name: NULL argument");
    for (int i = 0; i < SF_QBACKENDS; i++)
        if (strcmp(name, sf_qbackend_names[i]) == 0) {
            *out = (sf_qbackend)i;
            return SF_OK;
        }
    return sf_error(SF_ERR_INVALID_ARG, "unknown int8 back end '%s' (expected auto, amx, "
                    "vnni, xnnpack or reference)", name);
}

int sf_qbackend_available(sf_qbackend b) {
    switch (b) {
    case SF_QBACKEND_AUTO:
    case SF_QBACKEND_REFERENCE:
    case SF_QBACKEND_XNNPACK:
        return 1;
    case SF_QBACKEND_VNNI:
        return sf_qgemm_vnni_supported();
    case SF_QBACKEND_AMX:
        return sf_qgemm_amx_supported();
    }
    return 0;
}

int sf_qgemm_isa_of(sf_qbackend b) {
    return b == SF_QBACKEND_AMX ? SF_QGEMM_AMX : b == SF_QBACKEND_VNNI ? SF_QGEMM_VNNI
                                                                       : SF_QGEMM_REF;
}

sf_qbackend sf_qbackend_resolve(sf_qbackend requested, int has_static) {
    if (requested == SF_QBACKEND_AUTO) {
        /* the environment may choose, where its choice can run this layer */
        const char *env = getenv("SNAPFUSION_INT8");
        sf_qbackend e = SF_QBACKEND_AUTO;
        if (env && sf_qbackend_from_name(env, &e) == SF_OK && e != SF_QBACKEND_AUTO &&
            sf_qbackend_available(e) && (e != SF_QBACKEND_XNNPACK || has_static))
            return e;
        sf_clear_error();
        if (sf_qgemm_amx_supported())
            return SF_QBACKEND_AMX;
        if (sf_qgemm_vnni_supported())
            return SF_QBACKEND_VNNI;
        return has_static ? SF_QBACKEND_XNNPACK : SF_QBACKEND_REFERENCE;
    }
    return requested;
}

/* ------------------------------------------------------------------------------------------ */
/* Quantization helpers                                                                       */
/* ------------------------------------------------------------------------------------------ */

static inline int8_t sf_q8(float x, float inv, float zp) {
    float v = x * inv;
    v = v + zp;
    v = fmaxf(v, -128.0f); /* NaN -> -128 */
    v = fminf(v, 127.0f);
    return (int8_t)nearbyintf(v);
}

sf_status sf_quantize_rows(const float *w, size_t rows, size_t cols, int8_t *q, float *scale) {
    if (!w || !q || !scale || !rows || !cols)
        return sf_error(SF_ERR_INVALID_ARG, "sf_quantize_rows: NULL pointer or zero size");
    for (size_t r = 0; r < rows; r++) {
        const float *wr = w + r * cols;
        float m = 0.0f;
        for (size_t c = 0; c < cols; c++) {
            if (!isfinite(wr[c]))
                return sf_error(SF_ERR_INVALID_ARG, "sf_quantize_rows: non-finite weight at "
                                "[%zu, %zu]", r, c);
            m = fmaxf(m, fabsf(wr[c]));
        }
        float s = m > 0.0f ? m / 127.0f : 1.0f;
        if (!(s > 0.0f) || !isfinite(s))
            s = 1.0f;
        scale[r] = s;
        float inv = 1.0f / s;
        for (size_t c = 0; c < cols; c++) {
            float v = fminf(fmaxf(nearbyintf(wr[c] * inv), -127.0f), 127.0f);
            q[r * cols + c] = (int8_t)v;
        }
    }
    return SF_OK;
}

sf_qparams sf_qparams_from_range(float lo, float hi) {
    sf_qparams p = {1, 1.0f, -128};
    if (!(lo <= 0.0f) || !isfinite(lo))
        lo = 0.0f;
    if (!(hi >= 0.0f) || !isfinite(hi))
        hi = 0.0f;
    float s = (hi - lo) / 255.0f;
    if (!(s > 0.0f) || !isfinite(s) || s < 1e-30f)
        s = 1.0f;
    p.scale = s;
    float z = nearbyintf(-128.0f - lo / s);
    p.zero_point = (int)fminf(fmaxf(z, -128.0f), 127.0f);
    return p;
}

void sf_quantize_activations(const float *x, size_t n, const sf_qparams *p, int8_t *q) {
    if (!x || !q || !p)
        return;
    float inv = 1.0f / p->scale, zp = (float)p->zero_point;
    for (size_t i = 0; i < n; i++)
        q[i] = sf_q8(x[i], inv, zp);
}

/* ---- parallel quantize / min-max / dequantize over chunks ---- */

#define SF_QCHUNKS_MAX 256
#define SF_QCHUNK_MIN 16384

typedef struct {
    const float *x;
    size_t n, chunks;
    float inv, zp;
    uint8_t flip;        /* 0x80: store q + 128 (unsigned), 0: q */
    uint8_t *q;          /* quantize output */
    const int8_t *qin;   /* dequantize input */
    float *y;            /* dequantize output */
    float scale;
    float mins[SF_QCHUNKS_MAX], maxs[SF_QCHUNKS_MAX];
    unsigned char nan[SF_QCHUNKS_MAX];
} sf_qpass;

static size_t sf_qpass_chunks(size_t n) {
    size_t c = (n + SF_QCHUNK_MIN - 1) / SF_QCHUNK_MIN;
    return c < 1 ? 1 : c > SF_QCHUNKS_MAX ? SF_QCHUNKS_MAX : c;
}

#if SF_QUANT_X86
__attribute__((target("avx512f"))) static int
sf_quant_chunk_avx512(const float *x, size_t n, float inv, float zp, uint8_t flip, uint8_t *q) {
    const __m512 vinv = _mm512_set1_ps(inv), vzp = _mm512_set1_ps(zp);
    const __m512 lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    const __m512i v128 = _mm512_set1_epi32(128);
    __mmask16 bad = 0;
    size_t i = 0;
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        bad |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
        v = _mm512_add_ps(_mm512_mul_ps(v, vinv), vzp);
        v = _mm512_min_ps(_mm512_max_ps(v, lo), hi); /* max(NaN, lo) = lo */
        __m512i iv = _mm512_cvtps_epi32(v);
        if (flip) /* q + 128 in [0, 255] */
            _mm512_mask_cvtusepi32_storeu_epi8(q + i, m, _mm512_add_epi32(iv, v128));
        else
            _mm512_mask_cvtsepi32_storeu_epi8(q + i, m, iv);
    }
    return bad != 0;
}

__attribute__((target("avx512f"))) static void sf_minmax_avx512(const float *x, size_t n,
                                                                float *mn, float *mx,
                                                                int *nan) {
    __m512 vmn = _mm512_set1_ps(INFINITY), vmx = _mm512_set1_ps(-INFINITY);
    __mmask16 bad = 0;
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __mmask16 u = _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
        bad |= u;
        __mmask16 ok = m & (__mmask16)~u;
        vmn = _mm512_mask_min_ps(vmn, ok, vmn, v);
        vmx = _mm512_mask_max_ps(vmx, ok, vmx, v);
    }
    *mn = _mm512_reduce_min_ps(vmn);
    *mx = _mm512_reduce_max_ps(vmx);
    *nan = bad != 0;
}
#endif

static int sf_have_avx512(void) {
#if SF_QUANT_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

static void sf_quant_chunk_task(void *arg, size_t c) {
    sf_qpass *p = arg;
    size_t i0 = c * p->n / p->chunks, i1 = (c + 1) * p->n / p->chunks;
#if SF_QUANT_X86
    if (sf_have_avx512()) {
        p->nan[c] = (unsigned char)sf_quant_chunk_avx512(p->x + i0, i1 - i0, p->inv, p->zp,
                                                         p->flip, p->q + i0);
        return;
    }
#endif
    int bad = 0;
    for (size_t i = i0; i < i1; i++) {
        bad |= p->x[i] != p->x[i];
        p->q[i] = (uint8_t)((uint8_t)sf_q8(p->x[i], p->inv, p->zp) ^ p->flip);
    }
    p->nan[c] = (unsigned char)bad;
}

static void sf_minmax_task(void *arg, size_t c) {
    sf_qpass *p = arg;
    size_t i0 = c * p->n / p->chunks, i1 = (c + 1) * p->n / p->chunks;
#if SF_QUANT_X86
    if (sf_have_avx512()) {
        int bad;
        sf_minmax_avx512(p->x + i0, i1 - i0, &p->mins[c], &p->maxs[c], &bad);
        p->nan[c] = (unsigned char)bad;
        return;
    }
#endif
    float mn = INFINITY, mx = -INFINITY;
    int bad = 0;
    for (size_t i = i0; i < i1; i++) {
        float v = p->x[i];
        if (v != v) {
            bad = 1;
            continue;
        }
        mn = fminf(mn, v);
        mx = fmaxf(mx, v);
    }
    p->mins[c] = mn;
    p->maxs[c] = mx;
    p->nan[c] = (unsigned char)bad;
}

#if defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void sf_dequant_range(const int8_t *restrict q, size_t n, float zp, float s,
                             float *restrict y) {
    for (size_t i = 0; i < n; i++)
        y[i] = ((float)q[i] - zp) * s;
}

static void sf_dequant_task(void *arg, size_t c) {
    sf_qpass *p = arg;
    size_t i0 = c * p->n / p->chunks, i1 = (c + 1) * p->n / p->chunks;
    sf_dequant_range(p->qin + i0, i1 - i0, p->zp, p->scale, p->y + i0);
}

static void sf_qpass_run(pthreadpool_t pool, void (*fn)(void *, size_t), sf_qpass *p) {
    if (p->chunks > 1)
        pthreadpool_parallelize_1d(pool, fn, p, p->chunks, 0);
    else
        fn(p, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Quantized convolution                                                                      */
/* ------------------------------------------------------------------------------------------ */

struct sf_qconv {
    sf_qconv_params p;
    sf_qbackend backend;
    pthread_mutex_t lock;
    size_t k;               /* kh * kw * in */
    float *wscale, *bias;   /* (out,) */
    /* own kernels */
    sf_qgemm *gemm;
    float *alpha, *beta;    /* padded to sf_qgemm_padded_out; static: fixed, dynamic: per run */
    /* XNNPACK */
    xnn_operator_t op;
    size_t packed_bytes;
};

void sf_qconv_params_default(sf_qconv_params *p) {
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->kernel_h = p->kernel_w = 1;
    p->stride_h = p->stride_w = 1;
    p->backend = SF_QBACKEND_AUTO;
}

static sf_status sf_qparams_check(const sf_qparams *q, const char *what) {
    if (!q->enabled)
        return SF_OK;
    if (!(q->scale > 0.0f) || !isfinite(q->scale) || q->scale < 1e-30f)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_create: %s scale %g must be finite and > 0",
                        what, (double)q->scale);
    if (q->zero_point < -128 || q->zero_point > 127)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_create: %s zero point %d is outside "
                        "[-128, 127]", what, q->zero_point);
    return SF_OK;
}

/* alpha[o] = s_in * s_w[o], beta[o] = bias[o] - alpha[o] * (zp + 128) * colsum[o]. */
static void sf_qconv_fold(sf_qconv *q, float s_in, int zp) {
    const int32_t *cs = sf_qgemm_colsum(q->gemm);
    const double z = (double)zp + 128.0;
    for (size_t o = 0; o < q->p.out_channels; o++) {
        double a = (double)s_in * (double)q->wscale[o];
        q->alpha[o] = (float)a;
        q->beta[o] = (float)((double)q->bias[o] - a * z * (double)cs[o]);
    }
}

static sf_status sf_qconv_create_xnn(sf_qconv *q, const int8_t *weight) {
    sf_status st = SF_OK;
    const sf_qconv_params *p = &q->p;
    const size_t in = p->in_channels, out = p->out_channels, taps = (size_t)p->kernel_h *
                                                                     p->kernel_w;
    int8_t *kernel = NULL;
    int32_t *bias = NULL;
    size_t bytes = out * taps * in;
    kernel = malloc(bytes ? bytes : 1);
    bias = malloc(out * sizeof(int32_t));
    if (!kernel || !bias)
        SF_FAIL(SF_ERR_OOM, "sf_qconv_create: out of memory");
    /* XNNPACK layout [out][kh][kw][in]; bias in units of s_in * s_w[o] */
    for (size_t o = 0; o < out; o++) {
        for (size_t c = 0; c < in; c++)
            for (size_t t = 0; t < taps; t++)
                kernel[(o * taps + t) * in + c] = weight[(o * in + c) * taps + t];
        double b = (double)q->bias[o] / ((double)p->input.scale * (double)q->wscale[o]);
        b = nearbyint(b);
        bias[o] = b > 2147483647.0 ? INT32_MAX : b < -2147483648.0 ? INT32_MIN : (int32_t)b;
    }
    enum xnn_status xs = xnn_create_convolution2d_nhwc_qc8(
        p->pad_top, p->pad_right, p->pad_bottom, p->pad_left, p->kernel_h, p->kernel_w,
        p->stride_h, p->stride_w, 1, 1, 1, in, out, in, out, (int8_t)p->input.zero_point,
        p->input.scale, q->wscale, kernel, bias, (int8_t)p->output.zero_point, p->output.scale,
        -128, 127, 0, &q->op);
    if (xs != xnn_status_success) {
        q->op = NULL;
        SF_FAIL(SF_ERR_XNNPACK, "sf_qconv_create: xnn_create_convolution2d_nhwc_qc8 (%zu -> "
                "%zu channels, %ux%u kernel) failed: %s (XNNPACK needs input_scale * "
                "weight_scale / output_scale < 256)", in, out, p->kernel_h, p->kernel_w,
                sf_xnn_status_str(xs));
    }
    q->packed_bytes = bytes + out * (sizeof(int32_t) + sizeof(float));
fail:
    free(kernel);
    free(bias);
    return st;
}

sf_status sf_qconv_create(const sf_qconv_params *p, const int8_t *weight,
                          const float *weight_scale, const float *bias, sf_qconv **out) {
    sf_status st = SF_OK;
    sf_qconv *q = NULL;
    int have_lock = 0;
    size_t k;
    const char *fn = "sf_qconv_create";
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "%s: out is NULL", fn);
    *out = NULL;
    if (!p || !weight || !weight_scale)
        return sf_error(SF_ERR_INVALID_ARG, "%s: %s is NULL", fn,
                        !p ? "params" : !weight ? "weight" : "weight_scale");
    if (!p->in_channels || !p->out_channels || !p->kernel_h || !p->kernel_w || !p->stride_h ||
        !p->stride_w)
        return sf_error(SF_ERR_INVALID_ARG, "%s: channels (%zu -> %zu), kernel %ux%u and stride "
                        "%ux%u must be >= 1", fn, p->in_channels, p->out_channels, p->kernel_h,
                        p->kernel_w, p->stride_h, p->stride_w);
    if (!sf_mul_n_ok(&k, 3, p->in_channels, (size_t)p->kernel_h, (size_t)p->kernel_w))
        return sf_error(SF_ERR_INVALID_ARG, "%s: kernel too large", fn);
    if ((unsigned)p->backend > SF_QBACKEND_AMX)
        return sf_error(SF_ERR_INVALID_ARG, "%s: unknown back end %d", fn, (int)p->backend);
    if ((st = sf_qparams_check(&p->input, "input")) != SF_OK ||
        (st = sf_qparams_check(&p->output, "output")) != SF_OK)
        return st;
    for (size_t o = 0; o < p->out_channels; o++)
        if (!(weight_scale[o] > 0.0f) || !isfinite(weight_scale[o]) || weight_scale[o] < 1e-30f)
            return sf_error(SF_ERR_INVALID_ARG, "%s: weight scale of output channel %zu is %g "
                            "(must be finite and > 0)", fn, o, (double)weight_scale[o]);
    if (bias)
        for (size_t o = 0; o < p->out_channels; o++)
            if (!isfinite(bias[o]))
                return sf_error(SF_ERR_INVALID_ARG, "%s: bias of output channel %zu is not "
                                "finite", fn, o);
    int has_static = p->input.enabled && p->output.enabled;
    sf_qbackend b = sf_qbackend_resolve(p->backend, has_static);
    if (b == SF_QBACKEND_VNNI && !sf_qgemm_vnni_supported())
        return sf_error(SF_ERR_UNSUPPORTED, "%s: the vnni back end needs a CPU with "
                        "AVX512-VNNI", fn);
    if (b == SF_QBACKEND_AMX && !sf_qgemm_amx_supported())
        return sf_error(SF_ERR_UNSUPPORTED, "%s: the amx back end needs a CPU with AMX-INT8 "
                        "and an OS that grants the tile state", fn);
    if (b == SF_QBACKEND_XNNPACK && !has_static)
        return sf_error(SF_ERR_UNSUPPORTED, "%s: the xnnpack back end needs static input and "
                        "output quantization parameters", fn);
    SF_CHECK(sf_init());
    q = calloc(1, sizeof *q);
    if (!q)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", fn);
    q->p = *p;
    q->k = k;
    if (pthread_mutex_init(&q->lock, NULL) != 0)
        SF_FAIL(SF_ERR_OOM, "%s: pthread_mutex_init failed", fn);
    have_lock = 1;
    q->wscale = sf_aligned_alloc(p->out_channels * sizeof(float));
    q->bias = sf_aligned_alloc(p->out_channels * sizeof(float));
    if (!q->wscale || !q->bias)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", fn);
    memcpy(q->wscale, weight_scale, p->out_channels * sizeof(float));
    if (bias)
        memcpy(q->bias, bias, p->out_channels * sizeof(float));
    else
        memset(q->bias, 0, p->out_channels * sizeof(float));

    if (b == SF_QBACKEND_XNNPACK) {
        st = sf_qconv_create_xnn(q, weight);
        if (st == SF_OK) {
            q->backend = b;
            *out = q;
            return SF_OK;
        }
        if (p->backend == SF_QBACKEND_XNNPACK)
            goto fail;
        /* AUTO: XNNPACK cannot take these scales; the portable kernel can */
        sf_clear_error();
        st = SF_OK;
        b = SF_QBACKEND_REFERENCE;
    }
    q->backend = b;
    SF_CHECK(sf_qgemm_create(p->in_channels, p->out_channels, p->kernel_h, p->kernel_w, weight,
                             sf_qgemm_isa_of(b), &q->gemm));
    size_t padded = sf_qgemm_padded_out(q->gemm);
    q->alpha = sf_aligned_alloc(padded * sizeof(float));
    q->beta = sf_aligned_alloc(padded * sizeof(float));
    if (!q->alpha || !q->beta)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", fn);
    memset(q->alpha, 0, padded * sizeof(float));
    memset(q->beta, 0, padded * sizeof(float));
    if (p->input.enabled)
        sf_qconv_fold(q, p->input.scale, p->input.zero_point);
    q->packed_bytes = sf_qgemm_bytes(q->gemm) + 4 * padded * sizeof(float);
    *out = q;
    return SF_OK;
fail:
    if (q) {
        if (q->op)
            xnn_delete_operator(q->op);
        sf_qgemm_destroy(q->gemm);
        sf_aligned_free(q->wscale);
        sf_aligned_free(q->bias);
        sf_aligned_free(q->alpha);
        sf_aligned_free(q->beta);
        if (have_lock)
            pthread_mutex_destroy(&q->lock);
        free(q);
    }
    return st;
}

void sf_qconv_destroy(sf_qconv *q) {
    if (!q)
        return;
    if (q->op)
        xnn_delete_operator(q->op);
    sf_qgemm_destroy(q->gemm);
    sf_aligned_free(q->wscale);
    sf_aligned_free(q->bias);
    sf_aligned_free(q->alpha);
    sf_aligned_free(q->beta);
    pthread_mutex_destroy(&q->lock);
    free(q);
}

sf_qbackend sf_qconv_backend(const sf_qconv *q) {
    return q ? q->backend : SF_QBACKEND_AUTO;
}

const sf_qconv_params *sf_qconv_get_params(const sf_qconv *q) {
    return q ? &q->p : NULL;
}

size_t sf_qconv_packed_bytes(const sf_qconv *q) {
    return q ? q->packed_bytes : 0;
}

sf_status sf_qconv_output_size(const sf_qconv *q, size_t h, size_t w, size_t *out_h,
                               size_t *out_w) {
    if (!q || !out_h || !out_w)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_output_size: NULL argument");
    if (h == 0 || w == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_output_size: empty input %zux%zu", h, w);
    const sf_qconv_params *p = &q->p;
    size_t ph, pw;
    if (!sf_add_ok(h, (size_t)p->pad_top + p->pad_bottom, &ph) ||
        !sf_add_ok(w, (size_t)p->pad_left + p->pad_right, &pw))
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_output_size: input %zux%zu too large", h,
                        w);
    if (ph < p->kernel_h || pw < p->kernel_w)
        return sf_error(SF_ERR_SHAPE, "sf_qconv: kernel %ux%u larger than the padded input "
                        "%zux%zu (input %zux%zu)", p->kernel_h, p->kernel_w, ph, pw, h, w);
    *out_h = (ph - p->kernel_h) / p->stride_h + 1;
    *out_w = (pw - p->kernel_w) / p->stride_w + 1;
    return SF_OK;
}

static int sf_qoverlap(const void *a, size_t na, const void *b, size_t nb) {
    uintptr_t a0 = (uintptr_t)a, a1 = a0 + na, b0 = (uintptr_t)b, b1 = b0 + nb;
    return a0 < b1 && b0 < a1;
}

static void sf_fill_nan_f(float *y, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = NAN;
}

/* The layer on an input of geometry (batch, h, w) -> (batch, oh, ow). */
static sf_status sf_qconv_run_geo(sf_qconv *q, const float *x, size_t batch, size_t h, size_t w,
                                  size_t oh, size_t ow, float *y) {
    sf_status st = SF_OK;
    pthreadpool_t pool = NULL;
    const sf_qconv_params *p = &q->p;
    size_t n_in, n_out, bytes_in, bytes_out;
    int computing = 0;
    if (!sf_mul_n_ok(&n_in, 4, batch, h, w, p->in_channels) ||
        !sf_mul_n_ok(&n_out, 4, batch, oh, ow, p->out_channels) ||
        !sf_mul_ok(n_in, sizeof(float), &bytes_in) || !sf_mul_ok(n_out, sizeof(float), &bytes_out))
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_run: tensor of %zu x %zu x %zu pixels "
                        "overflows size_t", batch, h, w);
    if (sf_qoverlap(x, bytes_in, y, bytes_out))
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_run: x and y overlap");
    pthread_mutex_lock(&q->lock);
    SF_CHECK(sf_compute_begin(&pool));
    computing = 1;

    sf_qpass pass;
    memset(&pass, 0, sizeof pass);
    pass.x = x;
    pass.n = n_in;
    pass.chunks = sf_qpass_chunks(n_in);
    sf_qparams in = p->input;
    if (!in.enabled) {
        /* dynamic: the range of this input */
        sf_qpass_run(pool, sf_minmax_task, &pass);
        float mn = INFINITY, mx = -INFINITY;
        int bad = 0;
        for (size_t c = 0; c < pass.chunks; c++) {
            mn = fminf(mn, pass.mins[c]);
            mx = fmaxf(mx, pass.maxs[c]);
            bad |= pass.nan[c];
        }
        if (bad) {
            sf_fill_nan_f(y, n_out);
            goto fail;
        }
        in = sf_qparams_from_range(mn, mx);
    }
    uint8_t *xq = sf_thread_scratch(SF_SCRATCH_QUANT_IN, n_in);
    if (!xq)
        SF_FAIL(SF_ERR_OOM, "sf_qconv_run: out of memory (%zu bytes)", n_in);
    pass.q = xq;
    pass.inv = 1.0f / in.scale;
    pass.zp = (float)in.zero_point;
    pass.flip = q->backend == SF_QBACKEND_XNNPACK ? 0 : 0x80;
    sf_qpass_run(pool, sf_quant_chunk_task, &pass);
    for (size_t c = 0; c < pass.chunks; c++)
        if (pass.nan[c]) {
            sf_fill_nan_f(y, n_out);
            goto fail;
        }

    if (q->backend == SF_QBACKEND_XNNPACK) {
        int8_t *yq = sf_thread_scratch(SF_SCRATCH_QUANT_OUT, n_out);
        if (!yq)
            SF_FAIL(SF_ERR_OOM, "sf_qconv_run: out of memory (%zu bytes)", n_out);
        enum xnn_status xs = xnn_setup_convolution2d_nhwc_qc8(q->op, batch, h, w,
                                                              (const int8_t *)xq, yq, pool);
        if (xs != xnn_status_success)
            SF_FAIL(SF_ERR_XNNPACK, "sf_qconv_run: xnn_setup_convolution2d_nhwc_qc8 (input "
                    "%zu x %zu x %zu x %zu) failed: %s", batch, h, w, p->in_channels,
                    sf_xnn_status_str(xs));
        xs = xnn_run_operator(q->op, pool);
        if (xs != xnn_status_success)
            SF_FAIL(SF_ERR_XNNPACK, "sf_qconv_run: xnn_run_operator (qc8 convolution) failed: "
                    "%s", sf_xnn_status_str(xs));
        sf_qpass d;
        memset(&d, 0, sizeof d);
        d.qin = yq;
        d.y = y;
        d.n = n_out;
        d.chunks = sf_qpass_chunks(n_out);
        d.zp = (float)p->output.zero_point;
        d.scale = p->output.scale;
        sf_qpass_run(pool, sf_dequant_task, &d);
    } else {
        if (!p->input.enabled)
            sf_qconv_fold(q, in.scale, in.zero_point);
        sf_qgemm_geometry geo = {batch, h, w, oh, ow, p->stride_h, p->stride_w, p->pad_top,
                                 p->pad_left};
        SF_CHECK(sf_qgemm_run(q->gemm, &geo, xq, (uint8_t)(in.zero_point + 128), q->alpha,
                              q->beta, y, pool));
    }
    sf_mac_counter_add((uint64_t)(batch * oh * ow) * p->out_channels * q->k);
fail:
    if (computing)
        sf_compute_end();
    pthread_mutex_unlock(&q->lock);
    return st;
}

sf_status sf_qconv_run(sf_qconv *q, const float *x, size_t batch, size_t h, size_t w, float *y) {
    size_t oh = 0, ow = 0;
    if (!q)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_run: q is NULL");
    if (!x || !y)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_run: %s is NULL", !x ? "x" : "y");
    if (batch == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_run: batch is 0");
    sf_status st = sf_qconv_output_size(q, h, w, &oh, &ow);
    if (st != SF_OK)
        return st;
    return sf_qconv_run_geo(q, x, batch, h, w, oh, ow, y);
}

sf_status sf_qconv_run_linear(sf_qconv *q, const float *x, size_t rows, float *y) {
    if (!q)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_run_linear: q is NULL");
    if (!x || !y)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_run_linear: %s is NULL", !x ? "x" : "y");
    if (rows == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_run_linear: rows is 0");
    const sf_qconv_params *p = &q->p;
    if (p->kernel_h != 1 || p->kernel_w != 1 || p->stride_h != 1 || p->stride_w != 1 ||
        p->pad_top || p->pad_left || p->pad_bottom || p->pad_right)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_run_linear: the layer is not 1x1");
    /* rows pixels of one image: XNNPACK sets up a batch of 1 */
    return sf_qconv_run_geo(q, x, 1, rows, 1, rows, 1, y);
}

/* ------------------------------------------------------------------------------------------ */
/* Observer                                                                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    char *name;
    char kind[8];
    sf_qstats in, out;
} sf_qentry;

/* Histogram counting tables: every value indexes a table by its top 15 bits (sign, exponent,
 * 6 mantissa bits); 4 interleaved tables so that runs of equal bins do not wait on each
 * other's increments. They are folded into the observer's bins after each input. */
#define SF_QRAW_SLOTS (1u << 15)
#define SF_QRAW_WAYS 4
#define SF_QRAW_BLOCK ((size_t)1 << 30) /* values per fold: uint32 counts cannot overflow */

struct sf_qraw {
    uint32_t c[SF_QRAW_WAYS][SF_QRAW_SLOTS];
};

struct sf_qobserver {
    pthread_mutex_t lock;
    struct sf_qraw *raw; /* histogram counting tables (used under lock) */
    sf_qentry **entries;
    size_t count, cap;
    size_t *table; /* open addressing: index + 1, 0 = empty */
    size_t table_cap;
};

static pthread_rwlock_t sf_qobs_rw = PTHREAD_RWLOCK_INITIALIZER;
static _Atomic(sf_qobserver *) sf_qobs_current = NULL;

sf_status sf_qobserver_create(sf_qobserver **out) {
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qobserver_create: out is NULL");
    *out = NULL;
    sf_qobserver *o = calloc(1, sizeof *o);
    if (!o)
        return sf_error(SF_ERR_OOM, "sf_qobserver_create: out of memory");
    o->raw = sf_aligned_alloc(sizeof *o->raw);
    if (!o->raw) {
        free(o);
        return sf_error(SF_ERR_OOM, "sf_qobserver_create: out of memory");
    }
    if (pthread_mutex_init(&o->lock, NULL) != 0) {
        sf_aligned_free(o->raw);
        free(o);
        return sf_error(SF_ERR_OOM, "sf_qobserver_create: pthread_mutex_init failed");
    }
    *out = o;
    return SF_OK;
}

void sf_qobserver_destroy(sf_qobserver *o) {
    if (!o)
        return;
    sf_qobserver_uninstall(o);
    for (size_t i = 0; i < o->count; i++) {
        free(o->entries[i]->name);
        free(o->entries[i]);
    }
    free(o->entries);
    free(o->table);
    sf_aligned_free(o->raw);
    pthread_mutex_destroy(&o->lock);
    free(o);
}

sf_status sf_qobserver_install(sf_qobserver *o) {
    if (!o)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qobserver_install: observer is NULL");
    sf_status st = SF_OK;
    pthread_rwlock_wrlock(&sf_qobs_rw);
    sf_qobserver *cur = atomic_load(&sf_qobs_current);
    if (cur && cur != o)
        st = sf_error(SF_ERR_INVALID_ARG, "sf_qobserver_install: another observer is "
                      "installed");
    else
        atomic_store(&sf_qobs_current, o);
    pthread_rwlock_unlock(&sf_qobs_rw);
    return st;
}

void sf_qobserver_uninstall(sf_qobserver *o) {
    pthread_rwlock_wrlock(&sf_qobs_rw);
    if (o && atomic_load(&sf_qobs_current) == o)
        atomic_store(&sf_qobs_current, NULL);
    pthread_rwlock_unlock(&sf_qobs_rw);
}

int sf_qobserver_active(void) {
    return atomic_load_explicit(&sf_qobs_current, memory_order_relaxed) != NULL;
}

static size_t sf_qhash(const char *s) {
    size_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void sf_qstats_init(sf_qstats *s) {
    memset(s, 0, sizeof *s);
    s->min = INFINITY;
    s->max = -INFINITY;
}

/* Entry for `name` (created if absent); NULL if out of memory. Caller holds o->lock. */
static sf_qentry *sf_qobserver_entry(sf_qobserver *o, const char *name, const char *kind) {
    if (o->table_cap) {
        size_t i = sf_qhash(name) & (o->table_cap - 1);
        while (o->table[i]) {
            sf_qentry *e = o->entries[o->table[i] - 1];
            if (strcmp(e->name, name) == 0)
                return e;
            i = (i + 1) & (o->table_cap - 1);
        }
    }
    if (o->count == o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 64;
        sf_qentry **e = realloc(o->entries, cap * sizeof *e);
        if (!e)
            return NULL;
        o->entries = e;
        o->cap = cap;
    }
    if (2 * (o->count + 1) > o->table_cap) {
        size_t cap = o->table_cap ? 2 * o->table_cap : 128;
        size_t *t = calloc(cap, sizeof *t);
        if (!t)
            return NULL;
        for (size_t j = 0; j < o->count; j++) {
            size_t i = sf_qhash(o->entries[j]->name) & (cap - 1);
            while (t[i])
                i = (i + 1) & (cap - 1);
            t[i] = j + 1;
        }
        free(o->table);
        o->table = t;
        o->table_cap = cap;
    }
    sf_qentry *e = calloc(1, sizeof *e);
    size_t len = strlen(name) + 1;
    char *copy = malloc(len);
    if (!e || !copy) {
        free(e);
        free(copy);
        return NULL;
    }
    memcpy(copy, name, len);
    e->name = copy;
    snprintf(e->kind, sizeof e->kind, "%s", kind ? kind : "");
    sf_qstats_init(&e->in);
    sf_qstats_init(&e->out);
    size_t i = sf_qhash(name) & (o->table_cap - 1);
    while (o->table[i])
        i = (i + 1) & (o->table_cap - 1);
    o->entries[o->count] = e;
    o->table[i] = ++o->count;
    return e;
}

void sf_qobserve_register(const char *name, const char *kind) {
    if (!name || !sf_qobserver_active())
        return;
    pthread_rwlock_rdlock(&sf_qobs_rw);
    sf_qobserver *o = atomic_load(&sf_qobs_current);
    if (o) {
        pthread_mutex_lock(&o->lock);
        sf_qentry *e = sf_qobserver_entry(o, name, kind);
        if (e && kind && !e->kind[0])
            snprintf(e->kind, sizeof e->kind, "%s", kind);
        pthread_mutex_unlock(&o->lock);
    }
    pthread_rwlock_unlock(&sf_qobs_rw);
}

/* Finite min/max and the counts of NaN and of +-infinity of n values. */
typedef struct {
    float min, max;
    uint64_t nan, pinf, ninf;
} sf_qscan;

#if SF_QUANT_X86
__attribute__((target("avx512f"))) static void sf_qscan_avx512(const float *x, size_t n,
                                                               sf_qscan *r) {
    const __m512 pinf = _mm512_set1_ps(INFINITY), ninf = _mm512_set1_ps(-INFINITY);
    __m512 vmn = pinf, vmx = ninf;
    uint64_t nan = 0, pi = 0, ni = 0;
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __mmask16 un = _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
        __mmask16 ip = _mm512_mask_cmp_ps_mask(m, v, pinf, _CMP_EQ_OQ);
        __mmask16 in = _mm512_mask_cmp_ps_mask(m, v, ninf, _CMP_EQ_OQ);
        __mmask16 fin = m & (__mmask16) ~(un | ip | in);
        vmn = _mm512_mask_min_ps(vmn, fin, vmn, v);
        vmx = _mm512_mask_max_ps(vmx, fin, vmx, v);
        nan += (uint64_t)__builtin_popcount(un);
        pi += (uint64_t)__builtin_popcount(ip);
        ni += (uint64_t)__builtin_popcount(in);
    }
    r->min = _mm512_reduce_min_ps(vmn);
    r->max = _mm512_reduce_max_ps(vmx);
    r->nan = nan;
    r->pinf = pi;
    r->ninf = ni;
}
#endif

static void sf_qscan_values(const float *x, size_t n, sf_qscan *r) {
#if SF_QUANT_X86
    if (sf_have_avx512()) {
        sf_qscan_avx512(x, n, r);
        return;
    }
#endif
    memset(r, 0, sizeof *r);
    r->min = INFINITY;
    r->max = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (v != v)
            r->nan++;
        else if (v == INFINITY)
            r->pinf++;
        else if (v == -INFINITY)
            r->ninf++;
        else {
            r->min = fminf(r->min, v);
            r->max = fmaxf(r->max, v);
        }
    }
}


static void sf_qstats_add(sf_qstats *s, const float *x, size_t n, struct sf_qraw *raw) {
    const uint32_t base = (uint32_t)(127 + SF_QHIST_MIN_EXP) << 6;
    sf_qscan sc;
    sf_qscan_values(x, n, &sc);
    s->min = fminf(s->min, sc.min);
    s->max = fmaxf(s->max, sc.max);
    s->count += n;
    s->nan_count += sc.nan;
    s->pos[SF_QHIST_BINS - 1] += sc.pinf;
    s->neg[SF_QHIST_BINS - 1] += sc.ninf;
    if (n < 8192) { /* small inputs: bin directly */
        for (size_t i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, x + i, 4);
            uint32_t key = (bits & 0x7fffffffu) >> 17;
            if ((key >> 6) == 0xffu)
                continue;
            uint32_t b = key > base ? key - base : 0;
            if (b >= SF_QHIST_BINS)
                b = SF_QHIST_BINS - 1;
            if (bits >> 31)
                s->neg[b]++;
            else
                s->pos[b]++;
        }
        return;
    }
    for (size_t i0 = 0; i0 < n; i0 += SF_QRAW_BLOCK) {
        size_t i1 = n - i0 < SF_QRAW_BLOCK ? n : i0 + SF_QRAW_BLOCK;
        memset(raw, 0, sizeof *raw);
        size_t i = i0;
        for (; i + SF_QRAW_WAYS <= i1; i += SF_QRAW_WAYS)
            for (size_t t = 0; t < SF_QRAW_WAYS; t++) {
                uint32_t b;
                memcpy(&b, x + i + t, 4);
                raw->c[t][b >> 17]++;
            }
        for (; i < i1; i++) {
            uint32_t b;
            memcpy(&b, x + i, 4);
            raw->c[0][b >> 17]++;
        }
        for (uint32_t slot = 0; slot < SF_QRAW_SLOTS; slot++) {
            uint64_t c = 0;
            for (size_t t = 0; t < SF_QRAW_WAYS; t++)
                c += raw->c[t][slot];
            uint32_t key = slot & 0x3fffu;
            if (!c || (key >> 6) == 0xffu) /* NaN and infinities: counted by the scan */
                continue;
            uint32_t b = key > base ? key - base : 0;
            if (b >= SF_QHIST_BINS)
                b = SF_QHIST_BINS - 1;
            if (slot >> 14)
                s->neg[b] += c;
            else
                s->pos[b] += c;
        }
    }
}

void sf_qobserve(const char *name, int is_output, const float *x, size_t n) {
    if (!name || !x || !sf_qobserver_active())
        return;
    pthread_rwlock_rdlock(&sf_qobs_rw);
    sf_qobserver *o = atomic_load(&sf_qobs_current);
    if (o) {
        pthread_mutex_lock(&o->lock);
        sf_qentry *e = sf_qobserver_entry(o, name, NULL);
        if (e)
            sf_qstats_add(is_output ? &e->out : &e->in, x, n, o->raw);
        pthread_mutex_unlock(&o->lock);
    }
    pthread_rwlock_unlock(&sf_qobs_rw);
}

size_t sf_qobserver_count(sf_qobserver *o) {
    if (!o)
        return 0;
    pthread_mutex_lock(&o->lock);
    size_t n = o->count;
    pthread_mutex_unlock(&o->lock);
    return n;
}

sf_status sf_qobserver_layer(sf_qobserver *o, size_t i, const char **name, const char **kind,
                             const sf_qstats **input, const sf_qstats **output) {
    if (!o)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qobserver_layer: observer is NULL");
    pthread_mutex_lock(&o->lock);
    size_t n = o->count;
    sf_qentry *e = i < n ? o->entries[i] : NULL;
    pthread_mutex_unlock(&o->lock);
    if (!e)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qobserver_layer: index %zu out of range (%zu "
                        "layers)", i, n);
    if (name)
        *name = e->name;
    if (kind)
        *kind = e->kind;
    if (input)
        *input = &e->in;
    if (output)
        *output = &e->out;
    return SF_OK;
}

double sf_qhist_edge(size_t b) {
    size_t oct = b / SF_QHIST_PER_OCTAVE, sub = b % SF_QHIST_PER_OCTAVE;
    return ldexp(1.0 + (double)sub / SF_QHIST_PER_OCTAVE, SF_QHIST_MIN_EXP + (int)oct);
}
