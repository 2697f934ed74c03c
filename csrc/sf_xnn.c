/*
 * sf_xnn.c — convolution and fully connected operators (public API of snapfusion.h, section
 * "XNNPACK-backed operators").
 *
 * Two back ends:
 * - XNNPACK (xnn_create_convolution2d_nhwc_f32 / xnn_create_fully_connected_nc_f32) for every
 *   shape. Dense layers whose weights outgrow the L2 cache are split into several operators
 *   over slices of output channels (each writing its channels of the shared output through the
 *   output pixel stride): XNNPACK re-reads its whole weight matrix for every tile of 7 output
 *   rows, so a slice that stays in L2 runs up to twice as fast on SD's 3x3 convolutions.
 * - Our own blocked GEMM (sf_xnn_gemm.c) for dense layers on CPUs with AVX-512F, which reaches
 *   a higher fraction of the FMA peak than XNNPACK 2022's 7x16 kernels on these shapes.
 * SNAPFUSION_GEMM=xnnpack in the environment (read when an operator is created) forces XNNPACK.
 * Dense 3x3 stride-1 layers up to a size use Winograd F(2x2, 3x3) on the own GEMM instead of its
 * direct convolution (sf_xnn_winograd.c; SNAPFUSION_WINOGRAD=0 disables it).
 *
 * An operator holds a mutex for the duration of a run (XNNPACK operators keep per-run state),
 * and remembers the shape and pointers of its last run: a repeated call skips XNNPACK's setup,
 * a call with new pointers at the same shape only refreshes them, and a new shape reallocates
 * XNNPACK's indirection buffers.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xnnpack.h>

#include "sf_internal.h"
#include "sf_xnn_gemm.h"
#include "sf_xnn_winograd.h"

/* Dense XNNPACK operators are split into output-channel slices whose packed weights fit in
 * this many bytes (a share of a 1-2 MiB L2). */
#define SF_XNN_SLICE_BYTES (768u * 1024u)

/* The own GEMM (32-channel register tiles) is used for dense layers with at least this many
 * output channels and reduction steps; below, XNNPACK's narrower tiles waste less (measured:
 * XNNPACK is faster for 20 outputs and for the 27 reduction steps of a 3-channel 3x3 input). */
#define SF_GEMM_MIN_OUT 32
#define SF_GEMM_MIN_K 32

/* Winograd F(2x2, 3x3) (sf_xnn_winograd.c) replaces the own GEMM's direct convolution for
 * dense 3x3 stride-1 layers with at least SF_GEMM_MIN_K input channels and at most
 * SF_WINO_MAX_WEIGHTS = in * out weights per tap. Its transformed weights take 16/9 of the
 * direct ones, so it is kept to the layers where most of the spatial work is (SD's UNet at
 * 320/640 channels, 64x64 and 32x32 latents; the VAE decoder, <= 512 channels) and not given to
 * the 1280-channel layers, which hold most of the UNet's weights and run at 8x8 and 16x16.
 * Such a layer keeps only the Winograd weights: 7/9 more memory than the direct ones. For
 * SD-v1.5, the UNet's 22 such layers hold 71.9 M of its 860 M weights (+213 MiB, 6.5 %; 238 of
 * its 400 GMAC of 3x3 convolutions per 512x512 step at batch 2), the VAE decoder's 31 layers
 * 48.2 M of its 49.5 M (+143 MiB). Winograd then runs at every output size: measured on one
 * thread (Xeon, AVX-512) it is 1.6-2.0x faster than the direct GEMM from 16x16 outputs (VAE
 * decoder shapes 1.55-1.8x), 1.1-1.4x at 8x8, and slower below (0.77x at 4x4, 0.5x at 2x2:
 * 1-3 ms per call at 640 channels), sizes at which SD does not run these layers (the smallest
 * is 640 -> 1280 channels at 8x8 for 256x256 images).
 * SNAPFUSION_WINOGRAD=0 in the environment (read when an operator is created) disables it;
 * SNAPFUSION_WINOGRAD=force uses it for every dense 3x3 stride-1 layer on the own GEMM (tests,
 * benchmarks). */
