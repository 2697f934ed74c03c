/* test_json.c — the strict JSON parser: valid and invalid documents, accessors, limits, fuzz. */
#include <locale.h>
#include <stdint.h>
#include <string.h>

#include "sf_json.h"
#include "sf_test.h"
#include "snapfusion.h"

/* ---- invalid documents: status, byte offset and the words of the message ---------------- */

typedef struct {
    const char *text;
    size_t len; /* 0: strlen(text) */
    size_t at;  /* expected byte offset */
    const char *words;
} bad_case;

static const bad_case bad_cases[] = {
    {"", 0, 0, "expected a value, found end of input"},
    {"   ", 0, 3, "expected a value"},
    {"{", 0, 1, "expected a string key"},
    {"[1,2", 0, 4, "expected ',' or ']'"},
    {"[1 2]", 0, 3, "expected ',' or ']' after an array element, found '2'"},
    {"[1,]", 0, 3, "trailing comma before ']'"},
    {"{\"a\":1,}", 0, 7, "trailing comma before '}'"},
    {"{\"a\" 1}", 0, 5, "expected ':'"},
    {"{\"a\":1 \"b\":2}", 0, 7, "expected ',' or '}'"},
    {"{1:2}", 0, 1, "expected a string key, found '1'"},
    {"{'a':1}", 0, 1, "expected a string key, found '''"},
    {"{\"a\":}", 0, 5, "expected a value, found '}'"},
    {"01", 0, 0, "leading zeros"},
    {"-01", 0, 0, "leading zeros"},
    {"[00]", 0, 1, "leading zeros"},
    {"-", 0, 1, "expected a digit after '-', found end of input"},
    {"+1", 0, 0, "expected a value, found '+'"},
    {".5", 0, 0, "expected a value, found '.'"},
    {"1.", 0, 2, "expected a digit after '.'"},
    {"1.e5", 0, 2, "expected a digit after '.'"},
    {"1e", 0, 2, "expected a digit in the exponent"},
    {"1e+", 0, 3, "expected a digit in the exponent"},
    {"0x10", 0, 1, "unexpected 'x' after the JSON value"},
    {"NaN", 0, 0, "expected a value, found 'N'"},
    {"Infinity", 0, 0, "expected a value, found 'I'"},
    {"-Infinity", 0, 1, "expected a digit after '-'"},
    {"1e400", 0, 0, "out of the range of a double"},
    {"[-1e999]", 0, 1, "out of the range of a double"},
    {"tru", 0, 0, "invalid literal"},
    {"nul", 0, 0, "expected 'null'"},
    {"falsy", 0, 0, "expected 'false'"},
    {"True", 0, 0, "expected a value, found 'T'"},
    {"[1] x", 0, 4, "unexpected 'x' after the JSON value"},
    {"{} {}", 0, 3, "unexpected '{' after the JSON value"},
    {"\"abc", 0, 0, "unterminated string"},
    {"\"a\x01" "b\"", 0, 2, "control character 0x01 in a string must be escaped"},
    {"\"a\tb\"", 0, 2, "control character 0x09"},
    {"\"\\x\"", 0, 2, "invalid escape sequence"},
    {"\"\\", 0, 1, "unterminated escape"},
    {"\"\\u12\"", 0, 1, "expected 4 hexadecimal digits"},
    {"\"\\u00G0\"", 0, 1, "expected 4 hexadecimal digits"},
    {"\"\\uD83D\"", 0, 1, "unpaired high surrogate \\uD83D"},
    {"\"\\uD83D\\u0041\"", 0, 1, "unpaired high surrogate"},
    {"\"\\uD83Dx\"", 0, 1, "unpaired high surrogate"},
    {"\"\\uDE00\"", 0, 1, "unpaired low surrogate \\uDE00"},
    {"\"\xff\"", 0, 1, "invalid UTF-8 sequence in a string (byte 0xFF)"},
    {"\"\xc0\xaf\"", 0, 1, "invalid UTF-8"},             /* overlong '/' */
    {"\"\xe0\x80\xaf\"", 0, 1, "invalid UTF-8"},         /* overlong 3-byte */
    {"\"\xed\xa0\x80\"", 0, 1, "invalid UTF-8"},         /* encoded surrogate D800 */
    {"\"\xf4\x90\x80\x80\"", 0, 1, "invalid UTF-8"},     /* above U+10FFFF */
    {"\"\xf5\x80\x80\x80\"", 0, 1, "invalid UTF-8"},
    {"\"ab\xe2\x82\"", 0, 3, "invalid UTF-8"},           /* truncated sequence */
    {"\"\x80\"", 0, 1, "invalid UTF-8"},                 /* lone continuation byte */
    {"\"\xe2\x82", 0, 1, "invalid UTF-8"},               /* truncated at end of input */
    {"{\"a\":1,\"a\":2}", 0, 7, "duplicate key 'a'"},
    {"{\"b\":1,\"a\":2,\"b\":3,\"a\":4}", 0, 13, "duplicate key 'b'"},
    {"[{\"x\":{\"k\\n\":1,\"k\\u000a\":2}}]", 0, 15, "duplicate key 'k\\x0A'"},
    {"{\"a\\u0000b\":1}", 0, 3, "object key contains U+0000"},
    {"\xef\xbb\xbf{}", 0, 0, "expected a value, found byte 0xEF"}, /* byte order mark */
    {"[1,2]\0", 6, 5, "unexpected byte 0x00 after the JSON value"},
    {"[1,\0 2]", 7, 3, "expected a value, found byte 0x00"},
    {"// c\n{}", 0, 0, "expected a value, found '/'"},
    {"\v1", 0, 0, "expected a value, found byte 0x0B"},
    {"[\"a\"\n,\"b\"", 0, 9, "found end of input"},
    {"{\"a\":[1,{\"b\":tru}]}", 0, 13, "invalid literal"},
};

