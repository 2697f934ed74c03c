/*
 * sf_txt2img.c — text-to-image from the command line on the C engine alone (no Python at run
 * time): loads a diffusers-layout model folder with sf_pipeline_load, generates one image and
 * writes it as a binary PPM. Tokenization stays in Python: the token ids come on the command
 * line (see usage()).
 *
 * Built by `make sf-txt2img` (build-c/sf-txt2img); not part of the Python extension.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "snapfusion.h"

static void usage(FILE *f) {
    fprintf(f,
"usage: sf-txt2img MODEL_DIR --ids ID,ID,... [--uncond-ids ID,ID,...] [--steps N]\n"
"                  [--guidance G] [--seed S] [--size WxH] [--latents FILE.f32]\n"
"                  [--scheduler CLASS] [--clip-skip N] [--threads N] [--quiet] -o OUT.ppm\n"
"\n"
"Generates one image from a diffusers-layout model folder (text_encoder/, unet/, vae/,\n"
"scheduler/) with the snapfusion C engine and writes it as a binary PPM (P6, 8-bit RGB).\n"
"\n"
"Tokenization is not done here: pass the CLIP token ids of the prompt (--ids) and, for\n"
"guidance > 1, those of the empty prompt or of a negative prompt (--uncond-ids), both padded\n"
"to the same length (77). Print them with Python:\n"
"\n"
"  python -c \"import snapfusion as s; t = s.CLIPTokenizer.from_pretrained('MODEL_DIR/tokenizer');\n"
"             print(*(','.join(map(str, r)) for r in t(['a red circle', ''])), sep='\\n')\"\n"
"\n"
"options:\n"
"  --ids LIST          the prompt's token ids, comma-separated ('[', ']' and spaces ignored)\n"
"  --uncond-ids LIST   the unconditional ids (needed when guidance > 1)\n"
"  --steps N           denoising steps (default: the model's recommendation, else 50)\n"
"  --guidance G        classifier-free guidance scale; <= 1 turns it off (default: the\n"
"                      model's recommendation, else 7.5)\n"
"  --seed S            seed of the engine's noise (sf_randn; default 0)\n"
"  --size WxH          image width x height, multiples of the VAE factor (default: the model's)\n"
"  --latents FILE      initial noise instead of the seed: raw native float32, NCHW\n"
"                      (1, C, H/f, W/f), as numpy's latents.astype('float32').tofile(FILE)\n"
"  --scheduler CLASS   another scheduler class (DDIMScheduler, EulerDiscreteScheduler, ...)\n"
"  --clip-skip N       diffusers' clip_skip (default 0)\n"
"  --threads N         engine threads (default: physical cores)\n"
"  --quiet             no progress bar or timings\n"
"  -o FILE             output .ppm\n"
"\n"
"Ctrl-C stops the generation after the current step.\n");
}

static volatile sig_atomic_t interrupted = 0;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

typedef struct {
    int quiet;
    int open_line; /* the progress bar's line is not finished */
} progress_state;

static int progress(void *user, size_t step, size_t total, double timestep) {
    progress_state *s = user;
    if (!s->quiet) {
        enum { WIDTH = 30 };
        size_t done = total ? step * WIDTH / total : WIDTH;
        char bar[WIDTH + 1];
        for (size_t i = 0; i < WIDTH; i++)
            bar[i] = i < done ? '#' : '.';
        bar[WIDTH] = '\0';
        fprintf(stderr, "\rdenoising [%s] %zu/%zu  t=%-8g", bar, step, total, timestep);
        s->open_line = step != total;
        if (step == total)
            fputc('\n', stderr);
        fflush(stderr);
    }
    return interrupted != 0;
}

