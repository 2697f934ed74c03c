/* test_xnn.c — convolution and fully connected layers against naive C loops, on both back ends
 * (the own GEMM where the CPU has it, and XNNPACK), plus argument checking. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sf_test.h"
#include "snapfusion.h"

static unsigned long long rng_state = 12345;

/* malloc with 64 readable bytes past the end (XNNPACK may read 16 past an input). */
static float *alloc_f32(size_t n) {
    float *p = malloc(n * sizeof(float) + 64);
    if (p)
        memset(p, 0, n * sizeof(float) + 64);
    return p;
}

static float *random_f32(size_t n) {
    float *p = alloc_f32(n);
    if (p)
        for (size_t i = 0; i < n; i++)
            p[i] = sf_test_rand(&rng_state);
    return p;
}

typedef struct {
    size_t batch, h, w, in, out;
    uint32_t kh, kw, sh, sw, pt, pl, pb, pr, groups;
    float lo, hi;
} conv_case;

/* Naive NHWC convolution with PyTorch OIHW weights, accumulating in double. */
static void conv_ref(const conv_case *c, const float *x, const float *wt, const float *bias,
                     size_t oh, size_t ow, float *y) {
    size_t gin = c->in / c->groups, gout = c->out / c->groups;
    for (size_t b = 0; b < c->batch; b++)
        for (size_t oy = 0; oy < oh; oy++)
            for (size_t ox = 0; ox < ow; ox++)
                for (size_t o = 0; o < c->out; o++) {
                    size_t g = o / gout;
                    double acc = bias ? bias[o] : 0.0;
                    for (size_t ky = 0; ky < c->kh; ky++)
                        for (size_t kx = 0; kx < c->kw; kx++) {
                            long iy = (long)(oy * c->sh + ky) - (long)c->pt;
                            long ix = (long)(ox * c->sw + kx) - (long)c->pl;
                            if (iy < 0 || ix < 0 || iy >= (long)c->h || ix >= (long)c->w)
                                continue;
                            const float *px = x + ((b * c->h + (size_t)iy) * c->w + (size_t)ix) *
                                                      c->in + g * gin;
                            for (size_t i = 0; i < gin; i++)
                                acc += (double)px[i] *
                                       wt[((o * gin + i) * c->kh + ky) * c->kw + kx];
                        }
                    float v = (float)acc;
                    if (v < c->lo)
                        v = c->lo;
                    if (v > c->hi)
                        v = c->hi;
                    y[((b * oh + oy) * ow + ox) * c->out + o] = v;
                }
}

static double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(a[i]) > m)
            m = fabs(a[i]);
    return m;
}

/* Largest difference; NaN where one side is NaN and the other is not (both NaN: equal). */
static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) && isnan(b[i]))
            continue;
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m))
            m = d; /* NaN wins */
    }
    return m;
}

static double max_abs_finite(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(a[i]) && fabs(a[i]) > m)
            m = fabs(a[i]);
    return m;
}

static size_t count_nan(const float *a, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += isnan(a[i]) != 0;
    return k;
}

/* Largest err / max |ref| seen by check_conv (reported by test_winograd). */
static double worst_rel_err = 0.0;

static void set_backend(int xnnpack) {
    if (xnnpack)
        setenv("SNAPFUSION_GEMM", "xnnpack", 1);
    else
        unsetenv("SNAPFUSION_GEMM");
}

/* Compare one convolution with the naive loops; nan_every > 0 puts a NaN into every
 * nan_every-th input value (the NaN pattern of the output must match). */
