/*
 * sf_json.c — a small strict JSON parser (RFC 8259) producing a read-only DOM. See sf_json.h.
 *
 * Why our own parser rather than Debian's libcjson or libjansson:
 * - Strictness is part of our file-format validation and we need to control it exactly:
 *   cJSON keeps duplicate keys silently (a lookup returns the first), stores every number as a
 *   double (data_offsets beyond 2^53 would be rounded, so an "exact" byte range check would be
 *   wrong) and accepts invalid UTF-8; jansson's integer type, duplicate and depth behaviour
 *   depend on flags and build options of the installed version. A safetensors header must
 *   reject duplicate tensor names, read 64-bit offsets exactly, validate UTF-8 and bound the
 *   nesting depth, with error messages that give the byte offset.
 * - No extra runtime dependency for the engine or the Python wheel (only XNNPACK and
 *   pthreadpool are linked).
 * - The code is small (one file), and one arena per document makes freeing trivial and
 *   leak-free on every error path.
 *
 * Implementation: a recursive-descent parser (depth bounded by the limit, so the C stack is
 * bounded too). Children of the containers being parsed are kept on shared scratch stacks (one
 * of values, one of keys); when a container closes its children are copied into the document
 * arena as one contiguous array, and an object also gets an array of member pointers sorted by
 * key (binary-search lookups, and duplicates found as equal neighbours in O(n log n)).
 * Nodes are 24 bytes; a hostile document made of tiny values ("[0,0,0,...]") costs about
 * 30 bytes of memory per byte of text at the peak of parsing.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strtod_l, newlocale, O_CLOEXEC (also set by the build) */
#endif
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_internal.h"
#include "sf_json.h"

typedef struct sf_json_member sf_json_member;

struct sf_json {
    uint8_t kind;    /* sf_json_kind */
    uint8_t is_int;  /* number written without fraction/exponent that fits int64 (in u.i) */
    uint8_t is_root; /* the node returned by sf_json_parse (frees the document) */
    uint8_t aux;     /* bool: its value; integer: 1 for "-0" (whose double is -0.0) */
    uint32_t offset; /* byte offset in the text (documents are < 4 GiB) */
    uint32_t n;      /* string length in bytes; element / member count */
    uint32_t pad_;
    union {
        double d;                /* number, !is_int */
        int64_t i;               /* number, is_int */
        const char *str;         /* NUL-terminated, n bytes */
        sf_json *items;          /* n elements */
        sf_json_member *members; /* n members in document order, then n pointers sorted by key */
    } u;
};

struct sf_json_member {
    const char *key;
    uint32_t key_len;
    uint32_t key_offset;
    sf_json value;
};

_Static_assert(sizeof(void *) != 8 || sizeof(sf_json) == 24, "JSON nodes are 24 bytes");

/* A key waiting on the scratch stack for its object to close. */
typedef struct {
    const char *key;
    uint32_t len;
    uint32_t offset;
} sf_json_key;

static const sf_json_member **sorted_members(const sf_json *obj) {
    return (const sf_json_member **)(void *)(obj->u.members + obj->n);
}

/* ---- arena ------------------------------------------------------------------------------ */

typedef struct sf_json_chunk {
    struct sf_json_chunk *next;
    size_t size, used;
    size_t pad_; /* keeps the data that follows the header 8-byte aligned */
} sf_json_chunk;

_Static_assert(sizeof(sf_json_chunk) % 8 == 0, "chunk header must keep 8-byte alignment");

#define SF_JSON_CHUNK_MIN ((size_t)4096)
#define SF_JSON_CHUNK_MAX ((size_t)1 << 20)

typedef struct {
    sf_json root; /* first member: the root node handed out is the document */
    sf_json_chunk *chunks;
} sf_json_doc;