#ifndef SF_WINO_MAX_WEIGHTS
#define SF_WINO_MAX_WEIGHTS ((size_t)1920 * 640)
#endif

struct sf_conv2d {
    sf_conv2d_params p;
    pthread_mutex_t lock;
    sf_gemm *gemm;          /* own GEMM (direct convolution), or NULL */
    sf_wino *wino;          /* Winograd F(2x2, 3x3) on the own GEMM, or NULL */
                            /* both NULL: XNNPACK */
    size_t n_ops;           /* XNNPACK operators, one per slice of output channels */
    xnn_operator_t *ops;
    size_t *slice_start;    /* first output channel of each slice */
    /* the last run's shape and pointers: XNNPACK operators set up for them are run as they
     * are when a call repeats them (0/NULL: none yet) */
    size_t last_batch, last_h, last_w;
    const float *last_x;
    float *last_y;
    pthreadpool_t last_pool;
};

struct sf_linear {
    size_t in, out;
    pthread_mutex_t lock;
    sf_gemm *gemm;
    size_t n_ops;
    xnn_operator_t *ops;
    size_t *slice_start;
    size_t last_rows;
    const float *last_x;
    float *last_y;
    pthreadpool_t last_pool;
};

void sf_conv2d_params_default(sf_conv2d_params *p) {
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->kernel_h = p->kernel_w = 1;
    p->stride_h = p->stride_w = 1;
    p->groups = 1;
    p->output_min = -INFINITY;
    p->output_max = INFINITY;
}

/* Number of output-channel slices for a dense layer with `k` reduction steps and `out`
 * outputs, and the slice width (a multiple of 16, the widest XNNPACK register tile). */
static void sf_xnn_slices(size_t k, size_t out, size_t *n_slices, size_t *width) {
    size_t bytes_per_channel = k * sizeof(float);
    size_t fit = bytes_per_channel ? SF_XNN_SLICE_BYTES / bytes_per_channel : out;
    if (fit >= out || out <= 32) {
        *n_slices = 1;
        *width = out;
        return;
    }
    fit = fit < 16 ? 16 : fit / 16 * 16;
    size_t n = (out + fit - 1) / fit;
    size_t w = ((out + n - 1) / n + 15) / 16 * 16;
    *n_slices = (out + w - 1) / w;
    *width = w;
}

static sf_status sf_xnn_alloc_ops(size_t n, xnn_operator_t **ops, size_t **starts) {
    *ops = calloc(n, sizeof **ops);
    *starts = calloc(n, sizeof **starts);
    if (!*ops || !*starts)
        return sf_error(SF_ERR_OOM, "out of memory allocating %zu XNNPACK operators", n);
    return SF_OK;
}

static void sf_xnn_free_ops(size_t n, xnn_operator_t *ops, size_t *starts) {
    if (ops)
        for (size_t i = 0; i < n; i++)
            if (ops[i])
                xnn_delete_operator(ops[i]);
    free(ops);
    free(starts);
}

/* Non-overlap of two float ranges. */
static int sf_xnn_overlap(const float *a, size_t na, const float *b, size_t nb) {
    uintptr_t a0 = (uintptr_t)a, a1 = a0 + na * sizeof(float);
    uintptr_t b0 = (uintptr_t)b, b1 = b0 + nb * sizeof(float);
    return a0 < b1 && b0 < a1;
}

/* XNNPACK's clamp (max(acc, min) with min = -inf even without a clamp) turns NaN into -inf.
 * After an XNNPACK run, inputs are scanned for NaN and the outputs that depend on one are set
 * to NaN, as a plain convolution would give them (weights are finite). */
static int sf_xnn_has_nan(const float *x, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        bad |= x[i] != x[i];
    return bad;
}

