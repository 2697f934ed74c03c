/* sf_nn.c — layers shared by the engine's models: norms, ResNet blocks, attention,
 * transformers, resampling. See sf_nn.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_nn.h"
#include "sf_quant.h"

sf_status sf_name(char *buf, const char *prefix, const char *suffix) {
    int n = snprintf(buf, SF_NAME_MAX, "%s%s%s", prefix, (*prefix && *suffix) ? "." : "", suffix);
    if (n < 0 || n >= SF_NAME_MAX)
        return sf_error(SF_ERR_INVALID_ARG, "tensor name too long: %s.%s", prefix, suffix);
    return SF_OK;
}

/* Load `prefix.suffix` as a float vector of length n. */
static sf_status load_vec(sf_weights *w, const char *prefix, const char *suffix, size_t n,
                          float **out) {
    char name[SF_NAME_MAX];
    sf_status st = sf_name(name, prefix, suffix);
    if (st != SF_OK)
        return st;
    int64_t shape[1] = {(int64_t)n};
    return sf_weights_load_f32(w, name, 1, shape, out);
}

static sf_status scratch(sf_arena *a, size_t n_floats, float **out) {
    size_t bytes;
    if (!sf_mul_ok(n_floats, sizeof(float), &bytes))
        return sf_error(SF_ERR_OOM, "activation of %zu floats is too large", n_floats);
    return sf_arena_alloc(a, bytes, (void **)out);
}

/* ---- group norm ---- */

sf_status sf_gn_layer_load(sf_weights *w, const char *prefix, size_t channels, size_t groups,
                           float eps, sf_gn_layer *out) {
    sf_status st = SF_OK;
    memset(out, 0, sizeof *out);
    if (!groups || channels % groups)
        SF_FAIL(SF_ERR_SHAPE, "%s: %zu channels are not divisible into %zu groups", prefix,
                channels, groups);
    out->channels = channels;
    out->groups = groups;
    out->eps = eps;
    SF_CHECK(load_vec(w, prefix, "weight", channels, &out->gamma));
    SF_CHECK(load_vec(w, prefix, "bias", channels, &out->beta));
    return SF_OK;
fail:
    sf_gn_layer_free(out);
    return st;
}

void sf_gn_layer_free(sf_gn_layer *l) {
    if (!l)
        return;
    sf_weights_free_buffer(l->gamma);
    sf_weights_free_buffer(l->beta);
    l->gamma = l->beta = NULL;
}

sf_status sf_gn_layer_run(const sf_gn_layer *l, const float *x, size_t batch, size_t hw,
                          int silu, float *y) {
    return sf_group_norm(x, batch, hw, l->channels, l->groups, l->eps, l->gamma, l->beta, silu,
                         y);
}

/* ---- layer norm ---- */

sf_status sf_ln_layer_load(sf_weights *w, const char *prefix, size_t dim, float eps,
                           sf_ln_layer *out) {
    sf_status st = SF_OK;
    memset(out, 0, sizeof *out);
    out->dim = dim;
    out->eps = eps;
    SF_CHECK(load_vec(w, prefix, "weight", dim, &out->gamma));
    SF_CHECK(load_vec(w, prefix, "bias", dim, &out->beta));
    return SF_OK;
fail:
    sf_ln_layer_free(out);
    return st;
}

void sf_ln_layer_free(sf_ln_layer *l) {
    if (!l)
        return;
    sf_weights_free_buffer(l->gamma);
    sf_weights_free_buffer(l->beta);
    l->gamma = l->beta = NULL;
}

sf_status sf_ln_layer_run(const sf_ln_layer *l, const float *x, size_t rows, float *y) {
    return sf_layer_norm(x, rows, l->dim, l->eps, l->gamma, l->beta, y);
}

/* ---- convolution / linear ---- */

struct sf_conv_layer {
    sf_conv2d *f; /* float, or */
    sf_qconv *q;  /* int8 */
    size_t in, out;
    char *name;   /* file name of the layer, for the calibration observer */
};

struct sf_linear_layer {
    sf_linear *f;
    sf_qconv *q;
    size_t in, out;
    char *name;
};

int sf_linear_layer_is_int8(const sf_linear_layer *l) {
    return l && l->q != NULL;
}

