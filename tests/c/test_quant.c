/* test_quant.c — int8 layers: the packed GEMM kernels (AMX and VNNI where the CPU has them,
 * portable C)
 * against plain C loops on odd shapes with extreme values, quantized convolutions and linear
 * layers on every back end (static and dynamic activation parameters, padding, strides), NaN
 * inputs, argument checking, the calibration observer, and layers loaded from a safetensors
 * file held in memory (valid and hostile). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_nn.h"
#include "sf_quant.h"
#include "sf_test.h"

static unsigned long long rng = 987654321ULL;

static uint32_t rand_u32(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng >> 33);
}

/* malloc with 64 readable zero bytes past the end */
static void *alloc_pad(size_t bytes) {
    void *p = malloc(bytes + 64);
    if (p)
        memset(p, 0, bytes + 64);
    return p;
}

/* ---- the GEMM kernels against a triple loop ---- */

static void gemm_case(sf_qbackend be, size_t m, size_t n, size_t k, int extremes) {
    uint8_t *a = alloc_pad(m * k);
    int8_t *b = alloc_pad(n * k);
    int32_t *c = alloc_pad(m * n * 4), *ref = alloc_pad(m * n * 4);
    if (!a || !b || !c || !ref) {
        EXPECT(0);
        goto done;
    }
    for (size_t i = 0; i < m * k; i++)
        a[i] = extremes ? (rand_u32() & 1 ? 255 : 0) : (uint8_t)rand_u32();
    for (size_t i = 0; i < n * k; i++)
        b[i] = extremes ? (rand_u32() & 1 ? 127 : -128) : (int8_t)rand_u32();
    if (extremes) { /* the worst case for the int32 sums: 255 * -128 everywhere in row 0 */
        for (size_t i = 0; i < k; i++) {
            a[i] = 255;
            b[i] = -128;
        }
    }
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            int64_t s = 0;
            for (size_t kk = 0; kk < k; kk++)
                s += (int64_t)a[i * k + kk] * b[j * k + kk];
            ref[i * n + j] = (int32_t)s;
        }
    EXPECT_OK(sf_qgemm_u8s8_test(be, a, b, m, n, k, c));
    size_t bad = 0;
    for (size_t i = 0; i < m * n; i++)
        bad += c[i] != ref[i];
    if (bad)
        fprintf(stderr, "gemm %s m=%zu n=%zu k=%zu: %zu of %zu wrong\n", sf_qbackend_name(be), m,
                n, k, bad, m * n);
    EXPECT(bad == 0);
done:
    free(a);
    free(b);
    free(c);
    free(ref);
}

static void test_gemm(void) {
    /* odd M, N, K around the tiles: 12-row VNNI and 16-row AMX tiles, 32-column panels,
     * 64-byte AMX reduction steps, 1024-byte reduction blocks */
    static const size_t shapes[][3] = {{1, 1, 1},      {13, 33, 7},   {12, 32, 4},  {25, 65, 1029},
                                       {37, 17, 2051}, {5, 100, 3},   {97, 31, 300}, {2, 40, 4097},
                                       {16, 32, 64},   {32, 64, 128}, {33, 47, 65},  {48, 16, 1024},
                                       {300, 96, 2880}};
    sf_qbackend bes[3] = {SF_QBACKEND_REFERENCE, SF_QBACKEND_VNNI, SF_QBACKEND_AMX};
    for (int e = 0; e < 3; e++) {
        if (!sf_qbackend_available(bes[e])) {
            printf("test_quant: this machine cannot run the %s kernel; not tested\n",
                   sf_qbackend_name(bes[e]));
            continue;
        }
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int ex = 0; ex < 2; ex++)
                gemm_case(bes[e], shapes[s][0], shapes[s][1], shapes[s][2], ex);
    }
    /* argument checks */
    uint8_t a[4] = {0};
    int8_t b[4] = {0};
    int32_t c[1];
    EXPECT_STATUS(sf_qgemm_u8s8_test(SF_QBACKEND_REFERENCE, NULL, b, 1, 1, 4, c),
                  SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_qgemm_u8s8_test(SF_QBACKEND_REFERENCE, a, b, 1, 1, 0, c),
                  SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_qgemm_u8s8_test(SF_QBACKEND_XNNPACK, a, b, 1, 1, 4, c), SF_ERR_INVALID_ARG);
}

