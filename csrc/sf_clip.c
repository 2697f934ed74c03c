/* sf_clip.c — the CLIP text encoder (transformers CLIPTextModel) as Stable Diffusion runs it:
 * token + position embeddings, pre-norm layers with causal self-attention, final layer norm. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_nn.h"

typedef struct {
    sf_ln_layer ln1, ln2;
    sf_attn attn;
    sf_linear_layer *fc1, *fc2;
} sf_clip_layer;

struct sf_clip {
    sf_clip_config cfg;
    float *tok, *pos; /* (V, D), (P, D) */
    sf_clip_layer *layers;
    sf_ln_layer final_ln;
    sf_arena *arena;
};

const sf_clip_config *sf_clip_get_config(const sf_clip *c) {
    return c ? &c->cfg : NULL;
}

void sf_clip_destroy(sf_clip *c) {
    if (!c)
        return;
    sf_weights_free_buffer(c->tok);
    sf_weights_free_buffer(c->pos);
    if (c->layers) {
        for (size_t i = 0; i < c->cfg.num_layers; i++) {
            sf_clip_layer *l = &c->layers[i];
            sf_ln_layer_free(&l->ln1);
            sf_ln_layer_free(&l->ln2);
            sf_attn_free(&l->attn);
            sf_linear_layer_destroy(l->fc1);
            sf_linear_layer_destroy(l->fc2);
        }
        free(c->layers);
    }
    sf_ln_layer_free(&c->final_ln);
    sf_arena_destroy(c->arena);
    free(c);
    sf_heap_release();
}

