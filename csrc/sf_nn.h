/*
 * sf_nn.h — network layers shared by the engine's models (CLIP, UNet, VAE), built from named
 * weights (diffusers/transformers state-dict names) and run on NHWC float32 activations with
 * scratch memory from an arena (stack discipline: each run marks, allocates, releases).
 *
 * Every `*_load` function builds a layer from `prefix + "." + name` tensors; every layer has a
 * `*_free` that accepts a zeroed or partially loaded struct (so a failed load cleans up with the
 * same call). Shapes in comments: (B, H, W, C) NHWC, (B, L, C) token sequences.
 */
#ifndef SF_NN_H
#define SF_NN_H

#include "sf_internal.h"

/* Longest tensor name we build. */
#define SF_NAME_MAX 256

/* snprintf into a name buffer; SF_ERR_INVALID_ARG if it does not fit. */
sf_status sf_name(char *buf, const char *prefix, const char *suffix);

/* ---- group norm (optionally fused with SiLU) ---- */
typedef struct {
    size_t channels, groups;
    float eps;
    float *gamma, *beta; /* (C,) */
} sf_gn_layer;

sf_status sf_gn_layer_load(sf_weights *w, const char *prefix, size_t channels, size_t groups,
                           float eps, sf_gn_layer *out);
void sf_gn_layer_free(sf_gn_layer *l);
/* x, y: (B, HW, C); in place allowed. */
sf_status sf_gn_layer_run(const sf_gn_layer *l, const float *x, size_t batch, size_t hw,
                          int silu, float *y);

/* ---- layer norm ---- */
typedef struct {
    size_t dim;
    float eps;
    float *gamma, *beta;
} sf_ln_layer;

sf_status sf_ln_layer_load(sf_weights *w, const char *prefix, size_t dim, float eps,
                           sf_ln_layer *out);
void sf_ln_layer_free(sf_ln_layer *l);
sf_status sf_ln_layer_run(const sf_ln_layer *l, const float *x, size_t rows, float *y);

/* ---- convolution / linear layers from named weights ---- */
/* A layer runs in float32 (sf_conv2d / sf_linear: XNNPACK or the own GEMM) when its weight is
 * F32/F16/BF16, or int8 (sf_qconv, sf_quant.h) when its weight is I8 with the companion
 * tensors of docs/quantization.md. While a calibration observer is installed (sf_quant.h),
 * layers register under their file name (without ".weight") and report their inputs and
 * outputs. */
typedef struct sf_conv_layer sf_conv_layer;
typedef struct sf_linear_layer sf_linear_layer;

/* Conv `prefix.weight` (out, in, k, k) and, if has_bias, `prefix.bias`. */
sf_status sf_conv_load(sf_weights *w, const char *prefix, size_t in, size_t out, uint32_t k,
                       uint32_t stride, uint32_t pad_top, uint32_t pad_left, uint32_t pad_bottom,
                       uint32_t pad_right, int has_bias, sf_conv_layer **conv);
/* Linear `prefix.weight` (out, in) — or (out, in, 1, 1), a 1x1 convolution, when
 * allow_conv1x1 — and optionally `prefix.bias`. */
sf_status sf_linear_load(sf_weights *w, const char *prefix, size_t in, size_t out, int has_bias,
                         int allow_conv1x1, sf_linear_layer **lin);
/* Several linears sharing an input fused into one (weights concatenated along out): used for
 * the q/k/v projections. names[i] are full prefixes; bias per part if has_bias. */
sf_status sf_linear_load_fused(sf_weights *w, size_t n, const char *const *prefixes, size_t in,
                               const size_t *outs, int has_bias, sf_linear_layer **lin);

/* As sf_conv2d_run / sf_conv2d_output_size / sf_conv2d_destroy (destroy accepts NULL). */
sf_status sf_conv_layer_run(sf_conv_layer *l, const float *x, size_t batch, size_t h, size_t w,
                            float *y);
sf_status sf_conv_layer_output_size(const sf_conv_layer *l, size_t h, size_t w, size_t *out_h,
                                    size_t *out_w);
void sf_conv_layer_destroy(sf_conv_layer *l);
/* As sf_linear_run / sf_linear_destroy. */
sf_status sf_linear_layer_run(sf_linear_layer *l, const float *x, size_t rows, float *y);
/* 1 if the layer runs int8 weights. */
int sf_linear_layer_is_int8(const sf_linear_layer *l);
void sf_linear_layer_destroy(sf_linear_layer *l);

/* ---- ResNet block (diffusers ResnetBlock2D) ---- */
typedef struct {
    size_t in_ch, out_ch, temb_ch;
    sf_gn_layer norm1, norm2;
    sf_conv_layer *conv1, *conv2, *shortcut; /* shortcut: 1x1 when in != out, else NULL */
    sf_linear_layer *time_emb_proj;            /* NULL when temb_ch == 0 */
    float output_scale;                  /* output = (x + h) / output_scale */
} sf_resnet;

