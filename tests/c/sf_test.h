/* sf_test.h — a minimal test harness for the engine's C tests (no dependencies). */
#ifndef SF_TEST_H
#define SF_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int sf_test_failures = 0;
static int sf_test_checks = 0;

#define EXPECT(cond)                                                                           \
    do {                                                                                       \
        sf_test_checks++;                                                                      \
        if (!(cond)) {                                                                         \
            sf_test_failures++;                                                                \
            fprintf(stderr, "%s:%d: expectation failed: %s\n", __FILE__, __LINE__, #cond);    \
        }                                                                                      \
    } while (0)

#define EXPECT_OK(expr)                                                                        \
    do {                                                                                       \
        sf_status st_ = (expr);                                                                \
        sf_test_checks++;                                                                      \
        if (st_ != SF_OK) {                                                                    \
            sf_test_failures++;                                                                \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #expr,          \
                    sf_status_str(st_), sf_last_error());                                      \
        }                                                                                      \
    } while (0)

#define EXPECT_STATUS(expr, want)                                                              \
    do {                                                                                       \
        sf_status st_ = (expr);                                                                \
        sf_test_checks++;                                                                      \
        if (st_ != (want)) {                                                                   \
            sf_test_failures++;                                                                \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n", __FILE__, __LINE__,   \
                    #expr, sf_status_str(st_), sf_status_str(want), sf_last_error());          \
        }                                                                                      \
    } while (0)

/* Print the closing line ("N passed, N failed") and return the exit code. */
static inline int sf_test_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, sf_test_checks - sf_test_failures,
           sf_test_failures);
    return sf_test_failures ? 1 : 0;
}

/* Deterministic uniform floats in [-1, 1). */
static inline float sf_test_rand(unsigned long long *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

#endif /* SF_TEST_H */
