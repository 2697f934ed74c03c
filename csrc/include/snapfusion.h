/*
 * snapfusion.h — public C API of the snapfusion engine.
 *
 * The engine runs diffusion models on the CPU: XNNPACK does convolutions and fully
 * connected layers, our own vectorized C does the rest (norms, attention, activations).
 * Activations are float32 and NHWC; weights may be stored as float16/bfloat16/int8.
 *
 * Usage:
 *
 *     sf_status st = sf_init();                       // once per process (idempotent)
 *     if (st != SF_OK) fprintf(stderr, "%s\n", sf_last_error());
 *     sf_set_num_threads(2);
 *
 *     sf_conv2d_params p;
 *     sf_conv2d_params_default(&p);
 *     p.in_channels = 320; p.out_channels = 320; p.kernel_h = p.kernel_w = 3;
 *     p.pad_top = p.pad_bottom = p.pad_left = p.pad_right = 1;
 *     sf_conv2d *conv = NULL;
 *     st = sf_conv2d_create(&p, weight_oihw, bias, &conv);  // packs the weights
 *     st = sf_conv2d_run(conv, x_nhwc, 1, 64, 64, y_nhwc);  // (1, 64, 64, 320)
 *     sf_conv2d_destroy(conv);
 *
 * Conventions:
 * - Every fallible function returns an sf_status; on failure sf_last_error() gives a
 *   human-readable message (thread-local, valid until the next failing call of this thread).
 *   No function aborts or exits on bad data.
 * - Results come back through `*_out` pointers; `create` functions return owning handles that
 *   the matching `destroy` frees (destroy accepts NULL).
 * - `const T *` parameters are borrowed for the duration of the call only, unless stated.
 * - Sizes are size_t and every size product is overflow-checked.
 * - Compute functions run on the engine's shared thread pool (see sf_set_num_threads).
 */
#ifndef SNAPFUSION_H
#define SNAPFUSION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SF_VERSION_MAJOR 0
#define SF_VERSION_MINOR 1
#define SF_VERSION_PATCH 0

/* ------------------------------------------------------------------------------------------ */
/* Status and errors                                                                          */
/* ------------------------------------------------------------------------------------------ */

typedef enum {
    SF_OK = 0,
    SF_ERR_INVALID_ARG,  /* a bad argument: NULL pointer, zero or negative size, bad option */
    SF_ERR_SHAPE,        /* shapes that do not agree */
    SF_ERR_OOM,          /* an allocation failed */
    SF_ERR_IO,           /* a file could not be opened, read or mapped */
    SF_ERR_FORMAT,       /* a file's contents are malformed */
    SF_ERR_UNSUPPORTED,  /* valid but not supported (e.g. an unknown dtype) */
    SF_ERR_XNNPACK,      /* XNNPACK returned an error */
    SF_ERR_CANCELLED     /* a callback asked to stop */
} sf_status;

/* Static name of a status ("SF_ERR_SHAPE"). Never NULL. */
const char *sf_status_str(sf_status status);

/* Message of the last failure on the calling thread ("" if none). Never NULL. */
const char *sf_last_error(void);

/* Clear the calling thread's last error message. */
void sf_clear_error(void);

/* ------------------------------------------------------------------------------------------ */
/* Runtime: initialization, threads, CPU features                                             */
/* ------------------------------------------------------------------------------------------ */

/* Initialize XNNPACK and the shared thread pool (default: physical cores). Idempotent and
 * thread-safe. Every compute function calls it implicitly. */
sf_status sf_init(void);

/* Set the number of threads of the shared pool. n >= 1 (SF_ERR_INVALID_ARG otherwise; n is
 * capped at 1024). Must not be called while another thread computes: it waits for running
 * operators to finish. */
sf_status sf_set_num_threads(int n);

/* Current number of threads of the shared pool (after sf_init; 1 if not initialized). */
int sf_get_num_threads(void);

/* Number of physical cores of this machine (>= 1). */
int sf_physical_cores(void);

