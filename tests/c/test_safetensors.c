/* test_safetensors.c — the safetensors reader on good and hostile files (memory and disk). */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "sf_test.h"
#include "snapfusion.h"

static void put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* 8-byte length + header + data, in an exact-size allocation (ASan sees any over-read). */
static unsigned char *make_file(const char *header, const void *data, size_t data_len,
                                size_t *len) {
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    unsigned char *f = malloc(*len);
    if (!f)
        return NULL;
    put_le64(f, h);
    memcpy(f + 8, header, h);
    if (data_len)
        memcpy(f + 8 + h, data, data_len);
    return f;
}

static int n_hostile = 0;

/* Expect open_memory of header + `data_len` zero bytes to fail with `want`, a message naming
 * "<memory>" and containing `words`. */
static void expect_bad(const char *header, size_t data_len, sf_status want, const char *words) {
    unsigned char *zeros = calloc(1, data_len + 1);
    size_t len = 0;
    unsigned char *f = make_file(header, zeros, data_len, &len);
    free(zeros);
    if (!f)
        return;
    sf_safetensors *st = (sf_safetensors *)(uintptr_t)1;
    sf_status got = sf_safetensors_open_memory(f, len, &st);
    const char *msg = sf_last_error();
    int ok = got == want && st == NULL && strncmp(msg, "<memory>: ", 10) == 0 &&
             strstr(msg, words) != NULL;
    EXPECT(ok);
    if (!ok)
        fprintf(stderr, "  header %s: got %s \"%s\", wanted %s \"...%s...\"\n", header,
                sf_status_str(got), msg, sf_status_str(want), words);
    n_hostile++;
    free(f);
}

static void test_good_memory(void) {
    /* a: F32 (2, 3); b: F16 (3,); c: BF16 (2,); d: I8 (5,); e: F32 0-d; f: F32 (0, 4) */
    unsigned char data[48];
    float a[6] = {1.0f, -2.0f, 3.5f, 0.25f, -0.0f, 1e30f};
    memcpy(data, a, 24);
    const unsigned char b[6] = {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x7c}; /* 1, -2, inf */
    memcpy(data + 24, b, 6);
    const unsigned char c[4] = {0x80, 0x3f, 0x20, 0xc1}; /* bf16 1.0, -10.0 */
    memcpy(data + 30, c, 4);
    const signed char d[5] = {-128, -1, 0, 1, 127};
    memcpy(data + 34, d, 5);
    float e = 42.0f;
    memcpy(data + 39, &e, 4);
    const char *header =
        "{\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[24,30]},"
        "\"__metadata__\":{\"format\":\"pt\",\"author\":\"snap\\u00e9\"},"
        "\"a\":{\"shape\":[2,3],\"dtype\":\"F32\",\"data_offsets\":[0,24]},"
        "\"d\":{\"dtype\":\"I8\",\"shape\":[5],\"data_offsets\":[34,39]},"
        "\"c\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[30,34]},"
        "\"f\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[43,43]},"
        "\"e\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[39,43]}}      ";
    size_t len = 0;
    unsigned char *f = make_file(header, data, 43, &len);
    if (!f)
        return;
    sf_safetensors *st = NULL;
    EXPECT_OK(sf_safetensors_open_memory(f, len, &st));
    if (!st) {
        free(f);
        return;
    }
    const unsigned char *base = f + 8 + strlen(header);
    EXPECT(sf_safetensors_count(st) == 6);
    const char *names = "abcdef";
    for (size_t i = 0; i < 6; i++) {
        const sf_st_tensor *t = sf_safetensors_at(st, i);
        EXPECT(t && t->name[0] == names[i] && t->name[1] == '\0');
        EXPECT(t && sf_safetensors_find(st, t->name) == t);
    }
    EXPECT(sf_safetensors_at(st, 6) == NULL);
    const sf_st_tensor *t = sf_safetensors_find(st, "a");
    EXPECT(t && t->dtype == SF_DTYPE_F32 && t->ndim == 2 && t->shape[0] == 2 &&
           t->shape[1] == 3 && t->numel == 6 && t->nbytes == 24 && t->data == base);
    float out[8];
    if (t) {
        EXPECT_OK(sf_convert_to_f32(t->dtype, t->data, t->numel, out));
        EXPECT(memcmp(out, a, 24) == 0);
    }
    t = sf_safetensors_find(st, "b");
    EXPECT(t && t->dtype == SF_DTYPE_F16 && t->numel == 3 && t->nbytes == 6 &&
           t->data == base + 24);
    if (t) {
        EXPECT_OK(sf_convert_to_f32(t->dtype, t->data, t->numel, out));
        EXPECT(out[0] == 1.0f && out[1] == -2.0f && isinf(out[2]));
    }
    t = sf_safetensors_find(st, "c");
    EXPECT(t && t->dtype == SF_DTYPE_BF16 && t->nbytes == 4);
    if (t) {
        EXPECT_OK(sf_convert_to_f32(t->dtype, t->data, t->numel, out));
        EXPECT(out[0] == 1.0f && out[1] == -10.0f);
    }
    t = sf_safetensors_find(st, "d");
    EXPECT(t && t->dtype == SF_DTYPE_I8 && t->nbytes == 5 && memcmp(t->data, d, 5) == 0);
    t = sf_safetensors_find(st, "e");
    EXPECT(t && t->ndim == 0 && t->numel == 1 && t->nbytes == 4 &&
           memcmp(t->data, &e, 4) == 0);
    t = sf_safetensors_find(st, "f");
    EXPECT(t && t->ndim == 2 && t->shape[0] == 0 && t->shape[1] == 4 && t->numel == 0 &&
           t->nbytes == 0);
    EXPECT(sf_safetensors_find(st, "g") == NULL && sf_safetensors_find(st, "") == NULL);
    EXPECT(sf_safetensors_find(st, "__metadata__") == NULL);
    EXPECT(sf_safetensors_find(st, NULL) == NULL);
    /* metadata, sorted by key */
    EXPECT(sf_safetensors_metadata_count(st) == 2);
    EXPECT(strcmp(sf_safetensors_metadata(st, "format"), "pt") == 0);
    EXPECT(strcmp(sf_safetensors_metadata(st, "author"), "snap\xc3\xa9") == 0);
    EXPECT(sf_safetensors_metadata(st, "nope") == NULL);
    const char *k = NULL, *v = NULL;
    EXPECT_OK(sf_safetensors_metadata_at(st, 0, &k, &v));
    EXPECT(k && strcmp(k, "author") == 0);
    EXPECT_OK(sf_safetensors_metadata_at(st, 1, &k, &v));
    EXPECT(k && strcmp(k, "format") == 0 && strcmp(v, "pt") == 0);
    EXPECT_STATUS(sf_safetensors_metadata_at(st, 2, &k, &v), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_safetensors_metadata_at(st, 0, NULL, &v), SF_ERR_INVALID_ARG);
    sf_safetensors_close(st);
    free(f);
}