static void test_invalid(void) {
    size_t n = sizeof bad_cases / sizeof bad_cases[0];
    for (size_t i = 0; i < n; i++) {
        const bad_case *c = &bad_cases[i];
        size_t len = c->len ? c->len : strlen(c->text);
        sf_json *doc = (sf_json *)(uintptr_t)1;
        sf_status st = sf_json_parse(c->text, len, &doc);
        char want[64];
        snprintf(want, sizeof want, "JSON error at byte %zu: ", c->at);
        const char *msg = sf_last_error();
        int ok = st == SF_ERR_FORMAT && doc == NULL && strncmp(msg, want, strlen(want)) == 0 &&
                 strstr(msg, c->words) != NULL;
        EXPECT(ok);
        if (!ok)
            fprintf(stderr, "  bad case %zu: status %s, message \"%s\" (wanted \"%s...%s\")\n", i,
                    sf_status_str(st), msg, want, c->words);
        sf_json_free(doc);
    }
    printf("invalid documents: %zu cases\n", n);
}

/* ---- valid documents --------------------------------------------------------------------- */

static const char *const good_docs[] = {
    "0", "-0", "1", "-1", "0.5", "-0.0", "1e5", "1E+5", "1e-5", "2.5E-3",
    "true", "false", "null", "\"\"", "\"x\"", "[]", "{}", "[[]]", "[{}]", "{\"\":0}",
    " \t\r\n[ 1 , 2 ]\r\n\t ", "{\"a\":{\"b\":{\"c\":[true,false,null]}}}",
    "\"\\u0000\"", "\"\\/\"", "[1e-400]", "123456789012345678901234567890",
    "\"\xf4\x8f\xbf\xbf\"", /* U+10FFFF */
    "\"\xed\x9f\xbf\"",     /* U+D7FF */
    "\"\xee\x80\x80\"",     /* U+E000 */
};

static void test_valid(void) {
    size_t n = sizeof good_docs / sizeof good_docs[0];
    for (size_t i = 0; i < n; i++) {
        sf_json *doc = NULL;
        sf_status st = sf_json_parse(good_docs[i], strlen(good_docs[i]), &doc);
        EXPECT(st == SF_OK && doc != NULL);
        if (st != SF_OK)
            fprintf(stderr, "  good case %zu (%s) failed: %s\n", i, good_docs[i], sf_last_error());
        sf_json_free(doc);
    }
    printf("valid documents: %zu cases\n", n);
}

static sf_json *parse_ok(const char *text) {
    sf_json *doc = NULL;
    sf_status st = sf_json_parse(text, strlen(text), &doc);
    EXPECT(st == SF_OK);
    if (st != SF_OK)
        fprintf(stderr, "  parse of %s failed: %s\n", text, sf_last_error());
    return doc;
}

