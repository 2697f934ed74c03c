/* sf_unet.c — diffusers' UNet2DConditionModel in NHWC, built from its config and weights, with
 * SnapFusion's elastic block list (layers may drop their ResNet or transformer, or gain one). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_nn.h"

typedef struct {
    int has_resnet, has_attn;
    sf_resnet resnet;
    sf_transformer attn;
    size_t out_ch;  /* channels after the layer */
    size_t skip_ch; /* up layers: channels of the skip they consume */
} sf_unet_layer;

struct sf_unet {
    sf_unet_config cfg;
    sf_conv_layer *conv_in, *conv_out;
    sf_linear_layer *time1, *time2;
    sf_unet_layer down[SF_UNET_MAX_BLOCKS][SF_UNET_MAX_LAYERS];
    sf_conv_layer *downsample[SF_UNET_MAX_BLOCKS];
    sf_resnet mid_res[2];
    sf_transformer mid_attn;
    sf_unet_layer up[SF_UNET_MAX_BLOCKS][SF_UNET_MAX_LAYERS + 1];
    sf_conv_layer *upsample[SF_UNET_MAX_BLOCKS];
    sf_gn_layer norm_out;
    sf_arena *arena;
    sf_tensor_hook hook;
    void *hook_user;
};

const sf_unet_config *sf_unet_get_config(const sf_unet *u) {
    return u ? &u->cfg : NULL;
}

size_t sf_unet_arena_bytes(const sf_unet *u) {
    return u ? sf_arena_high_water(u->arena) : 0;
}

void sf_unet_set_hook(sf_unet *u, sf_tensor_hook hook, void *user) {
    if (!u)
        return;
    u->hook = hook;
    u->hook_user = user;
}

static void layer_free(sf_unet_layer *l) {
    sf_resnet_free(&l->resnet);
    sf_transformer_free(&l->attn);
}

void sf_unet_destroy(sf_unet *u) {
    if (!u)
        return;
    sf_conv_layer_destroy(u->conv_in);
    sf_conv_layer_destroy(u->conv_out);
    sf_linear_layer_destroy(u->time1);
    sf_linear_layer_destroy(u->time2);
    for (size_t i = 0; i < SF_UNET_MAX_BLOCKS; i++) {
        for (size_t j = 0; j < SF_UNET_MAX_LAYERS; j++)
            layer_free(&u->down[i][j]);
        for (size_t j = 0; j < SF_UNET_MAX_LAYERS + 1; j++)
            layer_free(&u->up[i][j]);
        sf_conv_layer_destroy(u->downsample[i]);
        sf_conv_layer_destroy(u->upsample[i]);
    }
    sf_resnet_free(&u->mid_res[0]);
    sf_resnet_free(&u->mid_res[1]);
    sf_transformer_free(&u->mid_attn);
    sf_gn_layer_free(&u->norm_out);
    sf_arena_destroy(u->arena);
    free(u);
    sf_heap_release();
}

static sf_status validate(const sf_unet_config *c) {
    if (c->n_blocks < 1 || c->n_blocks > SF_UNET_MAX_BLOCKS)
        return sf_error(SF_ERR_FORMAT, "unet config: %zu blocks (supported: 1..%d)", c->n_blocks,
                        SF_UNET_MAX_BLOCKS);
    if (!c->in_channels || !c->out_channels || !c->norm_num_groups || !c->cross_attention_dim ||
        !c->time_embed_dim || !(c->norm_eps > 0))
        return sf_error(SF_ERR_FORMAT, "unet config: zero channels, groups, dims or eps");
    for (size_t i = 0; i < c->n_blocks; i++) {
        if (!c->block_out_channels[i] || c->block_out_channels[i] % c->norm_num_groups)
            return sf_error(SF_ERR_FORMAT,
                            "unet config: block_out_channels[%zu] = %zu is not a positive "
                            "multiple of norm_num_groups = %zu",
                            i, c->block_out_channels[i], c->norm_num_groups);
        if (c->layers_per_block[i] < 1 || c->layers_per_block[i] > SF_UNET_MAX_LAYERS)
            return sf_error(SF_ERR_FORMAT, "unet config: layers_per_block[%zu] = %zu", i,
                            c->layers_per_block[i]);
        if (!c->heads[i] || c->block_out_channels[i] % c->heads[i])
            return sf_error(SF_ERR_FORMAT,
                            "unet config: %zu channels of block %zu are not divisible into %zu "
                            "heads",
                            c->block_out_channels[i], i, c->heads[i]);
    }
    return SF_OK;
}