typedef struct {
    const unsigned char *s;
    size_t len, pos;
    size_t max_depth;
    sf_json_doc *doc;
    size_t chunk_next;
    sf_json *vals; /* values of the open containers */
    size_t vals_n, vals_cap;
    sf_json_key *keys; /* keys of the open objects */
    size_t keys_n, keys_cap;
    char *buf; /* decoded string / number text */
    size_t buf_n, buf_cap;
} sf_json_parser;

static sf_status json_oom(size_t bytes) {
    return sf_error(SF_ERR_OOM, "JSON parser: out of memory (allocating %zu bytes)", bytes);
}

static sf_status arena_alloc(sf_json_parser *p, size_t bytes, void **out) {
    *out = NULL;
    if (bytes == 0)
        return SF_OK;
    if (bytes > SIZE_MAX - 8 - sizeof(sf_json_chunk))
        return json_oom(bytes);
    size_t need = (bytes + 7) & ~(size_t)7;
    sf_json_chunk *head = p->doc->chunks;
    if (!head || head->size - head->used < need) {
        size_t size = p->chunk_next > need ? p->chunk_next : need;
        sf_json_chunk *c = malloc(sizeof *c + size);
        if (!c)
            return json_oom(sizeof *c + size);
        c->size = size;
        c->used = 0;
        c->pad_ = 0;
        if (head && need > p->chunk_next) {
            /* a dedicated chunk for a large block: keep filling the current head */
            c->next = head->next;
            head->next = c;
            c->used = need;
            *out = (unsigned char *)(c + 1);
            return SF_OK;
        }
        c->next = head;
        p->doc->chunks = c;
        head = c;
        if (p->chunk_next < SF_JSON_CHUNK_MAX)
            p->chunk_next *= 2;
    }
    *out = (unsigned char *)(head + 1) + head->used;
    head->used += need;
    return SF_OK;
}

static void doc_free(sf_json_doc *doc) {
    if (!doc)
        return;
    sf_json_chunk *c = doc->chunks;
    while (c) {
        sf_json_chunk *next = c->next;
        free(c);
        c = next;
    }
    free(doc);
}

/* ---- errors ----------------------------------------------------------------------------- */

