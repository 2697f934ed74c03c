/* sf_vae.c — diffusers' AutoencoderKL in NHWC: encoder (with its right/bottom padded
 * downsamplers) and decoder (possibly channel-reduced). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_nn.h"

#define VAE_EPS 1e-6f

typedef struct {
    sf_resnet res[SF_UNET_MAX_LAYERS + 1];
    size_t n_res;
    sf_conv_layer *resample; /* down: stride-2 conv after (0,1,0,1) padding; up: conv after 2x */
} sf_vae_stage;

typedef struct {
    sf_resnet res0, res1;
    sf_vae_attn attn;
    int has_attn;
} sf_vae_mid;

struct sf_vae {
    sf_vae_config cfg;
    int has_enc, has_dec;
    /* encoder */
    sf_conv_layer *enc_conv_in, *enc_conv_out, *quant_conv;
    sf_vae_stage enc[SF_UNET_MAX_BLOCKS];
    sf_vae_mid enc_mid;
    sf_gn_layer enc_norm_out;
    /* decoder */
    sf_conv_layer *dec_conv_in, *dec_conv_out, *post_quant_conv;
    sf_vae_stage dec[SF_UNET_MAX_BLOCKS];
    sf_vae_mid dec_mid;
    sf_gn_layer dec_norm_out;
    sf_arena *arena;
    sf_tensor_hook hook;
    void *hook_user;
};

const sf_vae_config *sf_vae_get_config(const sf_vae *v) {
    return v ? &v->cfg : NULL;
}

void sf_vae_set_hook(sf_vae *v, sf_tensor_hook hook, void *user) {
    if (!v)
        return;
    v->hook = hook;
    v->hook_user = user;
}

static void stage_free(sf_vae_stage *s) {
    for (size_t i = 0; i < SF_UNET_MAX_LAYERS + 1; i++)
        sf_resnet_free(&s->res[i]);
    sf_conv_layer_destroy(s->resample);
    s->resample = NULL;
}

static void mid_free(sf_vae_mid *m) {
    sf_resnet_free(&m->res0);
    sf_resnet_free(&m->res1);
    sf_vae_attn_free(&m->attn);
}

void sf_vae_destroy(sf_vae *v) {
    if (!v)
        return;
    sf_conv_layer_destroy(v->enc_conv_in);
    sf_conv_layer_destroy(v->enc_conv_out);
    sf_conv_layer_destroy(v->quant_conv);
    sf_conv_layer_destroy(v->dec_conv_in);
    sf_conv_layer_destroy(v->dec_conv_out);
    sf_conv_layer_destroy(v->post_quant_conv);
    for (size_t i = 0; i < SF_UNET_MAX_BLOCKS; i++) {
        stage_free(&v->enc[i]);
        stage_free(&v->dec[i]);
    }
    mid_free(&v->enc_mid);
    mid_free(&v->dec_mid);
    sf_gn_layer_free(&v->enc_norm_out);
    sf_gn_layer_free(&v->dec_norm_out);
    sf_arena_destroy(v->arena);
    free(v);
    sf_heap_release();
}

static sf_status mid_load(sf_weights *w, const char *prefix, size_t ch, size_t groups,
                          int attn, sf_vae_mid *m) {
    sf_status st = SF_OK;
    char name[SF_NAME_MAX];
    snprintf(name, sizeof name, "%s.resnets.0", prefix);
    SF_CHECK(sf_resnet_load(w, name, ch, ch, 0, groups, VAE_EPS, &m->res0));
    if (attn) {
        snprintf(name, sizeof name, "%s.attentions.0", prefix);
        SF_CHECK(sf_vae_attn_load(w, name, ch, groups, VAE_EPS, &m->attn));
        m->has_attn = 1;
    }
    snprintf(name, sizeof name, "%s.resnets.1", prefix);
    SF_CHECK(sf_resnet_load(w, name, ch, ch, 0, groups, VAE_EPS, &m->res1));
fail:
    return st;
}