/* Parse "1,2,3" (brackets and whitespace ignored) into a new array. */
static int parse_ids(const char *text, int64_t **out, size_t *n) {
    size_t cap = 0, len = 0;
    int64_t *ids = NULL;
    const char *s = text;
    *out = NULL;
    *n = 0;
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '[' || *s == ']' || *s == '\n')
            s++;
        if (!*s)
            break;
        char *end = NULL;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (end == s || errno) {
            fprintf(stderr, "sf-txt2img: bad token id at '%.20s'\n", s);
            free(ids);
            return -1;
        }
        if (len == cap) {
            size_t nc = cap ? 2 * cap : 80;
            int64_t *t = realloc(ids, nc * sizeof *t);
            if (!t) {
                free(ids);
                fprintf(stderr, "sf-txt2img: out of memory\n");
                return -1;
            }
            ids = t;
            cap = nc;
        }
        ids[len++] = (int64_t)v;
        s = end;
        while (*s == ' ' || *s == '\t' || *s == '[' || *s == ']' || *s == '\n')
            s++;
        if (*s == ',')
            s++;
        else if (*s) {
            fprintf(stderr, "sf-txt2img: expected ',' between token ids at '%.20s'\n", s);
            free(ids);
            return -1;
        }
    }
    if (!len) {
        fprintf(stderr, "sf-txt2img: no token ids in '%s'\n", text);
        free(ids);
        return -1;
    }
    *out = ids;
    *n = len;
    return 0;
}

static int parse_size(const char *text, const char *what, size_t *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || *end || errno || text[0] == '-') {
        fprintf(stderr, "sf-txt2img: %s must be a non-negative integer, got '%s'\n", what, text);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

/* "WxH" with positive integers. */
static int parse_wxh(const char *text, size_t *w, size_t *h) {
    char *end = NULL;
    if (text[0] < '0' || text[0] > '9')
        return -1;
    errno = 0;
    unsigned long long a = strtoull(text, &end, 10);
    if (errno || (*end != 'x' && *end != 'X') || end[1] < '0' || end[1] > '9')
        return -1;
    const char *hs = end + 1;
    unsigned long long b = strtoull(hs, &end, 10);
    if (errno || *end || a == 0 || b == 0 || a > 1000000 || b > 1000000)
        return -1;
    *w = (size_t)a;
    *h = (size_t)b;
    return 0;
}

static int read_latents(const char *path, size_t n, float **out) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "sf-txt2img: %s: %s\n", path, strerror(errno));
        return -1;
    }
    float *x = malloc(n * sizeof *x);
    int rc = -1;
    if (!x) {
        fprintf(stderr, "sf-txt2img: out of memory\n");
    } else if (fread(x, sizeof *x, n, f) != n || fgetc(f) != EOF) {
        fprintf(stderr, "sf-txt2img: %s: expected exactly %zu float32 values (%zu bytes)\n",
                path, n, n * sizeof *x);
    } else {
        rc = 0;
    }
    fclose(f);
    if (rc) {
        free(x);
        x = NULL;
    }
    *out = x;
    return rc;
}

