/* sf_runtime.c — engine initialization, the shared thread pool, CPU features, allocation. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xnnpack.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include "sf_internal.h"

static pthread_once_t sf_once = PTHREAD_ONCE_INIT;
static sf_status sf_init_status = SF_OK;
static char sf_init_message[512];
static pthread_rwlock_t sf_pool_lock = PTHREAD_RWLOCK_INITIALIZER;
static pthreadpool_t sf_pool = NULL;
static int sf_threads = 1;

static _Atomic uint64_t sf_macs = 0;

void sf_mac_counter_reset(void) {
    atomic_store_explicit(&sf_macs, 0, memory_order_relaxed);
}

uint64_t sf_mac_counter(void) {
    return atomic_load_explicit(&sf_macs, memory_order_relaxed);
}

void sf_mac_counter_add(uint64_t macs) {
    atomic_fetch_add_explicit(&sf_macs, macs, memory_order_relaxed);
}

const char *sf_version(void) {
    return "0.1.0";
}

const char *sf_xnn_status_str(int s) {
    switch ((enum xnn_status)s) {
    case xnn_status_success: return "success";
    case xnn_status_uninitialized: return "uninitialized";
    case xnn_status_invalid_parameter: return "invalid parameter";
    case xnn_status_invalid_state: return "invalid state";
    case xnn_status_unsupported_parameter: return "unsupported parameter";
    case xnn_status_unsupported_hardware: return "unsupported hardware";
    case xnn_status_out_of_memory: return "out of memory";
    }
    return "unknown XNNPACK status";
}

/* Count distinct (package, core) pairs in sysfs; fall back to the online CPU count. */
int sf_physical_cores(void) {
    static int cached = 0;
    if (cached > 0)
        return cached;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1)
        online = 1;
    enum { MAXC = 4096 };
    static long keys[MAXC];
    int nkeys = 0;
    for (long cpu = 0; cpu < online && cpu < MAXC; cpu++) {
        char path[128];
        long core = -1, pkg = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%ld/topology/core_id", cpu);
        FILE *f = fopen(path, "r");
        if (!f) {
            nkeys = 0;
            break;
        }
        if (fscanf(f, "%ld", &core) != 1)
            core = -1;
        fclose(f);
        snprintf(path, sizeof path,
                 "/sys/devices/system/cpu/cpu%ld/topology/physical_package_id", cpu);
        f = fopen(path, "r");
        if (f) {
            if (fscanf(f, "%ld", &pkg) != 1)
                pkg = 0;
            fclose(f);
        }
        if (core < 0) {
            nkeys = 0;
            break;
        }
        long key = pkg * 100000 + core;
        int seen = 0;
        for (int i = 0; i < nkeys; i++)
            if (keys[i] == key)
                seen = 1;
        if (!seen)
            keys[nkeys++] = key;
    }
    cached = nkeys > 0 ? nkeys : (int)online;
    return cached;
}

static void sf_do_init(void) {
    enum xnn_status xs = xnn_initialize(NULL);
    if (xs != xnn_status_success) {
        sf_init_status = SF_ERR_XNNPACK;
        snprintf(sf_init_message, sizeof sf_init_message, "xnn_initialize failed: %s",
                 sf_xnn_status_str(xs));
        return;
    }
    int n = sf_physical_cores();
    const char *env = getenv("SNAPFUSION_NUM_THREADS");
    if (env && *env) {
        long v = strtol(env, NULL, 10);
        if (v >= 1 && v <= 1024)
            n = (int)v;
    }
    sf_pool = n > 1 ? pthreadpool_create((size_t)n) : NULL;
    if (n > 1 && !sf_pool) {
        sf_init_status = SF_ERR_OOM;
        snprintf(sf_init_message, sizeof sf_init_message, "pthreadpool_create(%d) failed", n);
        return;
    }
    sf_threads = n;
}

sf_status sf_init(void) {
    pthread_once(&sf_once, sf_do_init);
    if (sf_init_status != SF_OK)
        return sf_error(sf_init_status, "%s", sf_init_message);
    return SF_OK;
}

sf_status sf_set_num_threads(int n) {
    if (n < 1 || n > 1024)
        return sf_error(SF_ERR_INVALID_ARG, "thread count must be in [1, 1024], got %d", n);
    sf_status st = sf_init();
    if (st != SF_OK)
        return st;
    pthread_rwlock_wrlock(&sf_pool_lock);
    if (n != sf_threads) {
        pthreadpool_t fresh = n > 1 ? pthreadpool_create((size_t)n) : NULL;
        if (n > 1 && !fresh) {
            pthread_rwlock_unlock(&sf_pool_lock);
            return sf_error(SF_ERR_OOM, "pthreadpool_create(%d) failed", n);
        }
        pthreadpool_destroy(sf_pool);
        sf_pool = fresh;
        sf_threads = n;
    }
    pthread_rwlock_unlock(&sf_pool_lock);
    return SF_OK;
}

