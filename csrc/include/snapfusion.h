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

/* The back end that dense convolutions and linear layers created now run on: "own avx512"
 * (the engine's own AVX-512 GEMM and Winograd convolution, on CPUs with AVX-512F) or "xnnpack"
 * (every other CPU, or the environment variable SNAPFUSION_GEMM=xnnpack). Layers keep the
 * back end they were created with. */
const char *sf_gemm_backend(void);

/* "0.1.0". */
const char *sf_version(void);

/* Process-wide count of multiply-accumulates performed by convolutions, fully connected layers
 * and attention since the last reset (for MAC reports such as `snapfusion info`). */
void sf_mac_counter_reset(void);
uint64_t sf_mac_counter(void);

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
/* Give the arena's memory back to the system: everything allocated from it is freed (call it
 * between passes). The next pass allocates one chunk of the high-water size again. */
sf_status sf_arena_trim(sf_arena *arena);
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
    uint32_t groups; /* 1 (dense), in_channels == out_channels == groups (depthwise), or any
                      * divisor of both channel counts (grouped) */
    float output_min, output_max; /* fused clamp; -INFINITY/+INFINITY for none */
} sf_conv2d_params;

/* kernel 1x1, stride 1, no padding, groups 1, no clamp. */
void sf_conv2d_params_default(sf_conv2d_params *p);

typedef struct sf_conv2d sf_conv2d;

/* Create a 2-D convolution. weight: PyTorch layout (out, in/groups, kh, kw) float32; bias:
 * (out,) or NULL. Weights are packed at creation; the arrays may be freed afterwards. Dense
 * layers run on the engine's own AVX-512 GEMM where the CPU has it, else (and for depthwise or
 * grouped layers, or with SNAPFUSION_GEMM=xnnpack in the environment) on XNNPACK. On the own
 * GEMM, 3x3 stride-1 layers with 32 or more input channels and at most 1920 * 640 weights per
 * tap run as Winograd F(2x2, 3x3) (2.25x fewer multiply-accumulates; its weights take 16/9 of
 * the direct ones); SNAPFUSION_WINOGRAD=0 in the environment disables it, =force uses it for
 * every 3x3 stride-1 layer on the own GEMM. Both variables are read at creation. One operator
 * runs one call at a time (concurrent calls on the same operator wait for each other). */
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
    /* 1: Q K^T and P V as bfloat16 products with float32 sums on AMX-BF16 tiles, where the CPU
     * has them and causal is 0 (the engine's int8 models use it); otherwise ignored. Scores
     * and probabilities are rounded to 8 significant bits: about 1e-2 relative error. */
    int bf16;
} sf_attention_params;

/* Bytes of scratch that sf_attention needs (independent of the data, O(threads * block *
 * (block + head_dim)); never O(q_len * kv_len)). The size is for the current thread count:
 * query it again after sf_set_num_threads. */
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

/* ------------------------------------------------------------------------------------------ */
/* Weights: named tensors of a model, from one safetensors file                               */
/* ------------------------------------------------------------------------------------------ */

/* A model's view of a safetensors file: lookups by the model's tensor names (optionally through
 * a rename table, e.g. diffusers names -> the names of an original single-file checkpoint),
 * conversion to float32 with shape checks, and bookkeeping of which tensors were used so that
 * unexpected tensors are reported. Owns the safetensors handle. */
typedef struct sf_weights sf_weights;

sf_status sf_weights_open(const char *path, sf_weights **out);
/* Take ownership of an opened safetensors handle (closed by sf_weights_close, also on error).
 * `label` names the source in messages (e.g. the path). */
sf_status sf_weights_from_safetensors(sf_safetensors *st, const char *label, sf_weights **out);
void sf_weights_close(sf_weights *w);
/* Model names are looked up as `prefix + name` in the file ("" for none). The string is copied. */
sf_status sf_weights_set_prefix(sf_weights *w, const char *prefix);
/* Explicit renames: model name -> file name (applied before the prefix is added). Copied. */
sf_status sf_weights_add_rename(sf_weights *w, const char *model_name, const char *file_name);
/* Label used in messages. */
const char *sf_weights_label(const sf_weights *w);
/* 1 if the model name exists in the file. */
int sf_weights_has(const sf_weights *w, const char *name);
/* The tensor for a model name, or NULL. Does not mark it used. */
const sf_st_tensor *sf_weights_find(const sf_weights *w, const char *name);
/* Load a float tensor (F32/F16/BF16 converted to float32) of exactly the given shape into a new
 * buffer (free with sf_weights_free_buffer), and mark it used. Missing tensor -> SF_ERR_FORMAT,
 * wrong shape -> SF_ERR_SHAPE, I8 data under a float name -> SF_ERR_FORMAT; messages name the
 * file and the tensor. ndim may be 0 for scalars. */