static void test_structure(void) {
    const char *text = "  {\"b\": [1, -2.5e3, true, false, null, \"x\"], \"a\": {\"n\": \"\"},"
                       " \"c\": 7}\n";
    sf_json *doc = parse_ok(text);
    if (!doc)
        return;
    EXPECT(sf_json_type(doc) == SF_JSON_OBJECT);
    EXPECT(sf_json_offset(doc) == 2);
    EXPECT(sf_json_object_size(doc) == 3);
    const char *k = NULL;
    const sf_json *v = sf_json_object_at(doc, 0, &k);
    EXPECT(k && strcmp(k, "b") == 0 && sf_json_type(v) == SF_JSON_ARRAY); /* document order */
    sf_json_object_at(doc, 1, &k);
    EXPECT(k && strcmp(k, "a") == 0);
    sf_json_object_at(doc, 2, &k);
    EXPECT(k && strcmp(k, "c") == 0);
    EXPECT(sf_json_object_at(doc, 3, &k) == NULL && k == NULL);
    EXPECT(sf_json_array_size(v) == 6);
    double d = 0;
    int64_t i64 = 0;
    int b = -1;
    EXPECT_OK(sf_json_int64(sf_json_array_at(v, 0), &i64));
    EXPECT(i64 == 1);
    EXPECT_OK(sf_json_number(sf_json_array_at(v, 1), &d));
    EXPECT(d == -2500.0);
    EXPECT_STATUS(sf_json_int64(sf_json_array_at(v, 1), &i64), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "byte 12") != NULL);
    EXPECT_OK(sf_json_bool(sf_json_array_at(v, 2), &b));
    EXPECT(b == 1);
    EXPECT_OK(sf_json_bool(sf_json_array_at(v, 3), &b));
    EXPECT(b == 0);
    EXPECT(sf_json_type(sf_json_array_at(v, 4)) == SF_JSON_NULL);
    size_t len = 99;
    EXPECT(strcmp(sf_json_string(sf_json_array_at(v, 5), &len), "x") == 0 && len == 1);
    EXPECT(sf_json_array_at(v, 6) == NULL);
    EXPECT(sf_json_type(sf_json_array_at(v, 6)) == SF_JSON_NONE);
    const sf_json *a = sf_json_object_get(doc, "a");
    EXPECT(sf_json_type(a) == SF_JSON_OBJECT);
    EXPECT(sf_json_string(sf_json_object_get(a, "n"), &len) != NULL && len == 0);
    EXPECT(sf_json_object_get(doc, "zz") == NULL);
    EXPECT(sf_json_object_get(v, "a") == NULL);   /* not an object */
    EXPECT(sf_json_object_get(doc, NULL) == NULL);
    EXPECT(sf_json_array_size(doc) == 0);
    EXPECT(sf_json_object_size(v) == 0);
    EXPECT(sf_json_string(v, &len) == NULL && len == 0);
    /* chained lookups through missing nodes */
    EXPECT(sf_json_object_get(sf_json_object_get(doc, "missing"), "x") == NULL);
    EXPECT_STATUS(sf_json_int64(sf_json_object_get(doc, "missing"), &i64), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "missing") != NULL);
    EXPECT_STATUS(sf_json_number(a, &d), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "found an object") != NULL);
    EXPECT_STATUS(sf_json_bool(sf_json_object_get(doc, "c"), &b), SF_ERR_FORMAT);
    EXPECT_STATUS(sf_json_number(a, NULL), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_json_int64(a, NULL), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_json_bool(a, NULL), SF_ERR_INVALID_ARG);
    EXPECT(strcmp(sf_json_kind_name(SF_JSON_ARRAY), "array") == 0);
    EXPECT(sf_json_offset(NULL) == 0);
    sf_json_free((sf_json *)(uintptr_t)a); /* not a root: ignored, the document stays valid */
    EXPECT(sf_json_object_get(a, "n") != NULL);
    sf_json_free(doc);
    sf_json_free(NULL);
}