static void check_conv(const conv_case *c, int xnnpack, size_t nan_every) {
    set_backend(xnnpack);
    sf_conv2d_params p;
    sf_conv2d_params_default(&p);
    p.in_channels = c->in;
    p.out_channels = c->out;
    p.kernel_h = c->kh;
    p.kernel_w = c->kw;
    p.stride_h = c->sh;
    p.stride_w = c->sw;
    p.pad_top = c->pt;
    p.pad_left = c->pl;
    p.pad_bottom = c->pb;
    p.pad_right = c->pr;
    p.groups = c->groups;
    p.output_min = c->lo;
    p.output_max = c->hi;
    size_t oh = (c->h + c->pt + c->pb - c->kh) / c->sh + 1;
    size_t ow = (c->w + c->pl + c->pr - c->kw) / c->sw + 1;
    size_t nx = c->batch * c->h * c->w * c->in, ny = c->batch * oh * ow * c->out;
    size_t nw = c->out * (c->in / c->groups) * c->kh * c->kw;
    float *x = random_f32(nx), *wt = random_f32(nw), *bias = random_f32(c->out);
    float *y = alloc_f32(ny), *y2 = alloc_f32(ny), *ref = alloc_f32(ny);
    sf_conv2d *conv = NULL;
    if (!x || !wt || !bias || !y || !y2 || !ref) {
        EXPECT(!"out of memory");
        goto done;
    }
    if (nan_every)
        for (size_t i = nan_every / 2; i < nx; i += nan_every)
            x[i] = NAN;
    conv_ref(c, x, wt, bias, oh, ow, ref);
    if (nan_every) {
        EXPECT(count_nan(ref, ny) > 0 && count_nan(ref, ny) < ny);
    }
    EXPECT_OK(sf_conv2d_create(&p, wt, bias, &conv));
    if (!conv)
        goto done;
    size_t qh = 0, qw = 0;
    EXPECT_OK(sf_conv2d_output_size(conv, c->h, c->w, &qh, &qw));
    EXPECT(qh == oh && qw == ow);
    EXPECT_OK(sf_set_num_threads(1));
    EXPECT_OK(sf_conv2d_run(conv, x, c->batch, c->h, c->w, y));
    double tol = 1e-5 * (max_abs_finite(ref, ny) + 1e-30);
    double err = max_diff(y, ref, ny);
    EXPECT(err <= tol);
    if (err / (max_abs_finite(ref, ny) + 1e-30) > worst_rel_err)
        worst_rel_err = err / (max_abs_finite(ref, ny) + 1e-30);
    if (!(err <= tol))
        fprintf(stderr, "  conv %zux%zux%zux%zu -> %zu, k%ux%u s%ux%u pad(%u,%u,%u,%u) g%u "
                "[%s]: max err %g (tol %g)\n", c->batch, c->h, c->w, c->in, c->out, c->kh,
                c->kw, c->sh, c->sw, c->pt, c->pl, c->pb, c->pr, c->groups,
                xnnpack ? "xnnpack" : "auto", err, tol);
    /* the same result with 3 threads (bit-exact: every output is summed in one order) */
    EXPECT_OK(sf_set_num_threads(3));
    EXPECT_OK(sf_conv2d_run(conv, x, c->batch, c->h, c->w, y2));
    EXPECT(memcmp(y, y2, ny * sizeof(float)) == 0 || nan_every);
    EXPECT(max_diff(y, y2, ny) == 0.0);
    /* a second run at the same shape, then a run on a smaller batch */
    memset(y2, 0, ny * sizeof(float));
    EXPECT_OK(sf_conv2d_run(conv, x, c->batch, c->h, c->w, y2));
    EXPECT(memcmp(y, y2, ny * sizeof(float)) == 0);
    /* new input values at the same addresses (a repeated call may skip XNNPACK's setup) */
    for (size_t i = 0; i < nx; i++)
        x[i] = -0.5f * x[i];
    conv_ref(c, x, wt, bias, oh, ow, ref);
    EXPECT_OK(sf_conv2d_run(conv, x, c->batch, c->h, c->w, y2));
    EXPECT(max_diff(y2, ref, ny) <= 1e-5 * (max_abs_finite(ref, ny) + 1e-30));
    EXPECT_OK(sf_conv2d_run(conv, x, c->batch, c->h, c->w, y));
    EXPECT(max_diff(y, y2, ny) == 0.0);
    if (c->batch > 1) {
        memset(y2, 0, ny * sizeof(float));
        EXPECT_OK(sf_conv2d_run(conv, x, 1, c->h, c->w, y2));
        EXPECT(memcmp(y, y2, ny / c->batch * sizeof(float)) == 0);
    }
    EXPECT_OK(sf_set_num_threads(1));
done:
    sf_conv2d_destroy(conv);
    free(x);
    free(wt);
    free(bias);
    free(y);
    free(y2);
    free(ref);
    set_backend(0);
}

