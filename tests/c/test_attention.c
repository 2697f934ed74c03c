/* test_attention.c — sf_attention against a naive double-precision reference. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_test.h"
#include "snapfusion.h"

/* Naive attention in double precision over strided q, k, v (the layout of the engine). */
static void reference(const sf_attention_params *p, const float *q, const float *k,
                      const float *v, double *out) {
    size_t H = p->heads, D = p->head_dim, W = H * D;
    size_t qs = p->q_stride ? p->q_stride : W, ks = p->k_stride ? p->k_stride : W;
    size_t vs = p->v_stride ? p->v_stride : W;
    double scale = p->scale != 0.0f ? (double)p->scale : 1.0 / sqrt((double)D);
    double *s = malloc(p->kv_len * sizeof(double));
    for (size_t b = 0; b < p->batch; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t i = 0; i < p->q_len; i++) {
                const float *qr = q + (b * p->q_len + i) * qs + h * D;
                size_t nk = p->causal ? i + 1 : p->kv_len;
                double mx = -INFINITY;
                for (size_t j = 0; j < nk; j++) {
                    const float *kr = k + (b * p->kv_len + j) * ks + h * D;
                    double a = 0.0;
                    for (size_t d = 0; d < D; d++)
                        a += (double)qr[d] * (double)kr[d];
                    s[j] = a * scale;
                    mx = s[j] > mx ? s[j] : mx;
                }
                double sum = 0.0;
                for (size_t j = 0; j < nk; j++) {
                    s[j] = exp(s[j] - mx);
                    sum += s[j];
                }
                double *o = out + ((b * p->q_len + i) * H + h) * D;
                for (size_t d = 0; d < D; d++) {
                    double a = 0.0;
                    for (size_t j = 0; j < nk; j++)
                        a += s[j] * (double)v[(b * p->kv_len + j) * vs + h * D + d];
                    o[d] = a / sum;
                }
            }
    free(s);
}

static void fill(float *x, size_t n, float amp, unsigned long long *seed) {
    for (size_t i = 0; i < n; i++)
        x[i] = amp * sf_test_rand(seed);
}

/* Max |out - ref| relative to max |ref| (out has row stride os). */
static double rel_error(const sf_attention_params *p, const float *out, size_t os,
                        const double *ref) {
    size_t W = p->heads * p->head_dim;
    double err = 0.0, mx = 0.0;
    for (size_t r = 0; r < p->batch * p->q_len; r++)
        for (size_t c = 0; c < W; c++) {
            double e = fabs((double)out[r * os + c] - ref[r * W + c]);
            err = e > err || e != e ? e : err;
            mx = fabs(ref[r * W + c]) > mx ? fabs(ref[r * W + c]) : mx;
        }
    return err / (mx > 0.0 ? mx : 1.0);
}

/* Compute paths: the machine's best, AVX2 + FMA (x86-64) and portable C. */
static const char *const isa_names[3] = {"native", "avx2", "generic"};

static void set_isa(int isa) {
    if (isa > 0)
        setenv("SNAPFUSION_ATTENTION_ISA", isa_names[isa], 1);
    else
        unsetenv("SNAPFUSION_ATTENTION_ISA");
}

/* One shape: q, k, v inside a fused QKV buffer when `fused` (row stride 3 * W), the output
 * with a padded row stride when `padded_out`; every compute path, a caller workspace and
 * 1 and 2 threads (bitwise identical results). */