/* Load a layer (ResNet and/or transformer) under `prefix` ("down_blocks.1"), index j. */
static sf_status load_layer(sf_unet *u, sf_weights *w, const char *prefix, size_t j,
                            int has_resnet, size_t attn_blocks, size_t in_ch, size_t out_ch,
                            size_t heads, int only_cross, sf_unet_layer *l) {
    sf_status st = SF_OK;
    const sf_unet_config *c = &u->cfg;
    char name[SF_NAME_MAX];
    l->has_resnet = has_resnet;
    l->has_attn = attn_blocks > 0;
    l->out_ch = out_ch;
    if (has_resnet) {
        int n = snprintf(name, sizeof name, "%s.resnets.%zu", prefix, j);
        if (n < 0 || n >= (int)sizeof name)
            return sf_error(SF_ERR_INVALID_ARG, "name too long");
        SF_CHECK(sf_resnet_load(w, name, in_ch, out_ch, c->time_embed_dim, c->norm_num_groups,
                                c->norm_eps, &l->resnet));
    } else if (in_ch != out_ch) {
        return sf_error(SF_ERR_FORMAT,
                        "unet config: %s layer %zu cannot drop its ResNet: it changes the "
                        "channels from %zu to %zu",
                        prefix, j, in_ch, out_ch);
    }
    if (attn_blocks) {
        int n = snprintf(name, sizeof name, "%s.attentions.%zu", prefix, j);
        if (n < 0 || n >= (int)sizeof name)
            return sf_error(SF_ERR_INVALID_ARG, "name too long");
        SF_CHECK(sf_transformer_load(w, name, out_ch, heads, c->cross_attention_dim,
                                     attn_blocks, c->norm_num_groups, only_cross, &l->attn));
    }
fail:
    return st;
}