static void sf_xnn_conv_mark_nan(const sf_conv2d_params *p, const float *x, size_t batch,
                                 size_t h, size_t w, size_t oh, size_t ow, float *y) {
    const size_t in = p->in_channels, out = p->out_channels;
    const size_t gin = in / p->groups, gout = out / p->groups;
    for (size_t b = 0; b < batch; b++)
        for (size_t iy = 0; iy < h; iy++)
            for (size_t ix = 0; ix < w; ix++) {
                const float *px = x + ((b * h + iy) * w + ix) * in;
                if (!sf_xnn_has_nan(px, in))
                    continue;
                /* outputs oy with oy*sh - pt <= iy <= oy*sh - pt + kh - 1 (same for x) */
                size_t ty = iy + p->pad_top, tx = ix + p->pad_left;
                size_t oy0 = ty + 1 >= p->kernel_h
                                 ? (ty + 1 - p->kernel_h + p->stride_h - 1) / p->stride_h : 0;
                size_t ox0 = tx + 1 >= p->kernel_w
                                 ? (tx + 1 - p->kernel_w + p->stride_w - 1) / p->stride_w : 0;
                size_t oy1 = ty / p->stride_h, ox1 = tx / p->stride_w; /* inclusive */
                for (size_t c = 0; c < in; c++) {
                    if (px[c] == px[c])
                        continue;
                    size_t g = c / gin;
                    for (size_t oy = oy0; oy <= oy1 && oy < oh; oy++)
                        for (size_t ox = ox0; ox <= ox1 && ox < ow; ox++) {
                            float *py = y + ((b * oh + oy) * ow + ox) * out + g * gout;
                            for (size_t o = 0; o < gout; o++)
                                py[o] = NAN;
                        }
                }
            }
}

/* ------------------------------------------------------------------------------------------ */
/* Convolution                                                                                */
/* ------------------------------------------------------------------------------------------ */

static sf_status sf_conv2d_check_params(const sf_conv2d_params *p) {
    const char *fn = "sf_conv2d_create";
    if (p->in_channels == 0 || p->out_channels == 0)
        return sf_error(SF_ERR_INVALID_ARG, "%s: in_channels (%zu) and out_channels (%zu) must "
                        "be >= 1", fn, p->in_channels, p->out_channels);
    if (p->kernel_h == 0 || p->kernel_w == 0)
        return sf_error(SF_ERR_INVALID_ARG, "%s: kernel size %ux%u must be >= 1", fn,
                        p->kernel_h, p->kernel_w);
    if (p->stride_h == 0 || p->stride_w == 0)
        return sf_error(SF_ERR_INVALID_ARG, "%s: stride %ux%u must be >= 1", fn, p->stride_h,
                        p->stride_w);
    if (p->groups == 0 || p->in_channels % p->groups || p->out_channels % p->groups)
        return sf_error(SF_ERR_INVALID_ARG, "%s: groups (%u) must be >= 1 and divide "
                        "in_channels (%zu) and out_channels (%zu)", fn, p->groups,
                        p->in_channels, p->out_channels);
    if (isnan(p->output_min) || isnan(p->output_max) || !(p->output_min <= p->output_max))
        return sf_error(SF_ERR_INVALID_ARG, "%s: bad clamp range [%g, %g]", fn,
                        (double)p->output_min, (double)p->output_max);
    return SF_OK;
}

const char *sf_gemm_backend(void) {
    return sf_gemm_supported() ? "own avx512" : "xnnpack";
}