/* ---- quantized convolution against a reference built from the definition ---- */

typedef struct {
    size_t batch, h, w, in, out;
    uint32_t k, stride, pt, pl, pb, pr;
} qcase;

/* y = bias + s_in * s_w[o] * sum (q_x - zp) * q_w, with q_x from the definition. */
static void qconv_ref(const qcase *c, const float *x, const int8_t *wq, const float *ws,
                      const float *bias, sf_qparams in, size_t oh, size_t ow, float *y) {
    size_t n = c->batch * c->h * c->w * c->in;
    int8_t *xq = malloc(n);
    if (!xq)
        return;
    float inv = 1.0f / in.scale;
    for (size_t i = 0; i < n; i++) {
        float v = x[i] * inv;
        v = v + (float)in.zero_point;
        v = fminf(fmaxf(v, -128.0f), 127.0f);
        xq[i] = (int8_t)nearbyintf(v);
    }
    for (size_t b = 0; b < c->batch; b++)
        for (size_t oy = 0; oy < oh; oy++)
            for (size_t ox = 0; ox < ow; ox++)
                for (size_t o = 0; o < c->out; o++) {
                    int64_t acc = 0;
                    for (size_t ky = 0; ky < c->k; ky++)
                        for (size_t kx = 0; kx < c->k; kx++) {
                            long iy = (long)(oy * c->stride + ky) - (long)c->pt;
                            long ix = (long)(ox * c->stride + kx) - (long)c->pl;
                            if (iy < 0 || ix < 0 || iy >= (long)c->h || ix >= (long)c->w)
                                continue; /* padding is a real 0: (zp - zp) * w */
                            const int8_t *px =
                                xq + ((b * c->h + (size_t)iy) * c->w + (size_t)ix) * c->in;
                            for (size_t i = 0; i < c->in; i++)
                                acc += (int64_t)(px[i] - in.zero_point) *
                                       wq[((o * c->in + i) * c->k + ky) * c->k + kx];
                        }
                    y[((b * oh + oy) * ow + ox) * c->out + o] =
                        (float)((double)(bias ? bias[o] : 0.0f) +
                                (double)in.scale * ws[o] * (double)acc);
                }
    free(xq);
}

