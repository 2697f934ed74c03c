/* sf_config.c — model configurations from diffusers/transformers config.json files. Values are
 * checked strictly: wrong types, unsupported options and inconsistent lists are errors naming
 * the key, never silently replaced by defaults. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sf_json.h"
#include "sf_nn.h"

/* ---- typed lookups (a missing key or JSON null keeps the default) ---- */

static int present(const sf_json *v) {
    return v && sf_json_type(v) != SF_JSON_NULL;
}

static sf_status get_size(const sf_json *obj, const char *key, size_t *out, size_t lo,
                          size_t hi) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    int64_t x;
    if (sf_json_int64(v, &x) != SF_OK || x < (int64_t)lo || x > (int64_t)hi)
        return sf_error(SF_ERR_FORMAT, "config key '%s': expected an integer in [%zu, %zu]", key,
                        lo, hi);
    *out = (size_t)x;
    return SF_OK;
}

static sf_status get_float(const sf_json *obj, const char *key, float *out) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    double x;
    if (sf_json_number(v, &x) != SF_OK || !isfinite(x))
        return sf_error(SF_ERR_FORMAT, "config key '%s': expected a finite number", key);
    *out = (float)x;
    return SF_OK;
}

static sf_status get_bool(const sf_json *obj, const char *key, int *out) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    if (sf_json_bool(v, out) != SF_OK)
        return sf_error(SF_ERR_FORMAT, "config key '%s': expected true or false", key);
    return SF_OK;
}

/* An int or a list of n ints (broadcast an int). */
static sf_status get_size_list(const sf_json *obj, const char *key, size_t n, size_t *out,
                               size_t lo, size_t hi) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    if (sf_json_type(v) == SF_JSON_ARRAY) {
        if (sf_json_array_size(v) != n)
            return sf_error(SF_ERR_FORMAT, "config key '%s': expected %zu entries, got %zu", key,
                            n, sf_json_array_size(v));
        for (size_t i = 0; i < n; i++) {
            int64_t x;
            if (sf_json_int64(sf_json_array_at(v, i), &x) != SF_OK || x < (int64_t)lo ||
                x > (int64_t)hi)
                return sf_error(SF_ERR_FORMAT,
                                "config key '%s'[%zu]: expected an integer in [%zu, %zu]", key, i,
                                lo, hi);
            out[i] = (size_t)x;
        }
        return SF_OK;
    }
    int64_t x;
    if (sf_json_int64(v, &x) != SF_OK || x < (int64_t)lo || x > (int64_t)hi)
        return sf_error(SF_ERR_FORMAT,
                        "config key '%s': expected an integer in [%zu, %zu] or a list of them",
                        key, lo, hi);
    for (size_t i = 0; i < n; i++)
        out[i] = (size_t)x;
    return SF_OK;
}

static sf_status get_bool_list(const sf_json *obj, const char *key, size_t n, int *out) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    if (sf_json_type(v) == SF_JSON_ARRAY) {
        if (sf_json_array_size(v) != n)
            return sf_error(SF_ERR_FORMAT, "config key '%s': expected %zu entries, got %zu", key,
                            n, sf_json_array_size(v));
        for (size_t i = 0; i < n; i++)
            if (sf_json_bool(sf_json_array_at(v, i), &out[i]) != SF_OK)
                return sf_error(SF_ERR_FORMAT, "config key '%s'[%zu]: expected true or false",
                                key, i);
        return SF_OK;
    }
    int b;
    if (sf_json_bool(v, &b) != SF_OK)
        return sf_error(SF_ERR_FORMAT, "config key '%s': expected true/false or a list", key);
    for (size_t i = 0; i < n; i++)
        out[i] = b;
    return SF_OK;
}