sf_status sf_conv2d_create(const sf_conv2d_params *p, const float *weight, const float *bias,
                           sf_conv2d **out) {
    sf_status st = SF_OK;
    sf_conv2d *conv = NULL;
    float *packed = NULL;
    size_t gin, gout, taps, wsize, wbytes;
    int have_lock = 0;
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_create: out is NULL");
    *out = NULL;
    if (!p)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_create: params is NULL");
    if (!weight)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_create: weight is NULL");
    SF_CHECK(sf_conv2d_check_params(p));
    gin = p->in_channels / p->groups;
    gout = p->out_channels / p->groups;
    taps = (size_t)p->kernel_h * p->kernel_w;
    if (!sf_mul_n_ok(&wsize, 3, p->out_channels, gin, taps) ||
        !sf_mul_ok(wsize, sizeof(float), &wbytes))
        SF_FAIL(SF_ERR_INVALID_ARG, "sf_conv2d_create: weights of %zu x %zu x %u x %u floats "
                "overflow size_t", p->out_channels, gin, p->kernel_h, p->kernel_w);
    SF_CHECK(sf_init());
    conv = calloc(1, sizeof *conv);
    if (!conv)
        SF_FAIL(SF_ERR_OOM, "sf_conv2d_create: out of memory");
    conv->p = *p;
    if (pthread_mutex_init(&conv->lock, NULL) != 0)
        SF_FAIL(SF_ERR_OOM, "sf_conv2d_create: pthread_mutex_init failed");
    have_lock = 1;

    if (p->groups == 1 && p->out_channels >= SF_GEMM_MIN_OUT && taps * gin >= SF_GEMM_MIN_K &&
        sf_gemm_supported()) {
        sf_wino_mode mode = sf_wino_env_mode();
        int wino = p->kernel_h == 3 && p->kernel_w == 3 && p->stride_h == 1 &&
                   p->stride_w == 1 &&
                   (mode == SF_WINO_FORCE ||
                    (mode == SF_WINO_AUTO && p->in_channels >= SF_GEMM_MIN_K &&
                     p->in_channels <= SF_WINO_MAX_WEIGHTS / p->out_channels));
        if (wino)
            SF_CHECK(sf_wino_create(p->in_channels, p->out_channels, weight, bias,
                                    p->output_min, p->output_max, &conv->wino));
        else
            SF_CHECK(sf_gemm_create(p->in_channels, p->out_channels, p->kernel_h, p->kernel_w,
                                    weight, bias, p->output_min, p->output_max, &conv->gemm));
        *out = conv;
        return SF_OK;
    }

    /* XNNPACK weight layouts: dense/grouped [out][kh][kw][in/groups]; depthwise [kh][kw][c]. */
    packed = malloc(wbytes);
    if (!packed)
        SF_FAIL(SF_ERR_OOM, "sf_conv2d_create: out of memory (%zu bytes)", wbytes);
    int depthwise = p->groups > 1 && gin == 1 && gout == 1;
    if (depthwise) {
        for (size_t c = 0; c < p->out_channels; c++)
            for (size_t t = 0; t < taps; t++)
                packed[t * p->out_channels + c] = weight[c * taps + t];
    } else {
        for (size_t o = 0; o < p->out_channels; o++)
            for (size_t i = 0; i < gin; i++)
                for (size_t t = 0; t < taps; t++)
                    packed[(o * taps + t) * gin + i] = weight[(o * gin + i) * taps + t];
    }
    size_t n_slices = 1, width = p->out_channels;
    if (p->groups == 1)
        sf_xnn_slices(taps * gin, p->out_channels, &n_slices, &width);
    SF_CHECK(sf_xnn_alloc_ops(n_slices, &conv->ops, &conv->slice_start));
    conv->n_ops = n_slices;
    for (size_t s = 0; s < n_slices; s++) {
        size_t start = s * width;
        size_t count = p->out_channels - start < width ? p->out_channels - start : width;
        enum xnn_status xs;
        conv->slice_start[s] = start;
        if (depthwise)
            xs = xnn_create_convolution2d_nhwc_f32(
                p->pad_top, p->pad_right, p->pad_bottom, p->pad_left, p->kernel_h, p->kernel_w,
                p->stride_h, p->stride_w, 1, 1, p->groups, 1, 1, p->in_channels,
                p->out_channels, packed, bias, p->output_min, p->output_max,
                XNN_FLAG_DEPTHWISE_CONVOLUTION, &conv->ops[s]);
        else
            xs = xnn_create_convolution2d_nhwc_f32(
                p->pad_top, p->pad_right, p->pad_bottom, p->pad_left, p->kernel_h, p->kernel_w,
                p->stride_h, p->stride_w, 1, 1, p->groups, gin, p->groups == 1 ? count : gout,
                p->in_channels, p->out_channels, packed + start * taps * gin,
                bias ? bias + start : NULL, p->output_min, p->output_max, 0, &conv->ops[s]);
        if (xs != xnn_status_success)
            SF_FAIL(SF_ERR_XNNPACK, "sf_conv2d_create: xnn_create_convolution2d_nhwc_f32 "
                    "(%zu -> %zu channels, %ux%u kernel, groups %u) failed: %s",
                    p->in_channels, p->out_channels, p->kernel_h, p->kernel_w, p->groups,
                    sf_xnn_status_str(xs));
    }
    free(packed);
    *out = conv;
    return SF_OK;
fail:
    free(packed);
    if (conv) {
        sf_gemm_destroy(conv->gemm);
        sf_wino_destroy(conv->wino);
        sf_xnn_free_ops(conv->n_ops, conv->ops, conv->slice_start);
        if (have_lock)
            pthread_mutex_destroy(&conv->lock);
        free(conv);
    }
    return st;
}