static void test_conv_shapes(void) {
    const conv_case cases[] = {
        /* batch h w in out  kh kw sh sw pt pl pb pr groups lo hi */
        {3, 7, 9, 3, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY},
        {1, 9, 8, 5, 13, 3, 3, 2, 2, 0, 0, 1, 1, 1, -INFINITY, INFINITY}, /* VAE downsample */
        {2, 6, 11, 13, 40, 1, 1, 1, 1, 0, 0, 0, 0, 1, -INFINITY, INFINITY},
        {1, 10, 7, 13, 37, 3, 3, 2, 2, 1, 2, 0, 1, 1, -INFINITY, INFINITY},
        {2, 11, 11, 70, 45, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY}, /* 2 k-blocks */
        {1, 5, 6, 64, 384, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY}, /* 2 XNN slices */
        {1, 4, 4, 33, 50, 1, 1, 2, 2, 0, 0, 0, 0, 1, -INFINITY, INFINITY},
        {3, 5, 7, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1, 5, -INFINITY, INFINITY},   /* depthwise */
        {1, 8, 6, 8, 12, 3, 3, 2, 1, 1, 1, 1, 1, 2, -INFINITY, INFINITY},  /* grouped */
        {2, 6, 5, 20, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1, -0.5f, 0.75f},        /* clamp */
        {1, 9, 8, 16, 40, 3, 3, 2, 2, 0, 0, 1, 1, 1, -INFINITY, INFINITY},
        {3, 6, 5, 12, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY},
        {1, 3, 3, 1300, 33, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY}, /* many k-blocks */
        {1, 1, 1, 16, 16, 1, 1, 1, 1, 0, 0, 0, 0, 1, -INFINITY, INFINITY},
        {1, 3, 4, 3, 3, 3, 3, 1, 1, 0, 1, 0, 1, 1, -INFINITY, INFINITY},  /* kernel == h */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        check_conv(&cases[i], 0, 0);
        check_conv(&cases[i], 1, 0);
    }
}

/* ref[r][o] = bias[o] + sum_i x[r][i] * wt[o][i], accumulated in double. */
static void linear_ref(const float *x, const float *wt, const float *bias, size_t rows, size_t in,
                       size_t out, float *ref) {
    for (size_t r = 0; r < rows; r++)
        for (size_t o = 0; o < out; o++) {
            double acc = bias[o];
            for (size_t i = 0; i < in; i++)
                acc += (double)x[r * in + i] * wt[o * in + i];
            ref[r * out + o] = (float)acc;
        }
}

static void test_linear_shapes(void) {
    const size_t shapes[][3] = {{1, 3, 5}, {5, 13, 13}, {37, 40, 64}, {77, 70, 37},
                                {2, 640, 33}, {130, 16, 16}};
    for (int backend = 0; backend < 2; backend++) {
        set_backend(backend);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            size_t rows = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
            float *x = random_f32(rows * in), *wt = random_f32(in * out);
            float *bias = random_f32(out), *y = alloc_f32(rows * out), *y2 = alloc_f32(rows * out);
            float *ref = alloc_f32(rows * out);
            sf_linear *lin = NULL;
            if (!x || !wt || !bias || !y || !y2 || !ref) {
                EXPECT(!"out of memory");
                goto next;
            }
            linear_ref(x, wt, bias, rows, in, out, ref);
            EXPECT_OK(sf_linear_create(in, out, wt, s % 2 ? NULL : bias, &lin));
            if (s % 2)
                for (size_t r = 0; r < rows; r++)
                    for (size_t o = 0; o < out; o++)
                        ref[r * out + o] -= bias[o];
            EXPECT_OK(sf_set_num_threads(2));
            EXPECT_OK(sf_linear_run(lin, x, rows, y));
            double err = max_diff(y, ref, rows * out);
            double tol = 1e-5 * max_abs(ref, rows * out);
            EXPECT(err <= tol);
            if (!(err <= tol))
                fprintf(stderr, "  linear %zu x %zu -> %zu [%s]: max err %g (tol %g)\n", rows, in,
                        out, backend ? "xnnpack" : "auto", err, tol);
            EXPECT_OK(sf_set_num_threads(1));
            EXPECT_OK(sf_linear_run(lin, x, rows, y2));
            EXPECT(memcmp(y, y2, rows * out * sizeof(float)) == 0);
            EXPECT_OK(sf_linear_run(lin, x + in, 1, y2)); /* one row, from row 1 */
            if (rows > 1)
                EXPECT(memcmp(y + out, y2, out * sizeof(float)) == 0);
        next:
            sf_linear_destroy(lin);
            free(x);
            free(wt);
            free(bias);
            free(y);
            free(y2);
            free(ref);
        }
    }
    set_backend(0);
}

