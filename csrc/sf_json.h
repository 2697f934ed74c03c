/*
 * sf_json.h — a small strict JSON (RFC 8259) parser producing a read-only DOM (internal API;
 * used by the safetensors reader and by the model configuration loader).
 *
 *     sf_json *doc = NULL;
 *     sf_status st = sf_json_parse(text, len, &doc);   // SF_ERR_FORMAT: "JSON error at byte 12:
 *     if (st != SF_OK) return st;                       //  expected ':'"
 *     int64_t heads;
 *     st = sf_json_int64(sf_json_object_get(doc, "num_attention_heads"), &heads);
 *     sf_json_free(doc);
 *
 * Strictness: exactly the grammar of RFC 8259 (no comments, no trailing commas, no NaN or
 * Infinity, no leading zeros, no byte order mark, whitespace is space/tab/CR/LF only); strings
 * must be valid UTF-8 (no overlong forms, no encoded surrogates, nothing past U+10FFFF) and
 * their escapes are decoded (surrogate pairs joined, lone surrogates rejected); object keys may
 * not contain U+0000 and may not repeat within one object; numbers that overflow a double are
 * rejected. Nesting is limited (64 containers by default) and so is the document size.
 *
 * Memory: a document is one arena; every node, string and array belongs to it and
 * sf_json_free(root) releases them all. Nodes stay valid until then and are never modified.
 * The accessors accept NULL and nodes of the wrong kind (they then return NULL / 0 / an error),
 * so lookups can be chained: sf_json_object_get(sf_json_object_get(doc, "a"), "b").
 */
#ifndef SF_JSON_H
#define SF_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "snapfusion.h"

typedef enum {
    SF_JSON_NONE = 0, /* the kind of a NULL node (a missing key, an index out of range) */
    SF_JSON_NULL,
    SF_JSON_BOOL,
    SF_JSON_NUMBER,
    SF_JSON_STRING,
    SF_JSON_ARRAY,
    SF_JSON_OBJECT
} sf_json_kind;

typedef struct sf_json sf_json;

#define SF_JSON_MAX_DEPTH 64                       /* nested arrays/objects */
#define SF_JSON_MAX_BYTES ((size_t)256 << 20)      /* 256 MiB */

typedef struct {
    size_t max_depth; /* nested containers allowed (>= 1) */
    size_t max_bytes; /* longest document accepted (capped at 4 GiB - 1) */
} sf_json_limits;

/* Parse `len` bytes of `text` (not NUL-terminated) with the default limits. On success *out is
 * the root value (free it with sf_json_free); on failure *out is NULL and the status is
 * SF_ERR_FORMAT ("JSON error at byte N: ..."), SF_ERR_OOM or SF_ERR_INVALID_ARG (NULL
 * pointers). */
sf_status sf_json_parse(const char *text, size_t len, sf_json **out);

/* Same with explicit limits (NULL: the defaults). */
sf_status sf_json_parse_limits(const char *text, size_t len, const sf_json_limits *limits,
                               sf_json **out);

/* Free a document given its root (NULL and non-root nodes are ignored). */
void sf_json_free(sf_json *root);

/* Kind of a node; SF_JSON_NONE for NULL. */
sf_json_kind sf_json_type(const sf_json *v);

/* Static name of a kind ("object", "array", "string", "number", "bool", "null", "missing"). */
const char *sf_json_kind_name(sf_json_kind kind);

/* Byte offset of the value's first character in the parsed text (0 for NULL). */
size_t sf_json_offset(const sf_json *v);

/* Member value by key (binary search), NULL if `obj` is not an object or has no such key. */
const sf_json *sf_json_object_get(const sf_json *obj, const char *key);
/* Number of members (0 if not an object). */
size_t sf_json_object_size(const sf_json *obj);
/* i-th member in document order: its value, and its key through *key (if key != NULL); NULL if
 * out of range. Keys are NUL-terminated UTF-8 without embedded NUL. */
const sf_json *sf_json_object_at(const sf_json *obj, size_t i, const char **key);

/* i-th member in key order (strcmp, i.e. code point order), like sf_json_object_at. */
const sf_json *sf_json_object_sorted_at(const sf_json *obj, size_t i, const char **key);

/* Number of elements (0 if not an array) and the i-th element (NULL if out of range). */
size_t sf_json_array_size(const sf_json *arr);
const sf_json *sf_json_array_at(const sf_json *arr, size_t i);

/* Decoded UTF-8 bytes of a string (NUL-terminated; may contain NUL bytes written as \u0000, so
 * use *len), or NULL if `v` is not a string. len may be NULL. */
const char *sf_json_string(const sf_json *v, size_t *len);

/* Value of a number as a double (SF_ERR_FORMAT naming the byte offset if not a number). */
sf_status sf_json_number(const sf_json *v, double *out);

/* Exact value of an integer: a number written without fraction or exponent that fits int64.
 * SF_ERR_FORMAT for anything else (1.0, 1e3, 2^63, strings, ...). */
sf_status sf_json_int64(const sf_json *v, int64_t *out);

/* Value of true/false (SF_ERR_FORMAT otherwise). */
sf_status sf_json_bool(const sf_json *v, int *out);

/* Write `len` bytes of `s` into buf (NUL-terminated, at most size - 1 bytes) in a form fit for
 * an error message: control and invalid UTF-8 bytes become \xNN, valid UTF-8 is kept, and a
 * text too long is cut at a character boundary and ends with "...". Returns buf. size >= 8. */
const char *sf_json_quote(const char *s, size_t len, char *buf, size_t size);

#endif /* SF_JSON_H */