static void check_shape(size_t B, size_t H, size_t Lq, size_t Lkv, size_t D, int causal,
                        int fused, int padded_out, float amp, float scale) {
    unsigned long long seed = 1234 + B * 7 + H * 11 + Lq * 13 + Lkv * 17 + D * 19;
    size_t W = H * D;
    sf_attention_params p = {0};
    p.batch = B;
    p.heads = H;
    p.q_len = Lq;
    p.kv_len = Lkv;
    p.head_dim = D;
    p.causal = causal;
    p.scale = scale;
    float *qbuf, *kbuf, *vbuf, *fusedbuf = NULL;
    if (fused) {
        /* Self-attention over one fused projection: Lq == Lkv. */
        fusedbuf = malloc(B * Lq * 3 * W * sizeof(float));
        fill(fusedbuf, B * Lq * 3 * W, amp, &seed);
        qbuf = fusedbuf;
        kbuf = fusedbuf + W;
        vbuf = fusedbuf + 2 * W;
        p.q_stride = p.k_stride = p.v_stride = 3 * W;
    } else {
        qbuf = malloc(B * Lq * W * sizeof(float));
        kbuf = malloc(B * Lkv * W * sizeof(float));
        vbuf = malloc(B * Lkv * W * sizeof(float));
        fill(qbuf, B * Lq * W, amp, &seed);
        fill(kbuf, B * Lkv * W, amp, &seed);
        fill(vbuf, B * Lkv * W, 1.0f, &seed);
    }
    size_t os = padded_out ? W + 5 : W;
    p.out_stride = padded_out ? os : 0;
    size_t on = B * Lq * os;
    float *out = malloc(on * sizeof(float));
    float *out2 = malloc(on * sizeof(float));
    double *ref = malloc(B * Lq * W * sizeof(double));
    reference(&p, qbuf, kbuf, vbuf, ref);

    /* Every compute path (variant 3: the machine's best with bfloat16 products: AMX where the
     * CPU has it, the float32 path for causal calls and elsewhere; 8 significant bits in the
     * scores and probabilities). */
    for (int variant = 0; variant < 4; variant++) {
        set_isa(variant < 3 ? variant : 0);
        p.bf16 = variant == 3;
        const char *name = variant < 3 ? isa_names[variant] : "bf16";
        for (size_t i = 0; i < on; i++)
            out[i] = 12345.0f; /* padding columns must stay untouched */
        EXPECT_OK(sf_set_num_threads(1));
        EXPECT_OK(sf_attention(&p, qbuf, kbuf, vbuf, out, NULL));
        double err = rel_error(&p, out, os, ref);
        /* float32 scores carry a relative error of ~1e-7 of their magnitude into exp. */
        double big = amp > 1.0f ? (double)(amp * amp) : 1.0;
        double tol = variant < 3 ? 2e-6 * big : 1e-2 * (amp > 1.0f ? big / 4.0 : 1.0);
        if (!(err <= tol) || (variant == 3 && getenv("SF_TEST_VERBOSE"))) {
            fprintf(stderr, "B=%zu H=%zu Lq=%zu Lkv=%zu D=%zu causal=%d fused=%d %s: "
                    "relative error %g\n", B, H, Lq, Lkv, D, causal, fused, name, err);
        }
        EXPECT(err <= tol);
        int pad_ok = 1;
        for (size_t r = 0; r < B * Lq; r++)
            for (size_t c = W; c < os; c++)
                pad_ok &= out[r * os + c] == 12345.0f;
        EXPECT(pad_ok);

        /* Two threads and a caller workspace: identical bits. */
        EXPECT_OK(sf_set_num_threads(2));
        size_t ws_bytes = 0;
        EXPECT_OK(sf_attention_workspace_size(&p, &ws_bytes));
        EXPECT(ws_bytes > 0);
        void *ws = aligned_alloc(64, (ws_bytes + 63) / 64 * 64);
        memcpy(out2, out, on * sizeof(float));
        EXPECT_OK(sf_attention(&p, qbuf, kbuf, vbuf, out2, ws));
        EXPECT(memcmp(out, out2, on * sizeof(float)) == 0);
        free(ws);
    }
    set_isa(0);
    p.bf16 = 0;
    EXPECT_OK(sf_set_num_threads(1));
    free(out);
    free(out2);
    free(ref);
    if (fused) {
        free(fusedbuf);
    } else {
        free(qbuf);
        free(kbuf);
        free(vbuf);
    }
}