static sf_status validate(const sf_vae_config *c) {
    if (c->n_blocks < 1 || c->n_blocks > SF_UNET_MAX_BLOCKS || !c->layers_per_block ||
        c->layers_per_block > SF_UNET_MAX_LAYERS || !c->decoder_layers_per_block ||
        c->decoder_layers_per_block > SF_UNET_MAX_LAYERS || !c->in_channels ||
        !c->out_channels || !c->latent_channels || !c->norm_num_groups ||
        !c->decoder_norm_num_groups)
        return sf_error(SF_ERR_FORMAT, "vae config: bad block count, layers or channels");
    for (size_t i = 0; i < c->n_blocks; i++) {
        if (!c->block_out_channels[i] || c->block_out_channels[i] % c->norm_num_groups)
            return sf_error(SF_ERR_FORMAT,
                            "vae config: channels of block %zu are not positive multiples of "
                            "norm_num_groups = %zu",
                            i, c->norm_num_groups);
        if (!c->decoder_block_out_channels[i] ||
            c->decoder_block_out_channels[i] % c->decoder_norm_num_groups)
            return sf_error(SF_ERR_FORMAT,
                            "vae config: decoder channels of block %zu are not positive multiples "
                            "of decoder_norm_num_groups = %zu",
                            i, c->decoder_norm_num_groups);
    }
    return SF_OK;
}

sf_status sf_vae_create(const sf_vae_config *cfg, sf_weights *w, int encoder, int decoder,
                        int strict, sf_vae **out) {
    sf_status st = SF_OK;
    sf_vae *v = NULL;
    char name[SF_NAME_MAX];
    if (!cfg || !w || !out || (!encoder && !decoder))
        return sf_error(SF_ERR_INVALID_ARG, "sf_vae_create: NULL argument or nothing to build");
    *out = NULL;
    SF_CHECK(validate(cfg));
    v = calloc(1, sizeof *v);
    if (!v)
        SF_FAIL(SF_ERR_OOM, "sf_vae_create: out of memory");
    v->cfg = *cfg;
    const sf_vae_config *c = &v->cfg;
    size_t nb = c->n_blocks, g = c->norm_num_groups, L = c->latent_channels;
    SF_CHECK(sf_arena_create(&v->arena));
    if (encoder) {
        const size_t *bo = c->block_out_channels;
        SF_CHECK(sf_conv_load(w, "encoder.conv_in", c->in_channels, bo[0], 3, 1, 1, 1, 1, 1, 1,
                              &v->enc_conv_in));
        size_t ch = bo[0];
        for (size_t i = 0; i < nb; i++) {
            sf_vae_stage *s = &v->enc[i];
            s->n_res = c->layers_per_block;
            for (size_t j = 0; j < s->n_res; j++) {
                snprintf(name, sizeof name, "encoder.down_blocks.%zu.resnets.%zu", i, j);
                SF_CHECK(sf_resnet_load(w, name, ch, bo[i], 0, g, VAE_EPS, &s->res[j]));
                ch = bo[i];
            }
            if (i + 1 < nb) {
                snprintf(name, sizeof name, "encoder.down_blocks.%zu.downsamplers.0.conv", i);
                SF_CHECK(sf_conv_load(w, name, ch, ch, 3, 2, 0, 0, 1, 1, 1, &s->resample));
            }
        }
        SF_CHECK(mid_load(w, "encoder.mid_block", ch, g, c->mid_attention, &v->enc_mid));
        SF_CHECK(sf_gn_layer_load(w, "encoder.conv_norm_out", ch, g, VAE_EPS, &v->enc_norm_out));
        SF_CHECK(sf_conv_load(w, "encoder.conv_out", ch, 2 * L, 3, 1, 1, 1, 1, 1, 1,
                              &v->enc_conv_out));
        if (c->use_quant_conv)
            SF_CHECK(sf_conv_load(w, "quant_conv", 2 * L, 2 * L, 1, 1, 0, 0, 0, 0, 1,
                                  &v->quant_conv));
        v->has_enc = 1;
    }
    if (decoder) {
        const size_t *bo = c->decoder_block_out_channels;
        g = c->decoder_norm_num_groups;
        if (c->use_post_quant_conv)
            SF_CHECK(sf_conv_load(w, "post_quant_conv", L, L, 1, 1, 0, 0, 0, 0, 1,
                                  &v->post_quant_conv));
        size_t ch = bo[nb - 1];
        SF_CHECK(sf_conv_load(w, "decoder.conv_in", L, ch, 3, 1, 1, 1, 1, 1, 1,
                              &v->dec_conv_in));
        SF_CHECK(mid_load(w, "decoder.mid_block", ch, g, c->mid_attention, &v->dec_mid));
        for (size_t i = 0; i < nb; i++) {
            sf_vae_stage *s = &v->dec[i];
            size_t oc = bo[nb - 1 - i];
            s->n_res = c->decoder_layers_per_block + 1;
            for (size_t j = 0; j < s->n_res; j++) {
                snprintf(name, sizeof name, "decoder.up_blocks.%zu.resnets.%zu", i, j);
                SF_CHECK(sf_resnet_load(w, name, ch, oc, 0, g, VAE_EPS, &s->res[j]));
                ch = oc;
            }
            if (i + 1 < nb) {
                snprintf(name, sizeof name, "decoder.up_blocks.%zu.upsamplers.0.conv", i);
                SF_CHECK(sf_conv_load(w, name, ch, ch, 3, 1, 1, 1, 1, 1, 1, &s->resample));
            }
        }
        SF_CHECK(sf_gn_layer_load(w, "decoder.conv_norm_out", ch, g, VAE_EPS, &v->dec_norm_out));
        SF_CHECK(sf_conv_load(w, "decoder.conv_out", ch, c->out_channels, 3, 1, 1, 1, 1, 1, 1,
                              &v->dec_conv_out));
        v->has_dec = 1;
    }
    if (strict && encoder && decoder) {
        const char *first = NULL;
        size_t n = sf_weights_unused(w, &first);
        if (n)
            SF_FAIL(SF_ERR_FORMAT,
                    "%s: %zu tensor(s) not used by this VAE architecture, e.g. '%s' (does the "
                    "config match the weights?)",
                    sf_weights_label(w), n, first);
    }
    *out = v;
    return SF_OK;
fail:
    sf_vae_destroy(v);
    return st;
}

