/* sf_tensor.c — storage dtypes, conversions, and the activation arena. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sf_internal.h"

size_t sf_dtype_size(sf_dtype dtype) {
    switch (dtype) {
    case SF_DTYPE_F32: return 4;
    case SF_DTYPE_F16: return 2;
    case SF_DTYPE_BF16: return 2;
    case SF_DTYPE_I8: return 1;
    }
    return 0;
}

const char *sf_dtype_name(sf_dtype dtype) {
    switch (dtype) {
    case SF_DTYPE_F32: return "F32";
    case SF_DTYPE_F16: return "F16";
    case SF_DTYPE_BF16: return "BF16";
    case SF_DTYPE_I8: return "I8";
    }
    return "?";
}

/* IEEE half -> float, exact (subnormals, inf, NaN). */
static inline float sf_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float -> IEEE half, round to nearest even, overflow to inf, NaN kept quiet. */
static inline uint16_t sf_float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or NaN */
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        /* value = ax as float; half subnormal unit = 2^-24 */
        float af;
        memcpy(&af, &ax, 4);
        float scaled = af * 16777216.0f; /* / 2^-24 */
        /* round to nearest even */
        float r = nearbyintf(scaled);
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t exp = ((ax >> 23) - 127 + 15);
    uint32_t man = ax & 0x7fffffu;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

void sf_f16_to_f32(const uint16_t *src, size_t n, float *dst) {
    for (size_t i = 0; i < n; i++)
        dst[i] = sf_half_to_float(src[i]);
}

void sf_f32_to_f16(const float *src, size_t n, uint16_t *dst) {
    for (size_t i = 0; i < n; i++)
        dst[i] = sf_float_to_half(src[i]);
}

void sf_bf16_to_f32(const uint16_t *src, size_t n, float *dst) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &bits, 4);
    }
}

void sf_f32_to_bf16(const float *src, size_t n, uint16_t *dst) {
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, &src[i], 4);
        if ((x & 0x7fffffffu) > 0x7f800000u) {
            dst[i] = (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
        } else {
            x += 0x7fffu + ((x >> 16) & 1u);
            dst[i] = (uint16_t)(x >> 16);
        }
    }
}

sf_status sf_convert_to_f32(sf_dtype dtype, const void *src, size_t n, float *dst) {
    if ((!src || !dst) && n)
        return sf_error(SF_ERR_INVALID_ARG, "sf_convert_to_f32: NULL pointer");
    const unsigned char *s = src;
    switch (dtype) {
    case SF_DTYPE_F32:
        if (n)
            memcpy(dst, src, n * 4);
        return SF_OK;
    case SF_DTYPE_F16:
    case SF_DTYPE_BF16:
        /* src may be unaligned (inside a safetensors mapping): read bytes */
        for (size_t i = 0; i < n; i++) {
            uint16_t v = (uint16_t)(s[2 * i] | (s[2 * i + 1] << 8));
            if (dtype == SF_DTYPE_F16) {
                dst[i] = sf_half_to_float(v);
            } else {
                uint32_t bits = (uint32_t)v << 16;
                memcpy(&dst[i], &bits, 4);
            }
        }
        return SF_OK;
    case SF_DTYPE_I8:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)(int8_t)s[i];
        return SF_OK;
    }
    return sf_error(SF_ERR_UNSUPPORTED, "sf_convert_to_f32: unknown dtype %d", (int)dtype);
}

/* ---- arena ---- */

typedef struct sf_chunk {
    struct sf_chunk *next;
    size_t size, used;
    unsigned char *data;
    int mapped; /* data is a reservation of address space (munmap), else sf_aligned_alloc */
} sf_chunk;

/* Address space reserved for a chunk (MAP_NORESERVE: neither memory nor commit charge until
 * pages are touched). A first pass then never overflows into more chunks, and the resident
 * memory is the pages the pass touched — its high water — instead of a growing series of
 * chunks. Where the reservation fails (strict overcommit, address-space limits), chunks come
 * from the heap. */
#if defined(__linux__) && UINTPTR_MAX > 0xffffffffu
#include <sys/mman.h>
#define SF_ARENA_RESERVE ((size_t)16 << 30)
#else
#define SF_ARENA_RESERVE ((size_t)0)
#endif

static void sf_chunk_free_data(sf_chunk *c) {
#if defined(__linux__) && UINTPTR_MAX > 0xffffffffu
    if (c->mapped) {
        munmap(c->data, c->size);
        return;
    }
#endif
    sf_aligned_free(c->data);
}

struct sf_arena {
    sf_chunk *head;      /* main chunk first; overflow chunks follow */
    size_t used, high_water, system_allocs;
};

sf_status sf_arena_create(sf_arena **out) {
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_arena_create: out is NULL");
    *out = calloc(1, sizeof(sf_arena));
    if (!*out)
        return sf_error(SF_ERR_OOM, "sf_arena_create: out of memory");
    return SF_OK;
}

static void sf_free_chunks(sf_chunk *c) {
    while (c) {
        sf_chunk *n = c->next;
        sf_chunk_free_data(c);
        free(c);
        c = n;
    }
}

