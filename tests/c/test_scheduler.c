/* test_scheduler.c — noise schedulers: configuration parsing, timesteps of diffusers, closed-form
 * trajectories, in-place steps and error statuses. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sf_test.h"
#include "snapfusion.h"

/* Stable Diffusion 1.5's scheduler_config.json body (the class name is prepended). */
#define SD15 "\"num_train_timesteps\": 1000, \"beta_start\": 0.00085, \"beta_end\": 0.012, " \
             "\"beta_schedule\": \"scaled_linear\", \"steps_offset\": 1, "                   \
             "\"set_alpha_to_one\": false, \"clip_sample\": false, \"skip_prk_steps\": true, " \
             "\"trained_betas\": null, \"prediction_type\": \"epsilon\""

static sf_scheduler *make(const char *json) {
    sf_scheduler *s = NULL;
    sf_status st = sf_scheduler_create_from_json(json, strlen(json), &s);
    if (st != SF_OK)
        fprintf(stderr, "create failed: %s (%s)\n", sf_last_error(), json);
    return s;
}

static int timesteps_are(sf_scheduler *s, size_t n, const double *want, size_t count) {
    if (sf_scheduler_set_timesteps(s, n) != SF_OK)
        return 0;
    size_t got;
    const double *t = sf_scheduler_timesteps(s, &got);
    if (!t || got != count)
        return 0;
    for (size_t i = 0; i < count; i++)
        if (t[i] != want[i]) {
            fprintf(stderr, "timestep %zu: got %.9g, want %.9g\n", i, t[i], want[i]);
            return 0;
        }
    return 1;
}

/* Timesteps of diffusers for the SD-1.5 configuration (values printed by diffusers and checked
 * by hand against its formulas: leading i * (1000 // n) + 1, trailing round(1000 - i * 1000 / n)
 * - 1, linspace round(i * 999 / (n - 1))). */