static void test_numbers(void) {
    static const struct {
        const char *text;
        int is_int;
        int64_t i;
        double d;
    } nums[] = {
        {"0", 1, 0, 0.0},
        {"-0", 1, 0, -0.0},
        {"9223372036854775807", 1, INT64_MAX, 9223372036854775807.0},
        {"-9223372036854775808", 1, INT64_MIN, -9223372036854775808.0},
        {"9223372036854775808", 0, 0, 9223372036854775808.0},
        {"-9223372036854775809", 0, 0, -9223372036854775808.0},
        {"18446744073709551616", 0, 0, 18446744073709551616.0},
        {"9007199254740993", 1, 9007199254740993LL, 9007199254740992.0}, /* 2^53 + 1 exact */
        {"1E+2", 0, 0, 100.0},
        {"1.0", 0, 0, 1.0},
        {"0.1", 0, 0, 0.1},
        {"-2.5e-3", 0, 0, -0.0025},
        {"1e-400", 0, 0, 0.0},
        {"1.7976931348623157e308", 0, 0, 1.7976931348623157e308},
        {"4.9e-324", 0, 0, 4.9e-324},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        sf_json *doc = parse_ok(nums[i].text);
        if (!doc)
            continue;
        EXPECT(sf_json_type(doc) == SF_JSON_NUMBER);
        double d = -1;
        int64_t v = -1;
        EXPECT_OK(sf_json_number(doc, &d));
        EXPECT(d == nums[i].d);
        sf_status st = sf_json_int64(doc, &v);
        EXPECT(st == (nums[i].is_int ? SF_OK : SF_ERR_FORMAT));
        if (nums[i].is_int)
            EXPECT(v == nums[i].i);
        sf_json_free(doc);
    }
    /* -0 keeps its sign as a double */
    sf_json *doc = parse_ok("-0.0");
    double d = 0;
    EXPECT(doc && sf_json_number(doc, &d) == SF_OK && d == 0.0 && signbit(d));
    sf_json_free(doc);
    doc = parse_ok("[-0, 0]");
    EXPECT(sf_json_number(sf_json_array_at(doc, 0), &d) == SF_OK && d == 0.0 && signbit(d));
    EXPECT(sf_json_number(sf_json_array_at(doc, 1), &d) == SF_OK && d == 0.0 && !signbit(d));
    sf_json_free(doc);
    /* integers beyond 2^53 convert to the same double as strtod gives */
    doc = parse_ok("[9007199254740993, 9223372036854775807, -9007199254740995]");
    EXPECT(sf_json_number(sf_json_array_at(doc, 0), &d) == SF_OK && d == 9007199254740992.0);
    EXPECT(sf_json_number(sf_json_array_at(doc, 1), &d) == SF_OK && d == 9223372036854775808.0);
    EXPECT(sf_json_number(sf_json_array_at(doc, 2), &d) == SF_OK && d == -9007199254740996.0);
    sf_json_free(doc);
    /* numbers are read in the C locale whatever the process locale */
    if (setlocale(LC_NUMERIC, "de_DE.UTF-8") || setlocale(LC_NUMERIC, "fr_FR.UTF-8")) {
        doc = parse_ok("1.5");
        EXPECT(doc && sf_json_number(doc, &d) == SF_OK && d == 1.5);
        sf_json_free(doc);
        setlocale(LC_NUMERIC, "C");
    }
}