/* The key must be absent/null or equal to the given string. */
static sf_status require_str(const sf_json *obj, const char *key, const char *allowed) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    const char *s = sf_json_string(v, NULL);
    if (!s)
        return sf_error(SF_ERR_FORMAT, "config key '%s': expected a string", key);
    if (strcmp(s, allowed) != 0) {
        char q[80];
        return sf_error(SF_ERR_UNSUPPORTED, "config key '%s' = \"%s\" is not supported (only \"%s\")",
                        key, sf_json_quote(s, strlen(s), q, sizeof q), allowed);
    }
    return SF_OK;
}

/* The key must be absent or null. */
static sf_status require_null(const sf_json *obj, const char *key) {
    if (present(sf_json_object_get(obj, key)))
        return sf_error(SF_ERR_UNSUPPORTED, "config key '%s' is not supported (must be null)",
                        key);
    return SF_OK;
}

/* The key must be absent or false. */
static sf_status require_false(const sf_json *obj, const char *key) {
    int b = 0;
    sf_status st = get_bool(obj, key, &b);
    if (st != SF_OK)
        return st;
    if (b)
        return sf_error(SF_ERR_UNSUPPORTED, "config key '%s' = true is not supported", key);
    return SF_OK;
}

/* ---- elastic block list ---- */

static sf_status parse_layer_entry(const sf_json *e, const char *where, int *resnet,
                                   size_t *attn) {
    if (sf_json_type(e) != SF_JSON_OBJECT)
        return sf_error(SF_ERR_FORMAT, "elastic_blocks.%s: expected an object", where);
    for (size_t k = 0; k < sf_json_object_size(e); k++) {
        const char *key;
        sf_json_object_at(e, k, &key);
        if (strcmp(key, "resnet") != 0 && strcmp(key, "attention") != 0)
            return sf_error(SF_ERR_FORMAT, "elastic_blocks.%s: unknown field '%s'", where, key);
    }
    const sf_json *r = sf_json_object_get(e, "resnet"), *a = sf_json_object_get(e, "attention");
    if (!r || sf_json_bool(r, resnet) != SF_OK)
        return sf_error(SF_ERR_FORMAT, "elastic_blocks.%s.resnet: expected true or false", where);
    int64_t x;
    if (!a || sf_json_int64(a, &x) != SF_OK || x < 0 || x > 64)
        return sf_error(SF_ERR_FORMAT, "elastic_blocks.%s.attention: expected an integer in "
                        "[0, 64]", where);
    *attn = (size_t)x;
    return SF_OK;
}

static sf_status parse_stage_list(const sf_json *list, const char *name, size_t nb,
                                  const size_t *layers, int up,
                                  int resnet[][SF_UNET_MAX_LAYERS + 1],
                                  size_t attn[][SF_UNET_MAX_LAYERS + 1]) {
    if (sf_json_type(list) != SF_JSON_ARRAY || sf_json_array_size(list) != nb)
        return sf_error(SF_ERR_FORMAT, "elastic_blocks.%s: expected a list of %zu stages", name,
                        nb);
    for (size_t i = 0; i < nb; i++) {
        const sf_json *stage = sf_json_array_at(list, i);
        size_t want = up ? layers[nb - 1 - i] + 1 : layers[i];
        if (sf_json_type(stage) != SF_JSON_ARRAY || sf_json_array_size(stage) != want)
            return sf_error(SF_ERR_FORMAT, "elastic_blocks.%s[%zu]: expected a list of %zu layers",
                            name, i, want);
        for (size_t j = 0; j < want; j++) {
            char where[64];
            snprintf(where, sizeof where, "%s[%zu][%zu]", name, i, j);
            sf_status st =
                parse_layer_entry(sf_json_array_at(stage, j), where, &resnet[i][j], &attn[i][j]);
            if (st != SF_OK)
                return st;
        }
    }
    return SF_OK;
}