static void qconv_case(const qcase *c, sf_qbackend be, int static_in) {
    size_t nx = c->batch * c->h * c->w * c->in, nw = c->out * c->in * c->k * c->k;
    float *x = alloc_pad(nx * 4), *wf = alloc_pad(nw * 4), *ws = alloc_pad(c->out * 4);
    float *bias = alloc_pad(c->out * 4), *y = NULL, *ref = NULL;
    int8_t *wq = alloc_pad(nw);
    sf_qconv *q = NULL;
    if (!x || !wf || !ws || !bias || !wq) {
        EXPECT(0);
        goto done;
    }
    for (size_t i = 0; i < nx; i++) /* post-SiLU-like: skewed, with a long positive tail */
        x[i] = 2.0f * sf_test_rand(&rng) + 1.5f * fabsf(sf_test_rand(&rng));
    for (size_t i = 0; i < nw; i++)
        wf[i] = sf_test_rand(&rng);
    for (size_t o = 0; o < c->out; o++)
        bias[o] = 0.1f * sf_test_rand(&rng);
    EXPECT_OK(sf_quantize_rows(wf, c->out, c->in * c->k * c->k, wq, ws));
    sf_qconv_params p;
    sf_qconv_params_default(&p);
    p.in_channels = c->in;
    p.out_channels = c->out;
    p.kernel_h = p.kernel_w = c->k;
    p.stride_h = p.stride_w = c->stride;
    p.pad_top = c->pt;
    p.pad_left = c->pl;
    p.pad_bottom = c->pb;
    p.pad_right = c->pr;
    p.backend = be;
    float mn = INFINITY, mx = -INFINITY;
    for (size_t i = 0; i < nx; i++) {
        mn = fminf(mn, x[i]);
        mx = fmaxf(mx, x[i]);
    }
    sf_qparams in = sf_qparams_from_range(mn, mx);
    if (static_in) {
        in = sf_qparams_from_range(0.8f * mn, 0.7f * mx); /* some values clip */
        p.input = in;
    }
    if (be == SF_QBACKEND_XNNPACK) {
        p.output.enabled = 1;
        p.output.scale = 0.05f;
        p.output.zero_point = 3;
    }
    EXPECT_OK(sf_qconv_create(&p, wq, ws, bias, &q));
    if (!q)
        goto done;
    EXPECT(sf_qconv_backend(q) == be);
    size_t oh, ow;
    EXPECT_OK(sf_qconv_output_size(q, c->h, c->w, &oh, &ow));
    size_t ny = c->batch * oh * ow * c->out;
    y = alloc_pad(ny * 4);
    ref = alloc_pad(ny * 4);
    if (!y || !ref) {
        EXPECT(0);
        goto done;
    }
    qconv_ref(c, x, wq, ws, bias, in, oh, ow, ref);
    EXPECT_OK(sf_qconv_run(q, x, c->batch, c->h, c->w, y));
    float peak = 0.0f, err = 0.0f;
    for (size_t i = 0; i < ny; i++) {
        float r = ref[i];
        if (be == SF_QBACKEND_XNNPACK) { /* XNNPACK's int8 output */
            float v = fminf(fmaxf(nearbyintf(r / 0.05f) + 3.0f, -128.0f), 127.0f);
            r = (v - 3.0f) * 0.05f;
        }
        peak = fmaxf(peak, fabsf(r));
        err = fmaxf(err, fabsf(y[i] - r));
    }
    /* own kernels: the reference up to float rounding; XNNPACK: within one output step */
    float tol = be == SF_QBACKEND_XNNPACK ? 0.05f * 1.01f : 2e-5f * peak + 1e-6f;
    if (!(err <= tol))
        fprintf(stderr, "qconv %s %zux%zux%zu->%zu k%u s%u static=%d: err %g (tol %g)\n",
                sf_qbackend_name(be), c->h, c->w, c->in, c->out, c->k, c->stride, static_in,
                (double)err, (double)tol);
    EXPECT(err <= tol);
    /* same result at another call (scratch reuse) */
    EXPECT_OK(sf_qconv_run(q, x, c->batch, c->h, c->w, ref));
    EXPECT(memcmp(ref, y, ny * 4) == 0);
    /* a NaN anywhere gives an all-NaN output */
    x[nx / 2] = NAN;
    EXPECT_OK(sf_qconv_run(q, x, c->batch, c->h, c->w, y));
    size_t nans = 0;
    for (size_t i = 0; i < ny; i++)
        nans += y[i] != y[i];
    EXPECT(nans == ny);
done:
    sf_qconv_destroy(q);
    free(x);
    free(wf);
    free(ws);
    free(bias);
    free(wq);
    free(y);
    free(ref);
}

static void test_qconv(void) {
    static const qcase cases[] = {
        {1, 5, 7, 3, 5, 3, 1, 1, 1, 1, 1},      /* few channels, odd sizes */
        {2, 9, 6, 17, 33, 3, 1, 1, 1, 1, 1},    /* odd channels, batch 2 */
        {1, 9, 9, 20, 40, 3, 2, 0, 0, 1, 1},    /* stride 2, right/bottom padding (VAE) */
        {1, 4, 5, 130, 70, 3, 1, 1, 1, 1, 1},   /* K = 1170 > one reduction block */
        {1, 6, 1, 64, 48, 1, 1, 0, 0, 0, 0},    /* 1x1 */
        {1, 3, 3, 8, 8, 3, 1, 0, 0, 0, 0},      /* valid (no padding) */
    };
    sf_qbackend bes[4] = {SF_QBACKEND_REFERENCE, SF_QBACKEND_VNNI, SF_QBACKEND_XNNPACK,
                          SF_QBACKEND_AMX};
    for (int e = 0; e < 4; e++) {
        if (!sf_qbackend_available(bes[e]))
            continue;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            qconv_case(&cases[i], bes[e], 1);
            if (bes[e] != SF_QBACKEND_XNNPACK)
                qconv_case(&cases[i], bes[e], 0);
        }
    }
}

/* ---- linear layers and argument checks ---- */