sf_status sf_weights_load_f32(sf_weights *w, const char *name, int ndim, const int64_t *shape,
                              float **out);
void sf_weights_free_buffer(float *buf);
/* Number of tensors of the file under the prefix that were never loaded, and the first such
 * name (NULL if none). */
size_t sf_weights_unused(const sf_weights *w, const char **first_name);

/* ------------------------------------------------------------------------------------------ */
/* UNet (diffusers UNet2DConditionModel, with SnapFusion's elastic block list)                */
/* ------------------------------------------------------------------------------------------ */

#define SF_UNET_MAX_BLOCKS 8
#define SF_UNET_MAX_LAYERS 8

/* The architecture, as diffusers' unet/config.json describes it. Per-block arrays are indexed
 * by down block (up block i uses down block n_blocks-1-i's entries, as diffusers reverses
 * them). The elastic block list says, per layer, whether its ResNet is kept and how many
 * transformer blocks its attention has (0 = none). */
typedef struct {
    size_t in_channels, out_channels;
    size_t n_blocks;
    size_t block_out_channels[SF_UNET_MAX_BLOCKS];
    size_t layers_per_block[SF_UNET_MAX_BLOCKS];     /* down block i; up block has +1 */
    size_t heads[SF_UNET_MAX_BLOCKS];                /* attention heads per down block */
    int only_cross_attention[SF_UNET_MAX_BLOCKS];
    size_t cross_attention_dim;
    int has_mid_block;
    size_t norm_num_groups;
    float norm_eps;
    int flip_sin_to_cos;
    float freq_shift;
    size_t time_embed_dim;                           /* 4 * block_out_channels[0] */
    /* elastic block list (filled with the full architecture by default) */
    int down_resnet[SF_UNET_MAX_BLOCKS][SF_UNET_MAX_LAYERS];
    size_t down_attn[SF_UNET_MAX_BLOCKS][SF_UNET_MAX_LAYERS];
    int mid_resnet[2];
    size_t mid_attn;
    int up_resnet[SF_UNET_MAX_BLOCKS][SF_UNET_MAX_LAYERS + 1]; /* indexed by up block */
    size_t up_attn[SF_UNET_MAX_BLOCKS][SF_UNET_MAX_LAYERS + 1];
} sf_unet_config;

/* Parse diffusers' unet/config.json text (and its optional "elastic_blocks" entry, see
 * docs/elastic_blocks.md). Unknown block types, non-numeric values and inconsistent lists give
 * SF_ERR_FORMAT naming the key. */
sf_status sf_unet_config_from_json(const char *json, size_t len, sf_unet_config *out);

typedef struct sf_unet sf_unet;

/* Build the UNet from its weights (diffusers names). Missing tensors, wrong shapes and, when
 * strict, tensors the architecture does not use give SF_ERR_FORMAT / SF_ERR_SHAPE naming the
 * file and tensor. The weights may be closed after creation. */
sf_status sf_unet_create(const sf_unet_config *cfg, sf_weights *w, int strict, sf_unet **out);
void sf_unet_destroy(sf_unet *u);
const sf_unet_config *sf_unet_get_config(const sf_unet *u);
/* Bytes of the activation arena (the largest pass so far). */
size_t sf_unet_arena_bytes(const sf_unet *u);
/* Free the activation memory between calls (e.g. before decoding, to lower a generation's
 * peak memory); the next call allocates it again. */
sf_status sf_unet_trim(sf_unet *u);

/* Debug hook: called with a name ("conv_in", "down_block_0", "mid_block", "up_block_1", ...)
 * and the activation (batch, h, w, c) after each stage. NULL disables. */
typedef void (*sf_tensor_hook)(void *user, const char *name, const float *x, size_t batch,
                               size_t h, size_t w, size_t c);
void sf_unet_set_hook(sf_unet *u, sf_tensor_hook hook, void *user);

/* One UNet call. sample: (B, H, W, in_channels) NHWC; timesteps: (B,) float; ctx: (B, ctx_len,
 * cross_attention_dim); out: (B, H, W, out_channels). Activations live in the UNet's arena:
 * after the first call at a shape, calls allocate nothing. */