/* The layer's name in the file: `prefix.weight`'s file name without ".weight" (renames and
 * the weights' prefix applied); fused layers join their names with '|'. */
static char *layer_name(sf_weights *w, size_t n, const char *const *prefixes) {
    char buf[4 * SF_NAME_MAX], wname[SF_NAME_MAX];
    size_t pos = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *fname = prefixes[i];
        size_t len = strlen(fname);
        const sf_st_tensor *t = NULL;
        if (sf_name(wname, prefixes[i], "weight") == SF_OK)
            t = sf_weights_find(w, wname);
        if (t) {
            fname = t->name;
            len = strlen(fname);
            if (len > 7 && strcmp(fname + len - 7, ".weight") == 0)
                len -= 7;
        }
        int k = snprintf(buf + pos, sizeof buf - pos, "%s%.*s", i ? "|" : "", (int)len, fname);
        if (k < 0 || (size_t)k >= sizeof buf - pos)
            break;
        pos += (size_t)k;
    }
    char *s = malloc(pos + 1);
    if (s)
        memcpy(s, buf, pos + 1);
    return s;
}

/* 1 if `prefix.weight` is stored as int8. */
static int is_int8(const sf_weights *w, const char *prefix) {
    char name[SF_NAME_MAX];
    if (sf_name(name, prefix, "weight") != SF_OK)
        return 0;
    const sf_st_tensor *t = sf_weights_find(w, name);
    return t && t->dtype == SF_DTYPE_I8;
}

sf_status sf_conv_load(sf_weights *w, const char *prefix, size_t in, size_t out, uint32_t k,
                       uint32_t stride, uint32_t pad_top, uint32_t pad_left, uint32_t pad_bottom,
                       uint32_t pad_right, int has_bias, sf_conv_layer **conv) {
    sf_status st = SF_OK;
    float *weight = NULL, *bias = NULL;
    char name[SF_NAME_MAX];
    sf_conv_layer *l = NULL;
    *conv = NULL;
    l = calloc(1, sizeof *l);
    if (!l)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", prefix);
    l->in = in;
    l->out = out;
    l->name = layer_name(w, 1, &prefix);
    if (!l->name)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", prefix);
    if (is_int8(w, prefix)) {
        sf_qconv_params q;
        sf_qconv_params_default(&q);
        q.in_channels = in;
        q.out_channels = out;
        q.kernel_h = q.kernel_w = k;
        q.stride_h = q.stride_w = stride;
        q.pad_top = pad_top;
        q.pad_left = pad_left;
        q.pad_bottom = pad_bottom;
        q.pad_right = pad_right;
        SF_CHECK(sf_qconv_load(w, prefix, &q, has_bias, &l->q));
    } else {
        SF_CHECK(sf_name(name, prefix, "weight"));
        int64_t shape[4] = {(int64_t)out, (int64_t)in, (int64_t)k, (int64_t)k};
        SF_CHECK(sf_weights_load_f32(w, name, 4, shape, &weight));
        if (has_bias)
            SF_CHECK(load_vec(w, prefix, "bias", out, &bias));
        sf_conv2d_params p;
        sf_conv2d_params_default(&p);
        p.in_channels = in;
        p.out_channels = out;
        p.kernel_h = p.kernel_w = k;
        p.stride_h = p.stride_w = stride;
        p.pad_top = pad_top;
        p.pad_left = pad_left;
        p.pad_bottom = pad_bottom;
        p.pad_right = pad_right;
        SF_CHECK(sf_conv2d_create(&p, weight, bias, &l->f));
    }
    sf_qobserve_register(l->name, "conv");
    *conv = l;
    l = NULL;
fail:
    sf_conv_layer_destroy(l);
    sf_weights_free_buffer(weight);
    sf_weights_free_buffer(bias);
    return st;
}