static sf_status json_error(size_t at, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static sf_status json_error(size_t at, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sf_error(SF_ERR_FORMAT, "JSON error at byte %zu: %s", at, msg);
}

/* "'x'", "byte 0x0A" or "end of input" for the byte at `at`. */
static const char *describe(const sf_json_parser *p, size_t at, char *buf, size_t size) {
    if (at >= p->len) {
        snprintf(buf, size, "end of input");
    } else {
        unsigned c = p->s[at];
        if (c > 0x20 && c < 0x7f)
            snprintf(buf, size, "'%c'", (char)c);
        else
            snprintf(buf, size, "byte 0x%02X", c);
    }
    return buf;
}

/* ---- UTF-8 ------------------------------------------------------------------------------ */

/* Length (2..4) of the valid UTF-8 sequence of a non-ASCII lead byte at s, or 0 if the bytes
 * are not a well-formed sequence (Unicode table 3-7: no overlongs, no surrogates, <= U+10FFFF).
 */
static size_t utf8_seq_len(const unsigned char *s, size_t avail) {
    unsigned c = s[0];
    unsigned lo = 0x80, hi = 0xBF;
    size_t n;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

const char *sf_json_quote(const char *s, size_t len, char *buf, size_t size) {
    if (!buf || size == 0)
        return buf;
    size_t o = 0;
    const unsigned char *u = (const unsigned char *)s;
    size_t room = size > 4 ? size - 4 : 0; /* keep space for "..." and the NUL */
    for (size_t i = 0; u && i < len;) {
        unsigned char tmp[4];
        size_t in_n = 1, out_n;
        const unsigned char *src = tmp;
        if (u[i] >= 0x20 && u[i] < 0x7f) {
            tmp[0] = u[i];
            out_n = 1;
        } else if (u[i] >= 0x80 && (in_n = utf8_seq_len(u + i, len - i)) != 0) {
            src = u + i;
            out_n = in_n;
        } else {
            in_n = 1;
            out_n = 4;
            static const char hex[] = "0123456789ABCDEF";
            tmp[0] = '\\';
            tmp[1] = 'x';
            tmp[2] = (unsigned char)hex[u[i] >> 4];
            tmp[3] = (unsigned char)hex[u[i] & 15];
        }
        if (o + out_n > room) {
            if (size >= 4) {
                memcpy(buf + o, "...", 3);
                o += 3;
            }
            break;
        }
        memcpy(buf + o, src, out_n);
        o += out_n;
        i += in_n;
    }
    buf[o < size ? o : size - 1] = '\0';
    return buf;
}

/* ---- scratch buffers -------------------------------------------------------------------- */

static sf_status buf_reserve(sf_json_parser *p, size_t extra) {
    if (p->buf_cap - p->buf_n >= extra)
        return SF_OK;
    size_t want;
    if (!sf_add_ok(p->buf_n, extra, &want))
        return json_oom(SIZE_MAX);
    size_t cap = p->buf_cap ? p->buf_cap : 256;
    while (cap < want) {
        if (!sf_mul_ok(cap, 2, &cap))
            return json_oom(SIZE_MAX);
    }
    char *nb = realloc(p->buf, cap);
    if (!nb)
        return json_oom(cap);
    p->buf = nb;
    p->buf_cap = cap;
    return SF_OK;
}

/* Make room for one more element of `elem` bytes in *arr (grown by 1.5x). */
static sf_status grow(void **arr, size_t n, size_t *cap, size_t elem) {
    if (n < *cap)
        return SF_OK;
    size_t want = *cap < 64 ? 64 : *cap + *cap / 2, bytes;
    if (!sf_mul_ok(want, elem, &bytes))
        return json_oom(SIZE_MAX);
    void *na = realloc(*arr, bytes);
    if (!na)
        return json_oom(bytes);
    *arr = na;
    *cap = want;
    return SF_OK;
}

static sf_status push_value(sf_json_parser *p, const sf_json *value) {
    sf_status st = grow((void **)&p->vals, p->vals_n, &p->vals_cap, sizeof *p->vals);
    if (st != SF_OK)
        return st;
    p->vals[p->vals_n++] = *value;
    return SF_OK;
}

static sf_status push_key(sf_json_parser *p, const char *key, size_t len, size_t offset) {
    sf_status st = grow((void **)&p->keys, p->keys_n, &p->keys_cap, sizeof *p->keys);
    if (st != SF_OK)
        return st;
    sf_json_key *k = &p->keys[p->keys_n++];
    k->key = key;
    k->len = (uint32_t)len;
    k->offset = (uint32_t)offset;
    return SF_OK;
}

/* ---- the grammar ------------------------------------------------------------------------ */

static sf_status parse_value(sf_json_parser *p, size_t depth, sf_json *out);

static void skip_ws(sf_json_parser *p) {
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        p->pos++;
    }
}

static int hex_val(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The 4 hex digits at p->s[at..at+4) as a code unit, or -1. */
static long read_hex4(const sf_json_parser *p, size_t at) {
    if (at > p->len || p->len - at < 4)
        return -1;
    long v = 0;
    for (size_t i = 0; i < 4; i++) {
        int h = hex_val(p->s[at + i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static sf_status push_utf8(sf_json_parser *p, unsigned long cp) {
    sf_status st = buf_reserve(p, 4);
    if (st != SF_OK)
        return st;
    char *b = p->buf + p->buf_n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        p->buf_n += 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3F));
        p->buf_n += 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        p->buf_n += 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        p->buf_n += 4;
    }
    return SF_OK;
}

/* An escape sequence starting at the backslash at p->pos. */
static sf_status parse_escape(sf_json_parser *p, int is_key) {
    size_t at = p->pos;
    sf_status st;
    if (at + 1 >= p->len)
        return json_error(at, "unterminated escape sequence at end of input");
    unsigned char e = p->s[at + 1];
    char c;
    switch (e) {
    case '"': c = '"'; break;
    case '\\': c = '\\'; break;
    case '/': c = '/'; break;
    case 'b': c = '\b'; break;
    case 'f': c = '\f'; break;
    case 'n': c = '\n'; break;
    case 'r': c = '\r'; break;
    case 't': c = '\t'; break;
    case 'u': {
        long cu = read_hex4(p, at + 2);
        if (cu < 0)
            return json_error(at, "invalid \\u escape: expected 4 hexadecimal digits");
        unsigned long cp = (unsigned long)cu;
        p->pos = at + 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            long lo = -1;
            if (p->pos + 1 < p->len && p->s[p->pos] == '\\' && p->s[p->pos + 1] == 'u')
                lo = read_hex4(p, p->pos + 2);
            if (lo < 0xDC00 || lo > 0xDFFF)
                return json_error(at, "unpaired high surrogate \\u%04lX (must be followed by a "
                                      "low surrogate \\uDC00-\\uDFFF)", cp);
            cp = 0x10000 + ((cp - 0xD800) << 10) + ((unsigned long)lo - 0xDC00);
            p->pos += 6;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return json_error(at, "unpaired low surrogate \\u%04lX", cp);
        }
        if (cp == 0 && is_key)
            return json_error(at, "object key contains U+0000 (\\u0000)");
        return push_utf8(p, cp);
    }
    default: {
        char d[32];
        return json_error(at + 1, "invalid escape sequence: backslash followed by %s",
                          describe(p, at + 1, d, sizeof d));
    }
    }
    st = buf_reserve(p, 1);
    if (st != SF_OK)
        return st;
    p->buf[p->buf_n++] = c;
    p->pos = at + 2;
    return SF_OK;
}

/* A string starting at the quote at p->pos; the decoded text goes into the arena. */
static sf_status parse_string(sf_json_parser *p, int is_key, const char **out, size_t *out_len) {
    size_t start = p->pos;
    sf_status st;
    p->pos++;
    p->buf_n = 0;
    for (;;) {
        /* a run of plain ASCII */
        size_t run = p->pos;
        while (run < p->len) {
            unsigned char c = p->s[run];
            if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\')
                break;
            run++;
        }
        if (run > p->pos) {
            st = buf_reserve(p, run - p->pos);
            if (st != SF_OK)
                return st;
            memcpy(p->buf + p->buf_n, p->s + p->pos, run - p->pos);
            p->buf_n += run - p->pos;
            p->pos = run;
        }
        if (p->pos >= p->len)
            return json_error(start, "unterminated string");
        unsigned char c = p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c == '\\') {
            st = parse_escape(p, is_key);
            if (st != SF_OK)
                return st;
        } else if (c < 0x20) {
            return json_error(p->pos, "control character 0x%02X in a string must be escaped",
                              c);
        } else {
            size_t n = utf8_seq_len(p->s + p->pos, p->len - p->pos);
            if (n == 0)
                return json_error(p->pos, "invalid UTF-8 sequence in a string (byte 0x%02X)",
                                  c);
            st = buf_reserve(p, n);
            if (st != SF_OK)
                return st;
            memcpy(p->buf + p->buf_n, p->s + p->pos, n);
            p->buf_n += n;
            p->pos += n;
        }
    }
    char *s = NULL;
    st = arena_alloc(p, p->buf_n + 1, (void **)&s);
    if (st != SF_OK)
        return st;
    if (p->buf_n)
        memcpy(s, p->buf, p->buf_n);
    s[p->buf_n] = '\0';
    *out = s;
    *out_len = p->buf_n;
    return SF_OK;
}

static locale_t sf_json_c_locale;
static pthread_once_t sf_json_locale_once = PTHREAD_ONCE_INIT;

static void init_c_locale(void) {
    sf_json_c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

static int is_digit(const sf_json_parser *p, size_t at) {
    return at < p->len && p->s[at] >= '0' && p->s[at] <= '9';
}

static sf_status parse_number(sf_json_parser *p, sf_json *out) {
    size_t start = p->pos;
    int neg = 0, is_int = 1;
    char d[32];
    if (p->s[p->pos] == '-') {
        neg = 1;
        p->pos++;
    }
    if (!is_digit(p, p->pos))
        return json_error(p->pos, "expected a digit after '-', found %s",
                          describe(p, p->pos, d, sizeof d));
    size_t int_start = p->pos;
    if (p->s[p->pos] == '0') {
        p->pos++;
        if (is_digit(p, p->pos))
            return json_error(start, "leading zeros are not allowed in numbers");
    } else {
        while (is_digit(p, p->pos))
            p->pos++;
    }
    size_t int_end = p->pos;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        is_int = 0;
        p->pos++;
        if (!is_digit(p, p->pos))
            return json_error(p->pos, "expected a digit after '.', found %s",
                              describe(p, p->pos, d, sizeof d));
        while (is_digit(p, p->pos))
            p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        is_int = 0;
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (!is_digit(p, p->pos))
            return json_error(p->pos, "expected a digit in the exponent, found %s",
                              describe(p, p->pos, d, sizeof d));
        while (is_digit(p, p->pos))
            p->pos++;
    }
    size_t tok_len = p->pos - start;

    out->kind = SF_JSON_NUMBER;
    out->is_int = 0;
    if (is_int) {
        uint64_t u = 0;
        int overflow = 0;
        for (size_t i = int_start; i < int_end && !overflow; i++) {
            unsigned dig = (unsigned)(p->s[i] - '0');
            if (u > (UINT64_MAX - dig) / 10)
                overflow = 1;
            else
                u = u * 10 + dig;
        }
        if (!overflow && !neg && u <= (uint64_t)INT64_MAX) {
            out->is_int = 1;
            out->u.i = (int64_t)u;
        } else if (!overflow && neg && u <= (uint64_t)INT64_MAX + 1) {
            out->is_int = 1;
            out->u.i = u == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)u;
            out->aux = u == 0; /* "-0" */
        }
        /* (double)i rounds the exact integer to nearest even, exactly like strtod */
        if (out->is_int)
            return SF_OK;
    }

    sf_status st = buf_reserve(p, tok_len + 1);
    if (st != SF_OK)
        return st;
    memcpy(p->buf, p->s + start, tok_len);
    p->buf[tok_len] = '\0';
    pthread_once(&sf_json_locale_once, init_c_locale);
    char *end = NULL;
    double v = sf_json_c_locale != (locale_t)0 ? strtod_l(p->buf, &end, sf_json_c_locale)
                                               : strtod(p->buf, &end);
    if (end != p->buf + tok_len)
        return json_error(start, "malformed number");
    if (isinf(v)) {
        char q[48];
        return json_error(start, "number %s is out of the range of a double",
                          sf_json_quote(p->buf, tok_len, q, sizeof q));
    }
    out->u.d = v;
    return SF_OK;
}