sf_status sf_resnet_load(sf_weights *w, const char *prefix, size_t in_ch, size_t out_ch,
                         size_t temb_ch, size_t groups, float eps, sf_resnet *out);
void sf_resnet_free(sf_resnet *r);
/* x: (B, H, W, in); temb_silu: (B, temb_ch) = silu(time embedding), or NULL; y: (B, H, W, out).
 * y must not alias x. */
sf_status sf_resnet_run(sf_resnet *r, sf_arena *a, const float *x, size_t batch, size_t h,
                        size_t w, const float *temb_silu, float *y);

/* ---- multi-head attention (self or cross) ---- */
typedef enum { SF_ATTN_DIFFUSERS, SF_ATTN_CLIP } sf_attn_naming;

typedef struct {
    size_t dim, ctx_dim, heads;
    int self_attn;     /* q, k, v from the same input: one fused projection */
    sf_linear_layer *qkv;    /* self: (3*dim, dim) */
    sf_linear_layer *q, *kv; /* cross: q (dim, dim), kv (2*dim, ctx_dim) */
    sf_linear_layer *out;
} sf_attn;

/* diffusers: to_q/to_k/to_v (bias if qkv_bias) and to_out.0 (bias); CLIP: q_proj/k_proj/v_proj
 * /out_proj, all with bias. ctx_dim == 0 means self-attention. */
sf_status sf_attn_load(sf_weights *w, const char *prefix, sf_attn_naming naming, size_t dim,
                       size_t ctx_dim, size_t heads, int qkv_bias, sf_attn *out);
void sf_attn_free(sf_attn *at);
/* x: (B, L, dim); ctx: (B, Lc, ctx_dim) for cross attention (NULL for self); y: (B, L, dim).
 * y may alias x (the result is written at the end). */
sf_status sf_attn_run(sf_attn *at, sf_arena *a, const float *x, size_t batch, size_t len,
                      const float *ctx, size_t ctx_len, int causal, float *y);

/* ---- transformer (diffusers Transformer2DModel with BasicTransformerBlocks) ---- */
typedef struct {
    sf_ln_layer norm1, norm2, norm3;
    sf_attn attn1, attn2;
    sf_linear_layer *ff_in, *ff_out; /* GEGLU: ff_in (2*inner, dim), ff_out (dim, inner) */
    size_t inner;
} sf_tblock;

typedef struct {
    size_t channels, heads, ctx_dim, n_blocks;
    int only_cross;
    sf_gn_layer norm;
    sf_linear_layer *proj_in, *proj_out;
    sf_tblock *blocks;
} sf_transformer;

sf_status sf_transformer_load(sf_weights *w, const char *prefix, size_t channels, size_t heads,
                              size_t ctx_dim, size_t n_blocks, size_t groups, int only_cross,
                              sf_transformer *out);
void sf_transformer_free(sf_transformer *t);
/* x: (B, H, W, C) updated in place (residual included); ctx: (B, Lc, ctx_dim). */
sf_status sf_transformer_run(sf_transformer *t, sf_arena *a, float *x, size_t batch, size_t h,
                             size_t w, const float *ctx, size_t ctx_len);

/* ---- VAE attention (diffusers Attention with group norm, one head, residual) ---- */
typedef struct {
    size_t channels;
    sf_gn_layer norm;
    sf_attn attn;
} sf_vae_attn;

sf_status sf_vae_attn_load(sf_weights *w, const char *prefix, size_t channels, size_t groups,
                           float eps, sf_vae_attn *out);
void sf_vae_attn_free(sf_vae_attn *v);
/* x: (B, H, W, C) updated in place. */
sf_status sf_vae_attn_run(sf_vae_attn *v, sf_arena *a, float *x, size_t batch, size_t h,
                          size_t w);

/* ---- resampling ---- */
/* Nearest resize as torch.nn.functional.interpolate(mode="nearest"): src = floor(dst * in/out).
 * x: (B, H, W, C) -> y: (B, OH, OW, C). */
sf_status sf_resize_nearest(const float *x, size_t batch, size_t h, size_t w, size_t c,
                            size_t oh, size_t ow, float *y);

/* 1 if any of n values is NaN. XNNPACK's fused clamp maps NaN to -inf, so models check their
 * float inputs and return NaN outputs for NaN inputs instead of computing garbage. */
int sf_any_nan(const float *x, size_t n);
/* Fill n values with NaN. */
void sf_fill_nan(float *x, size_t n);

#endif /* SF_NN_H */