static void test_timesteps(void) {
    sf_scheduler *s = make("{\"_class_name\": \"PNDMScheduler\", " SD15 "}");
    EXPECT(s != NULL);
    if (s) {
        /* PLMS repeats the second timestep; a single step is [1] */
        static const double p4[] = {751, 501, 501, 251, 1}, p1[] = {1}, p2[] = {501, 1, 1};
        EXPECT(timesteps_are(s, 4, p4, 5));
        EXPECT(timesteps_are(s, 1, p1, 1));
        EXPECT(timesteps_are(s, 2, p2, 3));
        EXPECT(sf_scheduler_init_noise_sigma(s) == 1.0);
        EXPECT(sf_scheduler_sigmas(s, NULL) == NULL);
        size_t nb;
        const float *betas = sf_scheduler_betas(s, &nb);
        const float *ac = sf_scheduler_alphas_cumprod(s, NULL);
        EXPECT(nb == 1000 && fabsf(betas[0] - 0.00085f) < 1e-9f &&
               fabsf(betas[999] - 0.012f) < 1e-8f);
        EXPECT(ac[0] == 1.0f - betas[0] && ac[999] > 0.0046f && ac[999] < 0.0047f);
        sf_scheduler_destroy(s);
    }
    s = make("{\"_class_name\": \"DDIMScheduler\", " SD15 ", \"timestep_spacing\": \"trailing\"}");
    EXPECT(s != NULL);
    if (s) {
        static const double d3[] = {999, 666, 332}, d7[] = {999, 856, 713, 570, 428, 285, 142};
        EXPECT(timesteps_are(s, 3, d3, 3));
        EXPECT(timesteps_are(s, 7, d7, 7));
        sf_scheduler_destroy(s);
    }
    s = make("{\"_class_name\": \"DDIMScheduler\", " SD15 "}");
    if (s) {
        static const double d4[] = {751, 501, 251, 1};
        EXPECT(timesteps_are(s, 4, d4, 4));
        sf_scheduler_destroy(s);
    }
    s = make("{\"_class_name\": \"EulerDiscreteScheduler\", " SD15 "}");
    EXPECT(s != NULL);
    if (s) {
        static const double e4[] = {999, 666, 333, 0}, e1[] = {0};
        EXPECT(timesteps_are(s, 4, e4, 4));
        size_t ns;
        const float *sig = sf_scheduler_sigmas(s, &ns);
        /* sigma(999) = sqrt((1 - ac) / ac) = 14.6146..., the last sigma is 0 */
        EXPECT(sig && ns == 5 && fabsf(sig[0] - 14.614645f) < 1e-5f && sig[4] == 0.0f);
        EXPECT(fabs(sf_scheduler_init_noise_sigma(s) - 14.614645) < 1e-5);
        /* linspace with one step is t = 0, whose sigma is small */
        EXPECT(timesteps_are(s, 1, e1, 1));
        EXPECT(fabs(sf_scheduler_init_noise_sigma(s) - 0.0291675) < 1e-6);
        sf_scheduler_destroy(s);
    }
    s = make("{\"_class_name\": \"DPMSolverMultistepScheduler\", " SD15
             ", \"lambda_min_clipped\": -Infinity}");
    EXPECT(s != NULL);
    if (s) {
        static const double m4[] = {999, 749, 500, 250};
        EXPECT(timesteps_are(s, 4, m4, 4));
        size_t ns;
        const float *sig = sf_scheduler_sigmas(s, &ns);
        /* diffusers 0.25 ends the DPM-Solver schedule at sigma(t = 0), not 0 */
        EXPECT(sig && ns == 5 && fabsf(sig[4] - 0.0291675f) < 1e-6f);
        sf_scheduler_destroy(s);
    }
    s = make("{\"_class_name\": \"LCMScheduler\", " SD15 "}");
    EXPECT(s != NULL);
    if (s) {
        /* 50 original steps of 20: [999, 979, ..., 19], taken at floor(i * 50 / n) */
        static const double l4[] = {999, 759, 499, 259};
        EXPECT(timesteps_are(s, 4, l4, 4));
        EXPECT(sf_scheduler_set_timesteps(s, 51) == SF_ERR_INVALID_ARG);
        sf_scheduler_destroy(s);
    }
}

/* DDIM with a zero noise prediction scales x by sqrt(alpha_prev / alpha_t) each step; PNDM's
 * linear multistep telescopes to sqrt(final_alpha / alpha(t_0)); Euler with a constant
 * epsilon of 1 from x = 0 moves by sigma_next - sigma. */
