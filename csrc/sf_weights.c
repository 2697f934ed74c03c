/* sf_weights.c — a model's named view of a safetensors file: renames, prefix, float32 loading
 * with shape checks, and tracking of unused tensors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sf_internal.h"
#include "sf_quant.h"

typedef struct {
    char *model_name, *file_name;
} sf_rename;

struct sf_weights {
    sf_safetensors *st;
    char *label;
    char *prefix;
    unsigned char *used; /* per tensor index of the file (name order) */
    size_t count;
    sf_rename *renames;
    size_t n_renames, cap_renames;
    int file_backed; /* the tensors live in a read-only file mapping (sf_weights_open) */
};

static char *sf_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

sf_status sf_weights_from_safetensors(sf_safetensors *st, const char *label, sf_weights **out) {
    sf_status st_ = SF_OK;
    sf_weights *w = NULL;
    if (!st || !out) {
        sf_safetensors_close(st);
        return sf_error(SF_ERR_INVALID_ARG, "sf_weights_from_safetensors: NULL argument");
    }
    *out = NULL;
    w = calloc(1, sizeof *w);
    if (!w)
        goto oom;
    w->st = st;
    w->count = sf_safetensors_count(st);
    w->label = sf_strdup(label ? label : "<weights>");
    w->prefix = sf_strdup("");
    w->used = calloc(w->count ? w->count : 1, 1);
    if (!w->label || !w->prefix || !w->used)
        goto oom;
    *out = w;
    return SF_OK;
oom:
    st_ = sf_error(SF_ERR_OOM, "sf_weights: out of memory");
    if (w)
        sf_weights_close(w);
    else
        sf_safetensors_close(st);
    return st_;
}

sf_status sf_weights_open(const char *path, sf_weights **out) {
    if (!path || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_weights_open: NULL argument");
    sf_safetensors *st = NULL;
    sf_status s = sf_safetensors_open(path, &st);
    if (s != SF_OK)
        return s;
    s = sf_weights_from_safetensors(st, path, out);
    if (s == SF_OK)
        (*out)->file_backed = 1;
    return s;
}

/* Drop the resident pages that lie wholly inside a tensor of a file mapping once it has been
 * copied out (a private read-only mapping: the pages are read again from the file if touched
 * later), so that loading a model does not hold the file and the packed weights at once. */
static void sf_weights_release_pages(const sf_weights *w, const sf_st_tensor *t) {
    if (!w->file_backed || t->nbytes == 0)
        return;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0)
        return;
    uintptr_t p = (uintptr_t)page;
    uintptr_t start = ((uintptr_t)t->data + p - 1) / p * p;
    uintptr_t end = ((uintptr_t)t->data + t->nbytes) / p * p;
    if (end > start)
        (void)madvise((void *)start, end - start, MADV_DONTNEED);
}

void sf_weights_close(sf_weights *w) {
    if (!w)
        return;
    sf_safetensors_close(w->st);
    for (size_t i = 0; i < w->n_renames; i++) {
        free(w->renames[i].model_name);
        free(w->renames[i].file_name);
    }
    free(w->renames);
    free(w->label);
    free(w->prefix);
    free(w->used);
    free(w);
}

sf_status sf_weights_set_prefix(sf_weights *w, const char *prefix) {
    if (!w || !prefix)
        return sf_error(SF_ERR_INVALID_ARG, "sf_weights_set_prefix: NULL argument");
    char *p = sf_strdup(prefix);
    if (!p)
        return sf_error(SF_ERR_OOM, "sf_weights_set_prefix: out of memory");
    free(w->prefix);
    w->prefix = p;
    return SF_OK;
}

sf_status sf_weights_add_rename(sf_weights *w, const char *model_name, const char *file_name) {
    if (!w || !model_name || !file_name)
        return sf_error(SF_ERR_INVALID_ARG, "sf_weights_add_rename: NULL argument");
    if (w->n_renames == w->cap_renames) {
        size_t cap = w->cap_renames ? 2 * w->cap_renames : 64;
        sf_rename *r = realloc(w->renames, cap * sizeof *r);
        if (!r)
            return sf_error(SF_ERR_OOM, "sf_weights_add_rename: out of memory");
        w->renames = r;
        w->cap_renames = cap;
    }
    char *a = sf_strdup(model_name), *b = sf_strdup(file_name);
    if (!a || !b) {
        free(a);
        free(b);
        return sf_error(SF_ERR_OOM, "sf_weights_add_rename: out of memory");
    }
    w->renames[w->n_renames].model_name = a;
    w->renames[w->n_renames].file_name = b;
    w->n_renames++;
    return SF_OK;
}

const char *sf_weights_label(const sf_weights *w) {
    return w ? w->label : "";
}

/* Index of the file tensor for a model name, or SIZE_MAX. */
static size_t sf_weights_index(const sf_weights *w, const char *name) {
    const char *fname = name;
    for (size_t i = 0; i < w->n_renames; i++) {
        if (strcmp(w->renames[i].model_name, name) == 0) {
            fname = w->renames[i].file_name;
            break;
        }
    }
    char buf[512];
    int n = snprintf(buf, sizeof buf, "%s%s", w->prefix, fname);
    if (n < 0 || (size_t)n >= sizeof buf)
        return SIZE_MAX;
    /* binary search over the file's tensors, which are in name order */
    size_t lo = 0, hi = w->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(sf_safetensors_at(w->st, mid)->name, buf);
        if (c == 0)
            return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return SIZE_MAX;
}

int sf_weights_has(const sf_weights *w, const char *name) {
    return w && name && sf_weights_index(w, name) != SIZE_MAX;
}

