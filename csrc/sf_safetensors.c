/*
 * sf_safetensors.c — a strict reader of safetensors files (memory-mapped, zero-copy).
 *
 * Layout of the format: an unsigned 64-bit little-endian header length N, N bytes of UTF-8
 * JSON, then the data section. The header is an object mapping tensor names to
 * {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]} (offsets relative to the
 * data section), plus an optional "__metadata__" object of string -> string.
 *
 * What this reader checks, failing with a message that names the file ("<memory>" for
 * buffers) and the tensor:
 * - the file is at least 8 bytes; N <= file size - 8 and N <= 100 MB;
 * - the header is strict JSON (sf_json.c: valid UTF-8, no duplicate keys, depth-limited) and an
 *   object; "__metadata__", if present, is an object whose values are strings without NUL;
 * - every tensor name is non-empty; every tensor entry is an object with exactly the fields
 *   dtype, shape and data_offsets;
 * - dtype is F32, F16, BF16 or I8; the other safetensors dtypes (F64, I64, U8, BOOL, F8_E4M3,
 *   ...) give SF_ERR_UNSUPPORTED naming the dtype, unknown names SF_ERR_FORMAT;
 * - shape has at most SF_MAX_DIMS non-negative integer dimensions whose element count (and
 *   byte size) fits in 63 bits;
 * - data_offsets is [begin, end] with integers 0 <= begin <= end <= data section size, and
 *   end - begin equals the tensor's byte size;
 * - the byte ranges of the tensors do not overlap (empty tensors may sit anywhere). Bytes of the
 *   data section that no tensor covers are allowed and ignored.
 * Tensors are then sorted by name (byte order of UTF-8, i.e. code point order).
 *
 * The file is mapped read-only and private; if another process truncates the file while it is
 * mapped, reading the lost pages raises SIGBUS (as for any mmap-based reader).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strtod_l, newlocale, O_CLOEXEC (also set by the build) */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sf_internal.h"
#include "sf_json.h"

#define SF_ST_MAX_HEADER ((uint64_t)100000000) /* 100 MB, as the reference implementation */
#define SF_ST_SUPPORTED "F32, F16, BF16, I8"

typedef struct {
    const char *key;
    const char *value;
} sf_st_meta;

struct sf_safetensors {
    const unsigned char *base; /* whole file */
    size_t size;
    void *map; /* non-NULL when this handle mapped the file */
    size_t map_size;
    sf_json *header; /* owns the names and metadata strings */
    sf_st_tensor *tensors;
    size_t count;
    sf_st_meta *meta;
    size_t meta_count;
};

/* Short printable form of a label (path), keeping its end when too long. */
static const char *label_str(const char *label, char *buf, size_t size) {
    size_t n = strlen(label);
    if (n + 1 <= size - 8)
        return sf_json_quote(label, n, buf, size);
    size_t keep = size - 12;
    memcpy(buf, "...", 3);
    sf_json_quote(label + n - keep, keep, buf + 3, size - 3);
    return buf;
}

static const char *shape_str(const int64_t *shape, size_t ndim, char *buf, size_t size) {
    size_t o = 0;
    o += (size_t)snprintf(buf, size, "[");
    for (size_t i = 0; i < ndim && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < size)
        snprintf(buf + o, size - o, "]");
    return buf;
}

static int parse_dtype(const char *s, size_t len, sf_dtype *out) {
    static const struct {
        const char *name;
        sf_dtype dtype;
    } ok[] = {{"F32", SF_DTYPE_F32}, {"F16", SF_DTYPE_F16}, {"BF16", SF_DTYPE_BF16},
              {"I8", SF_DTYPE_I8}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (strlen(ok[i].name) == len && memcmp(ok[i].name, s, len) == 0) {
            *out = ok[i].dtype;
            return 1;
        }
    }
    static const char *const known[] = {"F64",     "I64",     "I32",     "I16",     "U8",
                                        "U16",     "U32",     "U64",     "BOOL",    "F8_E4M3",
                                        "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",
                                        "C64"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strlen(known[i]) == len && memcmp(known[i], s, len) == 0)
            return 0; /* a safetensors dtype we do not support */
    return -1;        /* not a safetensors dtype */
}

/* Fail for tensor `name`: "<lab>: tensor '<name>'<rest>" (the name is quoted only here, on
 * the error path). */