static void test_closed_form(void) {
    enum { N = 37 };
    float x[N], mo[N], out[N];
    unsigned long long seed = 7;
    for (int i = 0; i < N; i++)
        x[i] = sf_test_rand(&seed);

    sf_scheduler *s = make("{\"_class_name\": \"DDIMScheduler\", " SD15 "}");
    if (s) {
        const float *ac = sf_scheduler_alphas_cumprod(s, NULL);
        memset(mo, 0, sizeof mo);
        EXPECT_OK(sf_scheduler_set_timesteps(s, 4)); /* 751, 501, 251, 1 */
        EXPECT_OK(sf_scheduler_step(s, mo, x, N, NULL, out));
        double worst = 0;
        for (int i = 0; i < N; i++) {
            double want = x[i] / sqrt((double)ac[751]) * sqrt((double)ac[501]);
            worst = fmax(worst, fabs(out[i] - want));
        }
        EXPECT(worst < 1e-6);
        EXPECT(sf_scheduler_step_index(s) == 1);
        sf_scheduler_destroy(s);
    }

    s = make("{\"_class_name\": \"PNDMScheduler\", " SD15 "}");
    if (s) {
        const float *ac = sf_scheduler_alphas_cumprod(s, NULL);
        memset(mo, 0, sizeof mo);
        EXPECT_OK(sf_scheduler_set_timesteps(s, 8));
        size_t count;
        const double *ts = sf_scheduler_timesteps(s, &count);
        float cur[N];
        memcpy(cur, x, sizeof cur);
        for (size_t k = 0; k < count; k++)
            EXPECT_OK(sf_scheduler_step(s, mo, cur, N, NULL, cur)); /* in place */
        double worst = 0;
        for (int i = 0; i < N; i++) {
            double want = x[i] * sqrt((double)ac[0] / (double)ac[(size_t)ts[0]]);
            worst = fmax(worst, fabs(cur[i] - want));
        }
        EXPECT(worst < 1e-5);
        /* past the end */
        EXPECT_STATUS(sf_scheduler_step(s, mo, cur, N, NULL, cur), SF_ERR_INVALID_ARG);
        sf_scheduler_destroy(s);
    }

    s = make("{\"_class_name\": \"EulerDiscreteScheduler\", " SD15 "}");
    if (s) {
        EXPECT_OK(sf_scheduler_set_timesteps(s, 5));
        const float *sig = sf_scheduler_sigmas(s, NULL);
        float zero[N], one[N];
        for (int i = 0; i < N; i++) {
            zero[i] = 0.0f;
            one[i] = 1.0f;
        }
        EXPECT_OK(sf_scheduler_scale_model_input(s, 0, one, N, out));
        EXPECT(fabsf(out[3] - 1.0f / sqrtf(sig[0] * sig[0] + 1.0f)) < 1e-7f);
        EXPECT_OK(sf_scheduler_step(s, one, zero, N, NULL, out));
        EXPECT(fabsf(out[0] - (sig[1] - sig[0])) < 1e-5f && out[N - 1] == out[0]);
        sf_scheduler_destroy(s);
    }
}

/* In-place steps equal out-of-place ones, over a whole DPM-Solver trajectory (multistep
 * history) and an Euler ancestral one (caller noise). */
static void test_in_place(void) {
    enum { N = 64 };
    static const char *cfgs[] = {
        "{\"_class_name\": \"DPMSolverMultistepScheduler\", " SD15 ", \"use_karras_sigmas\": true}",
        "{\"_class_name\": \"EulerAncestralDiscreteScheduler\", " SD15 "}",
        "{\"_class_name\": \"LMSDiscreteScheduler\", " SD15 "}",
        "{\"_class_name\": \"LCMScheduler\", " SD15 "}",
    };
    for (size_t c = 0; c < sizeof cfgs / sizeof cfgs[0]; c++) {
        sf_scheduler *a = make(cfgs[c]), *b = make(cfgs[c]);
        EXPECT(a && b);
        if (!a || !b) {
            sf_scheduler_destroy(a);
            sf_scheduler_destroy(b);
            continue;
        }
        float xa[N], xb[N], mo[N], noise[N], tmp[N];
        unsigned long long seed = 11 + c;
        for (int i = 0; i < N; i++)
            xa[i] = xb[i] = sf_test_rand(&seed);
        EXPECT_OK(sf_scheduler_set_timesteps(a, 6));
        EXPECT_OK(sf_scheduler_set_timesteps(b, 6));
        size_t count;
        sf_scheduler_timesteps(a, &count);
        int same = 1;
        for (size_t k = 0; k < count; k++) {
            for (int i = 0; i < N; i++) {
                mo[i] = 0.3f * xa[i] + 0.1f * (float)k;
                noise[i] = sf_test_rand(&seed);
            }
            EXPECT(sf_scheduler_step_needs_noise(a) == sf_scheduler_step_needs_noise(b));
            EXPECT_OK(sf_scheduler_step(a, mo, xa, N, noise, tmp));
            memcpy(xa, tmp, sizeof xa);
            EXPECT_OK(sf_scheduler_step(b, mo, xb, N, noise, xb));
            same &= memcmp(xa, xb, sizeof xa) == 0;
        }
        EXPECT(same);
        /* reset replays the same trajectory from the start */
        EXPECT_OK(sf_scheduler_reset(a));
        EXPECT(sf_scheduler_step_index(a) == 0);
        sf_scheduler_destroy(a);
        sf_scheduler_destroy(b);
    }
}