static void test_linear_and_args(void) {
    enum { IN = 37, OUT = 45, ROWS = 11 };
    int8_t w[OUT * IN];
    float ws[OUT], x[ROWS * IN + 16], y[ROWS * OUT], y2[ROWS * OUT];
    for (int i = 0; i < OUT * IN; i++)
        w[i] = (int8_t)(rand_u32() % 255 - 127);
    for (int o = 0; o < OUT; o++)
        ws[o] = 0.01f;
    for (int i = 0; i < ROWS * IN; i++)
        x[i] = sf_test_rand(&rng);
    sf_qconv_params p;
    sf_qconv_params_default(&p);
    p.in_channels = IN;
    p.out_channels = OUT;
    p.backend = SF_QBACKEND_REFERENCE;
    sf_qconv *q = NULL;
    EXPECT_OK(sf_qconv_create(&p, w, ws, NULL, &q));
    if (q) {
        /* a linear run equals the 1x1 convolution of the rows as pixels */
        EXPECT_OK(sf_qconv_run_linear(q, x, ROWS, y));
        EXPECT_OK(sf_qconv_run(q, x, ROWS, 1, 1, y2));
        EXPECT(memcmp(y, y2, sizeof y) == 0);
        EXPECT_STATUS(sf_qconv_run_linear(q, x, 0, y), SF_ERR_INVALID_ARG);
        EXPECT_STATUS(sf_qconv_run_linear(q, NULL, ROWS, y), SF_ERR_INVALID_ARG);
        EXPECT_STATUS(sf_qconv_run(q, x, 1, ROWS, 1, x + 1), SF_ERR_INVALID_ARG); /* overlap */
        sf_qconv_destroy(q);
        q = NULL;
    }
    /* bad scales, zero points, back ends */
    ws[3] = 0.0f;
    EXPECT_STATUS(sf_qconv_create(&p, w, ws, NULL, &q), SF_ERR_INVALID_ARG);
    ws[3] = NAN;
    EXPECT_STATUS(sf_qconv_create(&p, w, ws, NULL, &q), SF_ERR_INVALID_ARG);
    ws[3] = INFINITY;
    EXPECT_STATUS(sf_qconv_create(&p, w, ws, NULL, &q), SF_ERR_INVALID_ARG);
    ws[3] = 0.01f;
    p.input.enabled = 1;
    p.input.scale = -1.0f;
    EXPECT_STATUS(sf_qconv_create(&p, w, ws, NULL, &q), SF_ERR_INVALID_ARG);
    p.input.scale = 0.1f;
    p.input.zero_point = 128;
    EXPECT_STATUS(sf_qconv_create(&p, w, ws, NULL, &q), SF_ERR_INVALID_ARG);
    p.input.zero_point = 0;
    p.backend = SF_QBACKEND_XNNPACK; /* no output parameters */
    EXPECT_STATUS(sf_qconv_create(&p, w, ws, NULL, &q), SF_ERR_UNSUPPORTED);
    p.backend = SF_QBACKEND_REFERENCE;
    p.in_channels = 0;
    EXPECT_STATUS(sf_qconv_create(&p, w, ws, NULL, &q), SF_ERR_INVALID_ARG);
    p.in_channels = IN;
    EXPECT_STATUS(sf_qconv_create(&p, NULL, ws, NULL, &q), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_qconv_create(NULL, w, ws, NULL, &q), SF_ERR_INVALID_ARG);
    EXPECT(q == NULL);
    /* K beyond what int32 sums allow */
    p.in_channels = 70000;
    p.out_channels = 1;
    int8_t *big = calloc(70000, 1);
    if (big) {
        EXPECT_STATUS(sf_qconv_create(&p, big, ws, NULL, &q), SF_ERR_UNSUPPORTED);
        free(big);
    }
    EXPECT(sf_qconv_run(NULL, x, 1, 1, 1, y) == SF_ERR_INVALID_ARG);
    sf_qconv_destroy(NULL);
    /* helpers */
    float row[4] = {0.5f, -1.27f, 0.0f, 1.0f};
    int8_t qr[4];
    float s;
    EXPECT_OK(sf_quantize_rows(row, 1, 4, qr, &s));
    EXPECT(fabsf(s - 0.01f) < 1e-7f && qr[0] == 50 && qr[1] == -127 && qr[2] == 0 &&
           qr[3] == 100);
    row[2] = NAN;
    EXPECT_STATUS(sf_quantize_rows(row, 1, 4, qr, &s), SF_ERR_INVALID_ARG);
    float zeros[3] = {0, 0, 0};
    EXPECT_OK(sf_quantize_rows(zeros, 1, 3, qr, &s));
    EXPECT(s == 1.0f && qr[0] == 0);
    sf_qparams qp = sf_qparams_from_range(-1.0f, 3.0f);
    EXPECT(fabsf(qp.scale - 4.0f / 255.0f) < 1e-7f && qp.zero_point == -64);
    qp = sf_qparams_from_range(0.5f, 2.0f); /* extended to contain 0 */
    EXPECT(qp.zero_point == -128);
    qp = sf_qparams_from_range(0.0f, 0.0f);
    EXPECT(qp.scale == 1.0f);
    sf_qbackend b;
    EXPECT_OK(sf_qbackend_from_name("xnnpack", &b));
    EXPECT(b == SF_QBACKEND_XNNPACK);
    EXPECT_STATUS(sf_qbackend_from_name("avx", &b), SF_ERR_INVALID_ARG);
}