sf_status sf_conv2d_output_size(const sf_conv2d *conv, size_t h, size_t w, size_t *out_h,
                                size_t *out_w) {
    if (!conv || !out_h || !out_w)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_output_size: NULL argument");
    if (h == 0 || w == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_output_size: empty input %zux%zu", h, w);
    const sf_conv2d_params *p = &conv->p;
    size_t ph, pw;
    if (!sf_add_ok(h, (size_t)p->pad_top + p->pad_bottom, &ph) ||
        !sf_add_ok(w, (size_t)p->pad_left + p->pad_right, &pw))
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_output_size: input %zux%zu too large",
                        h, w);
    if (ph < p->kernel_h || pw < p->kernel_w)
        return sf_error(SF_ERR_SHAPE, "sf_conv2d: kernel %ux%u larger than the padded input "
                        "%zux%zu (input %zux%zu)", p->kernel_h, p->kernel_w, ph, pw, h, w);
    *out_h = (ph - p->kernel_h) / p->stride_h + 1;
    *out_w = (pw - p->kernel_w) / p->stride_w + 1;
    return SF_OK;
}

sf_status sf_conv2d_run(sf_conv2d *conv, const float *x, size_t batch, size_t h, size_t w,
                        float *y) {
    sf_status st = SF_OK;
    pthreadpool_t pool = NULL;
    size_t oh, ow, n_in, n_out;
    int locked = 0, computing = 0;
    if (!conv)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_run: conv is NULL");
    if (!x || !y)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_run: %s is NULL", !x ? "x" : "y");
    if (batch == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_run: batch is 0");
    st = sf_conv2d_output_size(conv, h, w, &oh, &ow);
    if (st != SF_OK)
        return st;
    const sf_conv2d_params *p = &conv->p;
    size_t bytes_in, bytes_out;
    if (!sf_mul_n_ok(&n_in, 4, batch, h, w, p->in_channels) ||
        !sf_mul_n_ok(&n_out, 4, batch, oh, ow, p->out_channels) ||
        !sf_mul_ok(n_in, sizeof(float), &bytes_in) || !sf_mul_ok(n_out, sizeof(float), &bytes_out))
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_run: tensor of %zu x %zu x %zu "
                        "pixels overflows size_t", batch, h, w);
    if (sf_xnn_overlap(x, n_in, y, n_out))
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv2d_run: x and y overlap");

    pthread_mutex_lock(&conv->lock);
    locked = 1;
    SF_CHECK(sf_compute_begin(&pool));
    computing = 1;
    if (conv->wino) {
        sf_gemm_geometry geo = {batch, h, w, oh, ow, 1, 1, p->pad_top, p->pad_left};
        SF_CHECK(sf_wino_run(conv->wino, &geo, x, y, pool));
    } else if (conv->gemm) {
        sf_gemm_geometry geo = {batch, h, w, oh, ow, p->stride_h, p->stride_w, p->pad_top,
                                p->pad_left};
        SF_CHECK(sf_gemm_run(conv->gemm, &geo, x, y, pool));
    } else {
        int same = conv->last_batch == batch && conv->last_h == h && conv->last_w == w &&
                   conv->last_x == x && conv->last_y == y && conv->last_pool == pool;
        conv->last_batch = 0; /* until every operator is set up again */
        for (size_t s = 0; s < conv->n_ops; s++) {
            enum xnn_status xs = xnn_status_success;
            if (!same)
                xs = xnn_setup_convolution2d_nhwc_f32(conv->ops[s], batch, h, w, x,
                                                      y + conv->slice_start[s], pool);
            if (xs != xnn_status_success)
                SF_FAIL(SF_ERR_XNNPACK, "sf_conv2d_run: xnn_setup_convolution2d_nhwc_f32 "
                        "(input %zu x %zu x %zu x %zu) failed: %s", batch, h, w,
                        p->in_channels, sf_xnn_status_str(xs));
            xs = xnn_run_operator(conv->ops[s], pool);
            if (xs != xnn_status_success)
                SF_FAIL(SF_ERR_XNNPACK, "sf_conv2d_run: xnn_run_operator (convolution) failed: "
                        "%s", sf_xnn_status_str(xs));
        }
        if (sf_xnn_has_nan(x, n_in))
            sf_xnn_conv_mark_nan(p, x, batch, h, w, oh, ow, y);
        conv->last_batch = batch;
        conv->last_h = h;
        conv->last_w = w;
        conv->last_x = x;
        conv->last_y = y;
        conv->last_pool = pool;
    }
    sf_mac_counter_add((uint64_t)n_out * (p->in_channels / p->groups) * p->kernel_h *
                       p->kernel_w);
fail:
    if (computing)
        sf_compute_end();
    if (locked)
        pthread_mutex_unlock(&conv->lock);
    return st;
}