static sf_status tensor_error(sf_status status, const char *lab, const char *name,
                              size_t name_len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static sf_status tensor_error(sf_status status, const char *lab, const char *name,
                              size_t name_len, const char *fmt, ...) {
    char q[160], rest[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rest, sizeof rest, fmt, ap);
    va_end(ap);
    return sf_error(status, "%s: tensor '%s'%s", lab, sf_json_quote(name, name_len, q, sizeof q),
                    rest);
}

/* Validate one tensor entry `v` named `name`; fill *t (data relative to `data`). */
static sf_status parse_tensor(const char *lab, const char *name, size_t name_len,
                              const sf_json *v, const unsigned char *data, size_t data_size,
                              sf_st_tensor *t) {
    char sb[256], dq[64];
#define TFAIL(status, ...) return tensor_error((status), lab, name, name_len, __VA_ARGS__)
    if (sf_json_type(v) != SF_JSON_OBJECT)
        TFAIL(SF_ERR_FORMAT, " must be a JSON object with dtype, shape and data_offsets, found %s",
              sf_json_kind_name(sf_json_type(v)));
    for (size_t i = 0; i < sf_json_object_size(v); i++) {
        const char *key = NULL;
        sf_json_object_at(v, i, &key);
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            TFAIL(SF_ERR_FORMAT, " has an unknown field '%s' (allowed: dtype, shape, "
                  "data_offsets)", sf_json_quote(key, strlen(key), dq, sizeof dq));
    }
    const sf_json *jd = sf_json_object_get(v, "dtype");
    const sf_json *js = sf_json_object_get(v, "shape");
    const sf_json *jo = sf_json_object_get(v, "data_offsets");
    const char *missing = !jd ? "dtype" : !js ? "shape" : !jo ? "data_offsets" : NULL;
    if (missing)
        TFAIL(SF_ERR_FORMAT, " has no '%s' field", missing);

    /* dtype */
    size_t dlen = 0;
    const char *ds = sf_json_string(jd, &dlen);
    if (!ds)
        TFAIL(SF_ERR_FORMAT, ": dtype must be a string, found %s",
              sf_json_kind_name(sf_json_type(jd)));
    int known = parse_dtype(ds, dlen, &t->dtype);
    if (known == 0)
        TFAIL(SF_ERR_UNSUPPORTED, " has dtype %s; supported: " SF_ST_SUPPORTED, ds);
    if (known < 0)
        TFAIL(SF_ERR_FORMAT, " has unknown dtype '%s'; supported: " SF_ST_SUPPORTED,
              sf_json_quote(ds, dlen, dq, sizeof dq));

    /* shape */
    if (sf_json_type(js) != SF_JSON_ARRAY)
        TFAIL(SF_ERR_FORMAT, ": shape must be an array of non-negative integers, found %s",
              sf_json_kind_name(sf_json_type(js)));
    size_t ndim = sf_json_array_size(js);
    if (ndim > SF_MAX_DIMS)
        TFAIL(SF_ERR_FORMAT, " has %zu dimensions; at most %d are supported", ndim, SF_MAX_DIMS);
    t->ndim = (int)ndim;
    uint64_t count = 1; /* product of the non-zero dimensions */
    int empty = 0, overflow = 0;
    for (size_t i = 0; i < ndim; i++) {
        const sf_json *e = sf_json_array_at(js, i);
        int64_t dim = 0;
        if (sf_json_int64(e, &dim) != SF_OK)
            TFAIL(SF_ERR_FORMAT, ": shape[%zu] must be a non-negative integer, found %s", i,
                  sf_json_type(e) == SF_JSON_NUMBER ? "a non-integer or out-of-range number"
                                                    : sf_json_kind_name(sf_json_type(e)));
        if (dim < 0)
            TFAIL(SF_ERR_FORMAT, ": shape[%zu] is %lld; dimensions must be non-negative", i,
                  (long long)dim);
        t->shape[i] = dim;
        if (dim == 0)
            empty = 1;
        else if (__builtin_mul_overflow(count, (uint64_t)dim, &count))
            overflow = 1;
    }
    size_t esize = sf_dtype_size(t->dtype);
    uint64_t span = 0;
    if (overflow || __builtin_mul_overflow(count, (uint64_t)esize, &span) ||
        span > (uint64_t)INT64_MAX)
        TFAIL(SF_ERR_FORMAT, ": shape %s is too large (its element count times %zu bytes "
              "overflows 63 bits)", shape_str(t->shape, ndim, sb, sizeof sb), esize);
    t->numel = empty ? 0 : (size_t)count;
    t->nbytes = t->numel * esize;

    /* data_offsets */
    if (sf_json_type(jo) != SF_JSON_ARRAY)
        TFAIL(SF_ERR_FORMAT, ": data_offsets must be an array [begin, end], found %s",
              sf_json_kind_name(sf_json_type(jo)));
    if (sf_json_array_size(jo) != 2)
        TFAIL(SF_ERR_FORMAT, ": data_offsets must be [begin, end], found an array of %zu values",
              sf_json_array_size(jo));
    int64_t off[2];
    for (size_t i = 0; i < 2; i++) {
        if (sf_json_int64(sf_json_array_at(jo, i), &off[i]) != SF_OK || off[i] < 0)
            TFAIL(SF_ERR_FORMAT, ": data_offsets[%zu] must be a non-negative integer", i);
    }
    if (off[0] > off[1])
        TFAIL(SF_ERR_FORMAT, ": data_offsets [%lld, %lld] has begin > end", (long long)off[0],
              (long long)off[1]);
    if ((uint64_t)off[1] > data_size)
        TFAIL(SF_ERR_FORMAT, ": data_offsets [%lld, %lld] reach past the end of the data "
              "section (%zu bytes)", (long long)off[0], (long long)off[1], data_size);
    if ((uint64_t)(off[1] - off[0]) != (uint64_t)t->nbytes)
        TFAIL(SF_ERR_FORMAT, " (%s, shape %s) needs %zu bytes but data_offsets [%lld, %lld] "
              "span %lld", sf_dtype_name(t->dtype), shape_str(t->shape, ndim, sb, sizeof sb),
              t->nbytes, (long long)off[0], (long long)off[1], (long long)(off[1] - off[0]));
#undef TFAIL
    t->name = name;
    t->data = data + off[0];
    return SF_OK;
}

static int tensor_ptr_data_cmp(const void *a, const void *b) {
    const sf_st_tensor *x = *(const sf_st_tensor *const *)a;
    const sf_st_tensor *y = *(const sf_st_tensor *const *)b;
    uintptr_t px = (uintptr_t)x->data, py = (uintptr_t)y->data;
    return px < py ? -1 : px > py;
}

static sf_status parse_metadata(const char *lab, const sf_json *m, sf_safetensors *st) {
    char q[160];
    if (sf_json_type(m) != SF_JSON_OBJECT)
        return sf_error(SF_ERR_FORMAT, "%s: __metadata__ must be an object of string -> string, "
                        "found %s", lab, sf_json_kind_name(sf_json_type(m)));
    size_t n = sf_json_object_size(m);
    if (n == 0)
        return SF_OK;
    st->meta = calloc(n, sizeof *st->meta);
    if (!st->meta)
        return sf_error(SF_ERR_OOM, "%s: out of memory for %zu metadata entries", lab, n);
    for (size_t i = 0; i < n; i++) {
        const char *key = NULL;
        const sf_json *v = sf_json_object_sorted_at(m, i, &key); /* key order */
        size_t vlen = 0;
        const char *s = sf_json_string(v, &vlen);
        if (!s)
            return sf_error(SF_ERR_FORMAT, "%s: __metadata__ value of '%s' must be a string, "
                            "found %s", lab, sf_json_quote(key, strlen(key), q, sizeof q),
                            sf_json_kind_name(sf_json_type(v)));
        if (strlen(s) != vlen)
            return sf_error(SF_ERR_FORMAT, "%s: __metadata__ value of '%s' contains a NUL "
                            "character", lab, sf_json_quote(key, strlen(key), q, sizeof q));
        st->meta[i].key = key;
        st->meta[i].value = s;
    }
    st->meta_count = n;
    return SF_OK;
}

/* Validate st->base/st->size and build the tables. `lab` names the file in messages. */
static sf_status st_parse(sf_safetensors *st, const char *lab) {
    sf_status status = SF_OK;
    const sf_st_tensor **by_data = NULL;
    const unsigned char *b = st->base;
    if (st->size < 8) {
        if (st->size == 0)
            return sf_error(SF_ERR_FORMAT, "%s: file is empty (0 bytes); a safetensors file "
                            "starts with an 8-byte header length", lab);
        return sf_error(SF_ERR_FORMAT, "%s: file is too short (%zu bytes) to hold the 8-byte "
                        "header length of a safetensors file", lab, st->size);
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | b[i];
    if (n > (uint64_t)(st->size - 8))
        return sf_error(SF_ERR_FORMAT, "%s: header length %llu exceeds the file size (%zu bytes "
                        "after the 8-byte length): truncated or not a safetensors file", lab,
                        (unsigned long long)n, st->size - 8);
    if (n > SF_ST_MAX_HEADER)
        return sf_error(SF_ERR_FORMAT, "%s: header length %llu exceeds the limit of %llu bytes",
                        lab, (unsigned long long)n, (unsigned long long)SF_ST_MAX_HEADER);
    if (n == 0)
        return sf_error(SF_ERR_FORMAT, "%s: header is empty (length 0)", lab);
    status = sf_json_parse((const char *)b + 8, (size_t)n, &st->header);
    if (status != SF_OK) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", sf_last_error());
        return sf_error(status, "%s: header (file bytes 8 to %llu) is not valid: %s", lab,
                        (unsigned long long)(n + 8), msg);
    }
    const sf_json *root = st->header;
    if (sf_json_type(root) != SF_JSON_OBJECT)
        return sf_error(SF_ERR_FORMAT, "%s: header must be a JSON object, found %s %s", lab,
                        sf_json_type(root) == SF_JSON_ARRAY ? "an" : "a",
                        sf_json_kind_name(sf_json_type(root)));
    const unsigned char *data = b + 8 + n;
    size_t data_size = st->size - 8 - (size_t)n;
    size_t members = sf_json_object_size(root);
    if (members) {
        st->tensors = calloc(members, sizeof *st->tensors);
        if (!st->tensors)
            return sf_error(SF_ERR_OOM, "%s: out of memory for %zu tensors", lab, members);
    }
    for (size_t i = 0; i < members; i++) {
        const char *name = NULL;
        const sf_json *v = sf_json_object_sorted_at(root, i, &name); /* name order */
        size_t name_len = strlen(name);
        if (strcmp(name, "__metadata__") == 0) {
            status = parse_metadata(lab, v, st);
            if (status != SF_OK)
                return status;
            continue;
        }
        if (name_len == 0)
            return sf_error(SF_ERR_FORMAT, "%s: a tensor has an empty name", lab);
        status = parse_tensor(lab, name, name_len, v, data, data_size, &st->tensors[st->count]);
        if (status != SF_OK)
            return status;
        st->count++;
    }
    /* sorted by the JSON object already; the parser rejected duplicates (checked again) */
    for (size_t i = 1; i < st->count; i++) {
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
            char q[160];
            const char *nm = st->tensors[i].name;
            return sf_error(SF_ERR_FORMAT, "%s: duplicate tensor name '%s'", lab,
                            sf_json_quote(nm, strlen(nm), q, sizeof q));
        }
    }

    /* byte ranges: sort the non-empty tensors by start, each must start after the previous
     * one ends */
    size_t nonempty = 0;
    if (st->count) {
        by_data = malloc(st->count * sizeof *by_data);
        if (!by_data)
            return sf_error(SF_ERR_OOM, "%s: out of memory for %zu tensors", lab, st->count);
    }
    for (size_t i = 0; i < st->count; i++)
        if (st->tensors[i].nbytes)
            by_data[nonempty++] = &st->tensors[i];
    if (nonempty > 1)
        qsort(by_data, nonempty, sizeof *by_data, tensor_ptr_data_cmp);
    for (size_t i = 1; i < nonempty; i++) {
        const sf_st_tensor *x = by_data[i - 1], *y = by_data[i];
        const unsigned char *xb = x->data, *yb = y->data;
        if (yb < xb + x->nbytes) {
            char qx[160], qy[160];
            status = sf_error(SF_ERR_FORMAT, "%s: tensors '%s' (bytes %zu to %zu) and '%s' "
                              "(bytes %zu to %zu) overlap in the data section", lab,
                              sf_json_quote(x->name, strlen(x->name), qx, sizeof qx),
                              (size_t)(xb - data), (size_t)(xb - data) + x->nbytes,
                              sf_json_quote(y->name, strlen(y->name), qy, sizeof qy),
                              (size_t)(yb - data), (size_t)(yb - data) + y->nbytes);
            break;
        }
    }
    free(by_data);
    return status;
}