static void test_shapes(void) {
    const size_t lens[] = {1, 7, 33, 77, 130};
    const size_t dims[] = {8, 37, 40, 64};
    for (size_t a = 0; a < 5; a++)
        for (size_t b = 0; b < 5; b++) {
            size_t D = dims[(a + b) % 4];
            check_shape(1 + (a + b) % 2, 1 + b % 3, lens[a], lens[b], D, 0, 0, (a + b) % 3 == 0,
                        1.0f, 0.0f);
        }
    for (size_t a = 0; a < 5; a++) {
        check_shape(2, 2, lens[a], lens[a], dims[a % 4], 1, 0, 0, 1.0f, 0.0f);  /* causal */
        check_shape(1, 3, lens[a], lens[a], dims[(a + 1) % 4], a % 2, 1, a % 2, 1.0f, 0.0f);
    }
    /* Several query blocks and key tiles, causal, odd head dims. */
    check_shape(1, 1, 600, 600, 8, 1, 1, 0, 1.0f, 0.0f);
    check_shape(1, 2, 530, 250, 5, 0, 0, 1, 1.0f, 0.0f);
    check_shape(2, 1, 40, 300, 80, 0, 0, 0, 1.0f, 0.0f);
    check_shape(1, 1, 35, 35, 160, 1, 0, 0, 1.0f, 0.0f);
    check_shape(1, 2, 20, 20, 17, 0, 0, 0, 1.0f, 0.0f);
    /* Large scores (online rescaling across key tiles) and an explicit scale. */
    check_shape(1, 2, 70, 400, 16, 0, 0, 0, 6.0f, 0.0f);
    check_shape(1, 2, 257, 257, 24, 1, 0, 0, 6.0f, 0.0f);
    check_shape(2, 2, 50, 77, 40, 0, 0, 0, 1.0f, 0.37f);
    check_shape(1, 1, 9, 9, 12, 1, 0, 0, 1.0f, -0.2f);
}

static int row_all_nan(const float *row, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (row[i] == row[i])
            return 0;
    return 1;
}

static int row_all_finite(const float *row, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(row[i]))
            return 0;
    return 1;
}

static void test_nan(void) {
    const size_t H = 2, L = 50, D = 40, W = H * D;
    unsigned long long seed = 99;
    float *q = malloc(L * W * sizeof(float)), *k = malloc(L * W * sizeof(float));
    float *v = malloc(L * W * sizeof(float)), *out = malloc(L * W * sizeof(float));
    sf_attention_params p = {0};
    p.batch = 1;
    p.heads = H;
    p.q_len = p.kv_len = L;
    p.head_dim = D;
    for (int isa = 0; isa < 4; isa++) { /* 3: the machine's best with bfloat16 products */
        set_isa(isa < 3 ? isa : 0);
        p.bf16 = isa == 3;
        /* NaN in one query row of head 0: that row of head 0 only. */
        fill(q, L * W, 1.0f, &seed);
        fill(k, L * W, 1.0f, &seed);
        fill(v, L * W, 1.0f, &seed);
        q[7 * W + 3] = NAN;
        p.causal = 0;
        EXPECT_OK(sf_attention(&p, q, k, v, out, NULL));
        EXPECT(row_all_nan(out + 7 * W, D));
        EXPECT(row_all_finite(out + 7 * W + D, D));
        EXPECT(row_all_finite(out + 6 * W, W) && row_all_finite(out + 8 * W, W));
        q[7 * W + 3] = 0.5f;
        /* NaN in one key row of head 1: every query of head 1, none of head 0. */
        k[20 * W + D + 1] = NAN;
        EXPECT_OK(sf_attention(&p, q, k, v, out, NULL));
        int ok = 1;
        for (size_t i = 0; i < L; i++)
            ok &= row_all_nan(out + i * W + D, D) && row_all_finite(out + i * W, D);
        EXPECT(ok);
        /* Causal: queries before the NaN key do not see it. */
        p.causal = 1;
        EXPECT_OK(sf_attention(&p, q, k, v, out, NULL));
        ok = 1;
        for (size_t i = 0; i < L; i++)
            ok &= i < 20 ? row_all_finite(out + i * W + D, D) : row_all_nan(out + i * W + D, D);
        EXPECT(ok);
        k[20 * W + D + 1] = 0.25f;
        /* NaN in a value row: every query (non-causal). */
        p.causal = 0;
        v[33 * W + 5] = NAN;
        EXPECT_OK(sf_attention(&p, q, k, v, out, NULL));
        ok = 1;
        for (size_t i = 0; i < L; i++)
            ok &= out[i * W + 5] != out[i * W + 5] && row_all_finite(out + i * W + D, D);
        EXPECT(ok);
        /* +inf in a query makes its scores inf/NaN: NaN out, never a crash. */
        v[33 * W + 5] = 0.0f;
        q[2 * W] = INFINITY;
        EXPECT_OK(sf_attention(&p, q, k, v, out, NULL));
        EXPECT(!row_all_finite(out + 2 * W, D));
    }
    set_isa(0);
    free(q);
    free(k);
    free(v);
    free(out);
}