sf_status sf_linear_load(sf_weights *w, const char *prefix, size_t in, size_t out, int has_bias,
                         int allow_conv1x1, sf_linear_layer **lin) {
    sf_status st = SF_OK;
    float *weight = NULL, *bias = NULL;
    char name[SF_NAME_MAX];
    sf_linear_layer *l = NULL;
    *lin = NULL;
    l = calloc(1, sizeof *l);
    if (!l)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", prefix);
    l->in = in;
    l->out = out;
    l->name = layer_name(w, 1, &prefix);
    if (!l->name)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", prefix);
    SF_CHECK(sf_name(name, prefix, "weight"));
    const sf_st_tensor *t = sf_weights_find(w, name);
    if (t && t->dtype == SF_DTYPE_I8) {
        /* the (out, in) and (out, in, 1, 1) layouts are the same bytes */
        sf_qconv_params q;
        sf_qconv_params_default(&q);
        q.in_channels = in;
        q.out_channels = out;
        SF_CHECK(sf_qconv_load(w, prefix, &q, has_bias, &l->q));
    } else {
        int64_t shape[4] = {(int64_t)out, (int64_t)in, 1, 1};
        int ndim = (allow_conv1x1 && t && t->ndim == 4) ? 4 : 2;
        SF_CHECK(sf_weights_load_f32(w, name, ndim, shape, &weight));
        if (has_bias)
            SF_CHECK(load_vec(w, prefix, "bias", out, &bias));
        SF_CHECK(sf_linear_create(in, out, weight, bias, &l->f));
    }
    sf_qobserve_register(l->name, "linear");
    *lin = l;
    l = NULL;
fail:
    sf_linear_layer_destroy(l);
    sf_weights_free_buffer(weight);
    sf_weights_free_buffer(bias);
    return st;
}

sf_status sf_linear_load_fused(sf_weights *w, size_t n, const char *const *prefixes, size_t in,
                               const size_t *outs, int has_bias, sf_linear_layer **lin) {
    sf_status st = SF_OK;
    float *weight = NULL, *bias = NULL, *part = NULL;
    char name[SF_NAME_MAX];
    size_t total = 0, bytes;
    sf_linear_layer *l = NULL;
    *lin = NULL;
    for (size_t i = 0; i < n; i++)
        total += outs[i];
    l = calloc(1, sizeof *l);
    if (!l)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", prefixes[0]);
    l->in = in;
    l->out = total;
    l->name = layer_name(w, n, prefixes);
    if (!l->name)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", prefixes[0]);
    if (is_int8(w, prefixes[0])) {
        SF_CHECK(sf_qconv_load_fused(w, n, prefixes, in, outs, has_bias, &l->q));
        goto done;
    }
    if (!sf_mul_n_ok(&bytes, 3, total, in, sizeof(float)))
        SF_FAIL(SF_ERR_OOM, "%s: fused projection too large", prefixes[0]);
    weight = sf_aligned_alloc(bytes);
    bias = has_bias ? sf_aligned_alloc(total * sizeof(float)) : NULL;
    if (!weight || (has_bias && !bias))
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", prefixes[0]);
    size_t row = 0;
    for (size_t i = 0; i < n; i++) {
        SF_CHECK(sf_name(name, prefixes[i], "weight"));
        int64_t shape[2] = {(int64_t)outs[i], (int64_t)in};
        SF_CHECK(sf_weights_load_f32(w, name, 2, shape, &part));
        memcpy(weight + row * in, part, outs[i] * in * sizeof(float));
        sf_weights_free_buffer(part);
        part = NULL;
        if (has_bias) {
            SF_CHECK(load_vec(w, prefixes[i], "bias", outs[i], &part));
            memcpy(bias + row, part, outs[i] * sizeof(float));
            sf_weights_free_buffer(part);
            part = NULL;
        }
        row += outs[i];
    }
    SF_CHECK(sf_linear_create(in, total, weight, bias, &l->f));
done:
    sf_qobserve_register(l->name, "linear");
    *lin = l;
    l = NULL;
fail:
    sf_linear_layer_destroy(l);
    sf_weights_free_buffer(part);
    sf_aligned_free(weight);
    sf_aligned_free(bias);
    return st;
}

sf_status sf_conv_layer_run(sf_conv_layer *l, const float *x, size_t batch, size_t h, size_t w,
                            float *y) {
    if (!l)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv_layer_run: layer is NULL");
    int observe = sf_qobserver_active();
    if (observe && x)
        sf_qobserve(l->name, 0, x, batch * h * w * l->in);
    sf_status st = l->q ? sf_qconv_run(l->q, x, batch, h, w, y)
                        : sf_conv2d_run(l->f, x, batch, h, w, y);
    if (observe && st == SF_OK) {
        size_t oh, ow;
        if (sf_conv_layer_output_size(l, h, w, &oh, &ow) == SF_OK)
            sf_qobserve(l->name, 1, y, batch * oh * ow * l->out);
    }
    return st;
}