static sf_status parse_literal(sf_json_parser *p, const char *word, sf_json *out) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) {
        char d[32];
        return json_error(p->pos, "invalid literal starting with %s (expected '%s')",
                          describe(p, p->pos, d, sizeof d), word);
    }
    p->pos += n;
    if (word[0] == 'n') {
        out->kind = SF_JSON_NULL;
    } else {
        out->kind = SF_JSON_BOOL;
        out->aux = word[0] == 't';
    }
    return SF_OK;
}

static sf_status parse_array(sf_json_parser *p, size_t depth, sf_json *out) {
    size_t base = p->vals_n;
    sf_status st;
    char d[32];
    p->pos++; /* '[' */
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
    } else {
        for (;;) {
            sf_json child;
            st = parse_value(p, depth, &child);
            if (st != SF_OK)
                return st;
            st = push_value(p, &child);
            if (st != SF_OK)
                return st;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') {
                p->pos++;
                skip_ws(p);
                if (p->pos < p->len && p->s[p->pos] == ']')
                    return json_error(p->pos, "trailing comma before ']'");
                continue;
            }
            if (p->pos < p->len && p->s[p->pos] == ']') {
                p->pos++;
                break;
            }
            return json_error(p->pos, "expected ',' or ']' after an array element, found %s",
                              describe(p, p->pos, d, sizeof d));
        }
    }
    size_t n = p->vals_n - base, bytes;
    if (!sf_mul_ok(n, sizeof(sf_json), &bytes))
        return json_oom(SIZE_MAX);
    sf_json *items = NULL;
    st = arena_alloc(p, bytes, (void **)&items);
    if (st != SF_OK)
        return st;
    if (n)
        memcpy(items, p->vals + base, bytes);
    p->vals_n = base;
    out->kind = SF_JSON_ARRAY;
    out->n = (uint32_t)n;
    out->u.items = items;
    return SF_OK;
}