void sf_safetensors_close(sf_safetensors *st) {
    if (!st)
        return;
    sf_json_free(st->header);
    free(st->tensors);
    free(st->meta);
    if (st->map)
        munmap(st->map, st->map_size);
    free(st);
}

sf_status sf_safetensors_open_memory(const void *data, size_t size, sf_safetensors **out) {
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_safetensors_open_memory: out is NULL");
    *out = NULL;
    if (!data)
        return sf_error(SF_ERR_INVALID_ARG, "sf_safetensors_open_memory: data is NULL");
    if (size == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_safetensors_open_memory: size is 0 (an empty "
                        "buffer is not a safetensors file)");
    sf_safetensors *st = calloc(1, sizeof *st);
    if (!st)
        return sf_error(SF_ERR_OOM, "sf_safetensors_open_memory: out of memory");
    st->base = data;
    st->size = size;
    sf_status status = st_parse(st, "<memory>");
    if (status != SF_OK) {
        sf_safetensors_close(st);
        return status;
    }
    *out = st;
    return SF_OK;
}

sf_status sf_safetensors_open(const char *path, sf_safetensors **out) {
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_safetensors_open: out is NULL");
    *out = NULL;
    if (!path)
        return sf_error(SF_ERR_INVALID_ARG, "sf_safetensors_open: path is NULL");
    char lab[320];
    label_str(path, lab, sizeof lab);
    sf_status status = SF_OK;
    sf_safetensors *st = NULL;
    void *map = NULL;
    size_t size = 0;
    int err = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        err = errno;
        status = sf_error(SF_ERR_IO, "%s: cannot open: %s", lab, strerror(err));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        err = errno;
        status = sf_error(SF_ERR_IO, "%s: cannot stat: %s", lab, strerror(err));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        err = EISDIR;
        status = sf_error(SF_ERR_IO, "%s: is a directory, not a safetensors file", lab);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        err = EINVAL;
        status = sf_error(SF_ERR_IO, "%s: not a regular file", lab);
        goto fail;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        err = EFBIG;
        status = sf_error(SF_ERR_IO, "%s: file too large to map", lab);
        goto fail;
    }
    size = (size_t)sb.st_size;
    if (size == 0) {
        status = sf_error(SF_ERR_FORMAT, "%s: file is empty (0 bytes); a safetensors file "
                          "starts with an 8-byte header length", lab);
        goto fail;
    }
    map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        err = errno;
        map = NULL;
        status = sf_error(SF_ERR_IO, "%s: cannot map %zu bytes: %s", lab, size, strerror(err));
        goto fail;
    }
    close(fd);
    fd = -1;
    st = calloc(1, sizeof *st);
    if (!st) {
        status = sf_error(SF_ERR_OOM, "%s: out of memory", lab);
        goto fail;
    }
    st->map = map;
    st->map_size = size;
    map = NULL; /* owned by st now */
    st->base = st->map;
    st->size = size;
    status = st_parse(st, lab);
    if (status != SF_OK)
        goto fail;
    *out = st;
    return SF_OK;