/* ---- observer ---- */

static void test_observer(void) {
    sf_qobserver *o = NULL, *o2 = NULL;
    EXPECT_OK(sf_qobserver_create(&o));
    EXPECT_OK(sf_qobserver_create(&o2));
    if (!o || !o2)
        goto done;
    float v[6] = {1.0f, -2.0f, 0.0f, NAN, 3.0f, 1e30f};
    sf_qobserve("x", 0, v, 6); /* nothing installed: ignored */
    EXPECT(!sf_qobserver_active());
    EXPECT_OK(sf_qobserver_install(o));
    EXPECT(sf_qobserver_active());
    EXPECT_STATUS(sf_qobserver_install(o2), SF_ERR_INVALID_ARG);
    sf_qobserve_register("layer.a", "conv");
    sf_qobserve("layer.b", 0, v, 6);
    sf_qobserve("layer.a", 1, v, 3);
    sf_qobserver_uninstall(o2); /* not installed: no effect */
    EXPECT(sf_qobserver_active());
    sf_qobserver_uninstall(o);
    sf_qobserve("layer.a", 0, v, 6); /* uninstalled: ignored */
    EXPECT(sf_qobserver_count(o) == 2);
    const char *name, *kind;
    const sf_qstats *si, *so;
    EXPECT_OK(sf_qobserver_layer(o, 0, &name, &kind, &si, &so));
    EXPECT(strcmp(name, "layer.a") == 0 && strcmp(kind, "conv") == 0);
    EXPECT(si->count == 0 && so->count == 3 && so->min == -2.0f && so->max == 1.0f);
    EXPECT_OK(sf_qobserver_layer(o, 1, &name, &kind, &si, &so));
    EXPECT(strcmp(name, "layer.b") == 0);
    EXPECT(si->count == 6 && si->nan_count == 1 && si->min == -2.0f && si->max == 1e30f);
    /* bins: 1.0 -> octave 24, 3.0 -> octave 25 sub 32, 2.0 negative octave 25, 0 -> bin 0,
     * 1e30 -> the last bin */
    size_t b1 = 24 * SF_QHIST_PER_OCTAVE, b3 = 25 * SF_QHIST_PER_OCTAVE + 32;
    EXPECT(si->pos[b1] == 1 && si->pos[b3] == 1 && si->neg[25 * SF_QHIST_PER_OCTAVE] == 1);
    EXPECT(si->pos[0] == 1 && si->pos[SF_QHIST_BINS - 1] == 1);
    EXPECT(fabs(sf_qhist_edge(b1) - 1.0) < 1e-12 && fabs(sf_qhist_edge(b3) - 3.0) < 1e-12);
    EXPECT_STATUS(sf_qobserver_layer(o, 2, &name, &kind, &si, &so), SF_ERR_INVALID_ARG);
    /* large inputs (counting tables) and small ones (direct binning) agree */
    {
        enum { N = 50000 };
        float *big = malloc(N * sizeof(float));
        if (!big) {
            EXPECT(0);
            goto done;
        }
        for (int i = 0; i < N; i++)
            big[i] = sf_test_rand(&rng) * (float)(1 << (i % 20)) * 1e-3f;
        big[5] = NAN;
        big[6] = INFINITY;
        big[7] = -INFINITY;
        big[8] = 0.0f;
        big[9] = -1e-40f; /* denormal */
        big[10] = 3e37f;
        EXPECT_OK(sf_qobserver_install(o));
        sf_qobserve("big", 0, big, N);
        for (int i = 0; i < N; i += 1000)
            sf_qobserve("small", 0, big + i, 1000);
        sf_qobserver_uninstall(o);
        const sf_qstats *sb = NULL, *ss = NULL;
        for (size_t i = 0; i < sf_qobserver_count(o); i++) {
            EXPECT_OK(sf_qobserver_layer(o, i, &name, &kind, &si, &so));
            if (strcmp(name, "big") == 0)
                sb = si;
            if (strcmp(name, "small") == 0)
                ss = si;
        }
        EXPECT(sb && ss);
        if (sb && ss) {
            uint64_t total = 0;
            int same = 1;
            for (int b = 0; b < SF_QHIST_BINS; b++) {
                same &= sb->pos[b] == ss->pos[b] && sb->neg[b] == ss->neg[b];
                total += sb->pos[b] + sb->neg[b];
            }
            EXPECT(same);
            EXPECT(sb->count == N && sb->nan_count == 1 && total == N - 1);
            EXPECT(sb->min == ss->min && sb->max == 3e37f && sb->min < 0.0f);
            EXPECT(sb->pos[SF_QHIST_BINS - 1] >= 2 && sb->neg[SF_QHIST_BINS - 1] >= 1);
            EXPECT(sb->neg[0] >= 1 && sb->pos[0] >= 1); /* the denormal and the zero */
        }
        free(big);
    }
done:
    sf_qobserver_destroy(o);
    sf_qobserver_destroy(o2);
}