typedef struct {
    int avx2, fma, avx512f, avx512bw, avx512vl, avx512vnni, avx512bf16, avx512fp16, amx_int8;
    int neon, neon_dot, neon_fp16; /* Arm */
} sf_cpu_features;

/* CPU features of this machine, as detected at run time. */
void sf_get_cpu_features(sf_cpu_features *out);

/* "0.1.0". */
const char *sf_version(void);

/* Human-readable description of the compute path our own kernels took ("avx512", "avx2",
 * "generic"). */
const char *sf_kernel_isa(void);

/* ------------------------------------------------------------------------------------------ */
/* Tensors and storage dtypes                                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef enum { SF_DTYPE_F32 = 0, SF_DTYPE_F16, SF_DTYPE_BF16, SF_DTYPE_I8 } sf_dtype;

#define SF_MAX_DIMS 8

/* Size in bytes of one element of a dtype. */
size_t sf_dtype_size(sf_dtype dtype);

/* Static name ("F32", "F16", "BF16", "I8"). */
const char *sf_dtype_name(sf_dtype dtype);

/* Convert n elements of a storage dtype to float32 (I8 values are converted as integers,
 * scales are applied by the caller). */
sf_status sf_convert_to_f32(sf_dtype dtype, const void *src, size_t n, float *dst);

/* float32 <-> float16/bfloat16 conversions (round to nearest even, NaN kept). */
void sf_f32_to_f16(const float *src, size_t n, uint16_t *dst);
void sf_f16_to_f32(const uint16_t *src, size_t n, float *dst);
void sf_f32_to_bf16(const float *src, size_t n, uint16_t *dst);
void sf_bf16_to_f32(const uint16_t *src, size_t n, float *dst);

/* ------------------------------------------------------------------------------------------ */
/* Arena: activation memory reused across calls                                              */
/* ------------------------------------------------------------------------------------------ */

/* A bump allocator of 64-byte-aligned blocks. A forward pass resets it at its start and
 * allocates its activations from it; after the first pass at a given shape the arena owns a
 * chunk large enough and later passes allocate nothing from the system. */
typedef struct sf_arena sf_arena;

sf_status sf_arena_create(sf_arena **out);
void sf_arena_destroy(sf_arena *arena);
/* Forget all allocations (memory kept). If the previous pass overflowed into extra chunks,
 * they are merged into one chunk of the high-water size. */
sf_status sf_arena_reset(sf_arena *arena);
/* Allocate `bytes` (rounded up to 64, plus over-read padding for SIMD/XNNPACK). */
sf_status sf_arena_alloc(sf_arena *arena, size_t bytes, void **out);
/* Stack discipline: sf_arena_mark returns the current position; sf_arena_release frees
 * everything allocated after it (blocks allocate their scratch, compute, then release). */
typedef struct {
    size_t chunk, offset, used;
} sf_arena_mark_t;
sf_arena_mark_t sf_arena_mark(const sf_arena *arena);
sf_status sf_arena_release(sf_arena *arena, sf_arena_mark_t mark);
/* Bytes handed out since the last reset, and the largest such figure seen. */
size_t sf_arena_used(const sf_arena *arena);
size_t sf_arena_high_water(const sf_arena *arena);
/* Number of system allocations the arena made over its life (for tests). */
size_t sf_arena_system_allocs(const sf_arena *arena);

/* ------------------------------------------------------------------------------------------ */
/* XNNPACK-backed operators: convolution and fully connected                                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    size_t in_channels, out_channels;
    uint32_t kernel_h, kernel_w;
    uint32_t stride_h, stride_w;
    uint32_t pad_top, pad_left, pad_bottom, pad_right; /* asymmetric allowed */
    uint32_t groups; /* 1 (dense) or in_channels == out_channels == groups (depthwise) */
    float output_min, output_max; /* fused clamp; -INFINITY/+INFINITY for none */
} sf_conv2d_params;

/* kernel 1x1, stride 1, no padding, groups 1, no clamp. */
void sf_conv2d_params_default(sf_conv2d_params *p);

typedef struct sf_conv2d sf_conv2d;