static int member_cmp(const void *a, const void *b) {
    const sf_json_member *x = *(const sf_json_member *const *)a;
    const sf_json_member *y = *(const sf_json_member *const *)b;
    int c = strcmp(x->key, y->key);
    if (c)
        return c;
    return x->key_offset < y->key_offset ? -1 : x->key_offset > y->key_offset;
}

static sf_status parse_object(sf_json_parser *p, size_t depth, sf_json *out) {
    size_t base = p->vals_n, kbase = p->keys_n;
    sf_status st;
    char d[32];
    p->pos++; /* '{' */
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
    } else {
        int after_comma = 0;
        for (;;) {
            if (p->pos >= p->len || p->s[p->pos] != '"') {
                if (after_comma && p->pos < p->len && p->s[p->pos] == '}')
                    return json_error(p->pos, "trailing comma before '}'");
                return json_error(p->pos, "expected a string key, found %s",
                                  describe(p, p->pos, d, sizeof d));
            }
            size_t key_offset = p->pos;
            const char *key = NULL;
            size_t key_len = 0;
            st = parse_string(p, 1, &key, &key_len);
            if (st != SF_OK)
                return st;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':')
                return json_error(p->pos, "expected ':' after an object key, found %s",
                                  describe(p, p->pos, d, sizeof d));
            p->pos++;
            skip_ws(p);
            sf_json child;
            st = parse_value(p, depth, &child);
            if (st != SF_OK)
                return st;
            st = push_value(p, &child);
            if (st == SF_OK)
                st = push_key(p, key, key_len, key_offset);
            if (st != SF_OK)
                return st;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') {
                p->pos++;
                skip_ws(p);
                after_comma = 1;
                continue;
            }
            if (p->pos < p->len && p->s[p->pos] == '}') {
                p->pos++;
                break;
            }
            return json_error(p->pos, "expected ',' or '}' after an object member, found %s",
                              describe(p, p->pos, d, sizeof d));
        }
    }
    size_t n = p->vals_n - base, bytes;
    if (!sf_mul_ok(n, sizeof(sf_json_member) + sizeof(sf_json_member *), &bytes))
        return json_oom(SIZE_MAX);
    sf_json_member *members = NULL;
    st = arena_alloc(p, bytes, (void **)&members);
    if (st != SF_OK)
        return st;
    out->kind = SF_JSON_OBJECT;
    out->n = (uint32_t)n;
    out->u.members = members;
    const sf_json_member **sorted = n ? sorted_members(out) : NULL;
    for (size_t i = 0; i < n; i++) {
        const sf_json_key *k = &p->keys[kbase + i];
        members[i].key = k->key;
        members[i].key_len = k->len;
        members[i].key_offset = k->offset;
        members[i].value = p->vals[base + i];
        sorted[i] = &members[i];
    }
    p->vals_n = base;
    p->keys_n = kbase;
    if (n > 1)
        qsort(sorted, n, sizeof *sorted, member_cmp);
    /* duplicates are neighbours; report the first repeated occurrence in document order */
    const sf_json_member *dup = NULL;
    for (size_t i = 1; i < n; i++) {
        if (strcmp(sorted[i - 1]->key, sorted[i]->key) == 0 &&
            (!dup || sorted[i]->key_offset < dup->key_offset))
            dup = sorted[i];
    }
    if (dup) {
        char q[96];
        return json_error(dup->key_offset, "duplicate key '%s' in an object",
                          sf_json_quote(dup->key, dup->key_len, q, sizeof q));
    }
    return SF_OK;
}

