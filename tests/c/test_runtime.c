/* test_runtime.c — status strings, threads, dtype conversions, arena. */
#include <string.h>

#include "sf_test.h"
#include "snapfusion.h"

static void test_status(void) {
    EXPECT(strcmp(sf_status_str(SF_ERR_SHAPE), "SF_ERR_SHAPE") == 0);
    EXPECT(strcmp(sf_status_str((sf_status)999), "SF_ERR_UNKNOWN") == 0);
    sf_clear_error();
    EXPECT(sf_last_error()[0] == '\0');
}

static void test_threads(void) {
    EXPECT_OK(sf_init());
    EXPECT(sf_physical_cores() >= 1);
    EXPECT(sf_get_num_threads() >= 1);
    EXPECT_STATUS(sf_set_num_threads(0), SF_ERR_INVALID_ARG);
    EXPECT(strstr(sf_last_error(), "thread count") != NULL);
    EXPECT_STATUS(sf_set_num_threads(-3), SF_ERR_INVALID_ARG);
    EXPECT_OK(sf_set_num_threads(3));
    EXPECT(sf_get_num_threads() == 3);
    EXPECT_OK(sf_set_num_threads(1));
    EXPECT(sf_get_num_threads() == 1);
}

static void test_dtypes(void) {
    const float vals[] = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 1e-7f, 6.1e-5f, 1e9f, 0.1f, 3.14159f};
    const size_t n = sizeof vals / sizeof vals[0];
    uint16_t h[16], b[16];
    float back[16];
    sf_f32_to_f16(vals, n, h);
    sf_f16_to_f32(h, n, back);
    EXPECT(back[0] == 0.0f && back[2] == 1.0f && back[3] == -2.5f && back[4] == 65504.0f);
    EXPECT(isinf(back[7]));                            /* 1e9 overflows half */
    EXPECT(fabsf(back[8] - 0.1f) < 1e-4f);
    EXPECT(fabsf(back[5] - 1e-7f) < 6e-8f);            /* subnormal half */
    EXPECT(h[0] == 0x0000 && h[1] == 0x8000 && h[2] == 0x3c00);
    sf_f32_to_bf16(vals, n, b);
    sf_bf16_to_f32(b, n, back);
    EXPECT(back[2] == 1.0f && back[3] == -2.5f);
    EXPECT(fabsf(back[9] - 3.14159f) < 0.02f);
    float nanv = NAN;
    sf_f32_to_f16(&nanv, 1, h);
    sf_f16_to_f32(h, 1, back);
    EXPECT(isnan(back[0]));
    sf_f32_to_bf16(&nanv, 1, b);
    sf_bf16_to_f32(b, 1, back);
    EXPECT(isnan(back[0]));
    unsigned char raw[4] = {0x00, 0x3c, 0x00, 0xc0}; /* f16 1.0, -2.0 little endian */
    EXPECT_OK(sf_convert_to_f32(SF_DTYPE_F16, raw, 2, back));
    EXPECT(back[0] == 1.0f && back[1] == -2.0f);
    signed char i8[3] = {-128, 0, 127};
    EXPECT_OK(sf_convert_to_f32(SF_DTYPE_I8, i8, 3, back));
    EXPECT(back[0] == -128.0f && back[2] == 127.0f);
    EXPECT_STATUS(sf_convert_to_f32(SF_DTYPE_F32, NULL, 3, back), SF_ERR_INVALID_ARG);
    EXPECT(sf_dtype_size(SF_DTYPE_BF16) == 2 && strcmp(sf_dtype_name(SF_DTYPE_I8), "I8") == 0);
}

static void test_arena(void) {
    sf_arena *a = NULL;
    EXPECT_OK(sf_arena_create(&a));
    void *p[8];
    /* first pass: grows */
    for (int pass = 0; pass < 3; pass++) {
        EXPECT_OK(sf_arena_reset(a));
        for (int i = 0; i < 8; i++) {
            EXPECT_OK(sf_arena_alloc(a, (size_t)(i + 1) * 300000, &p[i]));
            EXPECT(((uintptr_t)p[i] & 63) == 0);
            memset(p[i], i, (size_t)(i + 1) * 300000);
        }
    }
    size_t allocs_after = sf_arena_system_allocs(a);
    EXPECT_OK(sf_arena_reset(a));
    for (int i = 0; i < 8; i++)
        EXPECT_OK(sf_arena_alloc(a, (size_t)(i + 1) * 300000, &p[i]));
    EXPECT(sf_arena_system_allocs(a) == allocs_after); /* steady state: no new allocation */
    EXPECT(sf_arena_high_water(a) >= 36 * 300000);
    void *q = NULL;
    EXPECT_STATUS(sf_arena_alloc(a, SIZE_MAX - 8, &q), SF_ERR_OOM);
    EXPECT_STATUS(sf_arena_alloc(NULL, 8, &q), SF_ERR_INVALID_ARG);
    /* trim: the memory goes back; the next pass takes one chunk of the high-water size */
    size_t hw = sf_arena_high_water(a), before = sf_arena_system_allocs(a);
    EXPECT_OK(sf_arena_trim(a));
    EXPECT(sf_arena_used(a) == 0);
    EXPECT_OK(sf_arena_trim(a)); /* twice is fine */
    EXPECT_OK(sf_arena_reset(a));
    EXPECT(sf_arena_system_allocs(a) == before + 1);
    for (int i = 0; i < 8; i++)
        EXPECT_OK(sf_arena_alloc(a, (size_t)(i + 1) * 300000, &p[i]));
    EXPECT(sf_arena_system_allocs(a) == before + 1);
    EXPECT(sf_arena_high_water(a) == hw);
    EXPECT_STATUS(sf_arena_trim(NULL), SF_ERR_INVALID_ARG);
    sf_arena_destroy(a);
    sf_arena_destroy(NULL);
}

static void test_arena_stack(void) {
    sf_arena *a = NULL;
    EXPECT_OK(sf_arena_create(&a));
    size_t allocs = 0;
    for (int pass = 0; pass < 4; pass++) {
        EXPECT_OK(sf_arena_reset(a));
        void *keep = NULL, *tmp = NULL;
        EXPECT_OK(sf_arena_alloc(a, 3u << 20, &keep)); /* a long-lived activation */
        for (int blk = 0; blk < 5; blk++) {
            sf_arena_mark_t m = sf_arena_mark(a);
            EXPECT_OK(sf_arena_alloc(a, (size_t)(blk + 1) << 20, &tmp)); /* block scratch */
            memset(tmp, 1, (size_t)(blk + 1) << 20);
            EXPECT_OK(sf_arena_release(a, m));
            EXPECT(sf_arena_used(a) == m.used);
        }
        if (pass == 1)
            allocs = sf_arena_system_allocs(a);
        if (pass > 1)
            EXPECT(sf_arena_system_allocs(a) == allocs); /* steady state after one merge */
    }
    /* live peak: 3 MiB + 5 MiB (+ padding) */
    EXPECT(sf_arena_high_water(a) < (9u << 20));
    sf_arena_mark_t bad = {0, 0, (size_t)1 << 40};
    EXPECT_STATUS(sf_arena_release(a, bad), SF_ERR_INVALID_ARG);
    sf_arena_destroy(a);
}

int main(void) {
    test_arena_stack();
    test_status();
    test_threads();
    test_dtypes();
    test_arena();
    return sf_test_finish("test_runtime");
}