/* Every height of the last register tile (the own GEMM runs tiles of 1 to 12 rows): each row of
 * a batch of 1 to 25 rows is what the reference computes and, bit for bit, what the same row
 * gives alone (a 1-row tile): every output is summed in the same order whatever its tile. */
static void test_every_tile_height(void) {
    const size_t in = 70, out = 40, max_rows = 25;
    float *x = random_f32(max_rows * in), *wt = random_f32(in * out), *bias = random_f32(out);
    float *y = alloc_f32(max_rows * out), *one = alloc_f32(out), *ref = alloc_f32(max_rows * out);
    sf_linear *lin = NULL;
    if (!x || !wt || !bias || !y || !one || !ref) {
        EXPECT(!"out of memory");
        goto done;
    }
    linear_ref(x, wt, bias, max_rows, in, out, ref);
    EXPECT_OK(sf_set_num_threads(1));
    EXPECT_OK(sf_linear_create(in, out, wt, bias, &lin));
    for (size_t rows = 1; rows <= max_rows; rows++) {
        EXPECT_OK(sf_linear_run(lin, x, rows, y));
        double err = max_diff(y, ref, rows * out), tol = 1e-5 * max_abs(ref, rows * out);
        EXPECT(err <= tol);
        if (!(err <= tol))
            fprintf(stderr, "  linear, %zu rows: max err %g (tol %g)\n", rows, err, tol);
        for (size_t r = 0; r < rows; r++) {
            EXPECT_OK(sf_linear_run(lin, x + r * in, 1, one));
            EXPECT(memcmp(one, y + r * out, out * sizeof(float)) == 0);
        }
    }
done:
    sf_linear_destroy(lin);
    free(x);
    free(wt);
    free(bias);
    free(y);
    free(one);
    free(ref);
}

static void test_nan(void) {
    /* a NaN input reaches exactly the outputs whose window covers it, on both back ends */
    const conv_case cases[] = {
        {2, 9, 8, 5, 32, 3, 3, 2, 2, 0, 0, 1, 1, 1, -INFINITY, INFINITY},
        {1, 10, 7, 16, 40, 3, 3, 2, 1, 1, 2, 0, 1, 1, -INFINITY, INFINITY},
        {1, 6, 6, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, -INFINITY, INFINITY}, /* depthwise */
        {1, 6, 6, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 2, -INFINITY, INFINITY}, /* grouped */
        {1, 7, 7, 24, 32, 1, 1, 1, 1, 0, 0, 0, 0, 1, -INFINITY, INFINITY},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t every = cases[i].h * cases[i].w * cases[i].in / 2 + 3;
        check_conv(&cases[i], 0, every);
        check_conv(&cases[i], 1, every);
    }
    for (int backend = 0; backend < 2; backend++) {
        set_backend(backend);
        float wt[32 * 24], x[3 * 24 + 16], y[3 * 32];
        for (size_t i = 0; i < sizeof wt / sizeof wt[0]; i++)
            wt[i] = 0.01f * (float)(i % 7);
        for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
            x[i] = 1.0f;
        x[24 + 5] = NAN; /* row 1 */
        sf_linear *lin = NULL;
        EXPECT_OK(sf_linear_create(24, 32, wt, NULL, &lin));
        EXPECT_OK(sf_linear_run(lin, x, 3, y));
        EXPECT(count_nan(y, 32) == 0 && count_nan(y + 32, 32) == 32 &&
               count_nan(y + 64, 32) == 0);
        sf_linear_destroy(lin);
    }
    set_backend(0);
}