sf_status sf_conv_layer_output_size(const sf_conv_layer *l, size_t h, size_t w, size_t *out_h,
                                    size_t *out_w) {
    if (!l)
        return sf_error(SF_ERR_INVALID_ARG, "sf_conv_layer_output_size: layer is NULL");
    return l->q ? sf_qconv_output_size(l->q, h, w, out_h, out_w)
                : sf_conv2d_output_size(l->f, h, w, out_h, out_w);
}

void sf_conv_layer_destroy(sf_conv_layer *l) {
    if (!l)
        return;
    sf_conv2d_destroy(l->f);
    sf_qconv_destroy(l->q);
    free(l->name);
    free(l);
}

sf_status sf_linear_layer_run(sf_linear_layer *l, const float *x, size_t rows, float *y) {
    if (!l)
        return sf_error(SF_ERR_INVALID_ARG, "sf_linear_layer_run: layer is NULL");
    int observe = sf_qobserver_active();
    if (observe && x)
        sf_qobserve(l->name, 0, x, rows * l->in);
    sf_status st = l->q ? sf_qconv_run_linear(l->q, x, rows, y) : sf_linear_run(l->f, x, rows, y);
    if (observe && st == SF_OK)
        sf_qobserve(l->name, 1, y, rows * l->out);
    return st;
}

void sf_linear_layer_destroy(sf_linear_layer *l) {
    if (!l)
        return;
    sf_linear_destroy(l->f);
    sf_qconv_destroy(l->q);
    free(l->name);
    free(l);
}

/* ---- ResNet block ---- */

sf_status sf_resnet_load(sf_weights *w, const char *prefix, size_t in_ch, size_t out_ch,
                         size_t temb_ch, size_t groups, float eps, sf_resnet *out) {
    sf_status st = SF_OK;
    char name[SF_NAME_MAX];
    memset(out, 0, sizeof *out);
    out->in_ch = in_ch;
    out->out_ch = out_ch;
    out->temb_ch = temb_ch;
    out->output_scale = 1.0f;
    SF_CHECK(sf_name(name, prefix, "norm1"));
    SF_CHECK(sf_gn_layer_load(w, name, in_ch, groups, eps, &out->norm1));
    SF_CHECK(sf_name(name, prefix, "conv1"));
    SF_CHECK(sf_conv_load(w, name, in_ch, out_ch, 3, 1, 1, 1, 1, 1, 1, &out->conv1));
    if (temb_ch) {
        SF_CHECK(sf_name(name, prefix, "time_emb_proj"));
        SF_CHECK(sf_linear_load(w, name, temb_ch, out_ch, 1, 0, &out->time_emb_proj));
    }
    SF_CHECK(sf_name(name, prefix, "norm2"));
    SF_CHECK(sf_gn_layer_load(w, name, out_ch, groups, eps, &out->norm2));
    SF_CHECK(sf_name(name, prefix, "conv2"));
    SF_CHECK(sf_conv_load(w, name, out_ch, out_ch, 3, 1, 1, 1, 1, 1, 1, &out->conv2));
    if (in_ch != out_ch) {
        SF_CHECK(sf_name(name, prefix, "conv_shortcut"));
        SF_CHECK(sf_conv_load(w, name, in_ch, out_ch, 1, 1, 0, 0, 0, 0, 1, &out->shortcut));
    }
    return SF_OK;
fail:
    sf_resnet_free(out);
    return st;
}

void sf_resnet_free(sf_resnet *r) {
    if (!r)
        return;
    sf_gn_layer_free(&r->norm1);
    sf_gn_layer_free(&r->norm2);
    sf_conv_layer_destroy(r->conv1);
    sf_conv_layer_destroy(r->conv2);
    sf_conv_layer_destroy(r->shortcut);
    sf_linear_layer_destroy(r->time_emb_proj);
    r->conv1 = r->conv2 = r->shortcut = NULL;
    r->time_emb_proj = NULL;
}