void sf_vae_decoded_size(const sf_vae *v, size_t h, size_t w, size_t *oh, size_t *ow) {
    size_t f = (size_t)1 << (v->cfg.n_blocks - 1);
    *oh = h * f;
    *ow = w * f;
}

void sf_vae_encoded_size(const sf_vae *v, size_t h, size_t w, size_t *oh, size_t *ow) {
    for (size_t i = 0; i + 1 < v->cfg.n_blocks; i++) {
        h = h >= 2 ? (h - 2) / 2 + 1 : 0; /* pad (0, 1) then 3x3 stride 2 */
        w = w >= 2 ? (w - 2) / 2 + 1 : 0;
    }
    *oh = h;
    *ow = w;
}

static sf_status act(sf_arena *a, size_t batch, size_t h, size_t w, size_t c, float **out) {
    size_t bytes;
    if (!sf_mul_n_ok(&bytes, 5, batch, h, w, c, sizeof(float)))
        return sf_error(SF_ERR_OOM, "activation (%zu, %zu, %zu, %zu) is too large", batch, h, w,
                        c);
    return sf_arena_alloc(a, bytes, (void **)out);
}

/* Run a mid block on x (B, h, w, ch) into a fresh buffer *y. */
static sf_status mid_run(sf_vae *v, sf_vae_mid *m, const float *x, size_t batch, size_t h,
                         size_t w, size_t ch, float **y) {
    sf_status st = SF_OK;
    float *t = NULL;
    SF_CHECK(act(v->arena, batch, h, w, ch, &t));
    SF_CHECK(act(v->arena, batch, h, w, ch, y));
    SF_CHECK(sf_resnet_run(&m->res0, v->arena, x, batch, h, w, NULL, t));
    if (m->has_attn)
        SF_CHECK(sf_vae_attn_run(&m->attn, v->arena, t, batch, h, w));
    SF_CHECK(sf_resnet_run(&m->res1, v->arena, t, batch, h, w, NULL, *y));
fail:
    return st;
}

