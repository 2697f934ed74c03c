/* test_pipeline.c — sf_pipeline_*: hostile folders and arguments (each an error status with a
 * message, nothing leaked under ASan), the noise generator, and, when the golden model folder
 * is present (SNAPFUSION_GOLDEN, default ../shared/golden; its sd_tiny/), generation: shape,
 * range, determinism, cancellation, caller latents, batches and scheduler switches. */
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sf_test.h"
#include "snapfusion.h"

/* ---- temporary folders ---- */

static char tmp_root[64];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_tree(const char *path) {
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *tpath(const char *rel) {
    static char buf[4][PATH_MAX];
    static int k = 0;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp_root, rel);
    return buf[k];
}

static void mkdir_t(const char *rel) {
    EXPECT(mkdir(tpath(rel), 0700) == 0);
}

static void write_t(const char *rel, const char *text) {
    FILE *f = fopen(tpath(rel), "wb");
    EXPECT(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void link_t(const char *target, const char *rel) {
    EXPECT(symlink(target, tpath(rel)) == 0);
}

/* The load must fail with `want` and a message containing `needle`. */
static void expect_load_error(const char *folder, sf_status want, const char *needle) {
    sf_pipeline *p = (sf_pipeline *)(uintptr_t)1;
    sf_clear_error();
    EXPECT_STATUS(sf_pipeline_load(folder, &p), want);
    EXPECT(p == NULL);
    const char *msg = sf_last_error();
    int ok = msg[0] && strstr(msg, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  message '%s' lacks '%s'\n", msg, needle);
    else if (getenv("SF_TEST_VERBOSE"))
        printf("  %s: %s\n", sf_status_str(want), msg);
    EXPECT(ok);
    sf_pipeline_destroy(p == (sf_pipeline *)(uintptr_t)1 ? NULL : p);
}

static const char *SCHED_JSON =
    "{\"_class_name\": \"PNDMScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"num_train_timesteps\": 1000, "
    "\"set_alpha_to_one\": false, \"skip_prk_steps\": true, \"steps_offset\": 1}";

static void test_hostile_folders(const char *golden_model) {
    sf_pipeline *p = NULL;
    EXPECT_STATUS(sf_pipeline_load(NULL, &p), SF_ERR_INVALID_ARG);
    EXPECT(sf_last_error()[0] != '\0');
    EXPECT_STATUS(sf_pipeline_load("/", NULL), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_pipeline_load("", &p), SF_ERR_INVALID_ARG);
    expect_load_error("/nonexistent/snapfusion/model", SF_ERR_IO, "/nonexistent/snapfusion/model");

    snprintf(tmp_root, sizeof tmp_root, "/tmp/sf_test_pipeline_XXXXXX");
    if (!mkdtemp(tmp_root)) {
        EXPECT(!"mkdtemp failed");
        return;
    }
    /* a file, not a folder */
    write_t("file", "x");
    expect_load_error(tpath("file"), SF_ERR_IO, "not a folder");
    /* an empty folder; then one subfolder at a time */
    mkdir_t("m");
    expect_load_error(tpath("m"), SF_ERR_IO, "text_encoder");
    mkdir_t("m/text_encoder");
    expect_load_error(tpath("m"), SF_ERR_IO, "'unet/'");
    mkdir_t("m/unet");
    mkdir_t("m/vae");
    expect_load_error(tpath("m"), SF_ERR_IO, "'scheduler/'");
    mkdir_t("m/scheduler");
    expect_load_error(tpath("m"), SF_ERR_IO, "scheduler_config.json");
    /* truncated / wrong scheduler configs */
    write_t("m/scheduler/scheduler_config.json", "{\"_class_name\": \"PNDMScheduler\", ");
    expect_load_error(tpath("m"), SF_ERR_FORMAT, "scheduler_config.json");
    write_t("m/scheduler/scheduler_config.json", "{\"_class_name\": \"NoSuchScheduler\"}");
    expect_load_error(tpath("m"), SF_ERR_UNSUPPORTED, "NoSuchScheduler");
    write_t("m/scheduler/scheduler_config.json", SCHED_JSON);
    /* snapfusion_model.json: malformed values */
    write_t("m/snapfusion_model.json", "{\"num_inference_steps\": 0}");
    expect_load_error(tpath("m"), SF_ERR_FORMAT, "snapfusion_model.json");
    write_t("m/snapfusion_model.json", "[1, 2");
    expect_load_error(tpath("m"), SF_ERR_FORMAT, "snapfusion_model.json");
    write_t("m/snapfusion_model.json", "{\"num_inference_steps\": 8, \"guidance_scale\": 1.5}");
    /* text encoder: missing, truncated config; missing and pickle-only weights */
    expect_load_error(tpath("m"), SF_ERR_IO, "text_encoder/config.json");
    write_t("m/text_encoder/config.json", "{\"hidden_size\": 32, \"vocab_size\": ");
    expect_load_error(tpath("m"), SF_ERR_FORMAT, "text_encoder/config.json");
    write_t("m/text_encoder/config.json", "{\"hidden_size\": 32, \"intermediate_size\": 37, "
            "\"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"vocab_size\": 1000}");
    expect_load_error(tpath("m"), SF_ERR_IO, "no weights file");
    write_t("m/text_encoder/pytorch_model.bin", "not really");
    expect_load_error(tpath("m"), SF_ERR_UNSUPPORTED, "pickle");
    /* weights that are not safetensors */
    write_t("m/text_encoder/model.safetensors", "abc");
    expect_load_error(tpath("m"), SF_ERR_FORMAT, "model.safetensors");

    if (golden_model) {
        char src[PATH_MAX];
        /* the real components, then a broken UNet folder */
        mkdir_t("g");
        mkdir_t("g/unet");
        snprintf(src, sizeof src, "%s/text_encoder", golden_model);
        link_t(src, "g/text_encoder");
        snprintf(src, sizeof src, "%s/vae", golden_model);
        link_t(src, "g/vae");
        snprintf(src, sizeof src, "%s/scheduler", golden_model);
        link_t(src, "g/scheduler");
        write_t("g/unet/config.json", "{\"block_out_channels\": [32, 64], \"in_channels\"");
        expect_load_error(tpath("g"), SF_ERR_FORMAT, "unet/config.json");
        /* the right config with the VAE's weights */
        snprintf(src, sizeof src, "%s/unet/config.json", golden_model);
        remove(tpath("g/unet/config.json"));
        link_t(src, "g/unet/config.json");
        snprintf(src, sizeof src, "%s/vae/diffusion_pytorch_model.safetensors", golden_model);
        link_t(src, "g/unet/diffusion_pytorch_model.safetensors");
        expect_load_error(tpath("g"), SF_ERR_FORMAT, "diffusion_pytorch_model.safetensors");
        /* the whole model through links loads */
        remove(tpath("g/unet/diffusion_pytorch_model.safetensors"));
        snprintf(src, sizeof src, "%s/unet/diffusion_pytorch_model.safetensors", golden_model);
        link_t(src, "g/unet/diffusion_pytorch_model.safetensors");
        EXPECT_OK(sf_pipeline_load(tpath("g"), &p));
        sf_pipeline_destroy(p);
        p = NULL;
        /* a UNet whose cross-attention width does not fit the text encoder */
        mkdir_t("x");
        snprintf(src, sizeof src, "%s/../text_encoder_ctx", golden_model);
        link_t(src, "x/text_encoder");
        snprintf(src, sizeof src, "%s/unet", golden_model);
        link_t(src, "x/unet");
        snprintf(src, sizeof src, "%s/vae", golden_model);
        link_t(src, "x/vae");
        snprintf(src, sizeof src, "%s/scheduler", golden_model);
        link_t(src, "x/scheduler");
        expect_load_error(tpath("x"), SF_ERR_FORMAT, "cross_attention_dim");
    }
    rm_tree(tmp_root);
}

/* ---- the noise generator ---- */

static void test_randn(void) {
    enum { N = 200001 };
    float *a = malloc(N * sizeof(float)), *b = malloc(N * sizeof(float));
    EXPECT(a && b);
    if (!a || !b) {
        free(a);
        free(b);
        return;
    }
    EXPECT_OK(sf_randn(7, 0, N, a));
    double s = 0, s2 = 0;
    int finite = 1;
    for (size_t i = 0; i < N; i++) {
        finite &= isfinite(a[i]) != 0;
        s += a[i];
        s2 += (double)a[i] * a[i];
    }
    double mean = s / N, var = s2 / N - mean * mean;
    EXPECT(finite);
    EXPECT(fabs(mean) < 0.01);
    EXPECT(fabs(var - 1.0) < 0.02);
    /* a prefix of a longer draw; another stream or seed differs */
    EXPECT_OK(sf_randn(7, 0, 9, b));
    EXPECT(memcmp(a, b, 9 * sizeof(float)) == 0);
    EXPECT_OK(sf_randn(7, 1, 9, b));
    EXPECT(memcmp(a, b, 9 * sizeof(float)) != 0);
    EXPECT_OK(sf_randn(8, 0, 9, b));
    EXPECT(memcmp(a, b, 9 * sizeof(float)) != 0);
    EXPECT_OK(sf_randn(7, 0, 0, NULL));
    EXPECT_STATUS(sf_randn(7, 0, 3, NULL), SF_ERR_INVALID_ARG);
    free(a);
    free(b);
}

/* ---- generation on the golden sd_tiny ---- */

#define L 77
static int64_t cond_ids[2 * L], uncond_ids[2 * L];

static void make_ids(void) {
    /* "a photo of an astronaut riding a horse" in the tiny vocabulary is not needed: any ids
     * of the vocabulary do; bos 998, eos/pad 999 as the tiny tokenizer */
    const int64_t words[] = {320, 1125, 539, 550, 18376, 6765, 320, 4558};
    for (size_t r = 0; r < 2; r++) {
        int64_t *c = cond_ids + r * L, *u = uncond_ids + r * L;
        c[0] = u[0] = 998;
        for (size_t j = 1; j < L; j++) {
            c[j] = 999;
            u[j] = 999;
        }
        for (size_t j = 0; j < 6; j++)
            c[1 + j] = (words[j + r] * 7 + 13) % 998;
    }
}

typedef struct {
    size_t calls, stop_at, last_total;
    double last_t;
} progress_rec;

static int on_progress(void *user, size_t step, size_t total, double t) {
    progress_rec *r = user;
    if (step == 1) /* a new generation */
        r->calls = 0;
    r->calls++;
    EXPECT(step == r->calls);
    r->last_total = total;
    r->last_t = t;
    return r->stop_at && step == r->stop_at;
}

static void expect_gen_error(sf_pipeline *p, const sf_generate_params *g, float *img,
                             sf_status want, const char *needle) {
    sf_clear_error();
    EXPECT_STATUS(sf_pipeline_generate(p, g, img), want);
    const char *msg = sf_last_error();
    int ok = msg[0] && strstr(msg, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  message '%s' lacks '%s'\n", msg, needle);
    else if (getenv("SF_TEST_VERBOSE"))
        printf("  %s: %s\n", sf_status_str(want), msg);
    EXPECT(ok);
}

static int all_in_unit(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(x[i] >= 0.0f && x[i] <= 1.0f))
            return 0;
    return 1;
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m))
            m = d;
    }
    return m;
}