const sf_st_tensor *sf_weights_find(const sf_weights *w, const char *name) {
    if (!w || !name)
        return NULL;
    size_t i = sf_weights_index(w, name);
    return i == SIZE_MAX ? NULL : sf_safetensors_at(w->st, i);
}

static void sf_shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t pos = 0;
    pos += (size_t)snprintf(buf, size, "(");
    for (int i = 0; i < ndim && pos < size; i++)
        pos += (size_t)snprintf(buf + pos, size - pos, i ? ", %lld" : "%lld",
                                (long long)shape[i]);
    if (pos < size)
        snprintf(buf + pos, size - pos, ")");
}

/* Equal shapes, ignoring trailing dimensions of size 1 on either side: a 1x1 convolution
 * kernel (out, in, 1, 1) is the same memory as a linear weight (out, in). */
static int sf_same_shape(const sf_st_tensor *t, int ndim, const int64_t *shape) {
    int nt = t->ndim, nw = ndim;
    while (nt > 0 && t->shape[nt - 1] == 1)
        nt--;
    while (nw > 0 && shape[nw - 1] == 1)
        nw--;
    int same = nt == nw;
    for (int d = 0; same && d < nw; d++)
        same = t->shape[d] == shape[d];
    return same;
}

sf_status sf_weights_load_f32(sf_weights *w, const char *name, int ndim, const int64_t *shape,
                              float **out) {
    if (!w || !name || !out || ndim < 0 || ndim > SF_MAX_DIMS || (ndim && !shape))
        return sf_error(SF_ERR_INVALID_ARG, "sf_weights_load_f32: bad argument");
    *out = NULL;
    size_t i = sf_weights_index(w, name);
    if (i == SIZE_MAX)
        return sf_error(SF_ERR_FORMAT, "%s: missing tensor '%s%s'", w->label, w->prefix, name);
    const sf_st_tensor *t = sf_safetensors_at(w->st, i);
    if (t->dtype == SF_DTYPE_I8)
        return sf_error(SF_ERR_FORMAT,
                        "%s: tensor '%s' holds I8 data where float weights are expected",
                        w->label, t->name);
    if (!sf_same_shape(t, ndim, shape)) {
        char got[160], want[160];
        sf_shape_str(got, sizeof got, t->ndim, t->shape);
        sf_shape_str(want, sizeof want, ndim, shape);
        return sf_error(SF_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s", w->label,
                        t->name, got, want);
    }
    size_t bytes;
    if (!sf_mul_ok(t->numel ? t->numel : 1, sizeof(float), &bytes))
        return sf_error(SF_ERR_OOM, "%s: tensor '%s' is too large", w->label, t->name);
    float *buf = sf_aligned_alloc(bytes);
    if (!buf)
        return sf_error(SF_ERR_OOM, "%s: cannot allocate %zu bytes for '%s'", w->label, bytes,
                        t->name);
    sf_status st = sf_convert_to_f32(t->dtype, t->data, t->numel, buf);
    if (st != SF_OK) {
        sf_aligned_free(buf);
        return st;
    }
    w->used[i] = 1;
    sf_weights_release_pages(w, t);
    *out = buf;
    return SF_OK;
}

sf_status sf_weights_load_i8(sf_weights *w, const char *name, int ndim, const int64_t *shape,
                             int8_t **out) {
    if (!w || !name || !out || ndim < 0 || ndim > SF_MAX_DIMS || (ndim && !shape))
        return sf_error(SF_ERR_INVALID_ARG, "sf_weights_load_i8: bad argument");
    *out = NULL;
    size_t i = sf_weights_index(w, name);
    if (i == SIZE_MAX)
        return sf_error(SF_ERR_FORMAT, "%s: missing tensor '%s%s'", w->label, w->prefix, name);
    const sf_st_tensor *t = sf_safetensors_at(w->st, i);
    if (t->dtype != SF_DTYPE_I8)
        return sf_error(SF_ERR_FORMAT,
                        "%s: tensor '%s' holds %s data where int8 data is expected", w->label,
                        t->name, sf_dtype_name(t->dtype));
    if (!sf_same_shape(t, ndim, shape)) {
        char got[160], want[160];
        sf_shape_str(got, sizeof got, t->ndim, t->shape);
        sf_shape_str(want, sizeof want, ndim, shape);
        return sf_error(SF_ERR_SHAPE, "%s: tensor '%s' has shape %s, expected %s", w->label,
                        t->name, got, want);
    }
    int8_t *buf = sf_aligned_alloc(t->numel ? t->numel : 1);
    if (!buf)
        return sf_error(SF_ERR_OOM, "%s: cannot allocate %zu bytes for '%s'", w->label,
                        t->numel, t->name);
    if (t->nbytes)
        memcpy(buf, t->data, t->nbytes);
    w->used[i] = 1;
    sf_weights_release_pages(w, t);
    *out = buf;
    return SF_OK;
}

void sf_weights_free_buffer(float *buf) {
    sf_aligned_free(buf);
}

size_t sf_weights_unused(const sf_weights *w, const char **first_name) {
    size_t n = 0;
    if (first_name)
        *first_name = NULL;
    if (!w)
        return 0;
    size_t plen = strlen(w->prefix);
    for (size_t i = 0; i < w->count; i++) {
        const char *name = sf_safetensors_at(w->st, i)->name;
        if (w->used[i] || strncmp(name, w->prefix, plen) != 0)
            continue;
        if (n == 0 && first_name)
            *first_name = name;
        n++;
    }
    return n;
}