/* Create a 2-D convolution. weight: PyTorch layout (out, in/groups, kh, kw) float32; bias:
 * (out,) or NULL. Weights are packed at creation; the arrays may be freed afterwards. */
sf_status sf_conv2d_create(const sf_conv2d_params *p, const float *weight, const float *bias,
                           sf_conv2d **out);
/* Output spatial size for an input of h x w (SF_ERR_SHAPE if the kernel does not fit). */
sf_status sf_conv2d_output_size(const sf_conv2d *conv, size_t h, size_t w, size_t *out_h,
                                size_t *out_w);
/* x: (batch, h, w, in) NHWC; y: (batch, out_h, out_w, out) NHWC; x and y must not overlap. */
sf_status sf_conv2d_run(sf_conv2d *conv, const float *x, size_t batch, size_t h, size_t w,
                        float *y);
void sf_conv2d_destroy(sf_conv2d *conv);

typedef struct sf_linear sf_linear;

/* Create y = x W^T + b. weight: (out, in) float32 (PyTorch layout); bias (out,) or NULL. */
sf_status sf_linear_create(size_t in_features, size_t out_features, const float *weight,
                           const float *bias, sf_linear **out);
/* x: (rows, in); y: (rows, out). */
sf_status sf_linear_run(sf_linear *lin, const float *x, size_t rows, float *y);
void sf_linear_destroy(sf_linear *lin);

/* ------------------------------------------------------------------------------------------ */
/* Our own kernels (float32). All NHWC / row-major. In-place (y == x) is allowed where noted. */
/* ------------------------------------------------------------------------------------------ */

/* Group norm over NHWC x: (batch, hw, channels), `groups` divides channels. gamma/beta:
 * (channels,) or NULL (1 and 0). If fuse_silu, y = silu(norm(x)). In-place allowed. */
sf_status sf_group_norm(const float *x, size_t batch, size_t hw, size_t channels, size_t groups,
                        float eps, const float *gamma, const float *beta, int fuse_silu,
                        float *y);

/* Layer norm over the last dimension: x (rows, dim). gamma/beta (dim,) or NULL. In-place
 * allowed. */
sf_status sf_layer_norm(const float *x, size_t rows, size_t dim, float eps, const float *gamma,
                        const float *beta, float *y);

typedef enum {
    SF_ACT_SILU = 0,
    SF_ACT_GELU,       /* exact, erf */
    SF_ACT_GELU_TANH,  /* tanh approximation */
    SF_ACT_QUICK_GELU, /* x * sigmoid(1.702 x) */
    SF_ACT_SIGMOID
} sf_activation;

/* y = act(x) elementwise over n values. In-place allowed. */
sf_status sf_activation_run(sf_activation act, const float *x, size_t n, float *y);

/* GEGLU as diffusers: x (rows, 2*dim) = [hidden | gate]; y (rows, dim) = hidden * gelu(gate)
 * (exact GELU, or tanh if approximate). */
sf_status sf_geglu(const float *x, size_t rows, size_t dim, int approximate, float *y);

/* Softmax over the last dimension: x (rows, n). In-place allowed. */
sf_status sf_softmax(const float *x, size_t rows, size_t n, float *y);

/* Nearest-neighbour 2x upsample: x (batch, h, w, c) -> y (batch, 2h, 2w, c). */
sf_status sf_upsample_nearest2x(const float *x, size_t batch, size_t h, size_t w, size_t c,
                                float *y);

/* y = a + b over n values (y may alias a or b). */
sf_status sf_add(const float *a, const float *b, size_t n, float *y);

/* y = alpha * a + beta * b over n values (y may alias a or b). */
sf_status sf_axpby(float alpha, const float *a, float beta, const float *b, size_t n, float *y);

/* Broadcast add of a per-(batch, channel) vector: x (batch, rows, c) += v (batch, c), e.g. the
 * time embedding of a ResNet block. y may alias x. */
sf_status sf_add_rows(const float *x, size_t batch, size_t rows, size_t c, const float *v,
                      float *y);