/* ---- layers from a safetensors file in memory ---- */

typedef struct {
    const char *name, *dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} st_entry;

/* Build a safetensors file (entries sorted by name by the caller). */
static unsigned char *make_st(const st_entry *e, size_t n, size_t *size) {
    char header[4096];
    size_t pos = 0, off = 0;
    pos += (size_t)snprintf(header + pos, sizeof header - pos, "{");
    for (size_t i = 0; i < n; i++) {
        pos += (size_t)snprintf(header + pos, sizeof header - pos,
                                "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                                e[i].name, e[i].dtype);
        for (int d = 0; d < e[i].ndim; d++)
            pos += (size_t)snprintf(header + pos, sizeof header - pos, d ? ",%lld" : "%lld",
                                    (long long)e[i].shape[d]);
        pos += (size_t)snprintf(header + pos, sizeof header - pos,
                                "],\"data_offsets\":[%zu,%zu]}", off, off + e[i].nbytes);
        off += e[i].nbytes;
    }
    pos += (size_t)snprintf(header + pos, sizeof header - pos, "}");
    while (pos % 8)
        header[pos++] = ' ';
    *size = 8 + pos + off;
    unsigned char *buf = malloc(*size);
    if (!buf)
        return NULL;
    uint64_t hl = pos;
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(hl >> (8 * i));
    memcpy(buf + 8, header, pos);
    size_t at = 8 + pos;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + at, e[i].data, e[i].nbytes);
        at += e[i].nbytes;
    }
    return buf;
}

/* Load conv "c" (4 -> 6 channels, 3x3) from entries; returns the status. */
static sf_status load_conv(const st_entry *e, size_t n, sf_conv_layer **out) {
    size_t size;
    unsigned char *buf = make_st(e, n, &size);
    sf_safetensors *st = NULL;
    sf_weights *w = NULL;
    sf_status s = SF_ERR_OOM;
    *out = NULL;
    if (!buf)
        return s;
    s = sf_safetensors_open_memory(buf, size, &st);
    if (s == SF_OK)
        s = sf_weights_from_safetensors(st, "mem", &w);
    if (s == SF_OK)
        s = sf_conv_load(w, "c", 4, 6, 3, 1, 1, 1, 1, 1, 1, out);
    sf_weights_close(w);
    free(buf);
    return s;
}