static void test_strings(void) {
    size_t len = 0;
    sf_json *doc = parse_ok("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"");
    const char *s = sf_json_string(doc, &len);
    EXPECT(s && len == 8 && memcmp(s, "\"\\/\b\f\n\r\t", 8) == 0);
    sf_json_free(doc);

    static const char utf8[] = "\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80";
    doc = parse_ok("\"\\u00e9\\u4E2D\\ud83d\\ude00\"");
    s = sf_json_string(doc, &len);
    EXPECT(s && len == 9 && memcmp(s, utf8, 9) == 0 && s[9] == '\0');
    sf_json_free(doc);
    doc = parse_ok("\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\"");
    s = sf_json_string(doc, &len);
    EXPECT(s && len == 9 && memcmp(s, utf8, 9) == 0);
    sf_json_free(doc);

    doc = parse_ok("\"a\\u0000b\""); /* NUL allowed in values */
    s = sf_json_string(doc, &len);
    EXPECT(s && len == 3 && s[0] == 'a' && s[1] == '\0' && s[2] == 'b');
    sf_json_free(doc);

    doc = parse_ok("{\"\xc3\xa9t\xc3\xa9\": 1, \"\\u00e9t\\u00e8\": 2}"); /* distinct keys */
    int64_t v = 0;
    EXPECT(sf_json_int64(sf_json_object_get(doc, "\xc3\xa9t\xc3\xa9"), &v) == SF_OK && v == 1);
    EXPECT(sf_json_int64(sf_json_object_get(doc, "\xc3\xa9t\xc3\xa8"), &v) == SF_OK && v == 2);
    sf_json_free(doc);

    /* a long string crossing the arena chunk size */
    size_t n = 100000;
    char *big = malloc(n + 2);
    if (big) {
        big[0] = '"';
        for (size_t i = 1; i <= n; i++)
            big[i] = (char)('a' + i % 26);
        big[n + 1] = '"';
        doc = NULL;
        EXPECT_OK(sf_json_parse(big, n + 2, &doc));
        s = sf_json_string(doc, &len);
        EXPECT(s && len == n && memcmp(s, big + 1, n) == 0);
        sf_json_free(doc);
        free(big);
    }
}

static void test_depth_and_limits(void) {
    char buf[400];
    sf_json *doc = NULL;
    /* 64 nested arrays: allowed */
    memset(buf, '[', 64);
    memset(buf + 64, ']', 64);
    EXPECT_OK(sf_json_parse(buf, 128, &doc));
    sf_json_free(doc);
    /* 65: rejected at the 65th bracket */
    memset(buf, '[', 65);
    memset(buf + 65, ']', 65);
    doc = NULL;
    EXPECT_STATUS(sf_json_parse(buf, 130, &doc), SF_ERR_FORMAT);
    EXPECT(doc == NULL);
    EXPECT(strstr(sf_last_error(), "byte 64: nesting deeper than 64 levels") != NULL);
    /* objects count too */
    size_t o = 0;
    for (int i = 0; i < 65; i++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "{\"\":");
    EXPECT_STATUS(sf_json_parse(buf, o, &doc), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "nesting deeper") != NULL);
    /* a deep hostile document does not exhaust the C stack */
    size_t deep = 1000000;
    char *d = malloc(deep);
    if (d) {
        memset(d, '[', deep);
        EXPECT_STATUS(sf_json_parse(d, deep, &doc), SF_ERR_FORMAT);
        free(d);
    }
    /* explicit limits */
    sf_json_limits lim = {2, 100};
    EXPECT_OK(sf_json_parse_limits("[[1]]", 5, &lim, &doc));
    sf_json_free(doc);
    EXPECT_STATUS(sf_json_parse_limits("[[[1]]]", 7, &lim, &doc), SF_ERR_FORMAT);
    lim.max_depth = 64;
    lim.max_bytes = 4;
    EXPECT_STATUS(sf_json_parse_limits("[1,2]", 5, &lim, &doc), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "document of 5 bytes exceeds the limit of 4 bytes") != NULL);
    lim.max_bytes = 0;
    EXPECT_STATUS(sf_json_parse_limits("1", 1, &lim, &doc), SF_ERR_INVALID_ARG);
    /* arguments */
    EXPECT_STATUS(sf_json_parse(NULL, 3, &doc), SF_ERR_INVALID_ARG);
    EXPECT(strstr(sf_last_error(), "text") != NULL);
    EXPECT_STATUS(sf_json_parse("1", 1, NULL), SF_ERR_INVALID_ARG);
}

static void test_big_object(void) {
    /* 3000 keys in a scrambled order: binary-search lookups and document-order iteration */
    const int n = 3000;
    size_t cap = (size_t)n * 32 + 16, o = 0;
    char *buf = malloc(cap);
    if (!buf)
        return;
    buf[o++] = '{';
    for (int i = 0; i < n; i++) {
        int k = (i * 1237) % n; /* 1237 is coprime with 3000 */
        o += (size_t)snprintf(buf + o, cap - o, "%s\"key%d\":%d", i ? "," : "", k, k * 3);
    }
    buf[o++] = '}';
    sf_json *doc = NULL;
    EXPECT_OK(sf_json_parse(buf, o, &doc));
    EXPECT(sf_json_object_size(doc) == (size_t)n);
    int bad = 0;
    for (int k = 0; k < n; k++) {
        char key[32];
        snprintf(key, sizeof key, "key%d", k);
        int64_t v = -1;
        if (sf_json_int64(sf_json_object_get(doc, key), &v) != SF_OK || v != k * 3)
            bad++;
    }
    EXPECT(bad == 0);
    const char *key = NULL;
    sf_json_object_at(doc, 1, &key);
    EXPECT(key && strcmp(key, "key1237") == 0);
    EXPECT(sf_json_object_get(doc, "key3000") == NULL && sf_json_object_get(doc, "") == NULL);
    /* key order iteration */
    int unordered = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < (size_t)n; i++) {
        const char *k = NULL;
        const sf_json *v = sf_json_object_sorted_at(doc, i, &k);
        if (!v || !k || (prev && strcmp(prev, k) >= 0) || sf_json_object_get(doc, k) != v)
            unordered++;
        prev = k;
    }
    EXPECT(unordered == 0);
    sf_json_object_sorted_at(doc, 0, &key);
    EXPECT(key && strcmp(key, "key0") == 0);
    EXPECT(sf_json_object_sorted_at(doc, (size_t)n, &key) == NULL && key == NULL);
    sf_json_free(doc);
    /* a duplicate at the very end of a big object */
    o--;
    o += (size_t)snprintf(buf + o, cap - o, ",\"key2999\":0}");
    EXPECT_STATUS(sf_json_parse(buf, o, &doc), SF_ERR_FORMAT);
    EXPECT(strstr(sf_last_error(), "duplicate key 'key2999'") != NULL);
    free(buf);
}