/* Channel concat: a (rows, ca), b (rows, cb) -> y (rows, ca + cb). */
sf_status sf_concat_channels(const float *a, size_t ca, const float *b, size_t cb, size_t rows,
                             float *y);

/* Embedding lookup: table (vocab, dim); ids (n,) int64, each in [0, vocab) (SF_ERR_INVALID_ARG
 * naming the bad id otherwise); y (n, dim). */
sf_status sf_embedding(const float *table, size_t vocab, size_t dim, const int64_t *ids,
                       size_t n, float *y);

/* Sinusoidal timestep embedding as diffusers' get_timestep_embedding: t (n,), y (n, dim).
 * half = dim/2; exponent_i = -ln(max_period) * i / (half - downscale_freq_shift);
 * emb = scale * t * exp(exponent); y = [sin, cos] (or [cos, sin] if flip_sin_to_cos);
 * odd dim pads one zero column. */
sf_status sf_timestep_embedding(const float *t, size_t n, size_t dim, int flip_sin_to_cos,
                                float downscale_freq_shift, float scale, float max_period,
                                float *y);

/* ------------------------------------------------------------------------------------------ */
/* Memory-efficient multi-head scaled-dot-product attention                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    size_t batch, heads, q_len, kv_len, head_dim;
    /* Row strides (in floats) of q, k, v, out: the tensors are (batch, len, stride) with head h
     * at columns [h*head_dim, (h+1)*head_dim). A stride of 0 means heads*head_dim. This lets
     * q/k/v point into one fused QKV projection output. */
    size_t q_stride, k_stride, v_stride, out_stride;
    float scale; /* 0 means 1/sqrt(head_dim) */
    int causal;  /* mask keys j > i (CLIP's text encoder) */
} sf_attention_params;

/* Bytes of scratch that sf_attention needs (independent of the data, O(threads * block *
 * (block + head_dim)); never O(q_len * kv_len)). */
sf_status sf_attention_workspace_size(const sf_attention_params *p, size_t *bytes);

/* out = softmax(q k^T * scale [+ causal mask]) v per batch and head. workspace: at least
 * sf_attention_workspace_size bytes, 64-byte aligned, or NULL (then the function allocates
 * and frees its own). */
sf_status sf_attention(const sf_attention_params *p, const float *q, const float *k,
                       const float *v, float *out, void *workspace);

/* ------------------------------------------------------------------------------------------ */
/* safetensors reader                                                                         */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    const char *name;           /* NUL-terminated, valid UTF-8 */
    sf_dtype dtype;
    int ndim;                   /* 0..SF_MAX_DIMS */
    int64_t shape[SF_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data;           /* inside the mapping; may be unaligned for F16/BF16/I8 */
} sf_st_tensor;

typedef struct sf_safetensors sf_safetensors;

/* mmap and validate a safetensors file (strictly: see sf_safetensors.c). */
sf_status sf_safetensors_open(const char *path, sf_safetensors **out);
/* Validate a file held in memory (not copied: `data` must outlive the handle). */
sf_status sf_safetensors_open_memory(const void *data, size_t size, sf_safetensors **out);
void sf_safetensors_close(sf_safetensors *st);
size_t sf_safetensors_count(const sf_safetensors *st);
/* i-th tensor in name order (NULL if i >= count). */
const sf_st_tensor *sf_safetensors_at(const sf_safetensors *st, size_t i);
/* Tensor by name, NULL if absent. */
const sf_st_tensor *sf_safetensors_find(const sf_safetensors *st, const char *name);
/* Value of a string entry of "__metadata__", NULL if absent. */
const char *sf_safetensors_metadata(const sf_safetensors *st, const char *key);
size_t sf_safetensors_metadata_count(const sf_safetensors *st);
/* i-th metadata key/value pair (sorted by key); SF_ERR_INVALID_ARG if out of range. */
sf_status sf_safetensors_metadata_at(const sf_safetensors *st, size_t i, const char **key,
                                     const char **value);

#ifdef __cplusplus
}
#endif

#endif /* SNAPFUSION_H */