void sf_conv2d_destroy(sf_conv2d *conv) {
    if (!conv)
        return;
    sf_gemm_destroy(conv->gemm);
    sf_wino_destroy(conv->wino);
    sf_xnn_free_ops(conv->n_ops, conv->ops, conv->slice_start);
    pthread_mutex_destroy(&conv->lock);
    free(conv);
}

/* ------------------------------------------------------------------------------------------ */
/* Fully connected                                                                            */
/* ------------------------------------------------------------------------------------------ */

sf_status sf_linear_create(size_t in_features, size_t out_features, const float *weight,
                           const float *bias, sf_linear **out) {
    sf_status st = SF_OK;
    sf_linear *lin = NULL;
    size_t wsize;
    int have_lock = 0;
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_create: out is NULL");
    *out = NULL;
    if (!weight)
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_create: weight is NULL");
    if (in_features == 0 || out_features == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_create: in_features (%zu) and "
                        "out_features (%zu) must be >= 1", in_features, out_features);
    if (!sf_mul_n_ok(&wsize, 3, in_features, out_features, sizeof(float)))
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_create: weights of %zu x %zu floats "
                        "overflow size_t", out_features, in_features);
    SF_CHECK(sf_init());
    lin = calloc(1, sizeof *lin);
    if (!lin)
        SF_FAIL(SF_ERR_OOM, "sf_linear_create: out of memory");
    lin->in = in_features;
    lin->out = out_features;
    if (pthread_mutex_init(&lin->lock, NULL) != 0)
        SF_FAIL(SF_ERR_OOM, "sf_linear_create: pthread_mutex_init failed");
    have_lock = 1;
    if (out_features >= SF_GEMM_MIN_OUT && in_features >= SF_GEMM_MIN_K && sf_gemm_supported()) {
        SF_CHECK(sf_gemm_create(in_features, out_features, 1, 1, weight, bias, -INFINITY,
                                INFINITY, &lin->gemm));
        *out = lin;
        return SF_OK;
    }
    size_t n_slices, width;
    sf_xnn_slices(in_features, out_features, &n_slices, &width);
    SF_CHECK(sf_xnn_alloc_ops(n_slices, &lin->ops, &lin->slice_start));
    lin->n_ops = n_slices;
    for (size_t s = 0; s < n_slices; s++) {
        size_t start = s * width;
        size_t count = out_features - start < width ? out_features - start : width;
        lin->slice_start[s] = start;
        enum xnn_status xs = xnn_create_fully_connected_nc_f32(
            in_features, count, in_features, out_features, weight + start * in_features,
            bias ? bias + start : NULL, -INFINITY, INFINITY, 0, &lin->ops[s]);
        if (xs != xnn_status_success)
            SF_FAIL(SF_ERR_XNNPACK, "sf_linear_create: xnn_create_fully_connected_nc_f32 "
                    "(%zu -> %zu) failed: %s", in_features, out_features,
                    sf_xnn_status_str(xs));
    }
    *out = lin;
    return SF_OK;
