/* test_kernels.c — our own kernels against plain scalar double-precision references. */
#include <stdint.h>
#include <string.h>

#include "sf_test.h"
#include "snapfusion.h"

static unsigned long long rng = 12345;

static float *rand_array(size_t n, float scale, float offset) {
    float *p = malloc(n * sizeof(float) + 64);
    for (size_t i = 0; i < n; i++)
        p[i] = offset + scale * sf_test_rand(&rng);
    return p;
}

/* max |a - b| / max(max |b|, floor): the relative error measure of the Python tests. */
static double rel_err(const float *a, const double *b, size_t n, double floor) {
    double maxref = floor, maxdiff = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= maxdiff))
            maxdiff = d; /* NaN makes the error NaN (test fails) */
        if (fabs(b[i]) > maxref)
            maxref = fabs(b[i]);
    }
    return maxdiff / maxref;
}

static int all_nan(const float *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isnan(a[i]))
            return 0;
    return 1;
}

static int contains(const char *haystack, const char *needle) {
    return strstr(haystack, needle) != NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* References                                                                               */
/* ---------------------------------------------------------------------------------------- */

static double ref_act(sf_activation act, double x) {
    switch (act) {
    case SF_ACT_SILU: return x / (1.0 + exp(-x));
    case SF_ACT_GELU: return 0.5 * x * erfc(-x / sqrt(2.0));
    case SF_ACT_GELU_TANH:
        return x / (1.0 + exp(-2.0 * sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case SF_ACT_QUICK_GELU: return x / (1.0 + exp(-1.702 * x));
    case SF_ACT_SIGMOID: return 1.0 / (1.0 + exp(-x));
    }
    return NAN;
}

static void ref_group_norm(const float *x, size_t batch, size_t hw, size_t c, size_t groups,
                           double eps, const float *gamma, const float *beta, int silu,
                           double *y) {
    size_t cg = c / groups;
    for (size_t b = 0; b < batch; b++) {
        const float *xb = x + b * hw * c;
        for (size_t g = 0; g < groups; g++) {
            double s = 0.0, ss = 0.0;
            for (size_t r = 0; r < hw; r++)
                for (size_t i = g * cg; i < (g + 1) * cg; i++)
                    s += xb[r * c + i];
            double mean = s / (double)(hw * cg);
            for (size_t r = 0; r < hw; r++)
                for (size_t i = g * cg; i < (g + 1) * cg; i++)
                    ss += (xb[r * c + i] - mean) * (xb[r * c + i] - mean);
            double rstd = 1.0 / sqrt(ss / (double)(hw * cg) + eps);
            for (size_t r = 0; r < hw; r++)
                for (size_t i = g * cg; i < (g + 1) * cg; i++) {
                    double v = (xb[r * c + i] - mean) * rstd * (gamma ? gamma[i] : 1.0) +
                               (beta ? beta[i] : 0.0);
                    y[(b * hw + r) * c + i] = silu ? ref_act(SF_ACT_SILU, v) : v;
                }
        }
    }
}

static void ref_layer_norm(const float *x, size_t rows, size_t dim, double eps,
                           const float *gamma, const float *beta, double *y) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        double s = 0.0, ss = 0.0;
        for (size_t i = 0; i < dim; i++)
            s += xr[i];
        double mean = s / (double)dim;
        for (size_t i = 0; i < dim; i++)
            ss += (xr[i] - mean) * (xr[i] - mean);
        double rstd = 1.0 / sqrt(ss / (double)dim + eps);
        for (size_t i = 0; i < dim; i++)
            y[r * dim + i] =
                (xr[i] - mean) * rstd * (gamma ? gamma[i] : 1.0) + (beta ? beta[i] : 0.0);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Group norm                                                                               */
/* ---------------------------------------------------------------------------------------- */

static void check_group_norm(size_t batch, size_t hw, size_t c, size_t groups, float offset,
                             int with_affine, int silu) {
    size_t n = batch * hw * c;
    float *x = rand_array(n, 2.0f, offset);
    float *gamma = with_affine ? rand_array(c, 1.0f, 0.5f) : NULL;
    float *beta = with_affine ? rand_array(c, 1.0f, 0.0f) : NULL;
    float *y = malloc(n * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    ref_group_norm(x, batch, hw, c, groups, 1e-5, gamma, beta, silu, ref);
    EXPECT_OK(sf_group_norm(x, batch, hw, c, groups, 1e-5f, gamma, beta, silu, y));
    double err = rel_err(y, ref, n, 1e-6);
    EXPECT(err < 2e-6);
    if (!(err < 2e-6))
        fprintf(stderr, "  group norm %zux%zux%zu g%zu offset %g affine %d silu %d: err %g\n",
                batch, hw, c, groups, (double)offset, with_affine, silu, err);
    /* in place */
    EXPECT_OK(sf_group_norm(x, batch, hw, c, groups, 1e-5f, gamma, beta, silu, x));
    EXPECT(memcmp(x, y, n * sizeof(float)) == 0);
    free(x);
    free(gamma);
    free(beta);
    free(y);
    free(ref);
}

static void test_group_norm(void) {
    check_group_norm(3, 35, 24, 6, 0.0f, 1, 0);
    check_group_norm(3, 35, 24, 6, 0.0f, 1, 1);
    check_group_norm(1, 7, 17, 1, 0.5f, 0, 0);
    check_group_norm(2, 5, 17, 17, 0.0f, 1, 1);  /* one channel per group */
    check_group_norm(1, 1, 40, 8, 0.0f, 1, 0);   /* a single position */
    check_group_norm(2, 300, 96, 32, 0.0f, 1, 1); /* large: runs on the pool */
    check_group_norm(1, 1030, 2, 2, 0.0f, 0, 1); /* many rows, few channels */
    check_group_norm(1, 3, 2500, 5, 0.0f, 1, 0); /* more channels than a stack slice */
    check_group_norm(2, 50, 64, 4, 1e4f, 1, 0);  /* large mean, small spread */

    /* a large gamma drives SiLU's argument far beyond exp's range: limits x and -0 */
    {
        size_t hw = 50, c = 32, n = hw * c;
        float *x = rand_array(n, 2.0f, 0.0f), *y = malloc(n * sizeof(float));
        float *gamma = malloc(c * sizeof(float));
        double *ref = malloc(n * sizeof(double));
        for (size_t i = 0; i < c; i++)
            gamma[i] = i % 2 ? 150.0f : -150.0f;
        ref_group_norm(x, 1, hw, c, 4, 1e-5, gamma, NULL, 1, ref);
        EXPECT_OK(sf_group_norm(x, 1, hw, c, 4, 1e-5f, gamma, NULL, 1, y));
        EXPECT(rel_err(y, ref, n, 1e-6) < 2e-6);
        free(x);
        free(y);
        free(gamma);
        free(ref);
    }

    /* constant input: zero variance gives beta */
    float x[4 * 6], y[4 * 6], beta[6] = {1, 2, 3, 4, 5, 6};
    for (int i = 0; i < 24; i++)
        x[i] = 7.25f;
    EXPECT_OK(sf_group_norm(x, 1, 4, 6, 3, 1e-5f, NULL, beta, 0, y));
    int ok = 1;
    for (int i = 0; i < 24; i++)
        ok &= y[i] == beta[i % 6];
    EXPECT(ok);

    /* NaN: only its group becomes NaN */
    for (int i = 0; i < 24; i++)
        x[i] = (float)i;
    x[7] = NAN; /* position 1, channel 1 -> group 0 (channels 0-1) */
    EXPECT_OK(sf_group_norm(x, 1, 4, 6, 3, 1e-5f, NULL, NULL, 1, y));
    int nan_ok = 1;
    for (int r = 0; r < 4; r++)
        for (int ch = 0; ch < 6; ch++)
            nan_ok &= (ch < 2) == (isnan(y[r * 6 + ch]) != 0);
    EXPECT(nan_ok);
}

static void test_group_norm_threads(void) {
    size_t batch = 2, hw = 777, c = 80, n = batch * hw * c;
    float *x = rand_array(n, 3.0f, 1.0f);
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    EXPECT_OK(sf_set_num_threads(1));
    EXPECT_OK(sf_group_norm(x, batch, hw, c, 16, 1e-6f, NULL, NULL, 1, a));
    EXPECT_OK(sf_set_num_threads(3));
    EXPECT_OK(sf_group_norm(x, batch, hw, c, 16, 1e-6f, NULL, NULL, 1, b));
    EXPECT(memcmp(a, b, n * sizeof(float)) == 0);
    EXPECT_OK(sf_set_num_threads(1));
    free(x);
    free(a);
    free(b);
}

static void test_group_norm_errors(void) {
    float x[64], y[64];
    EXPECT_STATUS(sf_group_norm(NULL, 1, 4, 8, 2, 1e-5f, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "sf_group_norm") && contains(sf_last_error(), "x"));
    EXPECT_STATUS(sf_group_norm(x, 1, 4, 8, 2, 1e-5f, NULL, NULL, 0, NULL), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_group_norm(x, 0, 4, 8, 2, 1e-5f, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "batch"));
    EXPECT_STATUS(sf_group_norm(x, 1, 0, 8, 2, 1e-5f, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_group_norm(x, 1, 4, 0, 2, 1e-5f, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_group_norm(x, 1, 4, 8, 0, 1e-5f, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_group_norm(x, 1, 4, 8, 3, 1e-5f, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "divide"));
    EXPECT_STATUS(sf_group_norm(x, 1, 4, 8, 2, 0.0f, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "eps"));
    EXPECT_STATUS(sf_group_norm(x, 1, 4, 8, 2, -1.0f, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_group_norm(x, 1, 4, 8, 2, NAN, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_group_norm(x, 1, 4, 8, 2, INFINITY, NULL, NULL, 0, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_group_norm(x, SIZE_MAX / 4, 8, 8, 2, 1e-5f, NULL, NULL, 0, y),
                  SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "overflow"));
}

/* ---------------------------------------------------------------------------------------- */
/* Layer norm                                                                               */
/* ---------------------------------------------------------------------------------------- */

static void check_layer_norm(size_t rows, size_t dim, float offset, int affine) {
    size_t n = rows * dim;
    float *x = rand_array(n, 1.5f, offset);
    float *gamma = affine ? rand_array(dim, 1.0f, 0.3f) : NULL;
    float *beta = affine ? rand_array(dim, 1.0f, 0.0f) : NULL;
    float *y = malloc(n * sizeof(float));
    double *ref = malloc(n * sizeof(double));
    ref_layer_norm(x, rows, dim, 1e-5, gamma, beta, ref);
    EXPECT_OK(sf_layer_norm(x, rows, dim, 1e-5f, gamma, beta, y));
    double err = rel_err(y, ref, n, 1e-6);
    EXPECT(err < 2e-6);
    if (!(err < 2e-6))
        fprintf(stderr, "  layer norm %zux%zu offset %g: err %g\n", rows, dim, (double)offset,
                err);
    EXPECT_OK(sf_layer_norm(x, rows, dim, 1e-5f, gamma, beta, x));
    EXPECT(memcmp(x, y, n * sizeof(float)) == 0);
    free(x);
    free(gamma);
    free(beta);
    free(y);
    free(ref);
}

static void test_layer_norm(void) {
    check_layer_norm(3, 7, 0.0f, 1);
    check_layer_norm(5, 33, 0.0f, 0);
    check_layer_norm(1, 1, 0.0f, 1);
    check_layer_norm(77, 768, 0.0f, 1);
    check_layer_norm(700, 320, 0.0f, 1); /* large: runs on the pool */
    check_layer_norm(9, 50, 3e4f, 1);    /* large mean */

    float x[2 * 20], y[2 * 20];
    for (int i = 0; i < 40; i++)
        x[i] = (float)i;
    x[25] = NAN;
    EXPECT_OK(sf_layer_norm(x, 2, 20, 1e-5f, NULL, NULL, y));
    EXPECT(!isnan(y[0]) && !isnan(y[19]) && all_nan(y + 20, 20));

    EXPECT_STATUS(sf_layer_norm(NULL, 2, 20, 1e-5f, NULL, NULL, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "sf_layer_norm"));
    EXPECT_STATUS(sf_layer_norm(x, 0, 20, 1e-5f, NULL, NULL, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "rows"));
    EXPECT_STATUS(sf_layer_norm(x, 2, 0, 1e-5f, NULL, NULL, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_layer_norm(x, 2, 20, -1e-5f, NULL, NULL, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_layer_norm(x, SIZE_MAX / 2, 20, 1e-5f, NULL, NULL, y), SF_ERR_INVALID_ARG);
}

/* ---------------------------------------------------------------------------------------- */
/* Activations, GEGLU, softmax                                                              */
/* ---------------------------------------------------------------------------------------- */

static void test_activations(void) {
    const sf_activation acts[] = {SF_ACT_SILU, SF_ACT_GELU, SF_ACT_GELU_TANH, SF_ACT_QUICK_GELU,
                                  SF_ACT_SIGMOID};
    const char *names[] = {"silu", "gelu", "gelu_tanh", "quick_gelu", "sigmoid"};
    size_t sizes[] = {1, 15, 17, 1001, 200003};
    for (size_t a = 0; a < 5; a++) {
        for (size_t s = 0; s < 5; s++) {
            size_t n = sizes[s];
            float *x = rand_array(n, 12.0f, 0.0f), *y = malloc(n * sizeof(float));
            EXPECT_OK(sf_activation_run(acts[a], x, n, y));
            /* pointwise relative error where |value| >= 1e-12, absolute error below (in the
             * far tails the float32 rounding of the exponent's argument dominates) */
            double worst = 0.0;
            for (size_t i = 0; i < n; i++) {
                double r = ref_act(acts[a], x[i]);
                double e = fabs(y[i] - r) / (fabs(r) > 1e-12 ? fabs(r) : 1e-7);
                if (!(e <= worst))
                    worst = e;
            }
            EXPECT(worst < 1e-5);
            if (!(worst < 1e-5))
                fprintf(stderr, "  %s n=%zu: max rel err %g\n", names[a], n, worst);
            /* in place gives the same */
            EXPECT_OK(sf_activation_run(acts[a], x, n, x));
            EXPECT(memcmp(x, y, n * sizeof(float)) == 0);
            free(x);
            free(y);
        }
    }
    /* special values */
    float sp[6] = {NAN, 0.0f, INFINITY, -200.0f, 200.0f, -0.0f}, out[6];
    EXPECT_OK(sf_activation_run(SF_ACT_SILU, sp, 6, out));
    EXPECT(isnan(out[0]) && out[1] == 0.0f && out[2] == INFINITY && out[3] == 0.0f &&
           out[4] == 200.0f && out[5] == 0.0f);
    EXPECT_OK(sf_activation_run(SF_ACT_SIGMOID, sp, 6, out));
    EXPECT(isnan(out[0]) && out[1] == 0.5f && out[2] == 1.0f && out[3] == 0.0f &&
           out[4] == 1.0f);
    for (size_t a = 0; a < 5; a++) {
        EXPECT_OK(sf_activation_run(acts[a], sp, 1, out));
        EXPECT(isnan(out[0]));
    }
    EXPECT_OK(sf_activation_run(SF_ACT_GELU, sp, 6, out));
    EXPECT(out[1] == 0.0f && out[2] == INFINITY && out[3] == 0.0f && out[4] == 200.0f);

    float x[4] = {0};
    EXPECT_STATUS(sf_activation_run((sf_activation)99, x, 4, x), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "activation"));
    EXPECT_STATUS(sf_activation_run(SF_ACT_SILU, NULL, 4, x), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_activation_run(SF_ACT_SILU, x, 0, x), SF_ERR_INVALID_ARG);
}

static void test_geglu(void) {
    size_t dims[] = {1, 5, 16, 37, 320};
    for (int approx = 0; approx < 2; approx++) {
        for (size_t k = 0; k < 5; k++) {
            size_t rows = 3 + k, dim = dims[k];
            float *x = rand_array(rows * 2 * dim, 4.0f, 0.0f);
            float *y = malloc(rows * dim * sizeof(float));
            double *ref = malloc(rows * dim * sizeof(double));
            for (size_t r = 0; r < rows; r++)
                for (size_t i = 0; i < dim; i++)
                    ref[r * dim + i] =
                        x[r * 2 * dim + i] *
                        ref_act(approx ? SF_ACT_GELU_TANH : SF_ACT_GELU, x[r * 2 * dim + dim + i]);
            EXPECT_OK(sf_geglu(x, rows, dim, approx, y));
            EXPECT(rel_err(y, ref, rows * dim, 1e-6) < 2e-6);
            free(x);
            free(y);
            free(ref);
        }
    }
    float x[4] = {1, 2, NAN, 0}, y[2];
    EXPECT_OK(sf_geglu(x, 1, 2, 0, y));
    EXPECT(isnan(y[0]) && y[1] == 0.0f);
    EXPECT_STATUS(sf_geglu(x, 1, 0, 0, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "sf_geglu"));
    EXPECT_STATUS(sf_geglu(NULL, 1, 2, 0, y), SF_ERR_INVALID_ARG);
}

static void test_softmax(void) {
    size_t shapes[][2] = {{1, 1}, {3, 7}, {5, 16}, {4, 77}, {9, 1000}, {40, 4096}};
    for (size_t k = 0; k < 6; k++) {
        size_t rows = shapes[k][0], n = shapes[k][1];
        float *x = rand_array(rows * n, 20.0f, 3.0f);
        if (n > 3)
            x[2] = -INFINITY; /* a masked entry */
        float *y = malloc(rows * n * sizeof(float));
        double *ref = malloc(rows * n * sizeof(double));
        for (size_t r = 0; r < rows; r++) {
            double m = -INFINITY, s = 0.0;
            for (size_t i = 0; i < n; i++)
                m = x[r * n + i] > m ? x[r * n + i] : m;
            for (size_t i = 0; i < n; i++)
                s += exp(x[r * n + i] - m);
            for (size_t i = 0; i < n; i++)
                ref[r * n + i] = exp(x[r * n + i] - m) / s;
        }
        EXPECT_OK(sf_softmax(x, rows, n, y));
        EXPECT(rel_err(y, ref, rows * n, 1e-6) < 2e-6);
        if (n > 3)
            EXPECT(y[2] == 0.0f);
        double rowsum = 0.0;
        for (size_t i = 0; i < n; i++)
            rowsum += y[(rows - 1) * n + i];
        EXPECT(fabs(rowsum - 1.0) < 1e-5);
        EXPECT_OK(sf_softmax(x, rows, n, x)); /* in place */
        EXPECT(memcmp(x, y, rows * n * sizeof(float)) == 0);
        free(x);
        free(y);
        free(ref);
    }
    /* a NaN poisons its row only; an all -inf row is NaN (as PyTorch) */
    float x[3 * 19], y[3 * 19];
    for (int i = 0; i < 57; i++)
        x[i] = (float)(i % 5);
    x[17] = NAN;
    for (int i = 38; i < 57; i++)
        x[i] = -INFINITY;
    EXPECT_OK(sf_softmax(x, 3, 19, y));
    EXPECT(all_nan(y, 19) && !isnan(y[19]) && !isnan(y[37]) && all_nan(y + 38, 19));
    /* large values do not overflow */
    float big[3] = {1e30f, 1e30f, -1e30f};
    EXPECT_OK(sf_softmax(big, 1, 3, y));
    EXPECT(y[0] == 0.5f && y[1] == 0.5f && y[2] == 0.0f);
    EXPECT_STATUS(sf_softmax(x, 0, 19, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "sf_softmax"));
    EXPECT_STATUS(sf_softmax(x, 3, 19, NULL), SF_ERR_INVALID_ARG);
}

/* ---------------------------------------------------------------------------------------- */
/* Upsample, elementwise, concat                                                            */
/* ---------------------------------------------------------------------------------------- */

static void test_upsample(void) {
    size_t shapes[][4] = {{1, 1, 1, 1}, {3, 2, 5, 3}, {2, 7, 4, 1}, {1, 40, 40, 64}};
    for (size_t k = 0; k < 4; k++) {
        size_t b = shapes[k][0], h = shapes[k][1], w = shapes[k][2], c = shapes[k][3];
        float *x = rand_array(b * h * w * c, 1.0f, 0.0f);
        float *y = malloc(4 * b * h * w * c * sizeof(float));
        EXPECT_OK(sf_upsample_nearest2x(x, b, h, w, c, y));
        int ok = 1;
        for (size_t n = 0; n < b; n++)
            for (size_t i = 0; i < 2 * h; i++)
                for (size_t j = 0; j < 2 * w; j++)
                    for (size_t ch = 0; ch < c; ch++)
                        ok &= y[((n * 2 * h + i) * 2 * w + j) * c + ch] ==
                              x[((n * h + i / 2) * w + j / 2) * c + ch];
        EXPECT(ok);
        free(x);
        free(y);
    }
    float x[4], y[16];
    EXPECT_STATUS(sf_upsample_nearest2x(x, 1, 0, 2, 2, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "sf_upsample_nearest2x") && contains(sf_last_error(), "h"));
    EXPECT_STATUS(sf_upsample_nearest2x(NULL, 1, 1, 2, 2, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_upsample_nearest2x(x, 1, SIZE_MAX / 4, 4, 4, y), SF_ERR_INVALID_ARG);
}

static void test_elementwise(void) {
    size_t sizes[] = {1, 13, 100000, 300001};
    for (size_t k = 0; k < 4; k++) {
        size_t n = sizes[k];
        float *a = rand_array(n, 5.0f, 0.0f), *b = rand_array(n, 5.0f, 0.0f);
        float *y = malloc(n * sizeof(float)), *z = malloc(n * sizeof(float));
        EXPECT_OK(sf_add(a, b, n, y));
        EXPECT_OK(sf_axpby(0.75f, a, -2.5f, b, n, z));
        int ok_add = 1, ok_axpby = 1;
        for (size_t i = 0; i < n; i++) {
            ok_add &= y[i] == a[i] + b[i];
            ok_axpby &= fabs(z[i] - (0.75 * a[i] - 2.5 * b[i])) <= 1e-6 * (1 + fabs(z[i]));
        }
        EXPECT(ok_add && ok_axpby);
        /* aliasing: y = a */
        memcpy(z, a, n * sizeof(float));
        EXPECT_OK(sf_add(z, b, n, z));
        EXPECT(memcmp(z, y, n * sizeof(float)) == 0);
        memcpy(z, b, n * sizeof(float));
        EXPECT_OK(sf_axpby(1.0f, a, 1.0f, z, n, z));
        EXPECT(memcmp(z, y, n * sizeof(float)) == 0);
        free(a);
        free(b);
        free(y);
        free(z);
    }
    float a[3] = {1, NAN, 3}, b[3] = {1, 2, INFINITY}, y[3];
    EXPECT_OK(sf_add(a, b, 3, y));
    EXPECT(y[0] == 2 && isnan(y[1]) && y[2] == INFINITY);
    EXPECT_STATUS(sf_add(a, NULL, 3, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "sf_add") && contains(sf_last_error(), "b"));
    EXPECT_STATUS(sf_axpby(1, a, 1, b, 0, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "sf_axpby"));
}

static void test_add_rows(void) {
    size_t shapes[][3] = {{1, 1, 1}, {3, 35, 7}, {2, 1000, 96}};
    for (size_t k = 0; k < 3; k++) {
        size_t b = shapes[k][0], rows = shapes[k][1], c = shapes[k][2], n = b * rows * c;
        float *x = rand_array(n, 1.0f, 0.0f), *v = rand_array(b * c, 1.0f, 0.0f);
        float *y = malloc(n * sizeof(float));
        EXPECT_OK(sf_add_rows(x, b, rows, c, v, y));
        int ok = 1;
        for (size_t i = 0; i < b; i++)
            for (size_t r = 0; r < rows; r++)
                for (size_t ch = 0; ch < c; ch++) {
                    size_t o = (i * rows + r) * c + ch;
                    ok &= y[o] == x[o] + v[i * c + ch];
                }
        EXPECT(ok);
        EXPECT_OK(sf_add_rows(x, b, rows, c, v, x)); /* in place */
        EXPECT(memcmp(x, y, n * sizeof(float)) == 0);
        free(x);
        free(v);
        free(y);
    }
    float x[4], v[2];
    EXPECT_STATUS(sf_add_rows(x, 1, 2, 2, NULL, x), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "v"));
    EXPECT_STATUS(sf_add_rows(x, 1, 2, 0, v, x), SF_ERR_INVALID_ARG);
}

static void test_concat(void) {
    size_t shapes[][3] = {{1, 1, 1}, {5, 3, 7}, {4096, 320, 320}};
    for (size_t k = 0; k < 3; k++) {
        size_t rows = shapes[k][0], ca = shapes[k][1], cb = shapes[k][2];
        float *a = rand_array(rows * ca, 1.0f, 0.0f), *b = rand_array(rows * cb, 1.0f, 0.0f);
        float *y = malloc(rows * (ca + cb) * sizeof(float));
        EXPECT_OK(sf_concat_channels(a, ca, b, cb, rows, y));
        int ok = 1;
        for (size_t r = 0; r < rows; r++) {
            ok &= memcmp(y + r * (ca + cb), a + r * ca, ca * sizeof(float)) == 0;
            ok &= memcmp(y + r * (ca + cb) + ca, b + r * cb, cb * sizeof(float)) == 0;
        }
        EXPECT(ok);
        free(a);
        free(b);
        free(y);
    }
    float a[2], y[4];
    EXPECT_STATUS(sf_concat_channels(a, 1, a, 0, 2, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "cb"));
    EXPECT_STATUS(sf_concat_channels(a, SIZE_MAX, a, 2, 1, y), SF_ERR_INVALID_ARG);
}

/* ---------------------------------------------------------------------------------------- */
/* Embeddings                                                                               */
/* ---------------------------------------------------------------------------------------- */

static void test_embedding(void) {
    size_t vocab = 11, dim = 5;
    float *table = rand_array(vocab * dim, 1.0f, 0.0f);
    int64_t ids[7] = {0, 10, 3, 3, 7, 1, 10};
    float y[7 * 5];
    EXPECT_OK(sf_embedding(table, vocab, dim, ids, 7, y));
    int ok = 1;
    for (int i = 0; i < 7; i++)
        ok &= memcmp(y + i * dim, table + ids[i] * (int64_t)dim, dim * sizeof(float)) == 0;
    EXPECT(ok);
    int64_t bad[3] = {1, 11, 2};
    EXPECT_STATUS(sf_embedding(table, vocab, dim, bad, 3, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "id 11") && contains(sf_last_error(), "position 1"));
    int64_t neg[2] = {0, -3};
    EXPECT_STATUS(sf_embedding(table, vocab, dim, neg, 2, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "id -3") && contains(sf_last_error(), "position 1"));
    int64_t huge[1] = {INT64_MIN};
    EXPECT_STATUS(sf_embedding(table, vocab, dim, huge, 1, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_embedding(table, 0, dim, ids, 7, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "vocab"));
    EXPECT_STATUS(sf_embedding(table, vocab, dim, NULL, 7, y), SF_ERR_INVALID_ARG);
    free(table);
}

static void check_timestep(const float *t, size_t n, size_t dim, int flip, float shift,
                           float scale, float max_period) {
    float *y = malloc(n * dim * sizeof(float));
    double *ref = malloc(n * dim * sizeof(double));
    size_t half = dim / 2;
    for (size_t r = 0; r < n; r++) {
        for (size_t i = 0; i < half; i++) {
            double f = exp(-log((double)max_period) * (double)i / ((double)half - shift));
            double arg = scale * t[r] * f;
            ref[r * dim + (flip ? half : 0) + i] = sin(arg);
            ref[r * dim + (flip ? 0 : half) + i] = cos(arg);
        }
        if (dim % 2)
            ref[r * dim + dim - 1] = 0.0;
    }
    EXPECT_OK(sf_timestep_embedding(t, n, dim, flip, shift, scale, max_period, y));
    /* the argument is formed in float32 (as diffusers does): error ~ |arg| * 2^-23 */
    EXPECT(rel_err(y, ref, n * dim, 1.0) < 2e-4);
    if (dim % 2) {
        int zero = 1;
        for (size_t r = 0; r < n; r++)
            zero &= y[r * dim + dim - 1] == 0.0f;
        EXPECT(zero);
    }
    free(y);
    free(ref);
}

static void test_timestep_embedding(void) {
    float t[4] = {0.0f, 1.0f, 500.5f, 999.0f};
    check_timestep(t, 4, 320, 1, 0.0f, 1.0f, 10000.0f);
    check_timestep(t, 4, 320, 0, 1.0f, 1.0f, 10000.0f);
    check_timestep(t, 3, 33, 0, 1.0f, 2.0f, 100.0f);
    check_timestep(t, 2, 1, 1, 1.0f, 1.0f, 10000.0f);
    float y[8];
    float tn[1] = {NAN};
    EXPECT_OK(sf_timestep_embedding(tn, 1, 4, 0, 0.0f, 1.0f, 10000.0f, y));
    EXPECT(all_nan(y, 4));
    EXPECT_STATUS(sf_timestep_embedding(t, 1, 2, 0, 1.0f, 1.0f, 10000.0f, y),
                  SF_ERR_INVALID_ARG); /* half - shift = 0 */
    EXPECT(contains(sf_last_error(), "downscale_freq_shift"));
    EXPECT_STATUS(sf_timestep_embedding(t, 1, 0, 0, 1.0f, 1.0f, 10000.0f, y),
                  SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "dim"));
    EXPECT_STATUS(sf_timestep_embedding(t, 1, 4, 0, 1.0f, 1.0f, -5.0f, y), SF_ERR_INVALID_ARG);
    EXPECT(contains(sf_last_error(), "max_period"));
    EXPECT_STATUS(sf_timestep_embedding(t, 1, 4, 0, 1.0f, NAN, 10.0f, y), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_timestep_embedding(NULL, 1, 4, 0, 1.0f, 1.0f, 10.0f, y),
                  SF_ERR_INVALID_ARG);
}

int main(void) {
    const char *isa = sf_kernel_isa();
    EXPECT(strcmp(isa, "avx512") == 0 || strcmp(isa, "avx2") == 0 ||
           strcmp(isa, "generic") == 0);
    EXPECT_OK(sf_set_num_threads(2));
    test_group_norm();
    test_group_norm_threads();
    test_group_norm_errors();
    test_layer_norm();
    test_activations();
    test_geglu();
    test_softmax();
    test_upsample();
    test_elementwise();
    test_add_rows();
    test_concat();
    test_embedding();
    test_timestep_embedding();
    printf("kernel ISA: %s\n", isa);
    return sf_test_finish("test_kernels");
}