sf_status sf_resnet_run(sf_resnet *r, sf_arena *a, const float *x, size_t batch, size_t h,
                        size_t w, const float *temb_silu, float *y) {
    sf_status st = SF_OK;
    sf_arena_mark_t m = sf_arena_mark(a);
    size_t hw = h * w;
    float *t = NULL, *u = NULL, *temb = NULL;
    SF_CHECK(scratch(a, batch * hw * (r->in_ch > r->out_ch ? r->in_ch : r->out_ch), &t));
    SF_CHECK(scratch(a, batch * hw * r->out_ch, &u));
    SF_CHECK(sf_gn_layer_run(&r->norm1, x, batch, hw, 1, t));          /* silu(norm1(x)) */
    SF_CHECK(sf_conv_layer_run(r->conv1, t, batch, h, w, u));           /* conv1 */
    if (r->time_emb_proj && temb_silu) {
        SF_CHECK(scratch(a, batch * r->out_ch, &temb));
        SF_CHECK(sf_linear_layer_run(r->time_emb_proj, temb_silu, batch, temb));
        SF_CHECK(sf_add_rows(u, batch, hw, r->out_ch, temb, u));        /* + temb[:, :, None, None] */
    }
    SF_CHECK(sf_gn_layer_run(&r->norm2, u, batch, hw, 1, u));           /* silu(norm2(h)) */
    SF_CHECK(sf_conv_layer_run(r->conv2, u, batch, h, w, y));           /* conv2 */
    if (r->shortcut) {
        SF_CHECK(sf_conv_layer_run(r->shortcut, x, batch, h, w, t));    /* conv_shortcut(x) */
        SF_CHECK(sf_add(y, t, batch * hw * r->out_ch, y));
    } else {
        SF_CHECK(sf_add(y, x, batch * hw * r->out_ch, y));
    }
    if (r->output_scale != 1.0f)
        SF_CHECK(sf_axpby(1.0f / r->output_scale, y, 0.0f, y, batch * hw * r->out_ch, y));
fail:
    if (st == SF_OK)
        st = sf_arena_release(a, m);
    else
        sf_arena_release(a, m);
    return st;
}

/* ---- attention ---- */

sf_status sf_attn_load(sf_weights *w, const char *prefix, sf_attn_naming naming, size_t dim,
                       size_t ctx_dim, size_t heads, int qkv_bias, sf_attn *out) {
    sf_status st = SF_OK;
    char nq[SF_NAME_MAX], nk[SF_NAME_MAX], nv[SF_NAME_MAX], no[SF_NAME_MAX];
    memset(out, 0, sizeof *out);
    if (!heads || dim % heads)
        SF_FAIL(SF_ERR_SHAPE, "%s: width %zu is not divisible into %zu heads", prefix, dim,
                heads);
    out->dim = dim;
    out->ctx_dim = ctx_dim ? ctx_dim : dim;
    out->heads = heads;
    out->self_attn = ctx_dim == 0;
    int clip = naming == SF_ATTN_CLIP;
    SF_CHECK(sf_name(nq, prefix, clip ? "q_proj" : "to_q"));
    SF_CHECK(sf_name(nk, prefix, clip ? "k_proj" : "to_k"));
    SF_CHECK(sf_name(nv, prefix, clip ? "v_proj" : "to_v"));
    SF_CHECK(sf_name(no, prefix, clip ? "out_proj" : "to_out.0"));
    if (out->self_attn) {
        const char *names[3] = {nq, nk, nv};
        size_t outs[3] = {dim, dim, dim};
        SF_CHECK(sf_linear_load_fused(w, 3, names, dim, outs, qkv_bias, &out->qkv));
    } else {
        const char *names[2] = {nk, nv};
        size_t outs[2] = {dim, dim};
        SF_CHECK(sf_linear_load(w, nq, dim, dim, qkv_bias, 0, &out->q));
        SF_CHECK(sf_linear_load_fused(w, 2, names, out->ctx_dim, outs, qkv_bias, &out->kv));
    }
    SF_CHECK(sf_linear_load(w, no, dim, dim, 1, 0, &out->out));
    return SF_OK;
fail:
    sf_attn_free(out);
    return st;
}

void sf_attn_free(sf_attn *at) {
    if (!at)
        return;
    sf_linear_layer_destroy(at->qkv);
    sf_linear_layer_destroy(at->q);
    sf_linear_layer_destroy(at->kv);
    sf_linear_layer_destroy(at->out);
    at->qkv = at->q = at->kv = at->out = NULL;
}