static void test_good_variants(void) {
    sf_safetensors *st = NULL;
    size_t len = 0;
    unsigned char *f;
    /* empty header object: no tensors */
    f = make_file("{}", NULL, 0, &len);
    EXPECT_OK(sf_safetensors_open_memory(f, len, &st));
    EXPECT(sf_safetensors_count(st) == 0 && sf_safetensors_metadata_count(st) == 0);
    EXPECT(sf_safetensors_at(st, 0) == NULL && sf_safetensors_find(st, "a") == NULL);
    sf_safetensors_close(st);
    free(f);
    /* only metadata; gaps in the data section; an empty tensor inside another's range;
     * unicode names sorted by code point */
    unsigned char data[64] = {0};
    const char *h =
        "{\"__metadata__\":{},"
        "\"\\u00fcber\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
        "\"z\":{\"dtype\":\"I8\",\"shape\":[0],\"data_offsets\":[10,10]},"
        "\"Z\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[20,24]}}";
    f = make_file(h, data, 64, &len);
    EXPECT_OK(sf_safetensors_open_memory(f, len, &st));
    EXPECT(sf_safetensors_count(st) == 3);
    EXPECT(st && strcmp(sf_safetensors_at(st, 0)->name, "Z") == 0);
    EXPECT(st && strcmp(sf_safetensors_at(st, 1)->name, "z") == 0);
    EXPECT(st && strcmp(sf_safetensors_at(st, 2)->name, "\xc3\xbc" "ber") == 0);
    EXPECT(sf_safetensors_find(st, "\xc3\xbc" "ber") != NULL);
    sf_safetensors_close(st);
    free(f);
    /* many tensors in a scrambled order: name order and binary search */
    const int n = 500;
    size_t cap = (size_t)n * 96 + 16, o = 0;
    char *big = malloc(cap);
    if (!big)
        return;
    big[o++] = '{';
    for (int i = 0; i < n; i++) {
        int k = (i * 7) % n;
        o += (size_t)snprintf(big + o, cap - o,
                              "%s\"layer.%03d.weight\":{\"dtype\":\"F16\",\"shape\":[2],"
                              "\"data_offsets\":[%d,%d]}", i ? "," : "", k, 4 * k, 4 * k + 4);
    }
    big[o++] = '}';
    big[o] = '\0';
    unsigned char *zeros = calloc(1, (size_t)n * 4);
    f = make_file(big, zeros, (size_t)n * 4, &len);
    free(zeros);
    EXPECT_OK(sf_safetensors_open_memory(f, len, &st));
    EXPECT(sf_safetensors_count(st) == (size_t)n);
    int bad = 0;
    for (int k = 0; k < n; k++) {
        char name[64];
        snprintf(name, sizeof name, "layer.%03d.weight", k);
        const sf_st_tensor *t = sf_safetensors_find(st, name);
        if (!t || t != sf_safetensors_at(st, (size_t)k) ||
            (const unsigned char *)t->data != f + 8 + o + 4 * (size_t)k)
            bad++;
    }
    EXPECT(bad == 0);
    EXPECT(sf_safetensors_find(st, "layer.500.weight") == NULL);
    sf_safetensors_close(st);
    free(f);
    free(big);
}