sf_status sf_clip_create(const sf_clip_config *cfg, sf_weights *w, int strict, sf_clip **out) {
    sf_status st = SF_OK;
    sf_clip *c = NULL;
    char name[SF_NAME_MAX];
    if (!cfg || !w || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_clip_create: NULL argument");
    *out = NULL;
    size_t D = cfg->hidden_size;
    if (!D || !cfg->vocab_size || !cfg->num_layers || !cfg->num_heads || !cfg->max_positions ||
        !cfg->intermediate_size || D % cfg->num_heads || !(cfg->eps > 0))
        return sf_error(SF_ERR_FORMAT, "text encoder config: zero sizes, or hidden_size %zu not "
                        "divisible by num_attention_heads %zu", D, cfg->num_heads);
    c = calloc(1, sizeof *c);
    if (!c)
        SF_FAIL(SF_ERR_OOM, "sf_clip_create: out of memory");
    c->cfg = *cfg;
    SF_CHECK(sf_arena_create(&c->arena));
    const char *pre = sf_weights_has(w, "text_model.embeddings.token_embedding.weight")
                          ? "text_model."
                          : "";
    int64_t tshape[2] = {(int64_t)cfg->vocab_size, (int64_t)D};
    int64_t pshape[2] = {(int64_t)cfg->max_positions, (int64_t)D};
    snprintf(name, sizeof name, "%sembeddings.token_embedding.weight", pre);
    SF_CHECK(sf_weights_load_f32(w, name, 2, tshape, &c->tok));
    snprintf(name, sizeof name, "%sembeddings.position_embedding.weight", pre);
    SF_CHECK(sf_weights_load_f32(w, name, 2, pshape, &c->pos));
    c->layers = calloc(cfg->num_layers, sizeof *c->layers);
    if (!c->layers)
        SF_FAIL(SF_ERR_OOM, "sf_clip_create: out of memory");
    for (size_t i = 0; i < cfg->num_layers; i++) {
        sf_clip_layer *l = &c->layers[i];
        char lp[SF_NAME_MAX];
        snprintf(lp, sizeof lp, "%sencoder.layers.%zu", pre, i);
        SF_CHECK(sf_name(name, lp, "layer_norm1"));
        SF_CHECK(sf_ln_layer_load(w, name, D, cfg->eps, &l->ln1));
        SF_CHECK(sf_name(name, lp, "self_attn"));
        SF_CHECK(sf_attn_load(w, name, SF_ATTN_CLIP, D, 0, cfg->num_heads, 1, &l->attn));
        SF_CHECK(sf_name(name, lp, "layer_norm2"));
        SF_CHECK(sf_ln_layer_load(w, name, D, cfg->eps, &l->ln2));
        SF_CHECK(sf_name(name, lp, "mlp.fc1"));
        SF_CHECK(sf_linear_load(w, name, D, cfg->intermediate_size, 1, 0, &l->fc1));
        SF_CHECK(sf_name(name, lp, "mlp.fc2"));
        SF_CHECK(sf_linear_load(w, name, cfg->intermediate_size, D, 1, 0, &l->fc2));
    }
    snprintf(name, sizeof name, "%sfinal_layer_norm", pre);
    SF_CHECK(sf_ln_layer_load(w, name, D, cfg->eps, &c->final_ln));
    if (strict) {
        const char *first = NULL;
        size_t n = sf_weights_unused(w, &first);
        /* transformers keeps a position_ids buffer in some checkpoints: harmless */
        if (n == 1 && first && strstr(first, "position_ids"))
            n = 0;
        if (n)
            SF_FAIL(SF_ERR_FORMAT, "%s: %zu tensor(s) not used by this text encoder, e.g. '%s'",
                    sf_weights_label(w), n, first);
    }
    *out = c;
    return SF_OK;
fail:
    sf_clip_destroy(c);
    return st;
}

sf_status sf_clip_run(sf_clip *c, const int64_t *ids, size_t batch, size_t len, size_t clip_skip,
                      float *hidden, float *pooled) {
    sf_status st = SF_OK;
    if (!c || !ids || !hidden || !batch || !len)
        return sf_error(SF_ERR_INVALID_ARG, "sf_clip_run: NULL pointer or zero size");
    const sf_clip_config *cfg = &c->cfg;
    size_t D = cfg->hidden_size, rows = batch * len, I = cfg->intermediate_size;
    if (len > cfg->max_positions)
        return sf_error(SF_ERR_SHAPE, "text encoder: %zu tokens, at most %zu", len,
                        cfg->max_positions);
    if (clip_skip >= cfg->num_layers)
        return sf_error(SF_ERR_INVALID_ARG, "text encoder: clip_skip %zu with %zu layers",
                        clip_skip, cfg->num_layers);
    sf_arena *a = c->arena;
    float *x = NULL, *n = NULL, *t = NULL, *m = NULL;
    SF_CHECK(sf_arena_reset(a));
    SF_CHECK(sf_arena_alloc(a, rows * D * sizeof(float), (void **)&x));
    SF_CHECK(sf_arena_alloc(a, rows * D * sizeof(float), (void **)&n));
    SF_CHECK(sf_arena_alloc(a, rows * D * sizeof(float), (void **)&t));
    SF_CHECK(sf_arena_alloc(a, rows * I * sizeof(float), (void **)&m));
    SF_CHECK(sf_embedding(c->tok, cfg->vocab_size, D, ids, rows, x));
    for (size_t b = 0; b < batch; b++)
        SF_CHECK(sf_add(x + b * len * D, c->pos, len * D, x + b * len * D));
    for (size_t i = 0; i + clip_skip < cfg->num_layers; i++) {
        sf_clip_layer *l = &c->layers[i];
        SF_CHECK(sf_ln_layer_run(&l->ln1, x, rows, n));
        SF_CHECK(sf_attn_run(&l->attn, a, n, batch, len, NULL, 0, 1, t));
        SF_CHECK(sf_add(x, t, rows * D, x));
        SF_CHECK(sf_ln_layer_run(&l->ln2, x, rows, n));
        SF_CHECK(sf_linear_layer_run(l->fc1, n, rows, m));
        SF_CHECK(sf_activation_run(cfg->act, m, rows * I, m));
        SF_CHECK(sf_linear_layer_run(l->fc2, m, rows, t));
        SF_CHECK(sf_add(x, t, rows * D, x));
    }
    SF_CHECK(sf_ln_layer_run(&c->final_ln, x, rows, hidden));
    if (pooled) {
        for (size_t b = 0; b < batch; b++) {
            const int64_t *row = ids + b * len;
            size_t at = 0;
            if (cfg->eos_token_id == 2) { /* legacy: the largest id (first occurrence) */
                for (size_t j = 1; j < len; j++)
                    if (row[j] > row[at])
                        at = j;
            } else { /* the first eos; none: position 0 (transformers' argmax of zeros) */
                for (size_t j = 0; j < len; j++)
                    if (row[j] == cfg->eos_token_id) {
                        at = j;
                        break;
                    }
            }
            memcpy(pooled + b * D, hidden + (b * len + at) * D, D * sizeof(float));
        }
    }
fail:
    sf_pool_yield();
    return st;
}

sf_status sf_clip_trim(sf_clip *c) {
    if (!c)
        return sf_error(SF_ERR_INVALID_ARG, "sf_clip_trim: NULL clip");
    return sf_arena_trim(c->arena);
}