static int write_ppm(const char *path, const float *img, size_t h, size_t w) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "sf-txt2img: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "P6\n%zu %zu\n255\n", w, h);
    int ok = 1;
    unsigned char row[3 * 1024];
    size_t n = h * w * 3, k = 0;
    while (k < n && ok) {
        size_t m = n - k < sizeof row ? n - k : sizeof row;
        for (size_t i = 0; i < m; i++) {
            float v = img[k + i];
            /* as snapfusion.Pipeline: (x * 255).round() (half to even); NaN -> 0 */
            float r = v == v ? nearbyintf(v * 255.0f) : 0.0f;
            row[i] = (unsigned char)(r < 0 ? 0 : r > 255 ? 255 : r);
        }
        ok = fwrite(row, 1, m, f) == m;
        k += m;
    }
    if (fclose(f) != 0)
        ok = 0;
    if (!ok)
        fprintf(stderr, "sf-txt2img: %s: write error\n", path);
    return ok ? 0 : -1;
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const char *model = NULL, *ids_text = NULL, *uncond_text = NULL, *out_path = NULL;
    const char *latents_path = NULL, *scheduler = NULL;
    size_t steps = 0, width = 0, height = 0, clip_skip = 0, threads = 0;
    double guidance = NAN;
    uint64_t seed = 0;
    int quiet = 0, rc = 1;
    int64_t *ids = NULL, *uncond = NULL;
    size_t n_ids = 0, n_uncond = 0;
    float *latents = NULL, *img = NULL;
    sf_pipeline *p = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
            takes = 0;
        } else if (a[0] == '-' && a[1] != '\0' && !v) {
            fprintf(stderr, "sf-txt2img: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--ids")) {
            ids_text = v;
        } else if (!strcmp(a, "--uncond-ids")) {
            uncond_text = v;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            out_path = v;
        } else if (!strcmp(a, "--latents")) {
            latents_path = v;
        } else if (!strcmp(a, "--scheduler")) {
            scheduler = v;
        } else if (!strcmp(a, "--steps")) {
            if (parse_size(v, "--steps", &steps))
                return 2;
        } else if (!strcmp(a, "--clip-skip")) {
            if (parse_size(v, "--clip-skip", &clip_skip))
                return 2;
        } else if (!strcmp(a, "--threads")) {
            if (parse_size(v, "--threads", &threads) || threads < 1 || threads > 1024) {
                fprintf(stderr, "sf-txt2img: --threads must be in [1, 1024]\n");
                return 2;
            }
        } else if (!strcmp(a, "--guidance")) {
            char *end = NULL;
            guidance = strtod(v, &end);
            if (end == v || *end || !isfinite(guidance)) {
                fprintf(stderr, "sf-txt2img: --guidance must be a finite number, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--seed")) {
            char *end = NULL;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 0);
            if (end == v || *end || errno || v[0] == '-') {
                fprintf(stderr, "sf-txt2img: --seed must be an integer in [0, 2^64), got '%s'\n",
                        v);
                return 2;
            }
            seed = (uint64_t)s;
        } else if (!strcmp(a, "--size")) {
            if (parse_wxh(v, &width, &height)) {
                fprintf(stderr, "sf-txt2img: --size must be WIDTHxHEIGHT, got '%s'\n", v);
                return 2;
            }
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "sf-txt2img: unknown option %s (see --help)\n", a);
            return 2;
        } else {
            takes = 0;
            if (model) {
                fprintf(stderr, "sf-txt2img: more than one model folder ('%s', '%s')\n", model,
                        a);
                return 2;
            }
            model = a;
        }
        i += takes;
    }
    if (!model || !ids_text || !out_path) {
        usage(stderr);
        fprintf(stderr, "\nsf-txt2img: MODEL_DIR, --ids and -o are required\n");
        return 2;
    }
    if (parse_ids(ids_text, &ids, &n_ids))
        return 2;
    if (uncond_text && parse_ids(uncond_text, &uncond, &n_uncond)) {
        free(ids);
        return 2;
    }

    sf_status st = sf_init();
    if (st == SF_OK && threads)
        st = sf_set_num_threads((int)threads);
    if (st != SF_OK) {
        fprintf(stderr, "sf-txt2img: %s\n", sf_last_error());
        goto done;
    }
    double t0 = seconds();
    st = sf_pipeline_load(model, &p);
    if (st == SF_OK && scheduler)
        st = sf_pipeline_set_scheduler(p, scheduler);
    if (st != SF_OK) {
        fprintf(stderr, "sf-txt2img: %s: %s\n", sf_status_str(st), sf_last_error());
        goto done;
    }
    double t_load = seconds() - t0;
    sf_pipeline_info info;
    sf_pipeline_get_info(p, &info);
    if (info.image_channels != 3) {
        fprintf(stderr, "sf-txt2img: the model makes %zu-channel images; PPM needs 3\n",
                info.image_channels);
        goto done;
    }

    sf_generate_params g;
    sf_generate_params_default(&g);
    g.cond_ids = ids;
    g.cond_len = n_ids;
    g.uncond_ids = uncond;
    g.uncond_len = n_uncond;
    g.width = width ? width : info.default_width;
    g.height = height ? height : info.default_height;
    g.num_inference_steps = steps ? steps : info.recommended_steps ? info.recommended_steps : 50;
    g.guidance_scale = !isnan(guidance)                  ? guidance
                       : !isnan(info.recommended_guidance) ? info.recommended_guidance
                                                           : 7.5;
    g.clip_skip = clip_skip;
    g.seed = seed;
    if (g.guidance_scale > 1.0 && !uncond) {
        fprintf(stderr, "sf-txt2img: guidance %g > 1 needs --uncond-ids (the ids of \"\" or of a "
                "negative prompt; see --help), or use --guidance 1\n", g.guidance_scale);
        rc = 2;
        goto done;
    }
    size_t f = info.vae_scale_factor;
    if (latents_path) {
        if (g.width % f || g.height % f) {
            fprintf(stderr, "sf-txt2img: --size must be a multiple of %zu\n", f);
            rc = 2;
            goto done;
        }
        size_t n = info.latent_channels * (g.height / f) * (g.width / f);
        if (read_latents(latents_path, n, &latents))
            goto done;
        g.latents = latents;
    }
    if (g.width > 8192 || g.height > 8192 || g.width == 0 || g.height == 0) {
        fprintf(stderr, "sf-txt2img: --size must be within 8192x8192\n");
        rc = 2;
        goto done;
    }
    img = malloc(g.width * g.height * 3 * sizeof *img);
    if (!img) {
        fprintf(stderr, "sf-txt2img: out of memory for a %zux%zu image\n", g.width, g.height);
        goto done;
    }
    progress_state ps = {quiet, 0};
    g.progress = progress;
    g.progress_user = &ps;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    if (!quiet) {
        char source[64];
        if (latents_path)
            snprintf(source, sizeof source, "given latents");
        else
            snprintf(source, sizeof source, "seed %" PRIu64, seed);
        fprintf(stderr, "%s: %zux%zu, %zu steps (%s), guidance %g, %s, %d threads\n", model,
                g.width, g.height, g.num_inference_steps, info.scheduler, g.guidance_scale,
                source, sf_get_num_threads());
    }
    st = sf_pipeline_generate(p, &g, img);
    signal(SIGINT, SIG_DFL);
    if (st != SF_OK) {
        if (ps.open_line)
            fputc('\n', stderr);
        fprintf(stderr, "sf-txt2img: %s: %s\n", sf_status_str(st), sf_last_error());
        rc = st == SF_ERR_CANCELLED ? 130 : st == SF_ERR_INVALID_ARG || st == SF_ERR_SHAPE ? 2 : 1;
        goto done;
    }
    if (write_ppm(out_path, img, g.height, g.width))
        goto done;
    if (!quiet) {
        sf_pipeline_timings t;
        sf_pipeline_get_timings(p, &t);
        double lo = INFINITY, hi = 0;
        for (size_t i = 0; i < t.steps; i++) {
            lo = t.unet_step_s[i] < lo ? t.unet_step_s[i] : lo;
            hi = t.unet_step_s[i] > hi ? t.unet_step_s[i] : hi;
        }
        fprintf(stderr, "load          %8.3f s\n", t_load);
        fprintf(stderr, "text encoder  %8.3f s\n", t.text_encoder_s);
        fprintf(stderr, "unet          %8.3f s  (%zu steps: %.3f s mean, %.3f min, %.3f max)\n",
                t.unet_s, t.steps, t.steps ? t.unet_s / (double)t.steps : 0.0,
                t.steps ? lo : 0.0, hi);
        fprintf(stderr, "scheduler     %8.3f s\n", t.scheduler_s);
        fprintf(stderr, "decoder       %8.3f s\n", t.decoder_s);
        fprintf(stderr, "generate      %8.3f s\n", t.total_s);
        fprintf(stderr, "wrote %s\n", out_path);
    }
    rc = 0;
done:
    sf_pipeline_destroy(p);
    free(ids);
    free(uncond);
    free(latents);
    free(img);
    return rc;
}