sf_status sf_unet_run(sf_unet *u, const float *sample, size_t batch, size_t h, size_t w,
                      const float *timesteps, const float *ctx, size_t ctx_len, float *out);

/* ------------------------------------------------------------------------------------------ */
/* VAE (diffusers AutoencoderKL): encoder and decoder                                          */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    size_t in_channels, out_channels, latent_channels;
    size_t n_blocks;
    size_t block_out_channels[SF_UNET_MAX_BLOCKS];         /* encoder */
    size_t decoder_block_out_channels[SF_UNET_MAX_BLOCKS]; /* decoder (channel-reduced ones) */
    size_t layers_per_block;
    size_t norm_num_groups;
    float scaling_factor;
    int mid_attention;                      /* mid_block_add_attention */
    int use_quant_conv, use_post_quant_conv;
    size_t decoder_layers_per_block;        /* decoder levels have this + 1 ResNets */
    size_t decoder_norm_num_groups;         /* GroupNorm groups of the decoder */
} sf_vae_config;

/* Parse vae/config.json (diffusers keys, plus the optional channel-reduced decoder keys
 * "decoder_block_out_channels", "decoder_layers_per_block" and "decoder_norm_num_groups" of
 * docs/elastic_blocks.md; absent, they equal the encoder's values). */
sf_status sf_vae_config_from_json(const char *json, size_t len, sf_vae_config *out);

typedef struct sf_vae sf_vae;

/* Build the encoder and/or the decoder. strict: report tensors the built parts do not use
 * (only meaningful when both parts are built). */
sf_status sf_vae_create(const sf_vae_config *cfg, sf_weights *w, int encoder, int decoder,
                        int strict, sf_vae **out);
void sf_vae_destroy(sf_vae *v);
const sf_vae_config *sf_vae_get_config(const sf_vae *v);
void sf_vae_set_hook(sf_vae *v, sf_tensor_hook hook, void *user);
/* Free the activation memory between calls; the next call allocates it again. */
sf_status sf_vae_trim(sf_vae *v);
/* Size of the decoded image for a latent of h x w (x 2^(n_blocks-1)). */
void sf_vae_decoded_size(const sf_vae *v, size_t h, size_t w, size_t *oh, size_t *ow);
/* Size of the latent for an image of h x w. */
void sf_vae_encoded_size(const sf_vae *v, size_t h, size_t w, size_t *oh, size_t *ow);
/* z: (B, h, w, latent) — not divided by scaling_factor here; img: (B, H, W, out_channels),
 * unclamped. */
sf_status sf_vae_decode(sf_vae *v, const float *z, size_t batch, size_t h, size_t w, float *img);
/* x: (B, H, W, in_channels) in [-1, 1]; mean, std (and logvar if not NULL): (B, h, w, latent),
 * logvar clamped to [-30, 20], std = exp(logvar / 2). */
sf_status sf_vae_encode(sf_vae *v, const float *x, size_t batch, size_t h, size_t w, float *mean,
                        float *std, float *logvar);

/* ------------------------------------------------------------------------------------------ */
/* CLIP text encoder (transformers CLIPTextModel)                                             */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
    size_t vocab_size, hidden_size, intermediate_size, num_layers, num_heads, max_positions;
    sf_activation act; /* SF_ACT_QUICK_GELU or SF_ACT_GELU (hidden_act) */
    float eps;
    int64_t eos_token_id; /* 2 (legacy SD configs): pool at argmax(ids); else first eos */
} sf_clip_config;

/* Parse text_encoder/config.json (transformers keys). */
sf_status sf_clip_config_from_json(const char *json, size_t len, sf_clip_config *out);

typedef struct sf_clip sf_clip;

/* Tensor names may carry the "text_model." prefix (transformers) or not. */
sf_status sf_clip_create(const sf_clip_config *cfg, sf_weights *w, int strict, sf_clip **out);
void sf_clip_destroy(sf_clip *c);
const sf_clip_config *sf_clip_get_config(const sf_clip *c);
/* Free the activation memory between calls; the next call allocates it again. */
sf_status sf_clip_trim(sf_clip *c);
/* ids: (B, L) with L <= max_positions and every id < vocab_size. hidden: (B, L, D) =
 * final_layer_norm(output of layer num_layers - clip_skip), i.e. last_hidden_state for
 * clip_skip 0 and diffusers' clip_skip semantics otherwise. pooled (B, D) or NULL: the final
 * state at the pooling position. */