static void test_workspace_size(void) {
    sf_attention_params p = {0};
    p.batch = 2;
    p.heads = 8;
    p.head_dim = 40;
    size_t a = 0, b = 0, c = 0;
    EXPECT_OK(sf_set_num_threads(2));
    p.q_len = p.kv_len = 4096;
    EXPECT_OK(sf_attention_workspace_size(&p, &a));
    p.q_len = p.kv_len = 16384;
    EXPECT_OK(sf_attention_workspace_size(&p, &b));
    p.q_len = 4096;
    p.kv_len = 1000000;
    EXPECT_OK(sf_attention_workspace_size(&p, &c));
    EXPECT(a == b && b == c);
    EXPECT(a > 0 && a < (size_t)4 << 20); /* far below q_len * kv_len floats */
    p.head_dim = 160;
    EXPECT_OK(sf_attention_workspace_size(&p, &b));
    EXPECT(b > a && b < (size_t)16 << 20);
    /* Proportional to the thread count. */
    p.head_dim = 40;
    EXPECT_OK(sf_set_num_threads(1));
    EXPECT_OK(sf_attention_workspace_size(&p, &b));
    EXPECT(b < a);
    /* A tiny problem uses no more slots than it has work items. */
    EXPECT_OK(sf_set_num_threads(4));
    p.batch = p.heads = 1;
    p.q_len = p.kv_len = 5;
    EXPECT_OK(sf_attention_workspace_size(&p, &c));
    EXPECT_OK(sf_set_num_threads(1));
    EXPECT_OK(sf_attention_workspace_size(&p, &b));
    EXPECT(b == c);
}

static void test_mac_counter(void) {
    static float buf[2 * 3 * 50 * 16], out[2 * 3 * 50 * 16];
    memset(buf, 0, sizeof buf);
    sf_attention_params p = {0};
    p.batch = 2;
    p.heads = 3;
    p.q_len = 7;
    p.kv_len = 50;
    p.head_dim = 16;
    sf_mac_counter_reset();
    EXPECT_OK(sf_attention(&p, buf, buf, buf, out, NULL));
    EXPECT(sf_mac_counter() == 2ull * 2 * 3 * 7 * 50 * 16);
    p.q_len = p.kv_len = 9;
    p.causal = 1;
    sf_mac_counter_reset();
    EXPECT_OK(sf_attention(&p, buf, buf, buf, out, NULL));
    EXPECT(sf_mac_counter() == 2ull * 2 * 3 * (9 * 10 / 2) * 16);
    sf_mac_counter_reset();
    p.head_dim = 0;
    EXPECT_STATUS(sf_attention(&p, buf, buf, buf, out, NULL), SF_ERR_INVALID_ARG);
    EXPECT(sf_mac_counter() == 0);
}

static void expect_invalid(const sf_attention_params *p, const float *q, const float *k,
                           const float *v, float *out, void *ws, sf_status want,
                           const char *needle) {
    sf_clear_error();
    EXPECT_STATUS(sf_attention(p, q, k, v, out, ws), want);
    EXPECT(strstr(sf_last_error(), "sf_attention") != NULL);
    if (needle && !strstr(sf_last_error(), needle)) {
        fprintf(stderr, "message '%s' lacks '%s'\n", sf_last_error(), needle);
        EXPECT(0);
    }
}