sf_status sf_attn_run(sf_attn *at, sf_arena *a, const float *x, size_t batch, size_t len,
                      const float *ctx, size_t ctx_len, int causal, float *y) {
    sf_status st = SF_OK;
    sf_arena_mark_t m = sf_arena_mark(a);
    size_t d = at->dim, rows = batch * len;
    float *proj = NULL, *kv = NULL, *o = NULL;
    void *ws = NULL;
    sf_attention_params p = {0};
    p.batch = batch;
    p.heads = at->heads;
    p.q_len = len;
    p.head_dim = d / at->heads;
    p.causal = causal;
    /* a quantized model's attention takes bfloat16 products (AMX) where the CPU has them */
    p.bf16 = sf_linear_layer_is_int8(at->self_attn ? at->qkv : at->q);
    if (at->self_attn) {
        SF_CHECK(scratch(a, rows * 3 * d, &proj));
        SF_CHECK(sf_linear_layer_run(at->qkv, x, rows, proj));
        p.kv_len = len;
        p.q_stride = p.k_stride = p.v_stride = 3 * d;
    } else {
        if (!ctx)
            SF_FAIL(SF_ERR_INVALID_ARG, "cross-attention needs a context");
        SF_CHECK(scratch(a, rows * d, &proj));
        SF_CHECK(scratch(a, batch * ctx_len * 2 * d, &kv));
        SF_CHECK(sf_linear_layer_run(at->q, x, rows, proj));
        SF_CHECK(sf_linear_layer_run(at->kv, ctx, batch * ctx_len, kv));
        p.kv_len = ctx_len;
        p.q_stride = d;
        p.k_stride = p.v_stride = 2 * d;
    }
    p.out_stride = d;
    SF_CHECK(scratch(a, rows * d, &o));
    size_t ws_bytes = 0;
    SF_CHECK(sf_attention_workspace_size(&p, &ws_bytes));
    if (ws_bytes)
        SF_CHECK(sf_arena_alloc(a, ws_bytes, &ws));
    {
        const float *k = at->self_attn ? proj + d : kv;
        const float *v = at->self_attn ? proj + 2 * d : kv + d;
        SF_CHECK(sf_attention(&p, proj, k, v, o, ws));
    }
    SF_CHECK(sf_linear_layer_run(at->out, o, rows, y));
fail:
    if (st == SF_OK)
        st = sf_arena_release(a, m);
    else
        sf_arena_release(a, m);
    return st;
}

/* ---- transformer ---- */

/* Rows of a feed-forward block computed at once. */
#define SF_FF_CHUNK_ROWS 2048

static void tblock_free(sf_tblock *b) {
    sf_ln_layer_free(&b->norm1);
    sf_ln_layer_free(&b->norm2);
    sf_ln_layer_free(&b->norm3);
    sf_attn_free(&b->attn1);
    sf_attn_free(&b->attn2);
    sf_linear_layer_destroy(b->ff_in);
    sf_linear_layer_destroy(b->ff_out);
    b->ff_in = b->ff_out = NULL;
}