static void test_quote(void) {
    char buf[16];
    EXPECT(strcmp(sf_json_quote("ab\ncd", 5, buf, sizeof buf), "ab\\x0Acd") == 0);
    EXPECT(strcmp(sf_json_quote("abcdefghijklmnopqrstuvwxyz", 26, buf, sizeof buf),
                  "abcdefghijkl...") == 0);
    EXPECT(strcmp(sf_json_quote("\xc3\xa9\xff", 3, buf, sizeof buf), "\xc3\xa9\\xFF") == 0);
    /* a multi-byte character is never cut */
    EXPECT(strcmp(sf_json_quote("abcdefghij\xe4\xb8\xadxyz", 16, buf, sizeof buf),
                  "abcdefghij...") == 0);
}

/* Random mutations of a valid document: the parser must fail cleanly or succeed, and never
 * read outside the buffer (ASan) or leak (LSan). */
static void test_fuzz(void) {
    static const char seed[] =
        "{\"a\": [1, -2.5e3, true, false, null, \"x\\u00e9\\ud83d\\ude00\"], \"b\": {\"c\": "
        "\"\xc3\xa9\", \"d\": [[], {}]}, \"e\": 123456789012345678901}";
    static const char alphabet[] = "{}[]\":,\\-+.eE0123456789 tfnu\x80\xc3\xed\xff\x00";
    size_t n = sizeof seed - 1;
    unsigned long long rng = 12345;
    int ok = 0, failed = 0, bad_status = 0;
    const int iters = 20000;
    for (int it = 0; it < iters; it++) {
        size_t len = n;
        char *m = malloc(n + 8);
        if (!m)
            return;
        memcpy(m, seed, n);
        int edits = 1 + (int)((sf_test_rand(&rng) + 1.0f) * 2.0f);
        for (int e = 0; e < edits; e++) {
            size_t pos = (size_t)((sf_test_rand(&rng) + 1.0f) * 0.5f * (float)len);
            if (pos >= len)
                pos = len ? len - 1 : 0;
            float r = sf_test_rand(&rng);
            if (r < -0.3f && len) {
                m[pos] = alphabet[(size_t)((sf_test_rand(&rng) + 1.0f) * 0.5f *
                                           (float)(sizeof alphabet - 1)) % (sizeof alphabet - 1)];
            } else if (r < 0.2f && len) {
                memmove(m + pos, m + pos + 1, len - pos - 1); /* delete */
                len--;
            } else if (r < 0.6f) {
                len = pos; /* truncate */
            } else if (len) {
                m[pos] = (char)(m[pos] ^ (1 << ((int)((sf_test_rand(&rng) + 1.0f) * 4) & 7)));
            }
        }
        char *exact = malloc(len ? len : 1); /* exact size so ASan sees any over-read */
        if (!exact) {
            free(m);
            return;
        }
        memcpy(exact, m, len);
        free(m);
        sf_json *doc = NULL;
        sf_status st = sf_json_parse(exact, len, &doc);
        if (st == SF_OK) {
            ok++;
            sf_json_object_get(doc, "a");
            sf_json_free(doc);
        } else {
            failed++;
            if (st != SF_ERR_FORMAT || strncmp(sf_last_error(), "JSON error at byte ", 19) != 0)
                bad_status++;
        }
        free(exact);
    }
    EXPECT(bad_status == 0);
    EXPECT(ok > 0 && failed > 0);
    printf("fuzz: %d mutations, %d parsed, %d rejected\n", iters, ok, failed);
}

int main(void) {
    test_invalid();
    test_valid();
    test_structure();
    test_numbers();
    test_strings();
    test_depth_and_limits();
    test_big_object();
    test_quote();
    test_fuzz();
    return sf_test_finish("test_json");
}