sf_status sf_vae_decode(sf_vae *v, const float *z, size_t batch, size_t h, size_t w,
                        float *img) {
    sf_status st = SF_OK;
    if (!v || !z || !img || !batch || !h || !w)
        return sf_error(SF_ERR_INVALID_ARG, "sf_vae_decode: NULL pointer or zero size");
    if (!v->has_dec)
        return sf_error(SF_ERR_INVALID_ARG, "sf_vae_decode: this VAE was built without decoder");
    const sf_vae_config *c = &v->cfg;
    size_t nb = c->n_blocks, L = c->latent_channels, ch = c->decoder_block_out_channels[nb - 1];
    sf_arena *a = v->arena;
    float *zq = NULL, *x = NULL;
    if (sf_any_nan(z, batch * h * w * L)) {
        size_t oh, ow;
        sf_vae_decoded_size(v, h, w, &oh, &ow);
        sf_fill_nan(img, batch * oh * ow * c->out_channels); /* NaN in, NaN out */
        return SF_OK;
    }
    SF_CHECK(sf_arena_reset(a));
    if (v->post_quant_conv) {
        SF_CHECK(act(a, batch, h, w, L, &zq));
        SF_CHECK(sf_conv_layer_run(v->post_quant_conv, z, batch, h, w, zq));
        z = zq;
    }
    /* two ping-pong buffers of the largest activation: each layer reads one and writes the
     * other, so the decoder's memory is two activations plus one layer's scratch */
    size_t most = h * w * ch, hh = h, ww = w, cc = ch;
    for (size_t i = 0; i < nb; i++) {
        size_t oc = c->decoder_block_out_channels[nb - 1 - i];
        size_t wide = cc > oc ? cc : oc;
        if (hh * ww * wide > most)
            most = hh * ww * wide;
        cc = oc;
        if (v->dec[i].resample) {
            hh *= 2;
            ww *= 2;
            if (hh * ww * cc > most)
                most = hh * ww * cc;
        }
    }
    float *buf[2] = {NULL, NULL};
    SF_CHECK(act(a, batch, 1, 1, most, &buf[0]));
    SF_CHECK(act(a, batch, 1, 1, most, &buf[1]));
    int cur = 0;
    x = buf[cur];
    SF_CHECK(sf_conv_layer_run(v->dec_conv_in, z, batch, h, w, x));
    if (v->hook)
        v->hook(v->hook_user, "dec_conv_in", x, batch, h, w, ch);
    {
        sf_vae_mid *m = &v->dec_mid;
        SF_CHECK(sf_resnet_run(&m->res0, a, buf[cur], batch, h, w, NULL, buf[!cur]));
        cur = !cur;
        if (m->has_attn)
            SF_CHECK(sf_vae_attn_run(&m->attn, a, buf[cur], batch, h, w));
        SF_CHECK(sf_resnet_run(&m->res1, a, buf[cur], batch, h, w, NULL, buf[!cur]));
        cur = !cur;
    }
    if (v->hook)
        v->hook(v->hook_user, "dec_mid_block", buf[cur], batch, h, w, ch);
    for (size_t i = 0; i < nb; i++) {
        sf_vae_stage *s = &v->dec[i];
        size_t oc = c->decoder_block_out_channels[nb - 1 - i];
        for (size_t j = 0; j < s->n_res; j++) {
            SF_CHECK(sf_resnet_run(&s->res[j], a, buf[cur], batch, h, w, NULL, buf[!cur]));
            cur = !cur;
            ch = oc;
        }
        if (s->resample) {
            SF_CHECK(sf_upsample_nearest2x(buf[cur], batch, h, w, ch, buf[!cur]));
            h *= 2;
            w *= 2;
            SF_CHECK(sf_conv_layer_run(s->resample, buf[!cur], batch, h, w, buf[cur]));
        }
    }
    x = buf[cur];
    SF_CHECK(sf_gn_layer_run(&v->dec_norm_out, x, batch, h * w, 1, x));
    SF_CHECK(sf_conv_layer_run(v->dec_conv_out, x, batch, h, w, img));
fail:
    sf_pool_yield();
    return st;
}