static void test_generate(const char *model) {
    sf_pipeline *p = NULL;
    EXPECT_OK(sf_pipeline_load(model, &p));
    if (!p)
        return;
    sf_pipeline_info info;
    EXPECT_OK(sf_pipeline_get_info(p, &info));
    EXPECT(info.max_text_len == 77);
    EXPECT(info.vocab_size == 1000);
    EXPECT(info.latent_channels == 4);
    EXPECT(info.vae_scale_factor == 2);
    EXPECT(info.default_height == 64 && info.default_width == 64);
    EXPECT(info.image_channels == 3);
    EXPECT(info.recommended_steps == 0 && isnan(info.recommended_guidance));
    EXPECT(strcmp(info.scheduler, "PNDMScheduler") == 0);
    EXPECT_STATUS(sf_pipeline_get_info(NULL, &info), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_pipeline_get_info(p, NULL), SF_ERR_INVALID_ARG);

    make_ids();
    const size_t H = 32, W = 48, n_img = 2 * H * W * 3, n_lat = 2 * 4 * (H / 2) * (W / 2);
    float *img = malloc(n_img * sizeof(float)), *img2 = malloc(n_img * sizeof(float));
    float *img3 = malloc(n_img * sizeof(float)), *lat = malloc(n_lat * sizeof(float));
    EXPECT(img && img2 && img3 && lat);
    if (!img || !img2 || !img3 || !lat)
        goto done;

    sf_generate_params g;
    sf_generate_params_default(&g);
    EXPECT(g.batch == 1 && g.num_inference_steps == 50 && g.guidance_scale == 7.5);
    g.cond_ids = cond_ids;
    g.uncond_ids = uncond_ids;
    g.cond_len = g.uncond_len = L;
    g.height = H;
    g.width = W;
    g.num_inference_steps = 3;
    g.seed = 1234;

    /* ---- hostile arguments ---- */
    sf_generate_params b = g;
    EXPECT_STATUS(sf_pipeline_generate(NULL, &g, img), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_pipeline_generate(p, NULL, img), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_pipeline_generate(p, &g, NULL), SF_ERR_INVALID_ARG);
    b.height = 33;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "height");
    b = g;
    b.width = 8194;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "width");
    b = g;
    b.width = 1;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "width");
    b = g;
    b.num_inference_steps = 0;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "num_inference_steps");
    b = g;
    b.num_inference_steps = 100000;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "num_inference_steps");
    b = g;
    b.batch = 0;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "batch");
    b = g;
    b.uncond_len = L - 1;
    expect_gen_error(p, &b, img, SF_ERR_SHAPE, "uncond_len");
    b = g;
    b.cond_len = b.uncond_len = 78;
    expect_gen_error(p, &b, img, SF_ERR_SHAPE, "cond_len");
    b = g;
    b.cond_len = b.uncond_len = 0;
    expect_gen_error(p, &b, img, SF_ERR_SHAPE, "cond_len");
    b = g;
    b.cond_ids = NULL;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "cond_ids");
    b = g;
    b.uncond_ids = NULL;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "uncond_ids");
    b = g;
    b.guidance_scale = NAN;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "guidance_scale");
    b = g;
    b.clip_skip = 5;
    expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "clip_skip");
    {
        int64_t bad[L];
        memcpy(bad, cond_ids, sizeof bad);
        bad[5] = 1000;
        b = g;
        b.cond_ids = bad;
        expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "cond_ids[0][5] = 1000");
        bad[5] = -3;
        b = g;
        b.uncond_ids = bad;
        expect_gen_error(p, &b, img, SF_ERR_INVALID_ARG, "uncond_ids[0][5] = -3");
        /* without guidance the unconditional ids are not read */
        b.guidance_scale = 1.0;
        EXPECT_OK(sf_pipeline_generate(p, &b, img));
    }

    /* ---- a generation ---- */
    progress_rec rec = {0, 0, 0, 0};
    g.progress = on_progress;
    g.progress_user = &rec;
    EXPECT_OK(sf_pipeline_generate(p, &g, img));
    const size_t n1 = H * W * 3;
    EXPECT(all_in_unit(img, n1));
    EXPECT(rec.calls == 4 && rec.last_total == 4); /* PNDM: 3 steps are 4 timesteps */
    EXPECT(rec.last_t == 1.0);
    float lo = 1, hi = 0;
    for (size_t i = 0; i < n1; i++) {
        lo = img[i] < lo ? img[i] : lo;
        hi = img[i] > hi ? img[i] : hi;
    }
    EXPECT(hi - lo > 0.05f); /* not a constant picture */
    sf_pipeline_timings tm;
    EXPECT_OK(sf_pipeline_get_timings(p, &tm));
    EXPECT(tm.steps == 4 && tm.unet_step_s != NULL);
    double sum = 0;
    for (size_t i = 0; i < tm.steps; i++)
        sum += tm.unet_step_s[i];
    EXPECT(fabs(sum - tm.unet_s) < 1e-9);
    EXPECT(tm.text_encoder_s > 0 && tm.decoder_s > 0 && tm.total_s >= tm.unet_s + tm.decoder_s);

    /* same seed -> the same image; another seed -> another */
    rec.calls = 0;
    EXPECT_OK(sf_pipeline_generate(p, &g, img2));
    EXPECT(memcmp(img, img2, n1 * sizeof(float)) == 0);
    b = g;
    b.seed = 1235;
    EXPECT_OK(sf_pipeline_generate(p, &b, img2));
    EXPECT(memcmp(img, img2, n1 * sizeof(float)) != 0);

    /* the seed's noise given as latents -> the same image */
    EXPECT_OK(sf_randn(g.seed, 0, n_lat / 2, lat));
    b = g;
    b.latents = lat;
    b.seed = 99;
    EXPECT_OK(sf_pipeline_generate(p, &b, img2));
    EXPECT(memcmp(img, img2, n1 * sizeof(float)) == 0);

    /* cancellation stops at the requested step; the next call starts afresh */
    rec.calls = 0;
    rec.stop_at = 2;
    memset(img2, 0, n1 * sizeof(float));
    sf_clear_error();
    EXPECT_STATUS(sf_pipeline_generate(p, &g, img2), SF_ERR_CANCELLED);
    EXPECT(strstr(sf_last_error(), "cancelled") != NULL);
    EXPECT(rec.calls == 2);
    EXPECT_OK(sf_pipeline_get_timings(p, &tm));
    EXPECT(tm.steps == 2 && tm.decoder_s == 0);
    rec.stop_at = 0;
    rec.calls = 0;
    EXPECT_OK(sf_pipeline_generate(p, &g, img2));
    EXPECT(memcmp(img, img2, n1 * sizeof(float)) == 0);
    g.progress = NULL;

    /* default size (64x64) */
    {
        float *big = malloc(64 * 64 * 3 * sizeof(float));
        EXPECT(big != NULL);
        b = g;
        b.height = b.width = 0;
        b.num_inference_steps = 1;
        if (big) {
            EXPECT_OK(sf_pipeline_generate(p, &b, big));
            EXPECT(all_in_unit(big, 64 * 64 * 3));
        }
        free(big);
    }

    /* a batch of two: each image as generated alone with its rows and latents */
    EXPECT_OK(sf_randn(5, 0, n_lat, lat));
    b = g;
    b.batch = 2;
    b.latents = lat;
    EXPECT_OK(sf_pipeline_generate(p, &b, img3));
    EXPECT(all_in_unit(img3, n_img));
    for (size_t k = 0; k < 2; k++) {
        sf_generate_params one = g;
        one.cond_ids = cond_ids + k * L;
        one.uncond_ids = uncond_ids + k * L;
        one.latents = lat + k * (n_lat / 2);
        EXPECT_OK(sf_pipeline_generate(p, &one, img2));
        EXPECT(max_abs_diff(img2, img3 + k * n1, n1) < 1e-4f);
    }

    /* without guidance, clip_skip, other schedulers (a stochastic one: still deterministic) */
    b = g;
    b.guidance_scale = 1.0;
    b.uncond_ids = NULL;
    EXPECT_OK(sf_pipeline_generate(p, &b, img2));
    EXPECT(all_in_unit(img2, n1) && memcmp(img, img2, n1 * sizeof(float)) != 0);
    b = g;
    b.clip_skip = 1;
    EXPECT_OK(sf_pipeline_generate(p, &b, img2));
    EXPECT(all_in_unit(img2, n1) && memcmp(img, img2, n1 * sizeof(float)) != 0);
    EXPECT_STATUS(sf_pipeline_set_scheduler(p, "NoSuchScheduler"), SF_ERR_UNSUPPORTED);
    EXPECT_STATUS(sf_pipeline_set_scheduler(NULL, NULL), SF_ERR_INVALID_ARG);
    EXPECT_OK(sf_pipeline_get_info(p, &info));
    EXPECT(strcmp(info.scheduler, "PNDMScheduler") == 0);
    const char *names[] = {"DDIMScheduler", "EulerDiscreteScheduler",
                           "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
                           "LMSDiscreteScheduler", "LCMScheduler"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        EXPECT_OK(sf_pipeline_set_scheduler(p, names[k]));
        EXPECT_OK(sf_pipeline_get_info(p, &info));
        EXPECT(strcmp(info.scheduler, names[k]) == 0);
        rec.calls = 0;
        b = g;
        b.progress = on_progress;
        b.progress_user = &rec;
        EXPECT_OK(sf_pipeline_generate(p, &b, img2));
        EXPECT(rec.calls == 3);
        EXPECT(all_in_unit(img2, n1));
        if (strstr(names[k], "Ancestral") || strstr(names[k], "LCM")) { /* stochastic */
            EXPECT_OK(sf_pipeline_generate(p, &b, img3));
            EXPECT(memcmp(img2, img3, n1 * sizeof(float)) == 0);
        }
    }
    /* a scheduler from its configuration text */
    const char *euler = "{\"_class_name\": \"EulerDiscreteScheduler\", \"beta_schedule\": "
                        "\"scaled_linear\", \"beta_start\": 0.00085, \"beta_end\": 0.012}";
    EXPECT_STATUS(sf_pipeline_set_scheduler_json(p, "{\"_class_name\": ", 15), SF_ERR_FORMAT);
    EXPECT_STATUS(sf_pipeline_set_scheduler_json(p, NULL, 0), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_pipeline_set_scheduler_json(NULL, euler, strlen(euler)),
                  SF_ERR_INVALID_ARG);
    EXPECT_OK(sf_pipeline_get_info(p, &info));
    EXPECT(strcmp(info.scheduler, names[sizeof names / sizeof *names - 1]) == 0);
    EXPECT_OK(sf_pipeline_set_scheduler_json(p, euler, strlen(euler)));
    EXPECT_OK(sf_pipeline_get_info(p, &info));
    EXPECT(strcmp(info.scheduler, "EulerDiscreteScheduler") == 0);
    EXPECT_OK(sf_pipeline_generate(p, &g, img2));
    EXPECT(all_in_unit(img2, n1));
    EXPECT_STATUS(sf_pipeline_get_timings(NULL, &tm), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_pipeline_get_timings(p, NULL), SF_ERR_INVALID_ARG);

    EXPECT_OK(sf_pipeline_set_scheduler(p, NULL));
    EXPECT_OK(sf_pipeline_get_info(p, &info));
    EXPECT(strcmp(info.scheduler, "PNDMScheduler") == 0);
    EXPECT_OK(sf_pipeline_generate(p, &g, img2));
    EXPECT(memcmp(img, img2, n1 * sizeof(float)) == 0);
done:
    free(img);
    free(img2);
    free(img3);
    free(lat);
    sf_pipeline_destroy(p);
}

int main(void) {
    EXPECT_OK(sf_set_num_threads(2));
    sf_pipeline_destroy(NULL);
    test_randn();
    const char *env = getenv("SNAPFUSION_GOLDEN");
    char rel[PATH_MAX], model[PATH_MAX];
    snprintf(rel, sizeof rel, "%s/sd_tiny", env && *env ? env : "../shared/golden");
    struct stat sb;
    /* absolute: the hostile tests link to it from a temporary folder */
    int have = stat(rel, &sb) == 0 && S_ISDIR(sb.st_mode) && realpath(rel, model) != NULL;
    if (!have)
        snprintf(model, sizeof model, "%s", rel);
    test_hostile_folders(have ? model : NULL);
    if (have)
        test_generate(model);
    else
        printf("test_pipeline: golden model %s not found (set SNAPFUSION_GOLDEN): generation "
               "tests skipped\n", model);
    return sf_test_finish("test_pipeline");
}