sf_status sf_clip_run(sf_clip *c, const int64_t *ids, size_t batch, size_t len, size_t clip_skip,
                      float *hidden, float *pooled);

/* ------------------------------------------------------------------------------------------ */
/* Schedulers (diffusers' noise schedulers: same timesteps, scalings and trajectories)        */
/* ------------------------------------------------------------------------------------------ */

/* The samplers of diffusers, configured by the keys of a scheduler_config.json and reproducing
 * diffusers v0.25.1 (float32 arithmetic where diffusers uses torch float32, float64 where it
 * uses numpy), so that timesteps are equal and trajectories agree to float32 rounding.
 *
 *     sf_scheduler *s = NULL;
 *     st = sf_scheduler_create_from_json(text, len, &s);      // scheduler_config.json
 *     st = sf_scheduler_set_timesteps(s, 25);
 *     size_t count;
 *     const double *ts = sf_scheduler_timesteps(s, &count);   // count may exceed 25 (PNDM)
 *     scale(x, sf_scheduler_init_noise_sigma(s));              // x: initial noise
 *     for (size_t i = 0; i < count; i++) {
 *         st = sf_scheduler_scale_model_input(s, i, x, n, x_in);
 *         unet(x_in, ts[i], eps);
 *         st = sf_scheduler_step(s, eps, x, n, noise_or_NULL, x);   // in place
 *     }
 *     sf_scheduler_destroy(s);
 *
 * A scheduler holds its multistep state (PNDM's previous outputs, DPM-Solver's, LMS's
 * derivatives); its buffers are allocated on the first step at a sample size and reused. One
 * scheduler serves one trajectory at a time and must not be used by two threads at once. */

typedef enum {
    SF_SCHEDULER_PNDM = 0,            /* PNDMScheduler */
    SF_SCHEDULER_DDIM,                /* DDIMScheduler (eta = 0) */
    SF_SCHEDULER_EULER,               /* EulerDiscreteScheduler */
    SF_SCHEDULER_EULER_ANCESTRAL,     /* EulerAncestralDiscreteScheduler (noise from the caller) */
    SF_SCHEDULER_DPMSOLVER_MULTISTEP, /* DPMSolverMultistepScheduler */
    SF_SCHEDULER_LCM,                 /* LCMScheduler (noise from the caller) */
    SF_SCHEDULER_LMS                  /* LMSDiscreteScheduler */
} sf_scheduler_type;

typedef enum { SF_PREDICT_EPSILON = 0, SF_PREDICT_V, SF_PREDICT_SAMPLE } sf_prediction_type;
typedef enum {
    SF_BETAS_LINEAR = 0,
    SF_BETAS_SCALED_LINEAR,
    SF_BETAS_SQUAREDCOS_CAP_V2
} sf_beta_schedule;
typedef enum {
    SF_SPACING_LEADING = 0,
    SF_SPACING_TRAILING,
    SF_SPACING_LINSPACE
} sf_timestep_spacing;
/* DPM-Solver variants ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"; the last one takes
 * noise from the caller) and second-order updates ("midpoint", "heun"). */
typedef enum { SF_DPM_PLUSPLUS = 0, SF_DPM_DPMSOLVER, SF_DPM_SDE_PLUSPLUS } sf_dpm_algorithm;
typedef enum { SF_DPM_MIDPOINT = 0, SF_DPM_HEUN } sf_dpm_solver_type;
/* Last sigma of Euler and DPM-Solver schedules. DEFAULT (key absent or null): diffusers
 * v0.25.1 (Euler: 0; DPM-Solver: sigma at t=0, or the last Karras sigma). ZERO and SIGMA_MIN as
 * the "final_sigmas_type" of later diffusers (ZERO makes DPM-Solver's last step first order). */
typedef enum {
    SF_FINAL_SIGMAS_DEFAULT = 0,
    SF_FINAL_SIGMAS_ZERO,
    SF_FINAL_SIGMAS_SIGMA_MIN
} sf_final_sigmas_type;

/* A scheduler configuration: diffusers' keys, with diffusers' per-class defaults from
 * sf_scheduler_config_default. Fields a class does not use are ignored. */