sf_status sf_transformer_load(sf_weights *w, const char *prefix, size_t channels, size_t heads,
                              size_t ctx_dim, size_t n_blocks, size_t groups, int only_cross,
                              sf_transformer *out) {
    sf_status st = SF_OK;
    char name[SF_NAME_MAX], bp[SF_NAME_MAX];
    memset(out, 0, sizeof *out);
    out->channels = channels;
    out->heads = heads;
    out->ctx_dim = ctx_dim;
    out->only_cross = only_cross;
    SF_CHECK(sf_name(name, prefix, "norm"));
    SF_CHECK(sf_gn_layer_load(w, name, channels, groups, 1e-6f, &out->norm));
    SF_CHECK(sf_name(name, prefix, "proj_in"));
    SF_CHECK(sf_linear_load(w, name, channels, channels, 1, 1, &out->proj_in));
    out->blocks = calloc(n_blocks ? n_blocks : 1, sizeof *out->blocks);
    if (!out->blocks)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", prefix);
    out->n_blocks = n_blocks;
    for (size_t i = 0; i < n_blocks; i++) {
        sf_tblock *b = &out->blocks[i];
        size_t inner = 4 * channels;
        b->inner = inner;
        int n = snprintf(bp, sizeof bp, "%s.transformer_blocks.%zu", prefix, i);
        if (n < 0 || n >= (int)sizeof bp)
            SF_FAIL(SF_ERR_INVALID_ARG, "tensor name too long: %s", prefix);
        SF_CHECK(sf_name(name, bp, "norm1"));
        SF_CHECK(sf_ln_layer_load(w, name, channels, 1e-5f, &b->norm1));
        SF_CHECK(sf_name(name, bp, "attn1"));
        SF_CHECK(sf_attn_load(w, name, SF_ATTN_DIFFUSERS, channels, only_cross ? ctx_dim : 0,
                              heads, 0, &b->attn1));
        SF_CHECK(sf_name(name, bp, "norm2"));
        SF_CHECK(sf_ln_layer_load(w, name, channels, 1e-5f, &b->norm2));
        SF_CHECK(sf_name(name, bp, "attn2"));
        SF_CHECK(sf_attn_load(w, name, SF_ATTN_DIFFUSERS, channels, ctx_dim, heads, 0,
                              &b->attn2));
        SF_CHECK(sf_name(name, bp, "norm3"));
        SF_CHECK(sf_ln_layer_load(w, name, channels, 1e-5f, &b->norm3));
        SF_CHECK(sf_name(name, bp, "ff.net.0.proj"));
        SF_CHECK(sf_linear_load(w, name, channels, 2 * inner, 1, 0, &b->ff_in));
        SF_CHECK(sf_name(name, bp, "ff.net.2"));
        SF_CHECK(sf_linear_load(w, name, inner, channels, 1, 0, &b->ff_out));
    }
    SF_CHECK(sf_name(name, prefix, "proj_out"));
    SF_CHECK(sf_linear_load(w, name, channels, channels, 1, 1, &out->proj_out));
    return SF_OK;
fail:
    sf_transformer_free(out);
    return st;
}

void sf_transformer_free(sf_transformer *t) {
    if (!t)
        return;
    sf_gn_layer_free(&t->norm);
    sf_linear_layer_destroy(t->proj_in);
    sf_linear_layer_destroy(t->proj_out);
    t->proj_in = t->proj_out = NULL;
    if (t->blocks)
        for (size_t i = 0; i < t->n_blocks; i++)
            tblock_free(&t->blocks[i]);
    free(t->blocks);
    t->blocks = NULL;
    t->n_blocks = 0;
}

sf_status sf_transformer_run(sf_transformer *t, sf_arena *a, float *x, size_t batch, size_t h,
                             size_t w, const float *ctx, size_t ctx_len) {
    sf_status st = SF_OK;
    sf_arena_mark_t m = sf_arena_mark(a);
    size_t c = t->channels, rows = batch * h * w;
    float *hid = NULL, *n = NULL, *tmp = NULL, *ff = NULL, *g = NULL;
    SF_CHECK(scratch(a, rows * c, &hid));
    SF_CHECK(scratch(a, rows * c, &n));
    SF_CHECK(scratch(a, rows * c, &tmp));
    SF_CHECK(sf_gn_layer_run(&t->norm, x, batch, h * w, 0, n));
    SF_CHECK(sf_linear_layer_run(t->proj_in, n, rows, hid));
    for (size_t i = 0; i < t->n_blocks; i++) {
        sf_tblock *b = &t->blocks[i];
        SF_CHECK(sf_ln_layer_run(&b->norm1, hid, rows, n));
        SF_CHECK(sf_attn_run(&b->attn1, a, n, batch, h * w, t->only_cross ? ctx : NULL, ctx_len,
                             0, tmp));
        SF_CHECK(sf_add(hid, tmp, rows * c, hid));
        SF_CHECK(sf_ln_layer_run(&b->norm2, hid, rows, n));
        SF_CHECK(sf_attn_run(&b->attn2, a, n, batch, h * w, ctx, ctx_len, 0, tmp));
        SF_CHECK(sf_add(hid, tmp, rows * c, hid));
        SF_CHECK(sf_ln_layer_run(&b->norm3, hid, rows, n));
        {
            /* the feed-forward in blocks of rows: its 3 * inner-wide intermediates are the
             * largest activations of SD's 64x64 level (126 MB at batch 2 in one piece) */
            size_t chunk = rows < SF_FF_CHUNK_ROWS ? rows : SF_FF_CHUNK_ROWS;
            sf_arena_mark_t m2 = sf_arena_mark(a);
            SF_CHECK(scratch(a, chunk * 2 * b->inner, &ff));
            SF_CHECK(scratch(a, chunk * b->inner, &g));
            for (size_t r0 = 0; r0 < rows; r0 += chunk) {
                size_t nr = rows - r0 < chunk ? rows - r0 : chunk;
                SF_CHECK(sf_linear_layer_run(b->ff_in, n + r0 * c, nr, ff));
                SF_CHECK(sf_geglu(ff, nr, b->inner, 0, g)); /* hidden * gelu(gate) */
                SF_CHECK(sf_linear_layer_run(b->ff_out, g, nr, tmp + r0 * c));
            }
            SF_CHECK(sf_arena_release(a, m2));
        }
        SF_CHECK(sf_add(hid, tmp, rows * c, hid));
    }
    SF_CHECK(sf_linear_layer_run(t->proj_out, hid, rows, tmp));
    SF_CHECK(sf_add(x, tmp, rows * c, x));
fail:
    if (st == SF_OK)
        st = sf_arena_release(a, m);
    else
        sf_arena_release(a, m);
    return st;
}