void sf_arena_destroy(sf_arena *arena) {
    if (!arena)
        return;
    sf_free_chunks(arena->head);
    free(arena);
}

static sf_status sf_new_chunk(sf_arena *a, size_t size, sf_chunk **out) {
    sf_chunk *c = calloc(1, sizeof *c);
    if (!c)
        return sf_error(SF_ERR_OOM, "arena: out of memory");
#if defined(__linux__) && UINTPTR_MAX > 0xffffffffu
    if (size <= SF_ARENA_RESERVE) {
        void *p = mmap(NULL, SF_ARENA_RESERVE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p != MAP_FAILED) {
            c->data = p;
            c->mapped = 1;
            size = SF_ARENA_RESERVE;
        }
    }
#endif
    if (!c->data)
        c->data = sf_aligned_alloc(size);
    if (!c->data) {
        free(c);
        return sf_error(SF_ERR_OOM, "arena: cannot allocate %zu bytes", size);
    }
    c->size = size;
    a->system_allocs++;
    *out = c;
    return SF_OK;
}

sf_status sf_arena_reset(sf_arena *a) {
    if (!a)
        return sf_error(SF_ERR_INVALID_ARG, "sf_arena_reset: NULL arena");
    if (a->head && a->head->next) {
        /* the last pass overflowed: replace everything by one chunk of the high-water size */
        sf_free_chunks(a->head);
        a->head = NULL;
    }
    if (!a->head && a->high_water > 0) {
        sf_chunk *c = NULL;
        sf_status st = sf_new_chunk(a, a->high_water, &c);
        if (st != SF_OK)
            return st;
        a->head = c;
    }
    if (a->head)
        a->head->used = 0;
    a->used = 0;
    return SF_OK;
}

sf_status sf_arena_trim(sf_arena *a) {
    if (!a)
        return sf_error(SF_ERR_INVALID_ARG, "sf_arena_trim: NULL arena");
    sf_free_chunks(a->head);
    a->head = NULL;
    a->used = 0;
    sf_heap_release();
    return SF_OK;
}

sf_status sf_arena_alloc(sf_arena *a, size_t bytes, void **out) {
    if (!a || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_arena_alloc: NULL argument");
    size_t need;
    if (!sf_add_ok(bytes, SF_EXTRA_BYTES + SF_ALIGN - 1, &need))
        return sf_error(SF_ERR_OOM, "sf_arena_alloc: size %zu overflows", bytes);
    need &= ~(size_t)(SF_ALIGN - 1);
    sf_chunk *last = a->head, *prev = NULL;
    size_t total = 0;
    while (last && last->next) {
        total += last->size;
        prev = last;
        last = last->next;
    }
    if (last && last->used == 0 && last->size < need) {
        /* an empty chunk too small for this request (left by a release): replace it rather
         * than stack another chunk after it */
        sf_chunk_free_data(last);
        free(last);
        if (prev)
            prev->next = NULL;
        else
            a->head = NULL;
        last = prev;
    } else if (last) {
        total += last->size;
    }
    if (!last || last->size - last->used < need) {
        /* grow geometrically so that a first pass wastes at most about as much as it uses */
        size_t size = need > ((size_t)1 << 20) ? need : ((size_t)1 << 20);
        if (size < total)
            size = total;
        sf_chunk *c = NULL;
        sf_status st = sf_new_chunk(a, size, &c);
        if (st != SF_OK)
            return st;
        if (last)
            last->next = c;
        else
            a->head = c;
        last = c;
    }
    *out = last->data + last->used;
    last->used += need;
    a->used += need;
    if (a->used > a->high_water)
        a->high_water = a->used;
    return SF_OK;
}

sf_arena_mark_t sf_arena_mark(const sf_arena *a) {
    sf_arena_mark_t m = {0, 0, 0};
    if (!a)
        return m;
    size_t idx = 0;
    const sf_chunk *c = a->head;
    while (c && c->next) {
        c = c->next;
        idx++;
    }
    m.chunk = idx;
    m.offset = c ? c->used : 0;
    m.used = a->used;
    return m;
}

sf_status sf_arena_release(sf_arena *a, sf_arena_mark_t m) {
    if (!a)
        return sf_error(SF_ERR_INVALID_ARG, "sf_arena_release: NULL arena");
    if (m.used > a->used)
        return sf_error(SF_ERR_INVALID_ARG, "sf_arena_release: mark is past the current position");
    size_t idx = 0;
    for (sf_chunk *c = a->head; c; c = c->next, idx++) {
        if (idx == m.chunk)
            c->used = m.offset;
        else if (idx > m.chunk)
            c->used = 0;
    }
    a->used = m.used;
    return SF_OK;
}

size_t sf_arena_used(const sf_arena *a) {
    return a ? a->used : 0;
}

size_t sf_arena_high_water(const sf_arena *a) {
    return a ? a->high_water : 0;
}

size_t sf_arena_system_allocs(const sf_arena *a) {
    return a ? a->system_allocs : 0;
}