typedef struct {
    sf_scheduler_type type;
    int64_t num_train_timesteps;       /* [2, 1048576] */
    double beta_start, beta_end;       /* in [0, 1) */
    sf_beta_schedule beta_schedule;
    const double *trained_betas;       /* num_train_timesteps betas in [0, 1), or NULL; borrowed
                                        * by sf_scheduler_create (which copies them) */
    sf_prediction_type prediction_type;
    sf_timestep_spacing timestep_spacing;
    int64_t steps_offset;              /* [0, num_train_timesteps) */
    int rescale_betas_zero_snr;        /* DDIM, Euler, Euler-A, LCM, DPM-Solver */
    int set_alpha_to_one;              /* PNDM, DDIM, LCM */
    int clip_sample;                   /* DDIM, LCM */
    double clip_sample_range;          /* > 0 */
    int skip_prk_steps;                /* PNDM */
    int use_karras_sigmas;             /* Euler, DPM-Solver, LMS */
    double sigma_min, sigma_max;       /* Euler's Karras range; NAN: from the schedule */
    sf_final_sigmas_type final_sigmas_type; /* Euler, DPM-Solver */
    int solver_order;                  /* DPM-Solver: 1, 2 or 3 */
    sf_dpm_algorithm algorithm_type;
    sf_dpm_solver_type solver_type;
    int lower_order_final, euler_at_final;
    double lambda_min_clipped;         /* -INFINITY for none */
    int64_t original_inference_steps;  /* LCM: [1, num_train_timesteps] */
    double timestep_scaling;           /* LCM */
    double *owned_betas_;              /* internal: trained_betas parsed from JSON */
} sf_scheduler_config;

/* diffusers' class name ("PNDMScheduler", ...) <-> type. Unknown names: SF_ERR_UNSUPPORTED
 * naming the class. */
sf_status sf_scheduler_type_from_name(const char *name, sf_scheduler_type *out);
const char *sf_scheduler_type_name(sf_scheduler_type type);

/* The defaults of the class's constructor in diffusers (e.g. PNDM: linear betas 1e-4..0.02,
 * leading spacing, skip_prk_steps false). */
void sf_scheduler_config_default(sf_scheduler_type type, sf_scheduler_config *out);

/* Parse scheduler_config.json text: "_class_name" picks the class (required), its keys override
 * the class defaults, keys the class does not take are ignored (as diffusers does). The bare
 * tokens -Infinity / Infinity / NaN that Python's json writes are accepted. Values of the wrong
 * JSON type -> SF_ERR_FORMAT naming the key; unknown class names, spacings, prediction types and
 * beta schedules, and options the engine does not implement (thresholding, learned variance,
 * ...) -> SF_ERR_UNSUPPORTED naming them; ranges are checked by sf_scheduler_create
 * (SF_ERR_INVALID_ARG). A list of trained_betas is allocated: call sf_scheduler_config_release
 * afterwards. */
sf_status sf_scheduler_config_from_json(const char *json, size_t len, sf_scheduler_config *out);
/* Same, but the class is `class_name` (a diffusers class name as above) whatever the text's
 * "_class_name" says (which may then be absent), as diffusers' Class.from_config(config) does
 * for another class's configuration. class_name NULL: as sf_scheduler_config_from_json. */
sf_status sf_scheduler_config_from_json_as(const char *json, size_t len, const char *class_name,
                                           sf_scheduler_config *out);
/* Free what sf_scheduler_config_from_json allocated (safe on any initialized config). */
void sf_scheduler_config_release(sf_scheduler_config *cfg);

typedef struct sf_scheduler sf_scheduler;

/* Validate the configuration and compute the training schedule (betas, alphas_cumprod). */
sf_status sf_scheduler_create(const sf_scheduler_config *cfg, sf_scheduler **out);
/* sf_scheduler_config_from_json + sf_scheduler_create. */
sf_status sf_scheduler_create_from_json(const char *json, size_t len, sf_scheduler **out);
void sf_scheduler_destroy(sf_scheduler *s);
/* The configuration (trained_betas points to the scheduler's copy). */
const sf_scheduler_config *sf_scheduler_get_config(const sf_scheduler *s);

/* Compute the inference schedule for 1 <= n <= num_train_timesteps steps (LCM: n <=
 * original_inference_steps; PNDM with PRK steps: n >= 4) and start a new trajectory (step index
 * 0, history cleared). */
sf_status sf_scheduler_set_timesteps(sf_scheduler *s, size_t num_inference_steps);
/* The timesteps to run, in order (the UNet's t); *count receives their number (n, or n + 1 for
 * PNDM with n >= 2, 12 + n - 3 with PRK steps). NULL and 0 before set_timesteps. Integer-valued
 * for PNDM, DDIM, DPM-Solver and LCM; float32 values for Euler, Euler-A and LMS. */