fail:
    if (fd >= 0)
        close(fd);
    if (map)
        munmap(map, size);
    sf_safetensors_close(st);
    errno = err; /* the cause of an SF_ERR_IO failure (0 for format errors) */
    return status;
}

size_t sf_safetensors_count(const sf_safetensors *st) {
    return st ? st->count : 0;
}

const sf_st_tensor *sf_safetensors_at(const sf_safetensors *st, size_t i) {
    if (!st || i >= st->count)
        return NULL;
    return &st->tensors[i];
}

const sf_st_tensor *sf_safetensors_find(const sf_safetensors *st, const char *name) {
    if (!st || !name)
        return NULL;
    size_t lo = 0, hi = st->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tensors[mid].name, name);
        if (c == 0)
            return &st->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *sf_safetensors_metadata(const sf_safetensors *st, const char *key) {
    if (!st || !key)
        return NULL;
    size_t lo = 0, hi = st->meta_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->meta[mid].key, key);
        if (c == 0)
            return st->meta[mid].value;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t sf_safetensors_metadata_count(const sf_safetensors *st) {
    return st ? st->meta_count : 0;
}

sf_status sf_safetensors_metadata_at(const sf_safetensors *st, size_t i, const char **key,
                                     const char **value) {
    if (!st || !key || !value)
        return sf_error(SF_ERR_INVALID_ARG, "sf_safetensors_metadata_at: %s is NULL",
                        !st ? "st" : !key ? "key" : "value");
    if (i >= st->meta_count)
        return sf_error(SF_ERR_INVALID_ARG, "sf_safetensors_metadata_at: index %zu out of range "
                        "(%zu entries)", i, st->meta_count);
    *key = st->meta[i].key;
    *value = st->meta[i].value;
    return SF_OK;
}