static sf_status parse_elastic(const sf_json *e, sf_unet_config *c) {
    sf_status st;
    if (sf_json_type(e) != SF_JSON_OBJECT)
        return sf_error(SF_ERR_FORMAT, "config key 'elastic_blocks': expected an object");
    for (size_t k = 0; k < sf_json_object_size(e); k++) {
        const char *key;
        sf_json_object_at(e, k, &key);
        if (strcmp(key, "down_blocks") && strcmp(key, "mid_block") && strcmp(key, "up_blocks"))
            return sf_error(SF_ERR_FORMAT, "elastic_blocks: unknown field '%s'", key);
    }
    int down_res[SF_UNET_MAX_BLOCKS][SF_UNET_MAX_LAYERS + 1];
    size_t down_attn[SF_UNET_MAX_BLOCKS][SF_UNET_MAX_LAYERS + 1];
    st = parse_stage_list(sf_json_object_get(e, "down_blocks"), "down_blocks", c->n_blocks,
                          c->layers_per_block, 0, down_res, down_attn);
    if (st != SF_OK)
        return st;
    for (size_t i = 0; i < c->n_blocks; i++)
        for (size_t j = 0; j < c->layers_per_block[i]; j++) {
            c->down_resnet[i][j] = down_res[i][j];
            c->down_attn[i][j] = down_attn[i][j];
        }
    st = parse_stage_list(sf_json_object_get(e, "up_blocks"), "up_blocks", c->n_blocks,
                          c->layers_per_block, 1, c->up_resnet, c->up_attn);
    if (st != SF_OK)
        return st;
    const sf_json *mid = sf_json_object_get(e, "mid_block");
    if (present(mid)) {
        if (!c->has_mid_block)
            return sf_error(SF_ERR_FORMAT, "elastic_blocks.mid_block given but the UNet has no "
                            "mid block");
        const sf_json *rs = sf_json_object_get(mid, "resnets");
        if (sf_json_type(rs) != SF_JSON_ARRAY || sf_json_array_size(rs) != 2 ||
            sf_json_bool(sf_json_array_at(rs, 0), &c->mid_resnet[0]) != SF_OK ||
            sf_json_bool(sf_json_array_at(rs, 1), &c->mid_resnet[1]) != SF_OK)
            return sf_error(SF_ERR_FORMAT,
                            "elastic_blocks.mid_block.resnets: expected two booleans");
        int64_t x;
        const sf_json *a = sf_json_object_get(mid, "attention");
        if (!a || sf_json_int64(a, &x) != SF_OK || x < 0 || x > 64)
            return sf_error(SF_ERR_FORMAT,
                            "elastic_blocks.mid_block.attention: expected an integer in [0, 64]");
        c->mid_attn = (size_t)x;
        for (size_t k = 0; k < sf_json_object_size(mid); k++) {
            const char *key;
            sf_json_object_at(mid, k, &key);
            if (strcmp(key, "resnets") && strcmp(key, "attention"))
                return sf_error(SF_ERR_FORMAT, "elastic_blocks.mid_block: unknown field '%s'",
                                key);
        }
    } else if (c->has_mid_block) {
        return sf_error(SF_ERR_FORMAT, "elastic_blocks: missing 'mid_block'");
    }
    return SF_OK;
}

/* ---- UNet ---- */