const double *sf_scheduler_timesteps(const sf_scheduler *s, size_t *count);
/* Sigmas of the sigma-based schedulers (Euler, Euler-A, LMS, DPM-Solver): count + 1 values after
 * set_timesteps; NULL for the others or before set_timesteps. */
const float *sf_scheduler_sigmas(const sf_scheduler *s, size_t *count);
/* Training schedule: num_train_timesteps betas / cumulative products of (1 - beta). */
const float *sf_scheduler_betas(const sf_scheduler *s, size_t *count);
const float *sf_scheduler_alphas_cumprod(const sf_scheduler *s, size_t *count);
/* Standard deviation of the initial noise (1 for the DDPM-style schedulers, the largest sigma,
 * or sqrt(sigma^2 + 1) with leading spacing, for the sigma-based ones). */
double sf_scheduler_init_noise_sigma(const sf_scheduler *s);
/* Number of inference steps of the last set_timesteps (0 before). */
size_t sf_scheduler_num_inference_steps(const sf_scheduler *s);

/* Index of the next step into the timesteps (0 after set_timesteps). */
size_t sf_scheduler_step_index(const sf_scheduler *s);
/* Start or continue at another index (img2img starts part-way; multistep history is kept). */
sf_status sf_scheduler_set_step_index(sf_scheduler *s, size_t index);
/* Index of a timestep as diffusers finds it: the second match if the value repeats, else the
 * first. Not in the schedule: SF_ERR_INVALID_ARG (DPM-Solver: the last index, as diffusers). */
sf_status sf_scheduler_index_for_timestep(const sf_scheduler *s, double timestep,
                                          size_t *index);
/* 1 if the next step takes noise (Euler-A always, LCM except on its last step, SDE-DPM-Solver),
 * 0 otherwise. */
int sf_scheduler_step_needs_noise(const sf_scheduler *s);
/* Back to step 0 of the current schedule with the history cleared. */
sf_status sf_scheduler_reset(sf_scheduler *s);

/* y = the UNet input for x at a step index (x / sqrt(sigma^2 + 1) for Euler, Euler-A and LMS,
 * a copy for the others). n values; y may equal x. */
sf_status sf_scheduler_scale_model_input(const sf_scheduler *s, size_t step_index,
                                         const float *x, size_t n, float *y);
/* One step at the current index: model_output and sample (n values each) -> prev_sample, then
 * the index advances. noise (n standard normal values) is required where
 * sf_scheduler_step_needs_noise says so and ignored otherwise (may be NULL). prev_sample may
 * equal sample or model_output. Errors: called before set_timesteps or past the last timestep
 * (SF_ERR_INVALID_ARG), n different from the size of the running trajectory (SF_ERR_SHAPE). */
sf_status sf_scheduler_step(sf_scheduler *s, const float *model_output, const float *sample,
                            size_t n, const float *noise, float *prev_sample);
/* Same, and also the predicted clean sample (LCM: its "denoised"; DPM-Solver: the data
 * prediction) into pred_original if it is not NULL (PNDM has none: SF_ERR_UNSUPPORTED).
 * pred_original must not overlap the inputs. */
sf_status sf_scheduler_step_ex(sf_scheduler *s, const float *model_output, const float *sample,
                               size_t n, const float *noise, float *prev_sample,
                               float *pred_original);
/* Forward diffusion to a timestep: sqrt(alphas_cumprod[t]) x + sqrt(1 - alphas_cumprod[t]) noise
 * for PNDM/DDIM/LCM (integer t in [0, num_train_timesteps)); x + sigma(t) noise for Euler,
 * Euler-A and LMS and alpha_t x + sigma_t noise for DPM-Solver, t a timestep of the schedule
 * (after set_timesteps). n values; out may equal original or noise. */
sf_status sf_scheduler_add_noise(const sf_scheduler *s, const float *original,
                                 const float *noise, size_t n, double timestep, float *out);


/* ------------------------------------------------------------------------------------------ */
/* Pipeline: text-to-image from a diffusers model folder                                      */
/* ------------------------------------------------------------------------------------------ */

