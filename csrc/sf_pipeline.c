/*
 * sf_pipeline.c — text-to-image from a diffusers-layout model folder: loading the components
 * (text encoder, UNet, VAE decoder, scheduler), the denoising loop with classifier-free
 * guidance, decoding, and the engine's Gaussian noise generator (sf_randn). The algorithm is
 * snapfusion.Pipeline.__call__ (snapfusion/pipeline.py), in NHWC.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "sf_internal.h"
#include "sf_json.h"

#define PIPE_MAX_SIZE 8192                      /* largest image side */
#define PIPE_MAX_CONFIG_BYTES ((size_t)16 << 20) /* config files are small */

/* Weight files tried in a component folder, in order (snapfusion/components.py). */
static const char *const weight_names[] = {"diffusion_pytorch_model.safetensors",
                                           "model.safetensors"};
static const char *const pickle_names[] = {"diffusion_pytorch_model.bin", "pytorch_model.bin",
                                           "model.ckpt"};

/* A growable scratch buffer (64-byte aligned), kept across calls. */
typedef struct {
    void *ptr;
    size_t cap;
} pipe_buf;

struct sf_pipeline {
    char *folder;
    sf_clip *clip;
    sf_unet *unet;
    sf_vae *vae;
    sf_scheduler *sched;
    char *sched_json;     /* scheduler_config.json text, for sf_pipeline_set_scheduler */
    size_t sched_len;
    char *sched_path;
    sf_pipeline_info info;
    /* scratch */
    pipe_buf ids, ctx, x, xin, eps, tmp, tvals;
    double *step_s;
    size_t step_cap;
    sf_pipeline_timings timings;
};

/* ------------------------------------------------------------------------------------------ */
/* Files                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* "a/b" as a new string (NULL when out of memory). */
static char *path_join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), n;
    int slash = la > 0 && a[la - 1] != '/';
    if (!sf_add_ok(la, lb, &n) || !sf_add_ok(n, 2, &n))
        return NULL;
    char *p = malloc(n);
    if (!p)
        return NULL;
    memcpy(p, a, la);
    if (slash)
        p[la++] = '/';
    memcpy(p + la, b, lb + 1);
    return p;
}