static void test_hostile(void) {
    const char *T = "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]";
    char h[1024];
    size_t len;
    sf_safetensors *st = NULL;
    unsigned char small[16] = {0};

    /* arguments */
    EXPECT_STATUS(sf_safetensors_open_memory(NULL, 10, &st), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_safetensors_open_memory(small, 0, &st), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_safetensors_open_memory(small, 16, NULL), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_safetensors_open(NULL, &st), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_safetensors_open("/nonexistent", NULL), SF_ERR_INVALID_ARG);
    EXPECT(sf_safetensors_count(NULL) == 0 && sf_safetensors_at(NULL, 0) == NULL);
    EXPECT(sf_safetensors_find(NULL, "a") == NULL && sf_safetensors_metadata(NULL, "a") == NULL);
    sf_safetensors_close(NULL);

    /* sizes and header length */
    EXPECT_STATUS(sf_safetensors_open_memory(small, 7, &st), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "too short (7 bytes)") != NULL);
    put_le64(small, 9); /* header of 9 bytes in a 16-byte file */
    EXPECT_STATUS(sf_safetensors_open_memory(small, 16, &st), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "header length 9 exceeds the file size (8 bytes") != NULL);
    put_le64(small, (uint64_t)1 << 63);
    EXPECT_STATUS(sf_safetensors_open_memory(small, 16, &st), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "header length 9223372036854775808 exceeds") != NULL);
    put_le64(small, UINT64_MAX);
    EXPECT_STATUS(sf_safetensors_open_memory(small, 16, &st), SF_ERR_FORMAT);
    put_le64(small, 0);
    EXPECT_STATUS(sf_safetensors_open_memory(small, 16, &st), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "header is empty") != NULL);
    n_hostile += 5;
    /* a header longer than 100 MB (the pages are never touched) */
    size_t huge = 100000001 + 8;
    unsigned char *hb = calloc(1, huge);
    if (hb) {
        put_le64(hb, 100000001);
        EXPECT_STATUS(sf_safetensors_open_memory(hb, huge, &st), SF_ERR_FORMAT);
        EXPECT(strstr(sf_last_error(), "exceeds the limit of 100000000 bytes") != NULL);
        free(hb);
        n_hostile++;
    }

    /* the header as JSON */
    expect_bad("{\"a\":", 0, SF_ERR_FORMAT, "is not valid: JSON error at byte 5: expected a value");
    expect_bad("{\"a\":{}} x", 0, SF_ERR_FORMAT, "JSON error at byte 9: unexpected 'x'");
    expect_bad("[]", 0, SF_ERR_FORMAT, "header must be a JSON object, found an array");
    expect_bad("\"str\"", 0, SF_ERR_FORMAT, "header must be a JSON object, found a string");
    snprintf(h, sizeof h, "{\"w\":{%s},\"w\":{%s}}", T, T);
    expect_bad(h, 8, SF_ERR_FORMAT, "duplicate key 'w'");
    snprintf(h, sizeof h, "{\"w\xff\":{%s}}", T);
    expect_bad(h, 8, SF_ERR_FORMAT, "invalid UTF-8");
    snprintf(h, sizeof h, "{\"w\\ud800\":{%s}}", T);
    expect_bad(h, 8, SF_ERR_FORMAT, "unpaired high surrogate");
    snprintf(h, sizeof h, "{\"\":{%s}}", T);
    expect_bad(h, 8, SF_ERR_FORMAT, "a tensor has an empty name");
    expect_bad("{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]"
               "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
               0, SF_ERR_FORMAT, "nesting deeper than 64 levels");

    /* metadata */
    expect_bad("{\"__metadata__\":{\"a\":1}}", 0, SF_ERR_FORMAT,
               "__metadata__ value of 'a' must be a string, found number");
    expect_bad("{\"__metadata__\":{\"a\":null}}", 0, SF_ERR_FORMAT, "found null");
    expect_bad("{\"__metadata__\":\"x\"}", 0, SF_ERR_FORMAT,
               "__metadata__ must be an object of string -> string, found string");
    expect_bad("{\"__metadata__\":{\"a\":\"x\\u0000y\"}}", 0, SF_ERR_FORMAT, "contains a NUL");

    /* tensor entries */
    expect_bad("{\"w\":1}", 0, SF_ERR_FORMAT, "tensor 'w' must be a JSON object");
    snprintf(h, sizeof h, "{\"w\":{%s,\"extra\":1}}", T);
    expect_bad(h, 8, SF_ERR_FORMAT, "tensor 'w' has an unknown field 'extra'");
    expect_bad("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, SF_ERR_FORMAT,
               "tensor 'w' has no 'dtype' field");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, SF_ERR_FORMAT,
               "no 'shape' field");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, SF_ERR_FORMAT,
               "no 'data_offsets' field");
    static const char *const unsupported[] = {"F64", "I64", "I32", "U8", "BOOL", "F8_E4M3",
                                              "F8_E5M2", "U64"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
        char want[128];
        snprintf(h, sizeof h, "{\"w\":{\"dtype\":\"%s\",\"shape\":[1],\"data_offsets\":[0,8]}}",
                 unsupported[i]);
        snprintf(want, sizeof want, "tensor 'w' has dtype %s; supported: F32, F16, BF16, I8",
                 unsupported[i]);
        expect_bad(h, 8, SF_ERR_UNSUPPORTED, want);
    }
    expect_bad("{\"w\":{\"dtype\":\"XYZ\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, SF_ERR_FORMAT,
               "tensor 'w' has unknown dtype 'XYZ'; supported: F32, F16, BF16, I8");
    expect_bad("{\"w\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, SF_ERR_FORMAT,
               "unknown dtype 'f32'");
    expect_bad("{\"w\":{\"dtype\":\"F32\\u0000\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
               SF_ERR_FORMAT, "unknown dtype 'F32\\x00'");
    expect_bad("{\"w\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, SF_ERR_FORMAT,
               "dtype must be a string, found number");
    /* shapes */
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, SF_ERR_FORMAT,
               "shape must be an array of non-negative integers, found number");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 8,
               SF_ERR_FORMAT, "shape[0] is -1");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
               SF_ERR_FORMAT, "shape[0] must be a non-negative integer, found a non-integer");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,8]}}", 8,
               SF_ERR_FORMAT, "shape[1] must be a non-negative integer, found string");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
               SF_ERR_FORMAT, "tensor 'w' has 9 dimensions; at most 8");
    expect_bad("{\"w\":{\"dtype\":\"I8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
               8, SF_ERR_FORMAT, "shape [4294967296, 4294967296] is too large");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}",
               8, SF_ERR_FORMAT, "is too large");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[0,4294967296,4294967296],"
               "\"data_offsets\":[0,0]}}", 8, SF_ERR_FORMAT, "is too large");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],\"data_offsets\":[0,8]}}",
               8, SF_ERR_FORMAT, "shape[0] must be a non-negative integer");
    /* data offsets */
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, SF_ERR_FORMAT,
               "data_offsets must be [begin, end], found an array of 1 values");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8,
               SF_ERR_FORMAT, "found an array of 3 values");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{}}}", 8, SF_ERR_FORMAT,
               "data_offsets must be an array [begin, end], found object");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8,
               SF_ERR_FORMAT, "data_offsets[0] must be a non-negative integer");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.0]}}", 8,
               SF_ERR_FORMAT, "data_offsets[1] must be a non-negative integer");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, SF_ERR_FORMAT,
               "data_offsets [8, 0] has begin > end");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8, SF_ERR_FORMAT,
               "data_offsets [8, 16] reach past the end of the data section (8 bytes)");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,"
               "18446744073709551615]}}", 8, SF_ERR_FORMAT, "data_offsets[1]");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24,
               SF_ERR_FORMAT, "tensor 'w' (F32, shape [2, 3]) needs 24 bytes but data_offsets "
               "[0, 20] span 20");
    expect_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}}", 8, SF_ERR_FORMAT,
               "needs 4 bytes");
    /* overlapping tensors */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24, SF_ERR_FORMAT,
               "tensors 'a' (bytes 0 to 16) and 'b' (bytes 8 to 24) overlap");
    expect_bad("{\"b\":{\"dtype\":\"I8\",\"shape\":[8],\"data_offsets\":[0,8]},"
               "\"a\":{\"dtype\":\"I8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8, SF_ERR_FORMAT,
               "overlap");
    expect_bad("{\"a\":{\"dtype\":\"I8\",\"shape\":[24],\"data_offsets\":[0,24]},"
               "\"b\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[10,12]}}", 24, SF_ERR_FORMAT,
               "overlap");
    /* a name with control characters is shown escaped */
    expect_bad("{\"a\\nb\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
               SF_ERR_UNSUPPORTED, "tensor 'a\\x0Ab' has dtype F64");
    (void)len;
}