/* ---- VAE attention ---- */

sf_status sf_vae_attn_load(sf_weights *w, const char *prefix, size_t channels, size_t groups,
                           float eps, sf_vae_attn *out) {
    sf_status st = SF_OK;
    char name[SF_NAME_MAX];
    memset(out, 0, sizeof *out);
    out->channels = channels;
    SF_CHECK(sf_name(name, prefix, "group_norm"));
    SF_CHECK(sf_gn_layer_load(w, name, channels, groups, eps, &out->norm));
    SF_CHECK(sf_attn_load(w, prefix, SF_ATTN_DIFFUSERS, channels, 0, 1, 1, &out->attn));
    return SF_OK;
fail:
    sf_vae_attn_free(out);
    return st;
}

void sf_vae_attn_free(sf_vae_attn *v) {
    if (!v)
        return;
    sf_gn_layer_free(&v->norm);
    sf_attn_free(&v->attn);
}

sf_status sf_vae_attn_run(sf_vae_attn *v, sf_arena *a, float *x, size_t batch, size_t h,
                          size_t w) {
    sf_status st = SF_OK;
    sf_arena_mark_t m = sf_arena_mark(a);
    size_t rows = batch * h * w, c = v->channels;
    float *n = NULL;
    SF_CHECK(scratch(a, rows * c, &n));
    SF_CHECK(sf_gn_layer_run(&v->norm, x, batch, h * w, 0, n));
    SF_CHECK(sf_attn_run(&v->attn, a, n, batch, h * w, NULL, 0, 0, n));
    SF_CHECK(sf_add(x, n, rows * c, x));
fail:
    if (st == SF_OK)
        st = sf_arena_release(a, m);
    else
        sf_arena_release(a, m);
    return st;
}

/* ---- resampling ---- */

sf_status sf_resize_nearest(const float *x, size_t batch, size_t h, size_t w, size_t c,
                            size_t oh, size_t ow, float *y) {
    if (!x || !y || !batch || !h || !w || !c || !oh || !ow)
        return sf_error(SF_ERR_INVALID_ARG, "sf_resize_nearest: NULL pointer or zero size");
    if (oh == 2 * h && ow == 2 * w)
        return sf_upsample_nearest2x(x, batch, h, w, c, y);
    /* as PyTorch's nearest: scale = in / out in float, src = min(floor(dst * scale), in - 1) */
    float sh = (float)h / (float)oh, sw = (float)w / (float)ow;
    for (size_t b = 0; b < batch; b++) {
        for (size_t i = 0; i < oh; i++) {
            size_t si = (size_t)floorf((float)i * sh);
            if (si > h - 1)
                si = h - 1;
            for (size_t j = 0; j < ow; j++) {
                size_t sj = (size_t)floorf((float)j * sw);
                if (sj > w - 1)
                    sj = w - 1;
                memcpy(y + ((b * oh + i) * ow + j) * c, x + ((b * h + si) * w + sj) * c,
                       c * sizeof(float));
            }
        }
    }
    return SF_OK;
}

int sf_any_nan(const float *x, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        bad |= x[i] != x[i];
    return bad;
}

void sf_fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
}