/* SNAPFUSION_WINOGRAD for the layers created next (NULL: unset). */
static void set_winograd(const char *mode) {
    if (mode)
        setenv("SNAPFUSION_WINOGRAD", mode, 1);
    else
        unsetenv("SNAPFUSION_WINOGRAD");
}

/* Run one dense 3x3 layer with the given SNAPFUSION_WINOGRAD into y (NULL on failure). */
static void run_conv_mode(const conv_case *c, const char *mode, const float *x, const float *wt,
                          const float *bias, float *y) {
    sf_conv2d_params p;
    sf_conv2d_params_default(&p);
    p.in_channels = c->in;
    p.out_channels = c->out;
    p.kernel_h = p.kernel_w = 3;
    p.pad_top = c->pt;
    p.pad_left = c->pl;
    p.pad_bottom = c->pb;
    p.pad_right = c->pr;
    sf_conv2d *conv = NULL;
    set_winograd(mode);
    EXPECT_OK(sf_conv2d_create(&p, wt, bias, &conv));
    set_winograd(NULL);
    if (conv)
        EXPECT_OK(sf_conv2d_run(conv, x, c->batch, c->h, c->w, y));
    sf_conv2d_destroy(conv);
}

static void test_winograd(void) {
    /* Winograd F(2x2, 3x3) on dense 3x3 stride-1 layers (forced at every size, and the default
     * choice), against the naive loops: odd sizes, partial edge tiles, 1x1 and 2x3 images,
     * padding 0/1/2 and asymmetric, channels that are not multiples of 16, clamp, NaN. */
    const conv_case cases[] = {
        /* batch h w in out  kh kw sh sw pt pl pb pr groups lo hi */
        {3, 7, 9, 33, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY},
        {1, 1, 1, 35, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY},
        {2, 2, 3, 20, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY},
        {1, 5, 4, 17, 33, 3, 3, 1, 1, 0, 0, 0, 0, 1, -INFINITY, INFINITY},
        {2, 9, 6, 40, 36, 3, 3, 1, 1, 0, 2, 1, 0, 1, -INFINITY, INFINITY},
        {1, 8, 7, 48, 64, 3, 3, 1, 1, 2, 1, 0, 2, 1, -INFINITY, INFINITY},
        {2, 6, 5, 20, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1, -0.5f, 0.75f},  /* clamp */
        {1, 3, 4, 32, 32, 3, 3, 1, 1, 0, 1, 0, 1, 1, -INFINITY, INFINITY}, /* kernel == h */
        {1, 5, 5, 600, 45, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY}, /* 2 k-blocks */
        {2, 48, 47, 48, 80, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY}, /* 12 chunks */
        {3, 5, 7, 4, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY}, /* 4 channels */
    };
    const char *modes[] = {"force", NULL};
    worst_rel_err = 0.0;
    for (size_t m = 0; m < 2; m++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            set_winograd(modes[m]);
            check_conv(&cases[i], 0, 0);
        }
    const conv_case nan_cases[] = {
        {1, 10, 7, 16, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY},
        {2, 9, 8, 35, 32, 3, 3, 1, 1, 0, 1, 2, 0, 1, -INFINITY, INFINITY},
        {1, 7, 7, 24, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, -1.0f, 1.0f},
    };
    for (size_t i = 0; i < sizeof nan_cases / sizeof nan_cases[0]; i++) {
        set_winograd("force");
        check_conv(&nan_cases[i], 0, nan_cases[i].h * nan_cases[i].w * nan_cases[i].in / 2 + 3);
    }
    fprintf(stderr, "  winograd: largest error %.3g x max |reference| (tolerance 1e-5)\n",
            worst_rel_err);
    /* NaN in every position of a tile in turn (corners, edges, centre): exactly the outputs
     * whose window covers it become NaN */
    {
        const conv_case c = {1, 6, 6, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY};
        size_t nx = 6 * 6 * 32, ny = 6 * 6 * 32;
        float *x = random_f32(nx), *wt = random_f32(32 * 32 * 9), *y = alloc_f32(ny);
        float *ref = alloc_f32(ny);
        if (!x || !wt || !y || !ref) {
            EXPECT(!"out of memory");
        } else {
            for (size_t pix = 0; pix < 36; pix++) {
                float keep = x[pix * 32 + 7];
                x[pix * 32 + 7] = NAN;
                conv_ref(&c, x, wt, NULL, 6, 6, ref);
                run_conv_mode(&c, "force", x, wt, NULL, y);
                EXPECT(count_nan(ref, ny) > 0);
                EXPECT(max_diff(y, ref, ny) <= 1e-5 * max_abs_finite(ref, ny));
                x[pix * 32 + 7] = keep;
            }
        }
        free(x);
        free(wt);
        free(y);
        free(ref);
    }
    /* the switch: SNAPFUSION_WINOGRAD=0 gives the direct convolution, the default gives
     * Winograd (different roundings: not bit-identical) where the GEMM is used */
    {
        const conv_case c = {1, 9, 9, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, -INFINITY, INFINITY};
        size_t nx = 9 * 9 * 64, ny = 9 * 9 * 64;
        float *x = random_f32(nx), *wt = random_f32(64 * 64 * 9), *bias = random_f32(64);
        float *y0 = alloc_f32(ny), *y1 = alloc_f32(ny), *y2 = alloc_f32(ny);
        if (!x || !wt || !bias || !y0 || !y1 || !y2) {
            EXPECT(!"out of memory");
        } else {
            run_conv_mode(&c, "0", x, wt, bias, y0);
            run_conv_mode(&c, NULL, x, wt, bias, y1);
            run_conv_mode(&c, "force", x, wt, bias, y2);
            EXPECT(memcmp(y1, y2, ny * sizeof(float)) == 0);
            sf_cpu_features f;
            sf_get_cpu_features(&f);
            if (f.avx512f)
                EXPECT(memcmp(y0, y1, ny * sizeof(float)) != 0);
            EXPECT(max_diff(y0, y1, ny) <= 1e-5 * max_abs(y0, ny));
        }
        free(x);
        free(wt);
        free(bias);
        free(y0);
        free(y1);
        free(y2);
    }
    set_winograd(NULL);
}