static void test_config(void) {
    sf_scheduler_config c;
    const char *js = "{\"_class_name\": \"DPMSolverMultistepScheduler\", \"solver_order\": 3, "
                     "\"lambda_min_clipped\": -Infinity, \"note\": \"NaN inside a string\", "
                     "\"use_karras_sigmas\": true, \"final_sigmas_type\": \"zero\", "
                     "\"clip_sample\": \"ignored: DPM-Solver does not take it\"}";
    EXPECT_OK(sf_scheduler_config_from_json(js, strlen(js), &c));
    EXPECT(c.type == SF_SCHEDULER_DPMSOLVER_MULTISTEP && c.solver_order == 3 &&
           isinf(c.lambda_min_clipped) && c.lambda_min_clipped < 0 && c.use_karras_sigmas &&
           c.final_sigmas_type == SF_FINAL_SIGMAS_ZERO &&
           c.timestep_spacing == SF_SPACING_LINSPACE);
    sf_scheduler_config_release(&c);

    /* trained betas: allocated by the parser, copied by create */
    const char *tb = "{\"_class_name\": \"DDIMScheduler\", \"num_train_timesteps\": 4, "
                     "\"trained_betas\": [0.1, 0.2, 0.3, 0.4], \"steps_offset\": 0}";
    EXPECT_OK(sf_scheduler_config_from_json(tb, strlen(tb), &c));
    EXPECT(c.trained_betas && c.trained_betas[3] == 0.4 && c.num_train_timesteps == 4);
    sf_scheduler *s = NULL;
    EXPECT_OK(sf_scheduler_create(&c, &s));
    sf_scheduler_config_release(&c);
    if (s) {
        const float *ac = sf_scheduler_alphas_cumprod(s, NULL);
        EXPECT(fabsf(ac[1] - 0.9f * 0.8f) < 1e-7f);
        EXPECT(fabsf(ac[3] - 0.9f * 0.8f * 0.7f * 0.6f) < 1e-7f);
        EXPECT(sf_scheduler_get_config(s)->trained_betas[2] == 0.3);
        sf_scheduler_destroy(s);
    }

    /* defaults of diffusers' constructors */
    sf_scheduler_config_default(SF_SCHEDULER_DDIM, &c);
    EXPECT(c.clip_sample && c.set_alpha_to_one && c.beta_schedule == SF_BETAS_LINEAR &&
           c.timestep_spacing == SF_SPACING_LEADING);
    sf_scheduler_config_default(SF_SCHEDULER_LCM, &c);
    EXPECT(c.beta_schedule == SF_BETAS_SCALED_LINEAR && c.original_inference_steps == 50);
    sf_scheduler_type t;
    EXPECT_OK(sf_scheduler_type_from_name("LMSDiscreteScheduler", &t));
    EXPECT(t == SF_SCHEDULER_LMS && strcmp(sf_scheduler_type_name(t), "LMSDiscreteScheduler") == 0);

    /* PRK warm-up: 12 Runge-Kutta timesteps then n - 3 PLMS ones */
    sf_scheduler_config_default(SF_SCHEDULER_PNDM, &c);
    EXPECT_OK(sf_scheduler_create(&c, &s));
    if (s) {
        EXPECT_STATUS(sf_scheduler_set_timesteps(s, 3), SF_ERR_INVALID_ARG);
        EXPECT_OK(sf_scheduler_set_timesteps(s, 10));
        size_t count;
        const double *ts = sf_scheduler_timesteps(s, &count);
        /* _t = 0, 100, ..., 900: prk [900, 850, 850, ..., 650, 650, 600], then 600 ... 0 */
        EXPECT(count == 19 && ts[0] == 900 && ts[1] == 850 && ts[2] == 850 && ts[11] == 600 &&
               ts[12] == 600 && ts[18] == 0);
        sf_scheduler_destroy(s);
    }
}