fail:
    if (lin) {
        sf_gemm_destroy(lin->gemm);
        sf_xnn_free_ops(lin->n_ops, lin->ops, lin->slice_start);
        if (have_lock)
            pthread_mutex_destroy(&lin->lock);
        free(lin);
    }
    return st;
}

sf_status sf_linear_run(sf_linear *lin, const float *x, size_t rows, float *y) {
    sf_status st = SF_OK;
    pthreadpool_t pool = NULL;
    size_t n_in, n_out;
    int locked = 0, computing = 0;
    if (!lin)
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_run: lin is NULL");
    if (!x || !y)
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_run: %s is NULL", !x ? "x" : "y");
    if (rows == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_run: rows is 0");
    if (!sf_mul_n_ok(&n_in, 3, rows, lin->in, sizeof(float)) ||
        !sf_mul_n_ok(&n_out, 3, rows, lin->out, sizeof(float)))
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_run: %zu rows overflow size_t", rows);
    n_in = rows * lin->in;
    n_out = rows * lin->out;
    if (sf_xnn_overlap(x, n_in, y, n_out))
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_run: x and y overlap");

    pthread_mutex_lock(&lin->lock);
    locked = 1;
    SF_CHECK(sf_compute_begin(&pool));
    computing = 1;
    if (lin->gemm) {
        sf_gemm_geometry geo = {1, rows, 1, rows, 1, 1, 1, 0, 0};
        SF_CHECK(sf_gemm_run(lin->gemm, &geo, x, y, pool));
    } else {
        int same = lin->last_rows == rows && lin->last_x == x && lin->last_y == y &&
                   lin->last_pool == pool;
        lin->last_rows = 0; /* until every operator is set up again */
        for (size_t s = 0; s < lin->n_ops; s++) {
            enum xnn_status xs = xnn_status_success;
            if (!same)
                xs = xnn_setup_fully_connected_nc_f32(lin->ops[s], rows, x,
                                                      y + lin->slice_start[s], pool);
            if (xs != xnn_status_success)
                SF_FAIL(SF_ERR_XNNPACK, "sf_linear_run: xnn_setup_fully_connected_nc_f32 "
                        "(%zu rows of %zu) failed: %s", rows, lin->in, sf_xnn_status_str(xs));
            xs = xnn_run_operator(lin->ops[s], pool);
            if (xs != xnn_status_success)
                SF_FAIL(SF_ERR_XNNPACK, "sf_linear_run: xnn_run_operator (fully connected) "
                        "failed: %s", sf_xnn_status_str(xs));
        }
        if (sf_xnn_has_nan(x, n_in))
            for (size_t r = 0; r < rows; r++)
                if (sf_xnn_has_nan(x + r * lin->in, lin->in))
                    for (size_t o = 0; o < lin->out; o++)
                        y[r * lin->out + o] = NAN;
        lin->last_rows = rows;
        lin->last_x = x;
        lin->last_y = y;
        lin->last_pool = pool;
    }
    sf_mac_counter_add((uint64_t)n_out * lin->in);
fail:
    if (computing)
        sf_compute_end();
    if (locked)
        pthread_mutex_unlock(&lin->lock);
    return st;
}

void sf_linear_destroy(sf_linear *lin) {
    if (!lin)
        return;
    sf_gemm_destroy(lin->gemm);
    sf_xnn_free_ops(lin->n_ops, lin->ops, lin->slice_start);
    pthread_mutex_destroy(&lin->lock);
    free(lin);
}