int sf_get_num_threads(void) {
    sf_init();
    return sf_threads;
}

sf_status sf_compute_begin(pthreadpool_t *pool_out) {
    sf_status st = sf_init();
    if (st != SF_OK)
        return st;
    pthread_rwlock_rdlock(&sf_pool_lock);
    *pool_out = sf_pool;
    return SF_OK;
}

void sf_compute_end(void) {
    pthread_rwlock_unlock(&sf_pool_lock);
}

static void sf_noop_task(void *ctx, size_t i) {
    (void)ctx;
    (void)i;
}

void sf_pool_yield(void) {
    pthreadpool_t pool = NULL;
    if (sf_compute_begin(&pool) != SF_OK)
        return;
    if (pool)
        pthreadpool_parallelize_1d(pool, sf_noop_task, NULL, pthreadpool_get_threads_count(pool),
                                   PTHREADPOOL_FLAG_YIELD_WORKERS);
    sf_compute_end();
}

void sf_get_cpu_features(sf_cpu_features *out) {
    memset(out, 0, sizeof *out);
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    unsigned max_leaf = __get_cpuid_max(0, NULL);
    int os_avx = 0, os_avx512 = 0, os_amx = 0;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        out->fma = (c >> 12) & 1;
        if ((c >> 27) & 1) { /* OSXSAVE */
            unsigned xlo, xhi;
            __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
            os_avx = (xlo & 0x6) == 0x6;
            os_avx512 = (xlo & 0xe6) == 0xe6;
            os_amx = (xhi & 0x6) == 0x6; /* XCR0 bits 17, 18 */
        }
        if (!os_avx)
            out->fma = 0;
    }
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        out->avx2 = os_avx && ((b >> 5) & 1);
        out->avx512f = os_avx512 && ((b >> 16) & 1);
        out->avx512bw = os_avx512 && ((b >> 30) & 1);
        out->avx512vl = os_avx512 && ((b >> 31) & 1);
        out->avx512vnni = os_avx512 && ((c >> 11) & 1);
        out->avx512fp16 = os_avx512 && ((d >> 23) & 1);
        out->amx_int8 = os_amx && ((d >> 25) & 1);
        __cpuid_count(7, 1, a, b, c, d);
        out->avx512bf16 = os_avx512 && ((a >> 5) & 1);
    }
#elif defined(__aarch64__)
    out->neon = 1;
#if defined(__linux__)
    unsigned long hw = getauxval(AT_HWCAP);
#ifdef HWCAP_ASIMDDP
    out->neon_dot = (hw & HWCAP_ASIMDDP) != 0;
#endif
#ifdef HWCAP_ASIMDHP
    out->neon_fp16 = (hw & HWCAP_ASIMDHP) != 0;
#endif
#endif
#endif
}

void *sf_aligned_alloc(size_t bytes) {
    size_t total;
    if (!sf_add_ok(bytes, SF_EXTRA_BYTES + SF_ALIGN - 1, &total))
        return NULL;
    total &= ~(size_t)(SF_ALIGN - 1);
    void *p = NULL;
    if (posix_memalign(&p, SF_ALIGN, total) != 0)
        return NULL;
    return p;
}

void sf_aligned_free(void *p) {
    free(p);
}

void sf_heap_release(void) {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

/* ---- AMX ---------------------------------------------------------------------------------- */

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#include <immintrin.h>
#include <sys/syscall.h>
#define SF_ARCH_REQ_XCOMP_PERM 0x1023
#define SF_XFEATURE_XTILEDATA 18

static pthread_once_t sf_amx_once = PTHREAD_ONCE_INIT;
static unsigned sf_amx_parts = 0;

static void sf_amx_probe(void) {
    unsigned a, b, c, d, lo, hi, parts = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24))) /* AMX-TILE */
        return;
    if (d & (1u << 25))
        parts |= SF_AMX_INT8;
    if (d & (1u << 22))
        parts |= SF_AMX_BF16;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) /* OSXSAVE */
        return;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) /* XTILECFG, XTILEDATA */
        return;
    if (syscall(SYS_arch_prctl, SF_ARCH_REQ_XCOMP_PERM, SF_XFEATURE_XTILEDATA) != 0)
        return;
    sf_amx_parts = parts;
}