/* A whole Stable Diffusion v1.x-class generation in C, as snapfusion.Pipeline (and diffusers'
 * StableDiffusionPipeline) computes it: text encoder -> denoising loop (UNet with
 * classifier-free guidance, scheduler) -> VAE decoder. Tokenization is not part of the engine:
 * the caller passes CLIP token ids (e.g. from snapfusion.CLIPTokenizer, padded to the text
 * encoder's max_text_len as diffusers does).
 *
 *     sf_pipeline *p = NULL;
 *     st = sf_pipeline_load("models/sd_tiny", &p);  // text_encoder/ unet/ vae/ scheduler/
 *     sf_pipeline_info info;
 *     sf_pipeline_get_info(p, &info);
 *     sf_generate_params g;
 *     sf_generate_params_default(&g);
 *     g.cond_ids = ids; g.cond_len = 77;                // the prompt
 *     g.uncond_ids = empty_ids; g.uncond_len = 77;      // "" (the negative prompt)
 *     g.num_inference_steps = 25; g.guidance_scale = 7.5; g.seed = 42;
 *     float *img = malloc(info.default_height * info.default_width * 3 * sizeof(float));
 *     st = sf_pipeline_generate(p, &g, img);           // (H, W, 3) in [0, 1]
 *     sf_pipeline_destroy(p);
 *
 * The steps (g = guidance_scale, B = batch, NCHW or NHWC as noted):
 * 1. ctx = text_encoder([uncond_ids; cond_ids]) for g > 1 (one batch of 2B), else
 *    text_encoder(cond_ids); with clip_skip > 0 the cond rows use diffusers' clip_skip and the
 *    uncond rows the last hidden state (as diffusers).
 * 2. set_timesteps(num_inference_steps); x = x_T * init_noise_sigma, x_T from params.latents
 *    or from sf_randn(seed, 0) (both (B, C, h, w) NCHW, h = height / vae_scale_factor).
 * 3. for each timestep t_i: e = unet(scale_model_input([x; x]), t_i, ctx) (one call of batch
 *    2B), e = e_u + g (e_c - e_u); x = step(e, x) (stochastic schedulers draw their noise from
 *    sf_randn(seed, i + 1), in NCHW order); then progress(user, i + 1, count, t_i).
 * 4. image = clamp(vae_decode(x / scaling_factor) / 2 + 0.5, 0, 1), (B, H, W, 3) NHWC.
 * With the same initial latents the image equals snapfusion.Pipeline's output_type="np" image
 * (to float32 rounding). Not thread-safe: one generation per pipeline at a time. The engine's
 * thread count (sf_set_num_threads) applies. int8 (W8A8) components converted by
 * `snapfusion convert --weights int8` load like float ones (their layers are recognized by the
 * I8 dtype of their weights), and so do F16/BF16 weights.
 */
typedef struct sf_pipeline sf_pipeline;

/* Load a diffusers-layout folder: `text_encoder/`, `unet/`, `vae/` (each config.json plus
 * diffusion_pytorch_model.safetensors or model.safetensors), `scheduler/scheduler_config.json`
 * and the optional `snapfusion_model.json` (recommended steps and guidance). The VAE's decoder
 * only is built. Errors name the file: SF_ERR_IO (missing folder, config or weights),
 * SF_ERR_FORMAT / SF_ERR_SHAPE (malformed configs or weights, components that do not fit each
 * other), SF_ERR_UNSUPPORTED (pickle-only weights, options the engine does not implement),
 * SF_ERR_OOM. */
sf_status sf_pipeline_load(const char *folder, sf_pipeline **out);
void sf_pipeline_destroy(sf_pipeline *p);

/* Use another scheduler class with the folder's scheduler configuration ("DDIMScheduler",
 * "EulerDiscreteScheduler", ... as sf_scheduler_type_from_name; NULL: the folder's own class),
 * as diffusers' Class.from_config(pipe.scheduler.config). On failure the current scheduler is
 * kept. */
sf_status sf_pipeline_set_scheduler(sf_pipeline *p, const char *class_name);
/* Use the scheduler a scheduler_config.json text describes (its "_class_name" picks the class;
 * see sf_scheduler_config_from_json). On failure the current scheduler is kept. */
sf_status sf_pipeline_set_scheduler_json(sf_pipeline *p, const char *json, size_t len);

/* What a caller needs to know to prepare a generation. */
typedef struct {
    size_t max_text_len;      /* longest id row: the text encoder's max_position_embeddings */
    size_t vocab_size;        /* ids must be in [0, vocab_size) */
    size_t latent_channels;   /* C of the initial latents (the UNet's in_channels) */
    size_t vae_scale_factor;  /* image size / latent size (2^(VAE blocks - 1)) */
    size_t default_height, default_width; /* the UNet's sample_size x vae_scale_factor */
    size_t image_channels;    /* channels of the image (the VAE's out_channels, normally 3) */
    size_t recommended_steps; /* from snapfusion_model.json; 0 if none */
    double recommended_guidance; /* from snapfusion_model.json; NAN if none */
    const char *scheduler;    /* class name of the current scheduler (static string) */
} sf_pipeline_info;