static char *write_temp(const void *bytes, size_t n) {
    char tmpl[] = "/tmp/sf_test_st_XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0)
        return NULL;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)bytes + done, n - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    close(fd);
    char *path = malloc(sizeof tmpl);
    if (path)
        memcpy(path, tmpl, sizeof tmpl);
    return path;
}

static void test_disk(void) {
    float vals[3] = {1.5f, -2.0f, 3.25f};
    size_t len = 0;
    unsigned char *f =
        make_file("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                  "\"__metadata__\":{\"k\":\"v\"}}", vals, 12, &len);
    char *path = write_temp(f, len);
    EXPECT(path != NULL);
    sf_safetensors *st = NULL;
    if (path) {
        EXPECT_OK(sf_safetensors_open(path, &st));
        const sf_st_tensor *t = sf_safetensors_find(st, "x");
        EXPECT(t && t->numel == 3 && memcmp(t->data, vals, 12) == 0);
        EXPECT(sf_safetensors_metadata(st, "k") && strcmp(sf_safetensors_metadata(st, "k"), "v") == 0);
        sf_safetensors_close(st);
        st = NULL;
        unlink(path);
        free(path);
    }
    /* a truncated copy: the header promises more than the file has */
    path = write_temp(f, len - 4);
    if (path) {
        EXPECT_STATUS(sf_safetensors_open(path, &st), SF_ERR_FORMAT);
        EXPECT(strstr(sf_last_error(), path) != NULL);
        EXPECT(strstr(sf_last_error(), "reach past the end of the data section (8 bytes)") != NULL);
        unlink(path);
        free(path);
    }
    path = write_temp(f, 20); /* inside the header */
    if (path) {
        EXPECT_STATUS(sf_safetensors_open(path, &st), SF_ERR_FORMAT);
        EXPECT(strstr(sf_last_error(), "exceeds the file size") != NULL);
        unlink(path);
        free(path);
    }
    path = write_temp(f, 0);
    if (path) {
        EXPECT_STATUS(sf_safetensors_open(path, &st), SF_ERR_FORMAT);
        EXPECT(strstr(sf_last_error(), "file is empty") != NULL);
        EXPECT(strstr(sf_last_error(), path) != NULL);
        unlink(path);
        free(path);
    }
    free(f);
    errno = 0;
    EXPECT_STATUS(sf_safetensors_open("/nonexistent/dir/model.safetensors", &st), SF_ERR_IO);
    EXPECT(errno == ENOENT);
    EXPECT(strstr(sf_last_error(), "/nonexistent/dir/model.safetensors: cannot open: ") != NULL);
    EXPECT(st == NULL);
    EXPECT_STATUS(sf_safetensors_open("/tmp", &st), SF_ERR_IO);
    EXPECT(strstr(sf_last_error(), "is a directory") != NULL);
    /* a very long path is shortened in the message */
    char longpath[2048];
    memset(longpath, 'p', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    EXPECT_STATUS(sf_safetensors_open(longpath, &st), SF_ERR_IO);
    EXPECT(strstr(sf_last_error(), "...") != NULL);
}

/* Random mutations of a valid file: open_memory must fail cleanly or give tensors whose bytes
 * all lie inside the buffer (ASan checks every byte read). */
static void test_fuzz(void) {
    unsigned char data[64];
    for (int i = 0; i < 64; i++)
        data[i] = (unsigned char)(i * 37);
    const char *header =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[24,30]},"
        "\"c\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[30,34]},"
        "\"d\":{\"dtype\":\"I8\",\"shape\":[5],\"data_offsets\":[34,39]},"
        "\"e\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[39,43]}}";
    size_t len = 0;
    unsigned char *seed = make_file(header, data, 43, &len);
    if (!seed)
        return;
    size_t hlen = strlen(header);
    static const char alphabet[] = "{}[]\":,-.e0123456789 FIB8\\u\xff";
    unsigned long long rng = 777;
    const int iters = 20000;
    int ok = 0, rejected = 0, bad = 0;
    float *scratch = malloc(64 * sizeof(float));
    for (int it = 0; it < iters && scratch; it++) {
        unsigned char *m = malloc(len);
        if (!m)
            break;
        memcpy(m, seed, len);
        size_t n = len;
        int edits = 1 + (int)((sf_test_rand(&rng) + 1.0f) * 1.5f);
        for (int e = 0; e < edits && n >= 2; e++) {
            float r = sf_test_rand(&rng);
            /* positions mostly inside the header, where the structure is */
            size_t pos = 8 + (size_t)((sf_test_rand(&rng) + 1.0f) * 0.5f * (float)hlen);
            if (r < -0.9f)
                pos = (size_t)((sf_test_rand(&rng) + 1.0f) * 4.0f); /* the length prefix */
            if (pos >= n)
                pos = n - 1;
            if (r < 0.3f) {
                m[pos] = (unsigned char)alphabet[(size_t)((sf_test_rand(&rng) + 1.0f) * 0.5f *
                                                          (float)(sizeof alphabet - 1)) %
                                                 (sizeof alphabet - 1)];
            } else if (r < 0.7f) {
                m[pos] ^= (unsigned char)(1u << ((unsigned)((sf_test_rand(&rng) + 1.0f) * 4) & 7));
            } else if (r < 0.85f) {
                memmove(m + pos, m + pos + 1, n - pos - 1); /* delete a byte */
                n--;
            } else {
                n = pos + 1; /* truncate */
            }
        }
        unsigned char *exact = malloc(n);
        if (!exact) {
            free(m);
            break;
        }
        memcpy(exact, m, n);
        free(m);
        sf_safetensors *st = NULL;
        sf_status s = sf_safetensors_open_memory(exact, n, &st);
        if (s == SF_OK) {
            ok++;
            for (size_t i = 0; i < sf_safetensors_count(st); i++) {
                const sf_st_tensor *t = sf_safetensors_at(st, i);
                const unsigned char *p = t->data;
                if (p < exact || p + t->nbytes > exact + n || sf_safetensors_find(st, t->name) != t)
                    bad++;
                if (t->numel <= 64)
                    sf_convert_to_f32(t->dtype, t->data, t->numel, scratch);
                unsigned sum = 0;
                for (size_t j = 0; j < t->nbytes; j++)
                    sum += p[j];
                (void)sum;
            }
            sf_safetensors_close(st);
        } else {
            rejected++;
            if ((s != SF_ERR_FORMAT && s != SF_ERR_UNSUPPORTED) || st != NULL ||
                strncmp(sf_last_error(), "<memory>: ", 10) != 0)
                bad++;
        }
        free(exact);
    }
    free(scratch);
    free(seed);
    EXPECT(bad == 0);
    EXPECT(ok > 0 && rejected > 0);
    printf("fuzz: %d mutations, %d opened, %d rejected\n", iters, ok, rejected);
}

int main(void) {
    test_good_memory();
    test_good_variants();
    test_hostile();
    test_disk();
    test_fuzz();
    printf("hostile headers: %d\n", n_hostile);
    return sf_test_finish("test_safetensors");
}