int sf_amx_supported(unsigned need) {
    pthread_once(&sf_amx_once, sf_amx_probe);
    return need != 0 && (sf_amx_parts & need) == need;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} sf_amx_config;

/* A constant in memory (the stores filling a stack copy could be dropped: SF_AMX_BARRIER). */
static const sf_amx_config sf_amx_cfg __attribute__((aligned(64))) = {
    1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

__attribute__((target("amx-tile"))) void sf_amx_begin(void) {
    SF_AMX_BARRIER();
    _tile_loadconfig(&sf_amx_cfg);
}

__attribute__((target("amx-tile"))) void sf_amx_end(void) {
    _tile_release();
}
#else
int sf_amx_supported(unsigned need) {
    (void)need;
    return 0;
}

void sf_amx_begin(void) {}

void sf_amx_end(void) {}
#endif

/* ---- blocked GEMM work split --------------------------------------------------------------- */

void sf_gemm_split_make(size_t m, size_t mr, size_t tb, size_t panels, size_t k, size_t kc_max,
                        size_t kc_align, size_t threads, sf_gemm_split *s) {
    memset(s, 0, sizeof *s);
    if (threads < 1)
        threads = 1;
    s->m = m;
    s->mr = mr;
    s->panels = panels;
    s->k = k;
    s->m_tiles = (m + mr - 1) / mr;
    s->m_blocks = (s->m_tiles + tb - 1) / tb;
    if (threads > 1) {
        /* a multiple of the thread count, so that threads get equal shares */
        s->m_blocks = (s->m_blocks + threads - 1) / threads * threads;
        if (s->m_blocks > s->m_tiles)
            s->m_blocks = s->m_tiles;
    }
    s->n_groups = 1;
    if (threads > 1 && s->m_blocks < 2 * threads) {
        s->n_groups = (4 * threads + s->m_blocks - 1) / s->m_blocks;
        if (s->n_groups > panels)
            s->n_groups = panels;
    }
    s->k_blocks = (k + kc_max - 1) / kc_max;
    s->kc = ((k + s->k_blocks - 1) / s->k_blocks + kc_align - 1) / kc_align * kc_align;
    s->items = s->m_blocks * s->n_groups;
    s->workers = s->items < threads ? s->items : threads;
}

void sf_gemm_split_item(const sf_gemm_split *s, size_t item, size_t *t0, size_t *t1,
                        size_t *row0, size_t *row1, size_t *p0, size_t *p1) {
    size_t mb = item / s->n_groups, ng = item % s->n_groups;
    *t0 = mb * s->m_tiles / s->m_blocks;
    *t1 = (mb + 1) * s->m_tiles / s->m_blocks;
    *row0 = *t0 * s->mr;
    *row1 = *t1 * s->mr < s->m ? *t1 * s->mr : s->m;
    *p0 = ng * s->panels / s->n_groups;
    *p1 = (ng + 1) * s->panels / s->n_groups;
}

/* ---- per-thread growable scratch ---------------------------------------------------------- */

typedef struct {
    void *buf[SF_SCRATCH_SLOTS];
    size_t cap[SF_SCRATCH_SLOTS];
} sf_scratch;

static pthread_once_t sf_scratch_once = PTHREAD_ONCE_INIT;
static pthread_key_t sf_scratch_key;
static int sf_scratch_ok = 0;

static void sf_scratch_free(void *p) {
    sf_scratch *s = p;
    if (!s)
        return;
    for (int i = 0; i < SF_SCRATCH_SLOTS; i++)
        sf_aligned_free(s->buf[i]);
    free(s);
}

static void sf_scratch_init(void) {
    sf_scratch_ok = pthread_key_create(&sf_scratch_key, sf_scratch_free) == 0;
}

void *sf_thread_scratch(int slot, size_t bytes) {
    if (slot < 0 || slot >= SF_SCRATCH_SLOTS)
        return NULL;
    pthread_once(&sf_scratch_once, sf_scratch_init);
    if (!sf_scratch_ok)
        return NULL;
    sf_scratch *s = pthread_getspecific(sf_scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return NULL;
        if (pthread_setspecific(sf_scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->cap[slot] < bytes) {
        size_t cap = bytes + bytes / 4;
        void *b = sf_aligned_alloc(cap);
        if (!b)
            return NULL;
        sf_aligned_free(s->buf[slot]);
        s->buf[slot] = b;
        s->cap[slot] = cap;
    }
    return s->buf[slot];
}