sf_status sf_unet_config_from_json(const char *json, size_t len, sf_unet_config *out) {
    sf_status st = SF_OK;
    sf_json *doc = NULL;
    if (!json || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_unet_config_from_json: NULL argument");
    memset(out, 0, sizeof *out);
    SF_CHECK(sf_json_parse(json, len, &doc));
    if (sf_json_type(doc) != SF_JSON_OBJECT)
        SF_FAIL(SF_ERR_FORMAT, "unet config: expected a JSON object");
    sf_unet_config *c = out;
    c->in_channels = 4;
    c->out_channels = 4;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0.0f;
    c->cross_attention_dim = 1280; /* diffusers default */
    c->has_mid_block = 1;

    const sf_json *types_d = sf_json_object_get(doc, "down_block_types");
    const sf_json *types_u = sf_json_object_get(doc, "up_block_types");
    const sf_json *bo = sf_json_object_get(doc, "block_out_channels");
    size_t nb = 4;
    static const size_t sd_channels[4] = {320, 640, 1280, 1280};
    if (present(bo)) {
        if (sf_json_type(bo) != SF_JSON_ARRAY || sf_json_array_size(bo) < 1 ||
            sf_json_array_size(bo) > SF_UNET_MAX_BLOCKS)
            SF_FAIL(SF_ERR_FORMAT, "config key 'block_out_channels': expected a list of 1..%d "
                    "integers", SF_UNET_MAX_BLOCKS);
        nb = sf_json_array_size(bo);
        SF_CHECK(get_size_list(doc, "block_out_channels", nb, c->block_out_channels, 1, 65536));
    } else {
        memcpy(c->block_out_channels, sd_channels, sizeof sd_channels);
    }
    c->n_blocks = nb;
    int down_cross[SF_UNET_MAX_BLOCKS] = {0}, up_cross[SF_UNET_MAX_BLOCKS] = {0};
    for (int pass = 0; pass < 2; pass++) {
        const sf_json *types = pass ? types_u : types_d;
        int *cross = pass ? up_cross : down_cross;
        const char *key = pass ? "up_block_types" : "down_block_types";
        const char *plain = pass ? "UpBlock2D" : "DownBlock2D";
        const char *attn = pass ? "CrossAttnUpBlock2D" : "CrossAttnDownBlock2D";
        if (!present(types)) {
            for (size_t i = 0; i < nb; i++) /* SD default: attention except the lowest level */
                cross[i] = pass ? i > 0 : i + 1 < nb;
            continue;
        }
        if (sf_json_type(types) != SF_JSON_ARRAY || sf_json_array_size(types) != nb)
            SF_FAIL(SF_ERR_FORMAT, "config key '%s': expected a list of %zu block types", key,
                    nb);
        for (size_t i = 0; i < nb; i++) {
            const char *s = sf_json_string(sf_json_array_at(types, i), NULL);
            if (s && strcmp(s, plain) == 0)
                cross[i] = 0;
            else if (s && strcmp(s, attn) == 0)
                cross[i] = 1;
            else {
                char q[80];
                SF_FAIL(SF_ERR_UNSUPPORTED, "config key '%s'[%zu]: unknown block type %s", key, i,
                        s ? sf_json_quote(s, strlen(s), q, sizeof q) : "(not a string)");
            }
        }
    }
    size_t lpb[SF_UNET_MAX_BLOCKS], heads[SF_UNET_MAX_BLOCKS], tl[SF_UNET_MAX_BLOCKS];
    for (size_t i = 0; i < nb; i++) {
        lpb[i] = 2;
        heads[i] = 8;
        tl[i] = 1;
    }
    SF_CHECK(get_size_list(doc, "layers_per_block", nb, lpb, 1, SF_UNET_MAX_LAYERS));
    SF_CHECK(get_size_list(doc, "attention_head_dim", nb, heads, 1, 4096));
    /* diffusers: num_attention_heads, when given, wins over attention_head_dim (which SD-1.x
     * configs use to mean the number of heads) */
    SF_CHECK(get_size_list(doc, "num_attention_heads", nb, heads, 1, 4096));
    SF_CHECK(get_size_list(doc, "transformer_layers_per_block", nb, tl, 1, 64));
    /* up block i's depth: reverse_transformer_layers_per_block[i] if given, else the down list
     * reversed (diffusers) */
    size_t rtl[SF_UNET_MAX_BLOCKS];
    for (size_t i = 0; i < nb; i++)
        rtl[i] = tl[nb - 1 - i];
    SF_CHECK(get_size_list(doc, "reverse_transformer_layers_per_block", nb, rtl, 1, 64));
    SF_CHECK(get_bool_list(doc, "only_cross_attention", nb, c->only_cross_attention));
    memcpy(c->layers_per_block, lpb, sizeof lpb);
    memcpy(c->heads, heads, sizeof heads);
    SF_CHECK(get_size(doc, "in_channels", &c->in_channels, 1, 4096));
    SF_CHECK(get_size(doc, "out_channels", &c->out_channels, 1, 4096));
    SF_CHECK(get_size(doc, "cross_attention_dim", &c->cross_attention_dim, 1, 65536));
    SF_CHECK(get_size(doc, "norm_num_groups", &c->norm_num_groups, 1, 4096));
    SF_CHECK(get_float(doc, "norm_eps", &c->norm_eps));
    SF_CHECK(get_bool(doc, "flip_sin_to_cos", &c->flip_sin_to_cos));
    SF_CHECK(get_float(doc, "freq_shift", &c->freq_shift));
    const sf_json *mid = sf_json_object_get(doc, "mid_block_type");
    if (sf_json_object_get(doc, "mid_block_type") && !present(mid)) {
        c->has_mid_block = 0; /* explicit null: no mid block */
    } else if (present(mid)) {
        const char *s = sf_json_string(mid, NULL);
        if (!s || strcmp(s, "UNetMidBlock2DCrossAttn") != 0)
            SF_FAIL(SF_ERR_UNSUPPORTED,
                    "config key 'mid_block_type': only \"UNetMidBlock2DCrossAttn\" or null");
    }
    /* options that change the graph in ways this engine does not implement */
    SF_CHECK(require_str(doc, "act_fn", "silu"));
    SF_CHECK(require_str(doc, "time_embedding_type", "positional"));
    SF_CHECK(require_str(doc, "resnet_time_scale_shift", "default"));
    SF_CHECK(require_str(doc, "attention_type", "default"));
    SF_CHECK(require_null(doc, "class_embed_type"));
    SF_CHECK(require_null(doc, "addition_embed_type"));
    SF_CHECK(require_null(doc, "time_cond_proj_dim"));
    SF_CHECK(require_null(doc, "encoder_hid_dim"));
    SF_CHECK(require_null(doc, "time_embedding_dim"));
    SF_CHECK(require_null(doc, "num_class_embeds"));
    SF_CHECK(require_false(doc, "center_input_sample"));
    SF_CHECK(require_false(doc, "dual_cross_attention"));
    SF_CHECK(require_null(doc, "time_embedding_act_fn"));
    SF_CHECK(require_null(doc, "timestep_post_act"));
    float mid_scale = 1.0f;
    size_t down_pad = 1;
    SF_CHECK(get_float(doc, "mid_block_scale_factor", &mid_scale));
    SF_CHECK(get_size(doc, "downsample_padding", &down_pad, 0, 16));
    if (mid_scale != 1.0f)
        SF_FAIL(SF_ERR_UNSUPPORTED, "config key 'mid_block_scale_factor': only 1 is supported");
    if (down_pad != 1)
        SF_FAIL(SF_ERR_UNSUPPORTED, "config key 'downsample_padding': only 1 is supported");
    size_t k_in = 3, k_out = 3;
    SF_CHECK(get_size(doc, "conv_in_kernel", &k_in, 1, 7));
    SF_CHECK(get_size(doc, "conv_out_kernel", &k_out, 1, 7));
    if (k_in != 3 || k_out != 3)
        SF_FAIL(SF_ERR_UNSUPPORTED, "config: conv_in_kernel/conv_out_kernel other than 3");
    c->time_embed_dim = 4 * c->block_out_channels[0];

    /* the full architecture, then the elastic block list if any */
    for (size_t i = 0; i < nb; i++) {
        for (size_t j = 0; j < lpb[i]; j++) {
            c->down_resnet[i][j] = 1;
            c->down_attn[i][j] = down_cross[i] ? tl[i] : 0;
        }
        size_t r = nb - 1 - i;
        for (size_t j = 0; j < lpb[r] + 1; j++) {
            c->up_resnet[i][j] = 1;
            c->up_attn[i][j] = up_cross[i] ? rtl[i] : 0;
        }
    }
    c->mid_resnet[0] = c->mid_resnet[1] = 1;
    c->mid_attn = c->has_mid_block ? tl[nb - 1] : 0;
    const sf_json *el = sf_json_object_get(doc, "elastic_blocks");
    if (present(el))
        SF_CHECK(parse_elastic(el, c));
fail:
    sf_json_free(doc);
    return st;
}

/* ---- VAE ---- */

static sf_status check_types(const sf_json *doc, const char *key, size_t nb, const char *want) {
    const sf_json *t = sf_json_object_get(doc, key);
    if (!present(t))
        return SF_OK;
    if (sf_json_type(t) != SF_JSON_ARRAY || sf_json_array_size(t) != nb)
        return sf_error(SF_ERR_FORMAT, "config key '%s': expected a list of %zu block types", key,
                        nb);
    for (size_t i = 0; i < nb; i++) {
        const char *s = sf_json_string(sf_json_array_at(t, i), NULL);
        if (!s || strcmp(s, want) != 0) {
            char q[80];
            return sf_error(SF_ERR_UNSUPPORTED, "config key '%s'[%zu]: unknown block type %s",
                            key, i, s ? sf_json_quote(s, strlen(s), q, sizeof q) : "(not a string)");
        }
    }
    return SF_OK;
}

sf_status sf_vae_config_from_json(const char *json, size_t len, sf_vae_config *out) {
    sf_status st = SF_OK;
    sf_json *doc = NULL;
    if (!json || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_vae_config_from_json: NULL argument");
    memset(out, 0, sizeof *out);
    SF_CHECK(sf_json_parse(json, len, &doc));
    if (sf_json_type(doc) != SF_JSON_OBJECT)
        SF_FAIL(SF_ERR_FORMAT, "vae config: expected a JSON object");
    sf_vae_config *c = out;
    c->in_channels = c->out_channels = 3;
    c->latent_channels = 4;
    c->layers_per_block = 1;
    c->norm_num_groups = 32;
    c->scaling_factor = 0.18215f;
    c->mid_attention = 1;
    c->use_quant_conv = c->use_post_quant_conv = 1;
    const sf_json *bo = sf_json_object_get(doc, "block_out_channels");
    size_t nb = 1;
    c->block_out_channels[0] = 64;
    if (present(bo)) {
        if (sf_json_type(bo) != SF_JSON_ARRAY || sf_json_array_size(bo) < 1 ||
            sf_json_array_size(bo) > SF_UNET_MAX_BLOCKS)
            SF_FAIL(SF_ERR_FORMAT, "config key 'block_out_channels': expected a list of 1..%d "
                    "integers", SF_UNET_MAX_BLOCKS);
        nb = sf_json_array_size(bo);
        SF_CHECK(get_size_list(doc, "block_out_channels", nb, c->block_out_channels, 1, 65536));
    }
    c->n_blocks = nb;
    memcpy(c->decoder_block_out_channels, c->block_out_channels, sizeof c->block_out_channels);
    const sf_json *dbo = sf_json_object_get(doc, "decoder_block_out_channels");
    if (present(dbo))
        SF_CHECK(get_size_list(doc, "decoder_block_out_channels", nb,
                               c->decoder_block_out_channels, 1, 65536));
    SF_CHECK(check_types(doc, "down_block_types", nb, "DownEncoderBlock2D"));
    SF_CHECK(check_types(doc, "up_block_types", nb, "UpDecoderBlock2D"));
    SF_CHECK(get_size(doc, "in_channels", &c->in_channels, 1, 64));
    SF_CHECK(get_size(doc, "out_channels", &c->out_channels, 1, 64));
    SF_CHECK(get_size(doc, "latent_channels", &c->latent_channels, 1, 256));
    SF_CHECK(get_size(doc, "layers_per_block", &c->layers_per_block, 1, SF_UNET_MAX_LAYERS - 1));
    SF_CHECK(get_size(doc, "norm_num_groups", &c->norm_num_groups, 1, 4096));
    SF_CHECK(get_float(doc, "scaling_factor", &c->scaling_factor));
    SF_CHECK(get_bool(doc, "mid_block_add_attention", &c->mid_attention));
    SF_CHECK(get_bool(doc, "use_quant_conv", &c->use_quant_conv));
    SF_CHECK(get_bool(doc, "use_post_quant_conv", &c->use_post_quant_conv));
    SF_CHECK(require_str(doc, "act_fn", "silu"));
    c->decoder_layers_per_block = c->layers_per_block;
    c->decoder_norm_num_groups = c->norm_num_groups;
    SF_CHECK(get_size(doc, "decoder_layers_per_block", &c->decoder_layers_per_block, 1,
                      SF_UNET_MAX_LAYERS - 1));
    SF_CHECK(get_size(doc, "decoder_norm_num_groups", &c->decoder_norm_num_groups, 1, 4096));
fail:
    sf_json_free(doc);
    return st;
}

/* ---- CLIP text encoder ---- */

sf_status sf_clip_config_from_json(const char *json, size_t len, sf_clip_config *out) {
    sf_status st = SF_OK;
    sf_json *doc = NULL;
    if (!json || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_clip_config_from_json: NULL argument");
    memset(out, 0, sizeof *out);
    SF_CHECK(sf_json_parse(json, len, &doc));
    if (sf_json_type(doc) != SF_JSON_OBJECT)
        SF_FAIL(SF_ERR_FORMAT, "text encoder config: expected a JSON object");
    /* transformers' CLIPTextConfig defaults */
    out->vocab_size = 49408;
    out->hidden_size = 512;
    out->intermediate_size = 2048;
    out->num_layers = 12;
    out->num_heads = 8;
    out->max_positions = 77;
    out->act = SF_ACT_QUICK_GELU;
    out->eps = 1e-5f;
    out->eos_token_id = 2;
    SF_CHECK(get_size(doc, "vocab_size", &out->vocab_size, 1, (size_t)1 << 24));
    SF_CHECK(get_size(doc, "hidden_size", &out->hidden_size, 1, 65536));
    SF_CHECK(get_size(doc, "intermediate_size", &out->intermediate_size, 1, 262144));
    SF_CHECK(get_size(doc, "num_hidden_layers", &out->num_layers, 1, 1024));
    SF_CHECK(get_size(doc, "num_attention_heads", &out->num_heads, 1, 4096));
    SF_CHECK(get_size(doc, "max_position_embeddings", &out->max_positions, 1, 65536));
    SF_CHECK(get_float(doc, "layer_norm_eps", &out->eps));
    const sf_json *e = sf_json_object_get(doc, "eos_token_id");
    if (present(e) && sf_json_int64(e, &out->eos_token_id) != SF_OK)
        SF_FAIL(SF_ERR_FORMAT, "config key 'eos_token_id': expected an integer");
    const sf_json *act = sf_json_object_get(doc, "hidden_act");
    if (present(act)) {
        const char *s = sf_json_string(act, NULL);
        if (s && strcmp(s, "quick_gelu") == 0)
            out->act = SF_ACT_QUICK_GELU;
        else if (s && strcmp(s, "gelu") == 0)
            out->act = SF_ACT_GELU;
        else
            SF_FAIL(SF_ERR_UNSUPPORTED, "config key 'hidden_act': only \"quick_gelu\" or \"gelu\"");
    }
fail:
    sf_json_free(doc);
    return st;
}