static void test_bad_args(void) {
    float buf[4096];
    memset(buf, 0, sizeof buf);
    sf_attention_params good = {0};
    good.batch = 1;
    good.heads = 2;
    good.q_len = 3;
    good.kv_len = 4;
    good.head_dim = 8;
    EXPECT_OK(sf_attention(&good, buf, buf, buf, buf + 2048, NULL));

    expect_invalid(NULL, buf, buf, buf, buf + 2048, NULL, SF_ERR_INVALID_ARG, "params");
    expect_invalid(&good, NULL, buf, buf, buf + 2048, NULL, SF_ERR_INVALID_ARG, "q");
    expect_invalid(&good, buf, NULL, buf, buf + 2048, NULL, SF_ERR_INVALID_ARG, "k");
    expect_invalid(&good, buf, buf, NULL, buf + 2048, NULL, SF_ERR_INVALID_ARG, "v");
    expect_invalid(&good, buf, buf, buf, NULL, NULL, SF_ERR_INVALID_ARG, "out");
    expect_invalid(&good, buf, buf, buf, buf + 2048, (char *)buf + 4, SF_ERR_INVALID_ARG,
                   "aligned");

    const char *names[5] = {"batch", "heads", "q_len", "kv_len", "head_dim"};
    for (int i = 0; i < 5; i++) {
        sf_attention_params p = good;
        size_t *fields[5] = {&p.batch, &p.heads, &p.q_len, &p.kv_len, &p.head_dim};
        *fields[i] = 0;
        expect_invalid(&p, buf, buf, buf, buf + 2048, NULL, SF_ERR_INVALID_ARG, names[i]);
        size_t bytes = 1;
        EXPECT_STATUS(sf_attention_workspace_size(&p, &bytes), SF_ERR_INVALID_ARG);
        EXPECT(bytes == 0);
    }
    const char *snames[4] = {"q_stride", "k_stride", "v_stride", "out_stride"};
    for (int i = 0; i < 4; i++) {
        sf_attention_params p = good;
        size_t *fields[4] = {&p.q_stride, &p.k_stride, &p.v_stride, &p.out_stride};
        *fields[i] = 15; /* < heads * head_dim = 16 */
        expect_invalid(&p, buf, buf, buf, buf + 2048, NULL, SF_ERR_INVALID_ARG, snames[i]);
    }
    sf_attention_params p = good;
    p.causal = 1; /* q_len != kv_len */
    expect_invalid(&p, buf, buf, buf, buf + 2048, NULL, SF_ERR_SHAPE, "causal");
    p = good;
    p.scale = NAN;
    expect_invalid(&p, buf, buf, buf, buf + 2048, NULL, SF_ERR_INVALID_ARG, "scale");
    p.scale = INFINITY;
    expect_invalid(&p, buf, buf, buf, buf + 2048, NULL, SF_ERR_INVALID_ARG, "scale");
    p = good;
    p.head_dim = 100000;
    expect_invalid(&p, buf, buf, buf, buf + 2048, NULL, SF_ERR_UNSUPPORTED, "head_dim");
    p = good;
    p.heads = SIZE_MAX / 4;
    expect_invalid(&p, buf, buf, buf, buf + 2048, NULL, SF_ERR_INVALID_ARG, "overflows");
    p = good;
    p.batch = SIZE_MAX / 8;
    p.q_len = 1024;
    expect_invalid(&p, buf, buf, buf, buf + 2048, NULL, SF_ERR_INVALID_ARG, "overflows");
    size_t bytes = 0;
    EXPECT_STATUS(sf_attention_workspace_size(&good, NULL), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_attention_workspace_size(NULL, &bytes), SF_ERR_INVALID_ARG);
}

int main(void) {
    EXPECT_OK(sf_init());
    test_shapes();
    test_nan();
    test_workspace_size();
    test_mac_counter();
    test_bad_args();
    return sf_test_finish("test_attention");
}