static int status_with(const char *json, sf_status want, const char *words) {
    sf_scheduler *s = NULL;
    sf_status st = sf_scheduler_create_from_json(json, strlen(json), &s);
    sf_scheduler_destroy(s);
    int ok = st == want && strstr(sf_last_error(), words) != NULL;
    if (!ok)
        fprintf(stderr, "%s -> %s '%s' (want %s '%s')\n", json, sf_status_str(st),
                sf_last_error(), sf_status_str(want), words);
    return ok;
}

static void test_errors(void) {
    EXPECT(status_with("{\"_class_name\": \"HeunDiscreteScheduler\"}", SF_ERR_UNSUPPORTED,
                       "HeunDiscreteScheduler"));
    EXPECT(status_with("{\"beta_start\": 0.1}", SF_ERR_FORMAT, "_class_name"));
    EXPECT(status_with("[1, 2]", SF_ERR_FORMAT, "JSON object"));
    EXPECT(status_with("{\"_class_name\": ", SF_ERR_FORMAT, "JSON error"));
    EXPECT(status_with("{\"_class_name\": \"DDIMScheduler\", \"timestep_spacing\": \"even\"}",
                       SF_ERR_UNSUPPORTED, "timestep_spacing"));
    EXPECT(status_with("{\"_class_name\": \"DDIMScheduler\", \"prediction_type\": \"flow\"}",
                       SF_ERR_UNSUPPORTED, "\"flow\""));
    EXPECT(status_with("{\"_class_name\": \"EulerDiscreteScheduler\", \"beta_schedule\": \"cos\"}",
                       SF_ERR_UNSUPPORTED, "beta_schedule"));
    EXPECT(status_with("{\"_class_name\": \"PNDMScheduler\", \"num_train_timesteps\": \"1000\"}",
                       SF_ERR_FORMAT, "num_train_timesteps"));
    EXPECT(status_with("{\"_class_name\": \"PNDMScheduler\", \"num_train_timesteps\": 1}",
                       SF_ERR_INVALID_ARG, "num_train_timesteps"));
    EXPECT(status_with("{\"_class_name\": \"DDIMScheduler\", \"thresholding\": true}",
                       SF_ERR_UNSUPPORTED, "thresholding"));
    EXPECT(status_with("{\"_class_name\": \"DDIMScheduler\", \"beta_end\": NaN}", SF_ERR_FORMAT,
                       "beta_end"));
    EXPECT(status_with("{\"_class_name\": \"DDIMScheduler\", \"beta_start\": -0.1}",
                       SF_ERR_INVALID_ARG, "beta_start"));
    EXPECT(status_with("{\"_class_name\": \"DDIMScheduler\", \"steps_offset\": 1000}",
                       SF_ERR_INVALID_ARG, "steps_offset"));
    EXPECT(status_with("{\"_class_name\": \"PNDMScheduler\", \"prediction_type\": \"sample\"}",
                       SF_ERR_UNSUPPORTED, "sample"));
    EXPECT(status_with("{\"_class_name\": \"DPMSolverMultistepScheduler\", \"solver_order\": 4}",
                       SF_ERR_UNSUPPORTED, "solver_order"));
    EXPECT(status_with("{\"_class_name\": \"DPMSolverMultistepScheduler\", "
                       "\"variance_type\": \"learned\"}", SF_ERR_UNSUPPORTED, "variance_type"));
    EXPECT(status_with("{\"_class_name\": \"DDIMScheduler\", \"trained_betas\": [0.1, 0.2], "
                       "\"num_train_timesteps\": 1000}",
                       SF_ERR_FORMAT, "trained_betas"));
    EXPECT(status_with("{\"_class_name\": \"DDIMScheduler\", \"trained_betas\": [0.1, \"x\"], "
                       "\"num_train_timesteps\": 2}", SF_ERR_FORMAT, "trained_betas"));

    sf_scheduler *s = NULL;
    EXPECT_STATUS(sf_scheduler_create(NULL, &s), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_scheduler_create_from_json(NULL, 0, &s), SF_ERR_INVALID_ARG);
    EXPECT_STATUS(sf_scheduler_set_timesteps(NULL, 4), SF_ERR_INVALID_ARG);
    sf_scheduler_destroy(NULL);

    float a[8] = {0}, b[8] = {0}, o[8];
    s = make("{\"_class_name\": \"EulerAncestralDiscreteScheduler\", " SD15 "}");
    if (s) {
        EXPECT_STATUS(sf_scheduler_step(s, a, b, 8, NULL, o), SF_ERR_INVALID_ARG); /* no steps */
        EXPECT_STATUS(sf_scheduler_set_timesteps(s, 0), SF_ERR_INVALID_ARG);
        EXPECT_STATUS(sf_scheduler_set_timesteps(s, 1001), SF_ERR_INVALID_ARG);
        EXPECT(strstr(sf_last_error(), "1001") != NULL);
        EXPECT_OK(sf_scheduler_set_timesteps(s, 3));
        EXPECT(sf_scheduler_step_needs_noise(s));
        EXPECT_STATUS(sf_scheduler_step(s, a, b, 8, NULL, o), SF_ERR_INVALID_ARG);
        EXPECT(strstr(sf_last_error(), "noise") != NULL);
        EXPECT_STATUS(sf_scheduler_step(s, a, b, 0, a, o), SF_ERR_INVALID_ARG);
        EXPECT_STATUS(sf_scheduler_step(s, NULL, b, 8, a, o), SF_ERR_INVALID_ARG);
        EXPECT_OK(sf_scheduler_step(s, a, b, 8, a, o));
        EXPECT_STATUS(sf_scheduler_step(s, a, b, 4, a, o), SF_ERR_SHAPE); /* size changed */
        EXPECT_STATUS(sf_scheduler_scale_model_input(s, 3, a, 8, o), SF_ERR_INVALID_ARG);
        EXPECT_STATUS(sf_scheduler_set_step_index(s, 3), SF_ERR_INVALID_ARG);
        size_t idx;
        EXPECT_STATUS(sf_scheduler_index_for_timestep(s, 123.5, &idx), SF_ERR_INVALID_ARG);
        EXPECT_STATUS(sf_scheduler_add_noise(s, a, b, 8, 5.0, o), SF_ERR_INVALID_ARG);
        sf_scheduler_destroy(s);
    }
    s = make("{\"_class_name\": \"PNDMScheduler\", " SD15 "}");
    if (s) {
        EXPECT_OK(sf_scheduler_set_timesteps(s, 2));
        EXPECT_STATUS(sf_scheduler_step_ex(s, a, b, 8, NULL, o, o), SF_ERR_UNSUPPORTED);
        EXPECT_STATUS(sf_scheduler_add_noise(s, a, b, 8, 1000.0, o), SF_ERR_INVALID_ARG);
        EXPECT_STATUS(sf_scheduler_add_noise(s, a, b, 8, 2.5, o), SF_ERR_INVALID_ARG);
        EXPECT_OK(sf_scheduler_add_noise(s, a, b, 8, 999.0, o));
        sf_scheduler_destroy(s);
    }
    /* NaN inputs propagate without failing */
    s = make("{\"_class_name\": \"DPMSolverMultistepScheduler\", " SD15 "}");
    if (s) {
        float nanv[8];
        for (int i = 0; i < 8; i++)
            nanv[i] = i == 2 ? NAN : 0.5f;
        EXPECT_OK(sf_scheduler_set_timesteps(s, 3));
        EXPECT_OK(sf_scheduler_step(s, nanv, b, 8, NULL, o));
        EXPECT(isnan(o[2]) && !isnan(o[1]));
        sf_scheduler_destroy(s);
    }
}

int main(void) {
    test_timesteps();
    test_closed_form();
    test_in_place();
    test_config();
    test_errors();
    return sf_test_finish("test_scheduler");
}