static void test_load(void) {
    int8_t w8[6 * 4 * 9];
    float ws[6], bias[6], isc = 0.02f, osc = 0.03f, zero = 0.0f, nan = NAN;
    int8_t izp = -5, ozp = 2;
    for (size_t i = 0; i < sizeof w8; i++)
        w8[i] = (int8_t)(rand_u32() % 255 - 127);
    for (int o = 0; o < 6; o++) {
        ws[o] = 0.01f * (float)(o + 1);
        bias[o] = 0.1f * (float)o;
    }
    st_entry good[] = {
        {"c.bias", "F32", 1, {6}, bias, sizeof bias},
        {"c.input_scale", "F32", 0, {0}, &isc, 4},
        {"c.input_zero_point", "I8", 0, {0}, &izp, 1},
        {"c.output_scale", "F32", 0, {0}, &osc, 4},
        {"c.output_zero_point", "I8", 0, {0}, &ozp, 1},
        {"c.weight", "I8", 4, {6, 4, 3, 3}, w8, sizeof w8},
        {"c.weight_scale", "F32", 1, {6}, ws, sizeof ws},
    };
    sf_conv_layer *l = NULL;
    EXPECT_OK(load_conv(good, 7, &l));
    if (l) {
        /* the loaded layer equals a layer made directly from the same numbers */
        float x[5 * 5 * 4], y[5 * 5 * 6], y2[5 * 5 * 6];
        for (size_t i = 0; i < 100; i++)
            x[i] = sf_test_rand(&rng);
        EXPECT_OK(sf_conv_layer_run(l, x, 1, 5, 5, y));
        sf_qconv_params p;
        sf_qconv_params_default(&p);
        p.in_channels = 4;
        p.out_channels = 6;
        p.kernel_h = p.kernel_w = 3;
        p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = 1;
        p.input = (sf_qparams){1, isc, izp};
        p.output = (sf_qparams){1, osc, ozp};
        sf_qconv *q = NULL;
        EXPECT_OK(sf_qconv_create(&p, w8, ws, bias, &q));
        if (q) {
            EXPECT_OK(sf_qconv_run(q, x, 1, 5, 5, y2));
            EXPECT(memcmp(y, y2, sizeof y) == 0);
            sf_qconv_destroy(q);
        }
        sf_conv_layer_destroy(l);
    }
    /* dynamic: no activation parameters */
    st_entry dyn[] = {good[0], good[5], good[6]};
    EXPECT_OK(load_conv(dyn, 3, &l));
    sf_conv_layer_destroy(l);
    /* hostile files */
    st_entry e[7];
    memcpy(e, good, sizeof e);
    st_entry no_scale[] = {good[0], good[1], good[2], good[3], good[4], good[5]};
    EXPECT_STATUS(load_conv(no_scale, 6, &l), SF_ERR_FORMAT);
    e[6].shape[0] = 5; /* wrong shape */
    e[6].nbytes = 20;
    EXPECT_STATUS(load_conv(e, 7, &l), SF_ERR_SHAPE);
    memcpy(e, good, sizeof e);
    float ws0[6];
    memcpy(ws0, ws, sizeof ws);
    ws0[2] = 0.0f; /* zero scale */
    e[6].data = ws0;
    EXPECT_STATUS(load_conv(e, 7, &l), SF_ERR_FORMAT);
    ws0[2] = NAN;
    EXPECT_STATUS(load_conv(e, 7, &l), SF_ERR_FORMAT);
    memcpy(e, good, sizeof e);
    e[1].data = &zero; /* zero input scale */
    EXPECT_STATUS(load_conv(e, 7, &l), SF_ERR_FORMAT);
    e[1].data = &nan;
    EXPECT_STATUS(load_conv(e, 7, &l), SF_ERR_FORMAT);
    st_entry half[] = {good[0], good[1], good[5], good[6]}; /* scale without zero point */
    EXPECT_STATUS(load_conv(half, 4, &l), SF_ERR_FORMAT);
    memcpy(e, good, sizeof e);
    int8_t b8[6] = {0};
    e[0].dtype = "I8"; /* I8 data under a float name */
    e[0].data = b8;
    e[0].nbytes = 6;
    EXPECT_STATUS(load_conv(e, 7, &l), SF_ERR_FORMAT);
    memcpy(e, good, sizeof e);
    e[2].dtype = "F32"; /* float zero point */
    e[2].data = &zero;
    e[2].nbytes = 4;
    EXPECT_STATUS(load_conv(e, 7, &l), SF_ERR_FORMAT);
    EXPECT(l == NULL);
}

int main(void) {
    EXPECT_OK(sf_init());
    EXPECT_OK(sf_set_num_threads(2));
    test_gemm();
    test_qconv();
    test_linear_and_args();
    test_observer();
    test_load();
    EXPECT_OK(sf_set_num_threads(1));
    test_gemm();
    return sf_test_finish("test_quant");
}