sf_status sf_unet_create(const sf_unet_config *cfg, sf_weights *w, int strict, sf_unet **out) {
    sf_status st = SF_OK;
    sf_unet *u = NULL;
    char name[SF_NAME_MAX];
    if (!cfg || !w || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_unet_create: NULL argument");
    *out = NULL;
    SF_CHECK(validate(cfg));
    u = calloc(1, sizeof *u);
    if (!u)
        SF_FAIL(SF_ERR_OOM, "sf_unet_create: out of memory");
    u->cfg = *cfg;
    const sf_unet_config *c = &u->cfg;
    size_t nb = c->n_blocks, c0 = c->block_out_channels[0];
    SF_CHECK(sf_arena_create(&u->arena));
    SF_CHECK(sf_conv_load(w, "conv_in", c->in_channels, c0, 3, 1, 1, 1, 1, 1, 1, &u->conv_in));
    SF_CHECK(sf_linear_load(w, "time_embedding.linear_1", c0, c->time_embed_dim, 1, 0,
                            &u->time1));
    SF_CHECK(sf_linear_load(w, "time_embedding.linear_2", c->time_embed_dim, c->time_embed_dim,
                            1, 0, &u->time2));

    /* simulate the skip stack to know every layer's channels */
    size_t stack[SF_UNET_MAX_BLOCKS * (SF_UNET_MAX_LAYERS + 1) + 1];
    size_t sp = 0, ch = c0;
    stack[sp++] = ch;
    for (size_t i = 0; i < nb; i++) {
        size_t oc = c->block_out_channels[i];
        char prefix[64];
        snprintf(prefix, sizeof prefix, "down_blocks.%zu", i);
        for (size_t j = 0; j < c->layers_per_block[i]; j++) {
            SF_CHECK(load_layer(u, w, prefix, j, c->down_resnet[i][j], c->down_attn[i][j], ch,
                                oc, c->heads[i], c->only_cross_attention[i], &u->down[i][j]));
            ch = oc;
            stack[sp++] = ch;
        }
        if (i + 1 < nb) {
            snprintf(name, sizeof name, "%s.downsamplers.0.conv", prefix);
            SF_CHECK(sf_conv_load(w, name, ch, ch, 3, 2, 1, 1, 1, 1, 1, &u->downsample[i]));
            stack[sp++] = ch;
        }
    }
    if (c->has_mid_block) {
        size_t hl = c->heads[nb - 1];
        if (c->mid_resnet[0])
            SF_CHECK(sf_resnet_load(w, "mid_block.resnets.0", ch, ch, c->time_embed_dim,
                                    c->norm_num_groups, c->norm_eps, &u->mid_res[0]));
        /* diffusers' UNetMidBlock2DCrossAttn ignores only_cross_attention: its transformer
         * always self-attends first */
        if (c->mid_attn)
            SF_CHECK(sf_transformer_load(w, "mid_block.attentions.0", ch, hl,
                                         c->cross_attention_dim, c->mid_attn, c->norm_num_groups,
                                         0, &u->mid_attn));
        if (c->mid_resnet[1])
            SF_CHECK(sf_resnet_load(w, "mid_block.resnets.1", ch, ch, c->time_embed_dim,
                                    c->norm_num_groups, c->norm_eps, &u->mid_res[1]));
    }
    for (size_t i = 0; i < nb; i++) {
        size_t r = nb - 1 - i, oc = c->block_out_channels[r];
        char prefix[64];
        snprintf(prefix, sizeof prefix, "up_blocks.%zu", i);
        for (size_t j = 0; j < c->layers_per_block[r] + 1; j++) {
            size_t skip = stack[--sp];
            sf_unet_layer *l = &u->up[i][j];
            l->skip_ch = skip;
            size_t in = c->up_resnet[i][j] ? ch + skip : ch;
            SF_CHECK(load_layer(u, w, prefix, j, c->up_resnet[i][j], c->up_attn[i][j], in, oc,
                                c->heads[r], c->only_cross_attention[r], l));
            ch = oc;
        }
        if (i + 1 < nb) {
            snprintf(name, sizeof name, "%s.upsamplers.0.conv", prefix);
            SF_CHECK(sf_conv_load(w, name, ch, ch, 3, 1, 1, 1, 1, 1, 1, &u->upsample[i]));
        }
    }
    SF_CHECK(sf_gn_layer_load(w, "conv_norm_out", ch, c->norm_num_groups, c->norm_eps,
                              &u->norm_out));
    SF_CHECK(sf_conv_load(w, "conv_out", ch, c->out_channels, 3, 1, 1, 1, 1, 1, 1,
                          &u->conv_out));
    if (strict) {
        const char *first = NULL;
        size_t n = sf_weights_unused(w, &first);
        if (n)
            SF_FAIL(SF_ERR_FORMAT,
                    "%s: %zu tensor(s) not used by this UNet architecture, e.g. '%s' (does the "
                    "config match the weights?)",
                    sf_weights_label(w), n, first);
    }
    *out = u;
    return SF_OK;
fail:
    sf_unet_destroy(u);
    return st;
}

/* ---- forward ---- */

typedef struct {
    float *x;
    size_t h, w, c;
} sf_act;

static sf_status alloc_act(sf_arena *a, size_t batch, size_t h, size_t w, size_t c,
                           sf_act *out) {
    size_t bytes;
    if (!sf_mul_n_ok(&bytes, 5, batch, h, w, c, sizeof(float)))
        return sf_error(SF_ERR_OOM, "activation (%zu, %zu, %zu, %zu) is too large", batch, h, w,
                        c);
    out->h = h;
    out->w = w;
    out->c = c;
    return sf_arena_alloc(a, bytes, (void **)&out->x);
}

/* A copy of `in` in a buffer of its own. The transformer runs in place, and when no ResNet
 * ran before it its input is a buffer the up blocks still read (a skip on the stack). */
static sf_status own_copy(sf_arena *a, const sf_act *in, size_t batch, sf_act *out) {
    sf_status st = alloc_act(a, batch, in->h, in->w, in->c, out);
    if (st == SF_OK)
        memcpy(out->x, in->x, batch * in->h * in->w * in->c * sizeof(float));
    return st;
}

static void hook(sf_unet *u, const char *name, const sf_act *t, size_t batch) {
    if (u->hook)
        u->hook(u->hook_user, name, t->x, batch, t->h, t->w, t->c);
}

/* Run a layer from `in` into `*out`: a fresh activation, or `in` itself when nothing runs. */
static sf_status run_layer(sf_unet *u, sf_unet_layer *l, const sf_act *in, size_t batch,
                           const float *temb, const float *ctx, size_t ctx_len, sf_act *out) {
    sf_status st = SF_OK;
    if (l->has_resnet) {
        SF_CHECK(alloc_act(u->arena, batch, in->h, in->w, l->out_ch, out));
        SF_CHECK(sf_resnet_run(&l->resnet, u->arena, in->x, batch, in->h, in->w, temb, out->x));
    } else if (l->has_attn) {
        SF_CHECK(own_copy(u->arena, in, batch, out));
    } else {
        *out = *in; /* nothing runs: nothing writes, the buffer can be shared */
    }
    if (l->has_attn)
        SF_CHECK(sf_transformer_run(&l->attn, u->arena, out->x, batch, out->h, out->w, ctx,
                                    ctx_len));
fail:
    return st;
}

sf_status sf_unet_run(sf_unet *u, const float *sample, size_t batch, size_t h, size_t w,
                      const float *timesteps, const float *ctx, size_t ctx_len, float *out) {
    sf_status st = SF_OK;
    if (!u || !sample || !timesteps || !ctx || !out || !batch || !h || !w || !ctx_len)
        return sf_error(SF_ERR_INVALID_ARG, "sf_unet_run: NULL pointer or zero size");
    const sf_unet_config *c = &u->cfg;
    size_t nb = c->n_blocks, c0 = c->block_out_channels[0], td = c->time_embed_dim;
    sf_arena *a = u->arena;
    if (sf_any_nan(sample, batch * h * w * c->in_channels) || sf_any_nan(timesteps, batch) ||
        sf_any_nan(ctx, batch * ctx_len * c->cross_attention_dim)) {
        sf_fill_nan(out, batch * h * w * c->out_channels); /* NaN in, NaN out */
        return SF_OK;
    }
    SF_CHECK(sf_arena_reset(a));

    /* time embedding: silu(linear_2(silu(linear_1(sinusoid(t))))) — the outer SiLU is what
     * every ResNet applies before its time_emb_proj */
    float *tproj = NULL, *temb1 = NULL, *temb = NULL;
    SF_CHECK(sf_arena_alloc(a, batch * c0 * sizeof(float), (void **)&tproj));
    SF_CHECK(sf_arena_alloc(a, batch * td * sizeof(float), (void **)&temb1));
    SF_CHECK(sf_arena_alloc(a, batch * td * sizeof(float), (void **)&temb));
    SF_CHECK(sf_timestep_embedding(timesteps, batch, c0, c->flip_sin_to_cos, c->freq_shift, 1.0f,
                                   10000.0f, tproj));
    SF_CHECK(sf_linear_layer_run(u->time1, tproj, batch, temb1));
    SF_CHECK(sf_activation_run(SF_ACT_SILU, temb1, batch * td, temb1));
    SF_CHECK(sf_linear_layer_run(u->time2, temb1, batch, temb));
    if (u->hook)
        u->hook(u->hook_user, "time_embedding", temb, batch, 1, 1, td);
    SF_CHECK(sf_activation_run(SF_ACT_SILU, temb, batch * td, temb));

    sf_act stack[SF_UNET_MAX_BLOCKS * (SF_UNET_MAX_LAYERS + 1) + 1];
    size_t sp = 0;
    sf_act cur;
    SF_CHECK(alloc_act(a, batch, h, w, c0, &cur));
    SF_CHECK(sf_conv_layer_run(u->conv_in, sample, batch, h, w, cur.x));
    hook(u, "conv_in", &cur, batch);
    stack[sp++] = cur;
    char hname[32];
    for (size_t i = 0; i < nb; i++) {
        for (size_t j = 0; j < c->layers_per_block[i]; j++) {
            sf_act next;
            SF_CHECK(run_layer(u, &u->down[i][j], &cur, batch, temb, ctx, ctx_len, &next));
            cur = next;
            stack[sp++] = cur;
        }
        if (u->downsample[i]) {
            size_t oh, ow;
            sf_act next;
            SF_CHECK(sf_conv_layer_output_size(u->downsample[i], cur.h, cur.w, &oh, &ow));
            SF_CHECK(alloc_act(a, batch, oh, ow, cur.c, &next));
            SF_CHECK(sf_conv_layer_run(u->downsample[i], cur.x, batch, cur.h, cur.w, next.x));
            cur = next;
            stack[sp++] = cur;
        }
        snprintf(hname, sizeof hname, "down_block_%zu", i);
        hook(u, hname, &cur, batch);
    }
    if (c->has_mid_block) {
        sf_act next;
        if (c->mid_resnet[0]) {
            SF_CHECK(alloc_act(a, batch, cur.h, cur.w, cur.c, &next));
            SF_CHECK(sf_resnet_run(&u->mid_res[0], a, cur.x, batch, cur.h, cur.w, temb, next.x));
            cur = next;
        } else if (c->mid_attn) {
            SF_CHECK(own_copy(a, &cur, batch, &next));
            cur = next;
        }
        if (c->mid_attn)
            SF_CHECK(sf_transformer_run(&u->mid_attn, a, cur.x, batch, cur.h, cur.w, ctx,
                                        ctx_len));
        if (c->mid_resnet[1]) {
            SF_CHECK(alloc_act(a, batch, cur.h, cur.w, cur.c, &next));
            SF_CHECK(sf_resnet_run(&u->mid_res[1], a, cur.x, batch, cur.h, cur.w, temb, next.x));
            cur = next;
        }
        hook(u, "mid_block", &cur, batch);
    }
    for (size_t i = 0; i < nb; i++) {
        size_t r = nb - 1 - i;
        for (size_t j = 0; j < c->layers_per_block[r] + 1; j++) {
            sf_unet_layer *l = &u->up[i][j];
            sf_act skip = stack[--sp], next;
            if (l->has_resnet) {
                if (skip.h != cur.h || skip.w != cur.w)
                    SF_FAIL(SF_ERR_SHAPE, "unet: skip %zux%zu does not match %zux%zu", skip.h,
                            skip.w, cur.h, cur.w);
                /* the output first, so that the concatenation can be released right after */
                SF_CHECK(alloc_act(a, batch, cur.h, cur.w, l->out_ch, &next));
                sf_arena_mark_t m = sf_arena_mark(a);
                sf_act in;
                SF_CHECK(alloc_act(a, batch, cur.h, cur.w, cur.c + skip.c, &in));
                SF_CHECK(sf_concat_channels(cur.x, cur.c, skip.x, skip.c,
                                            batch * cur.h * cur.w, in.x));
                SF_CHECK(sf_resnet_run(&l->resnet, a, in.x, batch, in.h, in.w, temb, next.x));
                SF_CHECK(sf_arena_release(a, m));
                if (l->has_attn)
                    SF_CHECK(sf_transformer_run(&l->attn, a, next.x, batch, next.h, next.w, ctx,
                                                ctx_len));
            } else {
                SF_CHECK(run_layer(u, l, &cur, batch, temb, ctx, ctx_len, &next));
            }
            cur = next;
        }
        if (u->upsample[i]) {
            /* diffusers upsamples to the size of the next skip (forward_upsample_size) */
            size_t oh = stack[sp - 1].h, ow = stack[sp - 1].w;
            sf_act up, next;
            SF_CHECK(alloc_act(a, batch, oh, ow, cur.c, &next));
            sf_arena_mark_t m = sf_arena_mark(a);
            SF_CHECK(alloc_act(a, batch, oh, ow, cur.c, &up));
            SF_CHECK(sf_resize_nearest(cur.x, batch, cur.h, cur.w, cur.c, oh, ow, up.x));
            SF_CHECK(sf_conv_layer_run(u->upsample[i], up.x, batch, oh, ow, next.x));
            SF_CHECK(sf_arena_release(a, m));
            cur = next;
        }
        snprintf(hname, sizeof hname, "up_block_%zu", i);
        hook(u, hname, &cur, batch);
    }
    SF_CHECK(sf_gn_layer_run(&u->norm_out, cur.x, batch, cur.h * cur.w, 1, cur.x));
    SF_CHECK(sf_conv_layer_run(u->conv_out, cur.x, batch, cur.h, cur.w, out));
fail:
    sf_pool_yield();
    return st;
}

sf_status sf_unet_trim(sf_unet *u) {
    if (!u)
        return sf_error(SF_ERR_INVALID_ARG, "sf_unet_trim: NULL unet");
    return sf_arena_trim(u->arena);
}