sf_status sf_vae_encode(sf_vae *v, const float *img, size_t batch, size_t h, size_t w,
                        float *mean, float *std_out, float *logvar_out) {
    sf_status st = SF_OK;
    if (!v || !img || !mean || !std_out || !batch || !h || !w)
        return sf_error(SF_ERR_INVALID_ARG, "sf_vae_encode: NULL pointer or zero size");
    if (!v->has_enc)
        return sf_error(SF_ERR_INVALID_ARG, "sf_vae_encode: this VAE was built without encoder");
    const sf_vae_config *c = &v->cfg;
    size_t nb = c->n_blocks, L = c->latent_channels, ch = c->block_out_channels[0];
    size_t lh, lw;
    sf_vae_encoded_size(v, h, w, &lh, &lw);
    if (!lh || !lw)
        return sf_error(SF_ERR_SHAPE, "sf_vae_encode: image %zux%zu is too small", h, w);
    sf_arena *a = v->arena;
    float *x = NULL, *y = NULL;
    if (sf_any_nan(img, batch * h * w * c->in_channels)) {
        sf_fill_nan(mean, batch * lh * lw * L);
        sf_fill_nan(std_out, batch * lh * lw * L);
        if (logvar_out)
            sf_fill_nan(logvar_out, batch * lh * lw * L);
        return SF_OK;
    }
    SF_CHECK(sf_arena_reset(a));
    SF_CHECK(act(a, batch, h, w, ch, &x));
    SF_CHECK(sf_conv_layer_run(v->enc_conv_in, img, batch, h, w, x));
    if (v->hook)
        v->hook(v->hook_user, "enc_conv_in", x, batch, h, w, ch);
    for (size_t i = 0; i < nb; i++) {
        sf_vae_stage *s = &v->enc[i];
        size_t oc = c->block_out_channels[i];
        for (size_t j = 0; j < s->n_res; j++) {
            SF_CHECK(act(a, batch, h, w, oc, &y));
            SF_CHECK(sf_resnet_run(&s->res[j], a, x, batch, h, w, NULL, y));
            x = y;
            ch = oc;
        }
        if (s->resample) {
            size_t oh, ow;
            SF_CHECK(sf_conv_layer_output_size(s->resample, h, w, &oh, &ow));
            SF_CHECK(act(a, batch, oh, ow, ch, &y));
            SF_CHECK(sf_conv_layer_run(s->resample, x, batch, h, w, y));
            x = y;
            h = oh;
            w = ow;
        }
    }
    SF_CHECK(mid_run(v, &v->enc_mid, x, batch, h, w, ch, &y));
    if (v->hook)
        v->hook(v->hook_user, "enc_mid_block", y, batch, h, w, ch);
    SF_CHECK(sf_gn_layer_run(&v->enc_norm_out, y, batch, h * w, 1, y));
    float *moments = NULL, *q = NULL;
    SF_CHECK(act(a, batch, h, w, 2 * L, &moments));
    SF_CHECK(sf_conv_layer_run(v->enc_conv_out, y, batch, h, w, moments));
    if (v->hook)
        v->hook(v->hook_user, "enc_out", moments, batch, h, w, 2 * L);
    if (v->quant_conv) {
        SF_CHECK(act(a, batch, h, w, 2 * L, &q));
        SF_CHECK(sf_conv_layer_run(v->quant_conv, moments, batch, h, w, q));
        moments = q;
    }
    size_t n = batch * h * w;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < L; k++) {
            float m = moments[i * 2 * L + k], lv = moments[i * 2 * L + L + k];
            lv = lv < -30.0f ? -30.0f : (lv > 20.0f ? 20.0f : lv); /* NaN stays NaN */
            mean[i * L + k] = m;
            std_out[i * L + k] = expf(0.5f * lv);
            if (logvar_out)
                logvar_out[i * L + k] = lv;
        }
    }
fail:
    sf_pool_yield();
    return st;
}

sf_status sf_vae_trim(sf_vae *v) {
    if (!v)
        return sf_error(SF_ERR_INVALID_ARG, "sf_vae_trim: NULL vae");
    return sf_arena_trim(v->arena);
}