static int is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Read a whole (small) text file. Missing or unreadable: SF_ERR_IO naming it. */
static sf_status read_text(const char *path, char **out, size_t *len) {
    sf_status st = SF_OK;
    FILE *f = NULL;
    char *buf = NULL;
    struct stat sb;
    *out = NULL;
    *len = 0;
    if (stat(path, &sb) != 0)
        return sf_error(SF_ERR_IO, "%s: missing (%s)", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return sf_error(SF_ERR_IO, "%s: not a regular file", path);
    if (sb.st_size < 0 || (uint64_t)sb.st_size > (uint64_t)PIPE_MAX_CONFIG_BYTES)
        return sf_error(SF_ERR_FORMAT, "%s: %lld bytes, too large for a configuration file", path,
                        (long long)sb.st_size);
    size_t n = (size_t)sb.st_size;
    f = fopen(path, "rb");
    if (!f)
        return sf_error(SF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    buf = malloc(n + 1);
    if (!buf)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", path);
    if (n && fread(buf, 1, n, f) != n)
        SF_FAIL(SF_ERR_IO, "%s: read error", path);
    buf[n] = '\0';
    fclose(f);
    *out = buf;
    *len = n;
    return SF_OK;
fail:
    free(buf);
    fclose(f);
    return st;
}

/* Prefix the last error message with a file name. */
static sf_status in_file(sf_status st, const char *path) {
    char msg[768];
    snprintf(msg, sizeof msg, "%s", sf_last_error());
    return sf_error(st, "%s: %s", path, msg);
}

/* The safetensors file of a component folder (as snapfusion.components.find_weights). */
static sf_status find_weights(const char *dir, char **out) {
    *out = NULL;
    for (size_t i = 0; i < sizeof weight_names / sizeof *weight_names; i++) {
        char *p = path_join(dir, weight_names[i]);
        if (!p)
            return sf_error(SF_ERR_OOM, "%s: out of memory", dir);
        if (is_file(p)) {
            *out = p;
            return SF_OK;
        }
        free(p);
    }
    char found[256] = "";
    for (size_t i = 0; i < sizeof pickle_names / sizeof *pickle_names; i++) {
        char *p = path_join(dir, pickle_names[i]);
        if (!p)
            return sf_error(SF_ERR_OOM, "%s: out of memory", dir);
        if (is_file(p)) {
            size_t l = strlen(found);
            snprintf(found + l, sizeof found - l, "%s%s", l ? ", " : "", pickle_names[i]);
        }
        free(p);
    }
    if (found[0])
        return sf_error(SF_ERR_UNSUPPORTED, "%s: only pickle weights (%s); snapfusion reads "
                        "safetensors (convert them with `snapfusion convert`)", dir, found);
    return sf_error(SF_ERR_IO, "%s: no weights file (looked for %s, %s)", dir, weight_names[0],
                    weight_names[1]);
}

/* A component subfolder that must exist. */
static sf_status component_dir(const char *folder, const char *name, char **out) {
    struct stat sb;
    *out = path_join(folder, name);
    if (!*out)
        return sf_error(SF_ERR_OOM, "%s: out of memory", folder);
    if (stat(*out, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        sf_status st = sf_error(SF_ERR_IO, "%s: missing folder '%s/' (a diffusers model folder "
                                "has text_encoder/, unet/, vae/ and scheduler/)", folder, name);
        free(*out);
        *out = NULL;
        return st;
    }
    return SF_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef enum { COMP_CLIP, COMP_UNET, COMP_VAE } comp_kind;

/* Load one component folder: config.json + weights. For the UNet, *sample_size receives its
 * sample_size (height, width). */
static sf_status load_component(sf_pipeline *p, comp_kind kind, size_t sample_size[2]) {
    static const char *const names[] = {"text_encoder", "unet", "vae"};
    sf_status st = SF_OK;
    char *dir = NULL, *cfg_path = NULL, *text = NULL, *wpath = NULL;
    size_t len = 0;
    sf_json *doc = NULL;
    sf_weights *w = NULL;
    union {
        sf_clip_config clip;
        sf_unet_config unet;
        sf_vae_config vae;
    } cfg;
    SF_CHECK(component_dir(p->folder, names[kind], &dir));
    cfg_path = path_join(dir, "config.json");
    if (!cfg_path)
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", dir);
    SF_CHECK(read_text(cfg_path, &text, &len));
    st = kind == COMP_CLIP   ? sf_clip_config_from_json(text, len, &cfg.clip)
         : kind == COMP_UNET ? sf_unet_config_from_json(text, len, &cfg.unet)
                             : sf_vae_config_from_json(text, len, &cfg.vae);
    if (st != SF_OK) {
        st = in_file(st, cfg_path);
        goto fail;
    }
    if (kind == COMP_UNET) {
        /* sample_size: an int, or [height, width]; diffusers' default 64 */
        SF_CHECK(sf_json_parse(text, len, &doc));
        const sf_json *ss = sf_json_object_get(doc, "sample_size");
        int64_t v[2] = {64, 64};
        if (sf_json_type(ss) == SF_JSON_ARRAY && sf_json_array_size(ss) == 2) {
            if (sf_json_int64(sf_json_array_at(ss, 0), &v[0]) != SF_OK ||
                sf_json_int64(sf_json_array_at(ss, 1), &v[1]) != SF_OK)
                v[0] = -1;
        } else if (sf_json_type(ss) == SF_JSON_NUMBER) {
            if (sf_json_int64(ss, &v[0]) != SF_OK)
                v[0] = -1;
            v[1] = v[0];
        } else if (sf_json_type(ss) != SF_JSON_NONE && sf_json_type(ss) != SF_JSON_NULL) {
            v[0] = -1;
        }
        if (v[0] < 1 || v[1] < 1 || v[0] > PIPE_MAX_SIZE || v[1] > PIPE_MAX_SIZE)
            SF_FAIL(SF_ERR_FORMAT, "%s: 'sample_size' must be an integer or a list of two "
                    "integers in [1, %d]", cfg_path, PIPE_MAX_SIZE);
        sample_size[0] = (size_t)v[0];
        sample_size[1] = (size_t)v[1];
    }
    SF_CHECK(find_weights(dir, &wpath));
    SF_CHECK(sf_weights_open(wpath, &w));
    if (kind == COMP_CLIP)
        SF_CHECK(sf_clip_create(&cfg.clip, w, 1, &p->clip));
    else if (kind == COMP_UNET)
        SF_CHECK(sf_unet_create(&cfg.unet, w, 1, &p->unet));
    else /* the decoder only: text-to-image does not encode */
        SF_CHECK(sf_vae_create(&cfg.vae, w, 0, 1, 0, &p->vae));
fail:
    sf_weights_close(w);
    sf_json_free(doc);
    free(wpath);
    free(text);
    free(cfg_path);
    free(dir);
    return st;
}

/* snapfusion_model.json (optional): recommended num_inference_steps and guidance_scale. */
static sf_status load_recommended(sf_pipeline *p) {
    sf_status st = SF_OK;
    char *path = path_join(p->folder, "snapfusion_model.json"), *text = NULL;
    size_t len = 0;
    sf_json *doc = NULL;
    p->info.recommended_steps = 0;
    p->info.recommended_guidance = NAN;
    if (!path)
        return sf_error(SF_ERR_OOM, "sf_pipeline_load: out of memory");
    if (!is_file(path))
        goto fail; /* absent: no recommendation */
    SF_CHECK(read_text(path, &text, &len));
    st = sf_json_parse(text, len, &doc);
    if (st != SF_OK) {
        st = in_file(st, path);
        goto fail;
    }
    if (sf_json_type(doc) != SF_JSON_OBJECT)
        SF_FAIL(SF_ERR_FORMAT, "%s: expected a JSON object", path);
    const sf_json *steps = sf_json_object_get(doc, "num_inference_steps");
    if (steps && sf_json_type(steps) != SF_JSON_NULL) {
        int64_t n = 0;
        if (sf_json_int64(steps, &n) != SF_OK || n < 1 || n > 1000)
            SF_FAIL(SF_ERR_FORMAT, "%s: num_inference_steps must be an int in [1, 1000]", path);
        p->info.recommended_steps = (size_t)n;
    }
    const sf_json *g = sf_json_object_get(doc, "guidance_scale");
    if (g && sf_json_type(g) != SF_JSON_NULL) {
        double v = 0;
        if (sf_json_number(g, &v) != SF_OK || !isfinite(v))
            SF_FAIL(SF_ERR_FORMAT, "%s: guidance_scale must be a finite number", path);
        p->info.recommended_guidance = v;
    }
fail:
    sf_json_free(doc);
    free(text);
    free(path);
    return st;
}

static sf_status make_scheduler(sf_pipeline *p, const char *class_name, sf_scheduler **out) {
    sf_scheduler_config c;
    *out = NULL;
    sf_status st = sf_scheduler_config_from_json_as(p->sched_json, p->sched_len, class_name, &c);
    if (st != SF_OK)
        return in_file(st, p->sched_path);
    st = sf_scheduler_create(&c, out);
    sf_scheduler_config_release(&c);
    if (st != SF_OK)
        return in_file(st, p->sched_path);
    return SF_OK;
}

static void update_scheduler_info(sf_pipeline *p) {
    p->info.scheduler = sf_scheduler_type_name(sf_scheduler_get_config(p->sched)->type);
}

sf_status sf_pipeline_load(const char *folder, sf_pipeline **out) {
    sf_status st = SF_OK;
    sf_pipeline *p = NULL;
    char *sdir = NULL;
    struct stat sb;
    if (!out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_load: out is NULL");
    *out = NULL;
    if (!folder)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_load: folder is NULL");
    if (!*folder)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_load: folder is empty");
    if (stat(folder, &sb) != 0)
        return sf_error(SF_ERR_IO, "%s: no such model folder (%s)", folder, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return sf_error(SF_ERR_IO, "%s: not a folder (a diffusers model folder has "
                        "text_encoder/, unet/, vae/ and scheduler/)", folder);
    p = calloc(1, sizeof *p);
    if (!p)
        return sf_error(SF_ERR_OOM, "sf_pipeline_load: out of memory");
    size_t fl = strlen(folder);
    p->folder = malloc(fl + 1);
    if (!p->folder)
        SF_FAIL(SF_ERR_OOM, "sf_pipeline_load: out of memory");
    memcpy(p->folder, folder, fl + 1);

    /* the cheap parts first, so that a broken folder fails fast */
    SF_CHECK(component_dir(folder, "text_encoder", &sdir));
    free(sdir);
    SF_CHECK(component_dir(folder, "unet", &sdir));
    free(sdir);
    SF_CHECK(component_dir(folder, "vae", &sdir));
    free(sdir);
    SF_CHECK(component_dir(folder, "scheduler", &sdir));
    p->sched_path = path_join(sdir, "scheduler_config.json");
    free(sdir);
    sdir = NULL;
    if (!p->sched_path)
        SF_FAIL(SF_ERR_OOM, "sf_pipeline_load: out of memory");
    SF_CHECK(read_text(p->sched_path, &p->sched_json, &p->sched_len));
    SF_CHECK(make_scheduler(p, NULL, &p->sched));
    update_scheduler_info(p);
    SF_CHECK(load_recommended(p));

    size_t sample_size[2] = {64, 64};
    SF_CHECK(load_component(p, COMP_CLIP, NULL));
    SF_CHECK(load_component(p, COMP_UNET, sample_size));
    SF_CHECK(load_component(p, COMP_VAE, NULL));

    const sf_clip_config *cc = sf_clip_get_config(p->clip);
    const sf_unet_config *uc = sf_unet_get_config(p->unet);
    const sf_vae_config *vc = sf_vae_get_config(p->vae);
    if (uc->in_channels != vc->latent_channels || uc->out_channels != uc->in_channels)
        SF_FAIL(SF_ERR_FORMAT, "%s: the UNet (in_channels %zu, out_channels %zu) does not fit the "
                "VAE (latent_channels %zu)", folder, uc->in_channels, uc->out_channels,
                vc->latent_channels);
    if (uc->cross_attention_dim != cc->hidden_size)
        SF_FAIL(SF_ERR_FORMAT, "%s: the UNet's cross_attention_dim %zu differs from the text "
                "encoder's hidden_size %zu", folder, uc->cross_attention_dim, cc->hidden_size);
    if (vc->n_blocks < 1 || vc->n_blocks > 14)
        SF_FAIL(SF_ERR_FORMAT, "%s: VAE with %zu blocks", folder, vc->n_blocks);
    if (!(vc->scaling_factor > 0.0f) || !isfinite(vc->scaling_factor))
        SF_FAIL(SF_ERR_FORMAT, "%s/vae/config.json: scaling_factor must be finite and > 0",
                folder);
    p->info.max_text_len = cc->max_positions;
    p->info.vocab_size = cc->vocab_size;
    p->info.latent_channels = uc->in_channels;
    p->info.vae_scale_factor = (size_t)1 << (vc->n_blocks - 1);
    p->info.image_channels = vc->out_channels;
    p->info.default_height = sample_size[0] * p->info.vae_scale_factor;
    p->info.default_width = sample_size[1] * p->info.vae_scale_factor;
    if (p->info.default_height > PIPE_MAX_SIZE || p->info.default_width > PIPE_MAX_SIZE) {
        p->info.default_height = p->info.default_height > PIPE_MAX_SIZE ? PIPE_MAX_SIZE
                                                                        : p->info.default_height;
        p->info.default_width = p->info.default_width > PIPE_MAX_SIZE ? PIPE_MAX_SIZE
                                                                      : p->info.default_width;
        p->info.default_height -= p->info.default_height % p->info.vae_scale_factor;
        p->info.default_width -= p->info.default_width % p->info.vae_scale_factor;
    }
    *out = p;
    return SF_OK;
fail:
    free(sdir);
    sf_pipeline_destroy(p);
    return st;
}

static void buf_free(pipe_buf *b) {
    sf_aligned_free(b->ptr);
    b->ptr = NULL;
    b->cap = 0;
}

void sf_pipeline_destroy(sf_pipeline *p) {
    if (!p)
        return;
    sf_clip_destroy(p->clip);
    sf_unet_destroy(p->unet);
    sf_vae_destroy(p->vae);
    sf_scheduler_destroy(p->sched);
    free(p->sched_json);
    free(p->sched_path);
    free(p->folder);
    buf_free(&p->ids);
    buf_free(&p->ctx);
    buf_free(&p->x);
    buf_free(&p->xin);
    buf_free(&p->eps);
    buf_free(&p->tmp);
    buf_free(&p->tvals);
    free(p->step_s);
    free(p);
}

/* Take ownership of a new scheduler in place of the current one. */
static void replace_scheduler(sf_pipeline *p, sf_scheduler *s) {
    sf_scheduler_destroy(p->sched);
    p->sched = s;
    update_scheduler_info(p);
}

sf_status sf_pipeline_set_scheduler(sf_pipeline *p, const char *class_name) {
    if (!p)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_set_scheduler: p is NULL");
    sf_scheduler *s = NULL;
    sf_status st = make_scheduler(p, class_name, &s);
    if (st != SF_OK)
        return st;
    replace_scheduler(p, s);
    return SF_OK;
}

sf_status sf_pipeline_set_scheduler_json(sf_pipeline *p, const char *json, size_t len) {
    if (!p || !json)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_set_scheduler_json: %s is NULL",
                        p ? "json" : "p");
    sf_scheduler *s = NULL;
    sf_status st = sf_scheduler_create_from_json(json, len, &s);
    if (st != SF_OK)
        return st;
    replace_scheduler(p, s);
    return SF_OK;
}

sf_status sf_pipeline_get_info(const sf_pipeline *p, sf_pipeline_info *out) {
    if (!p || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_get_info: %s is NULL", p ? "out" : "p");
    *out = p->info;
    return SF_OK;
}

sf_status sf_pipeline_get_timings(const sf_pipeline *p, sf_pipeline_timings *out) {
    if (!p || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_get_timings: %s is NULL",
                        p ? "out" : "p");
    *out = p->timings;
    return SF_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Noise                                                                                      */
/* ------------------------------------------------------------------------------------------ */

#define GOLDEN_GAMMA 0x9e3779b97f4a7c15ULL

static inline uint64_t mix64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z;
}

static inline double unit_open(uint64_t bits) {
    return ((double)(bits >> 11) + 0.5) * 0x1p-53;
}

sf_status sf_randn(uint64_t seed, uint64_t stream, size_t n, float *out) {
    if (n && !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_randn: out is NULL");
    const double two_pi = 6.283185307179586476925286766559;
    uint64_t key = mix64(seed + GOLDEN_GAMMA * (stream + 1));
    for (size_t k = 0; k < n; k += 2) {
        double u1 = unit_open(mix64(key + GOLDEN_GAMMA * ((uint64_t)k + 1)));
        double u2 = unit_open(mix64(key + GOLDEN_GAMMA * ((uint64_t)k + 2)));
        double r = sqrt(-2.0 * log(u1)), th = two_pi * u2;
        out[k] = (float)(r * cos(th));
        if (k + 1 < n)
            out[k + 1] = (float)(r * sin(th));
    }
    return SF_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Generation                                                                                 */
/* ------------------------------------------------------------------------------------------ */

void sf_generate_params_default(sf_generate_params *params) {
    if (!params)
        return;
    memset(params, 0, sizeof *params);
    params->batch = 1;
    params->num_inference_steps = 50;
    params->guidance_scale = 7.5;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Make b hold at least `count` elements of `elem` bytes. */
static sf_status buf_ensure(pipe_buf *b, size_t count, size_t elem, const char *what) {
    size_t bytes;
    if (!sf_mul_ok(count, elem, &bytes))
        return sf_error(SF_ERR_OOM, "sf_pipeline_generate: %s: size overflow", what);
    if (bytes <= b->cap && b->ptr)
        return SF_OK;
    buf_free(b);
    b->ptr = sf_aligned_alloc(bytes ? bytes : 1);
    if (!b->ptr)
        return sf_error(SF_ERR_OOM, "sf_pipeline_generate: out of memory for %s (%zu bytes)",
                        what, bytes);
    b->cap = bytes;
    return SF_OK;
}

/* (B, C, h, w) -> (B, h, w, C) */
static void nchw_to_nhwc(const float *src, size_t B, size_t C, size_t h, size_t w, float *dst) {
    for (size_t b = 0; b < B; b++)
        for (size_t c = 0; c < C; c++)
            for (size_t y = 0; y < h; y++)
                for (size_t x = 0; x < w; x++)
                    dst[((b * h + y) * w + x) * C + c] = src[((b * C + c) * h + y) * w + x];
}

static sf_status check_ids(const int64_t *ids, size_t rows, size_t len, size_t vocab,
                           const char *name) {
    for (size_t r = 0; r < rows; r++)
        for (size_t j = 0; j < len; j++) {
            int64_t v = ids[r * len + j];
            if (v < 0 || (uint64_t)v >= (uint64_t)vocab)
                return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_generate: %s[%zu][%zu] = %lld "
                                "is outside the vocabulary [0, %zu)", name, r, j, (long long)v,
                                vocab);
        }
    return SF_OK;
}

static sf_status check_size(size_t v, size_t f, const char *name) {
    if (v < f || v > PIPE_MAX_SIZE || v % f)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_generate: %s must be a multiple of %zu "
                        "in [%zu, %d], got %zu", name, f, f, PIPE_MAX_SIZE, v);
    return SF_OK;
}

sf_status sf_pipeline_generate(sf_pipeline *p, const sf_generate_params *g, float *image_out) {
    sf_status st = SF_OK;
    double t_start = now_s();
    if (!p || !g || !image_out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_generate: %s is NULL",
                        !p ? "the pipeline" : !g ? "params" : "image_out");
    memset(&p->timings, 0, sizeof p->timings);
    const sf_pipeline_info *info = &p->info;
    const size_t f = info->vae_scale_factor, C = info->latent_channels;
    const size_t B = g->batch, L = g->cond_len;
    const size_t H = g->height ? g->height : info->default_height;
    const size_t W = g->width ? g->width : info->default_width;
    const double gs = g->guidance_scale;
    const int cfg = gs > 1.0;

    /* ---- arguments ---- */
    if (B == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_generate: batch must be >= 1");
    if (g->num_inference_steps == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_generate: num_inference_steps must be "
                        ">= 1");
    if (!isfinite(gs))
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_generate: guidance_scale must be finite, "
                        "got %g", gs);
    if ((st = check_size(H, f, "height")) != SF_OK || (st = check_size(W, f, "width")) != SF_OK)
        return st;
    if (!g->cond_ids)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_generate: cond_ids is NULL");
    if (L == 0 || L > info->max_text_len)
        return sf_error(SF_ERR_SHAPE, "sf_pipeline_generate: cond_len must be in [1, %zu] (the "
                        "text encoder's positions), got %zu", info->max_text_len, L);
    if (cfg) {
        if (!g->uncond_ids)
            return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_generate: uncond_ids is NULL but "
                            "guidance_scale %g > 1 needs the unconditional ids (those of \"\" or "
                            "of a negative prompt)", gs);
        if (g->uncond_len != L)
            return sf_error(SF_ERR_SHAPE, "sf_pipeline_generate: uncond_len %zu differs from "
                            "cond_len %zu (pad both rows to the same length)", g->uncond_len, L);
    }
    const sf_clip_config *cc = sf_clip_get_config(p->clip);
    if (g->clip_skip >= cc->num_layers)
        return sf_error(SF_ERR_INVALID_ARG, "sf_pipeline_generate: clip_skip must be in [0, %zu), "
                        "got %zu", cc->num_layers, g->clip_skip);
    if ((st = check_ids(g->cond_ids, B, L, info->vocab_size, "cond_ids")) != SF_OK)
        return st;
    if (cfg && (st = check_ids(g->uncond_ids, B, L, info->vocab_size, "uncond_ids")) != SF_OK)
        return st;

    /* ---- sizes (all overflow-checked) ---- */
    const size_t h = H / f, w = W / f, rows = cfg ? 2 * B : B, D = cc->hidden_size;
    size_t n_lat, n_in, n_ids, n_ctx, n_img;
    if (!sf_mul_n_ok(&n_lat, 4, B, C, h, w) || !sf_mul_ok(n_lat, rows / B, &n_in) ||
        !sf_mul_ok(rows, L, &n_ids) || !sf_mul_ok(n_ids, D, &n_ctx) ||
        !sf_mul_n_ok(&n_img, 4, B, H, W, info->image_channels))
        return sf_error(SF_ERR_OOM, "sf_pipeline_generate: sizes overflow (batch %zu, %zux%zu)",
                        B, H, W);
    size_t dh, dw;
    sf_vae_decoded_size(p->vae, h, w, &dh, &dw);
    if (dh != H || dw != W)
        return sf_error(SF_ERR_SHAPE, "sf_pipeline_generate: the VAE decodes %zux%zu latents to "
                        "%zux%zu, not %zux%zu", h, w, dh, dw, H, W);

    /* ---- schedule ---- */
    SF_CHECK(sf_scheduler_set_timesteps(p->sched, g->num_inference_steps));
    size_t count = 0;
    const double *ts = sf_scheduler_timesteps(p->sched, &count);
    if (count > p->step_cap) {
        double *s = realloc(p->step_s, count * sizeof *s);
        if (!s)
            SF_FAIL(SF_ERR_OOM, "sf_pipeline_generate: out of memory");
        p->step_s = s;
        p->step_cap = count;
    }
    p->timings.unet_step_s = p->step_s;

    /* ---- buffers ---- */
    SF_CHECK(buf_ensure(&p->ids, n_ids, sizeof(int64_t), "token ids"));
    SF_CHECK(buf_ensure(&p->ctx, n_ctx, sizeof(float), "text states"));
    SF_CHECK(buf_ensure(&p->x, n_lat, sizeof(float), "latents"));
    SF_CHECK(buf_ensure(&p->xin, n_in, sizeof(float), "UNet input"));
    SF_CHECK(buf_ensure(&p->eps, n_in, sizeof(float), "UNet output"));
    SF_CHECK(buf_ensure(&p->tmp, n_lat, sizeof(float), "noise"));
    SF_CHECK(buf_ensure(&p->tvals, rows, sizeof(float), "timesteps"));
    int64_t *ids = p->ids.ptr;
    float *ctx = p->ctx.ptr, *x = p->x.ptr, *xin = p->xin.ptr, *eps = p->eps.ptr;
    float *tmp = p->tmp.ptr, *tv = p->tvals.ptr;

    /* ---- 1. text states: [uncond; cond] with guidance ---- */
    double t0 = now_s();
    size_t cond_row = cfg ? B : 0;
    if (cfg)
        memcpy(ids, g->uncond_ids, B * L * sizeof(int64_t));
    memcpy(ids + cond_row * L, g->cond_ids, B * L * sizeof(int64_t));
    if (cfg && g->clip_skip) { /* diffusers: clip_skip applies to the prompt only */
        SF_CHECK(sf_clip_run(p->clip, ids, B, L, 0, ctx, NULL));
        SF_CHECK(sf_clip_run(p->clip, ids + B * L, B, L, g->clip_skip, ctx + B * L * D, NULL));
    } else {
        SF_CHECK(sf_clip_run(p->clip, ids, rows, L, g->clip_skip, ctx, NULL));
    }
    p->timings.text_encoder_s = now_s() - t0;

    /* ---- 2. initial latents ---- */
    const float sigma0 = (float)sf_scheduler_init_noise_sigma(p->sched);
    const float *src = g->latents;
    if (!src) {
        SF_CHECK(sf_randn(g->seed, 0, n_lat, tmp));
        src = tmp;
    }
    nchw_to_nhwc(src, B, C, h, w, x);
    for (size_t i = 0; i < n_lat; i++)
        x[i] *= sigma0;

    /* ---- 3. denoising ---- */
    const float gf = (float)gs;
    for (size_t i = 0; i < count; i++) {
        double a = now_s();
        SF_CHECK(sf_scheduler_scale_model_input(p->sched, i, x, n_lat, xin));
        if (cfg)
            memcpy(xin + n_lat, xin, n_lat * sizeof(float));
        for (size_t r = 0; r < rows; r++)
            tv[r] = (float)ts[i];
        double b = now_s();
        SF_CHECK(sf_unet_run(p->unet, xin, rows, h, w, tv, ctx, L, eps));
        double c = now_s();
        if (cfg) {
            const float *ec = eps + n_lat;
            for (size_t k = 0; k < n_lat; k++)
                eps[k] = eps[k] + gf * (ec[k] - eps[k]);
        }
        const float *noise = NULL;
        if (sf_scheduler_step_needs_noise(p->sched)) {
            SF_CHECK(sf_randn(g->seed, (uint64_t)i + 1, n_lat, tmp));
            nchw_to_nhwc(tmp, B, C, h, w, xin);
            noise = xin;
        }
        SF_CHECK(sf_scheduler_step(p->sched, eps, x, n_lat, noise, x));
        double d = now_s();
        p->step_s[i] = c - b;
        p->timings.unet_s += c - b;
        p->timings.scheduler_s += (b - a) + (d - c);
        p->timings.steps = i + 1;
        if (g->progress && g->progress(g->progress_user, i + 1, count, ts[i]))
            SF_FAIL(SF_ERR_CANCELLED, "sf_pipeline_generate: cancelled by the progress callback "
                    "after step %zu of %zu", i + 1, count);
    }

    /* ---- 4. decode ---- */
    double t1 = now_s();
    const float sc = sf_vae_get_config(p->vae)->scaling_factor;
    for (size_t k = 0; k < n_lat; k++)
        xin[k] = x[k] / sc;
    SF_CHECK(sf_vae_decode(p->vae, xin, B, h, w, image_out));
    for (size_t k = 0; k < n_img; k++) {
        float v = image_out[k] / 2.0f + 0.5f;
        if (v < 0.0f)
            v = 0.0f;
        else if (v > 1.0f)
            v = 1.0f;
        image_out[k] = v; /* NaN stays NaN */
    }
    p->timings.decoder_s = now_s() - t1;
fail:
    p->timings.total_s = now_s() - t_start;
    return st;
}