static void test_bad_args(void) {
    float wt[2 * 3 * 3 * 3] = {0}, x[64] = {0}, y[64];
    sf_conv2d_params p;
    sf_conv2d *conv = NULL;
    sf_conv2d_params_default(NULL); /* no crash */
    sf_conv2d_params_default(&p);
    EXPECT(p.kernel_h == 1 && p.stride_w == 1 && p.groups == 1 && isinf(p.output_max));
    EXPECT_STATUS(sf_conv2d_create(&p, wt, NULL, &conv), SF_ERR_INVALID_ARG); /* 0 channels */
    EXPECT(strstr(sf_last_error(), "sf_conv2d_create") != NULL);
    p.in_channels = 3;
    p.out_channels = 2;
    p.kernel_h = p.kernel_w = 3;
    EXPECT_STATUS(sf_conv2d_create(NULL, wt, NULL, &conv), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_conv2d_create(&p, NULL, NULL, &conv), SF_ERR_INVALID_ARG);
    EXPECT(strstr(sf_last_error(), "weight") != NULL);
    EXPECT_STATUS(sf_conv2d_create(&p, wt, NULL, NULL), SF_ERR_INVALID_ARG);
    sf_conv2d_params q = p;
    q.kernel_w = 0;
    EXPECT_STATUS(sf_conv2d_create(&q, wt, NULL, &conv), SF_ERR_INVALID_ARG);
    q = p;
    q.stride_h = 0;
    EXPECT_STATUS(sf_conv2d_create(&q, wt, NULL, &conv), SF_ERR_INVALID_ARG);
    EXPECT(strstr(sf_last_error(), "stride") != NULL);
    q = p;
    q.groups = 2; /* does not divide 3 */
    EXPECT_STATUS(sf_conv2d_create(&q, wt, NULL, &conv), SF_ERR_INVALID_ARG);
    EXPECT(strstr(sf_last_error(), "groups") != NULL);
    q.groups = 0;
    EXPECT_STATUS(sf_conv2d_create(&q, wt, NULL, &conv), SF_ERR_INVALID_ARG);
    q = p;
    q.output_min = 2.0f;
    q.output_max = 1.0f;
    EXPECT_STATUS(sf_conv2d_create(&q, wt, NULL, &conv), SF_ERR_INVALID_ARG);
    q.output_min = NAN;
    EXPECT_STATUS(sf_conv2d_create(&q, wt, NULL, &conv), SF_ERR_INVALID_ARG);
    q = p;
    q.in_channels = q.out_channels = SIZE_MAX / 2;
    EXPECT_STATUS(sf_conv2d_create(&q, wt, NULL, &conv), SF_ERR_INVALID_ARG);
    EXPECT(strstr(sf_last_error(), "overflow") != NULL);
    EXPECT(conv == NULL);

    EXPECT_OK(sf_conv2d_create(&p, wt, NULL, &conv));
    size_t oh, ow;
    EXPECT_STATUS(sf_conv2d_output_size(conv, 2, 5, &oh, &ow), SF_ERR_SHAPE); /* 2 < 3 */
    EXPECT(strstr(sf_last_error(), "kernel 3x3") != NULL);
    EXPECT_STATUS(sf_conv2d_run(conv, x, 1, 2, 5, y), SF_ERR_SHAPE);
    EXPECT_STATUS(sf_conv2d_output_size(conv, 0, 5, &oh, &ow), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_conv2d_output_size(NULL, 3, 3, &oh, &ow), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_conv2d_output_size(conv, 3, 3, NULL, &ow), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_conv2d_run(NULL, x, 1, 3, 3, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_conv2d_run(conv, NULL, 1, 3, 3, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_conv2d_run(conv, x, 1, 3, 3, NULL), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_conv2d_run(conv, x, 0, 3, 3, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_conv2d_run(conv, x, 1, 3, 0, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_conv2d_run(conv, x, 1, 3, 3, x + 1), SF_ERR_INVALID_ARG); /* overlap */
    EXPECT(strstr(sf_last_error(), "overlap") != NULL);
    EXPECT_STATUS(sf_conv2d_run(conv, x, SIZE_MAX / 4, 3, 3, y), SF_ERR_INVALID_ARG);
    EXPECT_OK(sf_conv2d_run(conv, x, 1, 3, 3, y));
    EXPECT(y[0] == 0.0f && y[1] == 0.0f);
    sf_conv2d_destroy(conv);
    sf_conv2d_destroy(NULL);

    /* padding makes a small input valid: 1x1 input, 3x3 kernel, padding 1 */
    p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = 1;
    EXPECT_OK(sf_conv2d_create(&p, wt, NULL, &conv));
    EXPECT_OK(sf_conv2d_output_size(conv, 1, 1, &oh, &ow));
    EXPECT(oh == 1 && ow == 1);
    sf_conv2d_destroy(conv);

    sf_linear *lin = NULL;
    EXPECT_STATUS(sf_linear_create(0, 3, wt, NULL, &lin), SF_ERR_INVALID_ARG);
    EXPECT(strstr(sf_last_error(), "sf_linear_create") != NULL);
    EXPECT_STATUS(sf_linear_create(3, 0, wt, NULL, &lin), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_linear_create(3, 2, NULL, NULL, &lin), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_linear_create(3, 2, wt, NULL, NULL), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_linear_create(SIZE_MAX / 2, 4, wt, NULL, &lin), SF_ERR_INVALID_ARG);
    EXPECT(lin == NULL);
    EXPECT_OK(sf_linear_create(3, 2, wt, NULL, &lin));
    EXPECT_STATUS(sf_linear_run(lin, x, 0, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_linear_run(lin, NULL, 1, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_linear_run(lin, x, 1, NULL), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_linear_run(NULL, x, 1, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_linear_run(lin, x, SIZE_MAX / 2, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_linear_run(lin, x, 4, x + 2), SF_ERR_INVALID_ARG);
    EXPECT_OK(sf_linear_run(lin, x, 4, y));
    sf_linear_destroy(lin);
    sf_linear_destroy(NULL);
}

int main(void) {
    EXPECT_OK(sf_init());
    test_conv_shapes();
    test_linear_shapes();
    test_every_tile_height();
    test_nan();
    test_winograd();
    test_bad_args();
    return sf_test_finish("test_xnn");
}