static sf_status parse_value(sf_json_parser *p, size_t depth, sf_json *out) {
    memset(out, 0, sizeof *out);
    skip_ws(p);
    out->offset = (uint32_t)p->pos;
    char d[32];
    if (p->pos >= p->len)
        return json_error(p->pos, "expected a value, found end of input");
    unsigned char c = p->s[p->pos];
    switch (c) {
    case '{':
    case '[':
        if (depth >= p->max_depth)
            return json_error(p->pos, "nesting deeper than %zu levels", p->max_depth);
        return c == '{' ? parse_object(p, depth + 1, out) : parse_array(p, depth + 1, out);
    case '"': {
        const char *s = NULL;
        size_t n = 0;
        sf_status st = parse_string(p, 0, &s, &n);
        if (st != SF_OK)
            return st;
        out->kind = SF_JSON_STRING;
        out->u.str = s;
        out->n = (uint32_t)n;
        return SF_OK;
    }
    case 't': return parse_literal(p, "true", out);
    case 'f': return parse_literal(p, "false", out);
    case 'n': return parse_literal(p, "null", out);
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return parse_number(p, out);
        return json_error(p->pos, "expected a value, found %s", describe(p, p->pos, d, sizeof d));
    }
}

sf_status sf_json_parse_limits(const char *text, size_t len, const sf_json_limits *limits,
                               sf_json **out) {
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_json_parse: out is NULL");
    *out = NULL;
    if (!text)
        return sf_error(SF_ERR_INVALID_ARG, "sf_json_parse: text is NULL");
    size_t max_depth = limits ? limits->max_depth : SF_JSON_MAX_DEPTH;
    size_t max_bytes = limits ? limits->max_bytes : SF_JSON_MAX_BYTES;
    if (max_depth == 0 || max_bytes == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_json_parse: limits must be positive (depth %zu, "
                                            "bytes %zu)", max_depth, max_bytes);
    if (max_bytes > UINT32_MAX - 1)
        max_bytes = UINT32_MAX - 1;
    if (len > max_bytes)
        return json_error(0, "document of %zu bytes exceeds the limit of %zu bytes", len,
                          max_bytes);
    sf_json_parser p;
    memset(&p, 0, sizeof p);
    p.s = (const unsigned char *)text;
    p.len = len;
    p.max_depth = max_depth;
    p.chunk_next = SF_JSON_CHUNK_MIN;
    sf_status st;
    p.doc = calloc(1, sizeof *p.doc);
    if (!p.doc)
        return json_oom(sizeof *p.doc);
    st = parse_value(&p, 0, &p.doc->root);
    if (st == SF_OK) {
        skip_ws(&p);
        if (p.pos < p.len) {
            char d[32];
            st = json_error(p.pos, "unexpected %s after the JSON value",
                            describe(&p, p.pos, d, sizeof d));
        }
    }
    free(p.vals);
    free(p.keys);
    free(p.buf);
    if (st != SF_OK) {
        doc_free(p.doc);
        return st;
    }
    p.doc->root.is_root = 1;
    *out = &p.doc->root;
    return SF_OK;
}

sf_status sf_json_parse(const char *text, size_t len, sf_json **out) {
    return sf_json_parse_limits(text, len, NULL, out);
}

void sf_json_free(sf_json *root) {
    if (!root || !root->is_root)
        return;
    doc_free((sf_json_doc *)(void *)root);
}

/* ---- accessors -------------------------------------------------------------------------- */

sf_json_kind sf_json_type(const sf_json *v) {
    return v ? (sf_json_kind)v->kind : SF_JSON_NONE;
}

const char *sf_json_kind_name(sf_json_kind kind) {
    switch (kind) {
    case SF_JSON_NONE: return "missing";
    case SF_JSON_NULL: return "null";
    case SF_JSON_BOOL: return "bool";
    case SF_JSON_NUMBER: return "number";
    case SF_JSON_STRING: return "string";
    case SF_JSON_ARRAY: return "array";
    case SF_JSON_OBJECT: return "object";
    }
    return "?";
}

size_t sf_json_offset(const sf_json *v) {
    return v ? v->offset : 0;
}

const sf_json *sf_json_object_get(const sf_json *obj, const char *key) {
    if (!obj || obj->kind != SF_JSON_OBJECT || !key)
        return NULL;
    size_t lo = 0, hi = obj->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const sf_json_member *m = sorted_members(obj)[mid];
        int c = strcmp(m->key, key);
        if (c == 0)
            return &m->value;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t sf_json_object_size(const sf_json *obj) {
    return obj && obj->kind == SF_JSON_OBJECT ? obj->n : 0;
}

const sf_json *sf_json_object_at(const sf_json *obj, size_t i, const char **key) {
    if (key)
        *key = NULL;
    if (!obj || obj->kind != SF_JSON_OBJECT || i >= obj->n)
        return NULL;
    if (key)
        *key = obj->u.members[i].key;
    return &obj->u.members[i].value;
}

const sf_json *sf_json_object_sorted_at(const sf_json *obj, size_t i, const char **key) {
    if (key)
        *key = NULL;
    if (!obj || obj->kind != SF_JSON_OBJECT || i >= obj->n)
        return NULL;
    const sf_json_member *m = sorted_members(obj)[i];
    if (key)
        *key = m->key;
    return &m->value;
}

size_t sf_json_array_size(const sf_json *arr) {
    return arr && arr->kind == SF_JSON_ARRAY ? arr->n : 0;
}

const sf_json *sf_json_array_at(const sf_json *arr, size_t i) {
    if (!arr || arr->kind != SF_JSON_ARRAY || i >= arr->n)
        return NULL;
    return &arr->u.items[i];
}

const char *sf_json_string(const sf_json *v, size_t *len) {
    if (!v || v->kind != SF_JSON_STRING) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = v->n;
    return v->u.str;
}

static sf_status wrong_kind(const sf_json *v, const char *want) {
    if (!v)
        return sf_error(SF_ERR_FORMAT, "JSON: expected %s, found nothing (missing value)", want);
    return sf_error(SF_ERR_FORMAT, "JSON error at byte %u: expected %s, found %s %s",
                    (unsigned)v->offset, want,
                    v->kind == SF_JSON_ARRAY || v->kind == SF_JSON_OBJECT ? "an" : "a",
                    sf_json_kind_name((sf_json_kind)v->kind));
}

sf_status sf_json_number(const sf_json *v, double *out) {
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_json_number: out is NULL");
    if (!v || v->kind != SF_JSON_NUMBER)
        return wrong_kind(v, "a number");
    if (v->is_int)
        *out = v->aux ? -0.0 : (double)v->u.i;
    else
        *out = v->u.d;
    return SF_OK;
}

sf_status sf_json_int64(const sf_json *v, int64_t *out) {
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_json_int64: out is NULL");
    if (!v || v->kind != SF_JSON_NUMBER)
        return wrong_kind(v, "an integer");
    if (!v->is_int)
        return sf_error(SF_ERR_FORMAT, "JSON error at byte %u: expected an integer in the int64 "
                                       "range, found a number with a fraction, an exponent or "
                                       "out of range", (unsigned)v->offset);
    *out = v->u.i;
    return SF_OK;
}

sf_status sf_json_bool(const sf_json *v, int *out) {
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_json_bool: out is NULL");
    if (!v || v->kind != SF_JSON_BOOL)
        return wrong_kind(v, "true or false");
    *out = v->aux;
    return SF_OK;
}