sf_status sf_pipeline_get_info(const sf_pipeline *p, sf_pipeline_info *out);

/* Called after each denoising step: step = number of steps done (1..total_steps), total_steps =
 * the scheduler's timestep count (num_inference_steps, or one more for PNDM), timestep = the
 * timestep just denoised. Returning nonzero stops the generation: sf_pipeline_generate then
 * returns SF_ERR_CANCELLED and leaves image_out unspecified. */
typedef int (*sf_progress_fn)(void *user, size_t step, size_t total_steps, double timestep);

typedef struct {
    size_t batch;                /* images, >= 1 (each with its own id rows and latents) */
    const int64_t *cond_ids;     /* (batch, cond_len): the prompt's token ids */
    size_t cond_len;
    const int64_t *uncond_ids;   /* (batch, uncond_len): the negative prompt's (or ""'s) ids;
                                  * required when guidance_scale > 1 (then uncond_len must equal
                                  * cond_len), ignored otherwise */
    size_t uncond_len;
    size_t height, width;        /* image size: multiples of vae_scale_factor in
                                  * [vae_scale_factor, 8192]; 0 = the default size */
    size_t num_inference_steps;  /* >= 1 */
    double guidance_scale;       /* finite; <= 1 skips the unconditional pass */
    size_t clip_skip;            /* 0, or diffusers' clip_skip (< text encoder layers) */
    const float *latents;        /* initial noise x_T, (batch, latent_channels, h, w) NCHW
                                  * float32 like diffusers' `latents=`, or NULL: drawn from
                                  * sf_randn(seed, 0) in that NCHW order */
    uint64_t seed;               /* initial noise (if latents is NULL) and step noise */
    sf_progress_fn progress;     /* or NULL */
    void *progress_user;
} sf_generate_params;

/* batch 1, no ids, default size, 50 steps, guidance 7.5, clip_skip 0, no latents, seed 0, no
 * callback. */
void sf_generate_params_default(sf_generate_params *params);

/* Generate. image_out: (batch, height, width, image_channels) float32 NHWC in [0, 1] (NaN where
 * the model produced NaN). Argument errors (SF_ERR_INVALID_ARG / SF_ERR_SHAPE, each naming the
 * field): NULL pointers, zero batch or steps, sizes that are not multiples of the scale factor or
 * exceed 8192, empty or too long or mismatched id rows, ids outside [0, vocab_size), non-finite
 * guidance. Working buffers are kept in the pipeline and reused by later calls of the same
 * size. */
sf_status sf_pipeline_generate(sf_pipeline *p, const sf_generate_params *params,
                               float *image_out);

/* Seconds spent in each stage by the last sf_pipeline_generate (also after a failure or a
 * cancellation: the stages reached). unet_step_s points to steps values owned by the pipeline,
 * valid until its next generate or destroy. */
typedef struct {
    double text_encoder_s;
    double unet_s;            /* sum of unet_step_s */
    double scheduler_s;       /* scale_model_input, guidance and scheduler steps, all steps */
    double decoder_s;
    double total_s;
    size_t steps;             /* denoising steps completed */
    const double *unet_step_s;
} sf_pipeline_timings;

sf_status sf_pipeline_get_timings(const sf_pipeline *p, sf_pipeline_timings *out);

/* The engine's Gaussian noise: n standard normal float32 values, a pure function of (seed,
 * stream, index), the same on every run and thread count (with the same libm). With
 * G = 0x9e3779b97f4a7c15 and mix = splitmix64's finalizer (z ^= z >> 30;
 * z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb; z ^= z >> 31), in uint64
 * arithmetic:
 *   key = mix(seed + G * (stream + 1));  bits(k) = mix(key + G * (k + 1));
 *   u(k) = ((bits(k) >> 11) + 0.5) / 2^53, in (0, 1);
 *   values 2j and 2j+1 = r cos(2 pi u(2j+1)) and r sin(2 pi u(2j+1)), r = sqrt(-2 ln u(2j))
 *   (Box-Muller in double, rounded to float32; an odd n drops the last sine).
 * It does not reproduce numpy's or torch's generators. */
sf_status sf_randn(uint64_t seed, uint64_t stream, size_t n, float *out);

#ifdef __cplusplus
}
#endif

#endif /* SNAPFUSION_H */
