/*
 * sf_scheduler.c — diffusers' noise schedulers (PNDM, DDIM, Euler, Euler ancestral,
 * DPM-Solver multistep, LCM, LMS) with the timesteps, scalings and trajectories of diffusers
 * v0.25.1.
 *
 * Numerics follow the reference closely so that trajectories agree to float32 rounding:
 * - betas come from torch.linspace in float32, computed as torch's CPU kernel of that release
 *   does (AVX2 blocks of 8 values from fused multiply-adds); squaredcos_cap_v2 in float64;
 * - alphas_cumprod is the cumulative product accumulated in float64 and rounded per element
 *   (torch's CPU cumprod), the sigmas sqrt((1 - a) / a) in float32;
 * - timestep grids, np.interp and the Karras ramp are float64 as numpy computes them, with
 *   numpy's own formulas (linspace, arange's fill, round half to even);
 * - every per-step coefficient is a float32 scalar computed with the operations, and in the
 *   order, of diffusers' 0-d tensor arithmetic, and every elementwise update is a sequence of
 *   separately rounded float32 operations (the build does not contract them into FMAs).
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_internal.h"
#include "sf_json.h"

#define SCHED_MAX_TRAIN ((int64_t)1 << 20)
#define SCHED_PI 3.141592653589793 /* math.pi */
#define SCHED_HIST 4 /* PNDM keeps 4 outputs, LMS 4 derivatives, DPM-Solver up to 3 */

struct sf_scheduler {
    sf_scheduler_config cfg;
    double *trained;               /* copy of cfg.trained_betas */
    size_t T;                      /* num_train_timesteps */
    float *betas, *alphas_cumprod; /* T each */
    float *train_sigmas;           /* sqrt((1 - ac) / ac), T, increasing with t */
    float *log_sigmas;             /* np.log(train_sigmas), float32 */
    float final_alpha_cumprod;
    /* inference schedule */
    size_t n_steps;   /* num_inference_steps given to set_timesteps (0: none yet) */
    size_t n_ts;      /* number of timesteps */
    size_t n_prk;     /* PNDM: Runge-Kutta timesteps at the start */
    double *timesteps;
    float *sigmas;    /* n_ts + 1 for the sigma-based schedulers */
    double init_noise_sigma;
    /* trajectory */
    size_t step_index, counter;
    size_t n;                 /* sample size of the state buffers (0: none) */
    float *buf[SCHED_HIST + 2];
    float *hist[SCHED_HIST];  /* oldest first */
    size_t n_hist;
    float *cur_mo, *cur_sample; /* PNDM */
    int has_cur_sample;
    size_t lower_order_nums;    /* DPM-Solver */
};

/* ------------------------------------------------------------------------------------------ */
/* Names                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static const char *const type_names[] = {
    "PNDMScheduler",  "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "LCMScheduler", "LMSDiscreteScheduler",
};
#define N_TYPES (sizeof type_names / sizeof type_names[0])

sf_status sf_scheduler_type_from_name(const char *name, sf_scheduler_type *out) {
    if (!name || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_type_from_name: %s is NULL",
                        name ? "out" : "name");
    for (size_t i = 0; i < N_TYPES; i++) {
        if (strcmp(name, type_names[i]) == 0) {
            *out = (sf_scheduler_type)i;
            return SF_OK;
        }
    }
    char q[96];
    return sf_error(SF_ERR_UNSUPPORTED,
                    "scheduler class \"%s\" is not supported (supported: PNDMScheduler, "
                    "DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, "
                    "DPMSolverMultistepScheduler, LCMScheduler, LMSDiscreteScheduler)",
                    sf_json_quote(name, strlen(name), q, sizeof q));
}

const char *sf_scheduler_type_name(sf_scheduler_type type) {
    return (unsigned)type < N_TYPES ? type_names[type] : "unknown";
}

static int is_sigma_based(sf_scheduler_type t) {
    return t == SF_SCHEDULER_EULER || t == SF_SCHEDULER_EULER_ANCESTRAL ||
           t == SF_SCHEDULER_LMS || t == SF_SCHEDULER_DPMSOLVER_MULTISTEP;
}

/* Schedulers that read alphas_cumprod at integer timesteps. */
static int is_ddpm_style(sf_scheduler_type t) {
    return t == SF_SCHEDULER_PNDM || t == SF_SCHEDULER_DDIM || t == SF_SCHEDULER_LCM;
}

/* ------------------------------------------------------------------------------------------ */
/* Configuration                                                                              */
/* ------------------------------------------------------------------------------------------ */

void sf_scheduler_config_default(sf_scheduler_type type, sf_scheduler_config *c) {
    if (!c)
        return;
    memset(c, 0, sizeof *c);
    c->type = type;
    c->num_train_timesteps = 1000;
    c->beta_start = 0.0001;
    c->beta_end = 0.02;
    c->beta_schedule = SF_BETAS_LINEAR;
    c->prediction_type = SF_PREDICT_EPSILON;
    c->timestep_spacing = SF_SPACING_LEADING;
    c->clip_sample_range = 1.0;
    c->sigma_min = NAN;
    c->sigma_max = NAN;
    c->final_sigmas_type = SF_FINAL_SIGMAS_DEFAULT;
    c->solver_order = 2;
    c->algorithm_type = SF_DPM_PLUSPLUS;
    c->solver_type = SF_DPM_MIDPOINT;
    c->lower_order_final = 1;
    c->lambda_min_clipped = -INFINITY;
    c->original_inference_steps = 50;
    c->timestep_scaling = 10.0;
    switch (type) {
    case SF_SCHEDULER_DDIM:
        c->clip_sample = 1;
        c->set_alpha_to_one = 1;
        break;
    case SF_SCHEDULER_EULER:
    case SF_SCHEDULER_EULER_ANCESTRAL:
    case SF_SCHEDULER_LMS:
    case SF_SCHEDULER_DPMSOLVER_MULTISTEP:
        c->timestep_spacing = SF_SPACING_LINSPACE;
        break;
    case SF_SCHEDULER_LCM:
        c->beta_start = 0.00085;
        c->beta_end = 0.012;
        c->beta_schedule = SF_BETAS_SCALED_LINEAR;
        c->set_alpha_to_one = 1;
        break;
    default:
        break;
    }
}

void sf_scheduler_config_release(sf_scheduler_config *cfg) {
    if (!cfg)
        return;
    if (cfg->owned_betas_) {
        if (cfg->trained_betas == cfg->owned_betas_)
            cfg->trained_betas = NULL;
        free(cfg->owned_betas_);
        cfg->owned_betas_ = NULL;
    }
}

/* Python's json module writes the non-standard tokens NaN, Infinity and -Infinity (diffusers'
 * DPM-Solver configs carry "lambda_min_clipped": -Infinity). Return a copy of the text with
 * those tokens outside strings quoted (so the strict parser reads them as strings), or NULL
 * with *changed = 0 if there are none. */
static sf_status quote_nonfinite(const char *text, size_t len, char **out, size_t *out_len) {
    static const char *const toks[] = {"-Infinity", "Infinity", "NaN"};
    *out = NULL;
    *out_len = 0;
    size_t extra = 0;
    for (int pass = 0; pass < 2; pass++) {
        char *dst = pass ? *out : NULL;
        size_t o = 0;
        int in_str = 0;
        for (size_t i = 0; i < len; i++) {
            char ch = text[i];
            if (in_str) {
                if (ch == '\\' && i + 1 < len) {
                    if (dst) {
                        dst[o] = ch;
                        dst[o + 1] = text[i + 1];
                    }
                    o += 2;
                    i++;
                    continue;
                }
                if (ch == '"')
                    in_str = 0;
            } else if (ch == '"') {
                in_str = 1;
            } else if (ch == '-' || ch == 'I' || ch == 'N') {
                int hit = -1;
                for (int k = 0; k < 3 && hit < 0; k++) {
                    size_t tl = strlen(toks[k]);
                    if (len - i >= tl && memcmp(text + i, toks[k], tl) == 0)
                        hit = k;
                }
                if (hit >= 0) {
                    size_t tl = strlen(toks[hit]);
                    if (dst) {
                        dst[o] = '"';
                        memcpy(dst + o + 1, toks[hit], tl);
                        dst[o + 1 + tl] = '"';
                    } else {
                        extra += 2;
                    }
                    o += tl + 2;
                    i += tl - 1;
                    continue;
                }
            }
            if (dst)
                dst[o] = ch;
            o++;
        }
        if (!pass) {
            if (extra == 0)
                return SF_OK;
            if (len > SIZE_MAX - extra - 1)
                return sf_error(SF_ERR_OOM, "scheduler config: text too large");
            *out = malloc(len + extra + 1);
            if (!*out)
                return sf_error(SF_ERR_OOM, "scheduler config: out of memory");
        } else {
            *out_len = o;
        }
    }
    return SF_OK;
}

static int present(const sf_json *v) {
    return v && sf_json_type(v) != SF_JSON_NULL;
}

/* A number, or one of the strings "Infinity", "-Infinity", "NaN". */
static sf_status json_num(const sf_json *v, double *out) {
    const char *s = sf_json_string(v, NULL);
    if (s) {
        if (strcmp(s, "Infinity") == 0)
            *out = INFINITY;
        else if (strcmp(s, "-Infinity") == 0)
            *out = -INFINITY;
        else if (strcmp(s, "NaN") == 0)
            *out = NAN;
        else
            return SF_ERR_FORMAT;
        return SF_OK;
    }
    return sf_json_number(v, out);
}

static sf_status get_num(const sf_json *obj, const char *key, int allow_inf, double *out) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    double x;
    if (json_num(v, &x) != SF_OK || isnan(x) || (!allow_inf && isinf(x)))
        return sf_error(SF_ERR_FORMAT, "scheduler config key '%s': expected a %snumber", key,
                        allow_inf ? "" : "finite ");
    *out = x;
    return SF_OK;
}

static sf_status get_i64(const sf_json *obj, const char *key, int64_t *out) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    if (sf_json_int64(v, out) != SF_OK)
        return sf_error(SF_ERR_FORMAT, "scheduler config key '%s': expected an integer", key);
    return SF_OK;
}

static sf_status get_bool(const sf_json *obj, const char *key, int *out) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    if (sf_json_bool(v, out) != SF_OK)
        return sf_error(SF_ERR_FORMAT, "scheduler config key '%s': expected true or false",
                        key);
    return SF_OK;
}

/* The key must be absent, null or false. */
static sf_status get_false(const sf_json *obj, const char *key) {
    int b = 0;
    sf_status st = get_bool(obj, key, &b);
    if (st != SF_OK)
        return st;
    if (b)
        return sf_error(SF_ERR_UNSUPPORTED, "scheduler config key '%s' = true is not supported",
                        key);
    return SF_OK;
}

typedef struct {
    const char *name;
    int value;
} name_value;

/* A string that must be one of `names` (n entries; the first `n_listed` are named in the
 * message as the supported values). */
static sf_status get_enum(const sf_json *obj, const char *key, const name_value *names, size_t n,
                          size_t n_listed, int *out) {
    const sf_json *v = sf_json_object_get(obj, key);
    if (!present(v))
        return SF_OK;
    size_t len;
    const char *s = sf_json_string(v, &len);
    if (!s)
        return sf_error(SF_ERR_FORMAT, "scheduler config key '%s': expected a string", key);
    for (size_t i = 0; i < n; i++) {
        if (strlen(names[i].name) == len && memcmp(s, names[i].name, len) == 0) {
            *out = names[i].value;
            return SF_OK;
        }
    }
    char q[96], list[256];
    size_t o = 0;
    list[0] = '\0';
    for (size_t i = 0; i < n_listed && o < sizeof list; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s\"%s\"", i ? ", " : "",
                              names[i].name);
    return sf_error(SF_ERR_UNSUPPORTED, "scheduler config key '%s' = \"%s\" is not supported "
                    "(supported: %s)", key, sf_json_quote(s, len, q, sizeof q), list);
}

#define M(t) (1u << (t))
#define M_ALL 0x7fu

static sf_status parse_config(const sf_json *doc, sf_scheduler_config *c) {
    sf_status st = SF_OK;
    unsigned m = M(c->type);
    static const name_value schedules[] = {{"linear", SF_BETAS_LINEAR},
                                           {"scaled_linear", SF_BETAS_SCALED_LINEAR},
                                           {"squaredcos_cap_v2", SF_BETAS_SQUAREDCOS_CAP_V2}};
    static const name_value predictions[] = {{"epsilon", SF_PREDICT_EPSILON},
                                             {"v_prediction", SF_PREDICT_V},
                                             {"sample", SF_PREDICT_SAMPLE},
                                             {"original_sample", SF_PREDICT_SAMPLE}};
    static const name_value spacings[] = {{"leading", SF_SPACING_LEADING},
                                          {"trailing", SF_SPACING_TRAILING},
                                          {"linspace", SF_SPACING_LINSPACE}};
    static const name_value finals[] = {{"zero", SF_FINAL_SIGMAS_ZERO},
                                        {"sigma_min", SF_FINAL_SIGMAS_SIGMA_MIN}};
    static const name_value algorithms[] = {{"dpmsolver++", SF_DPM_PLUSPLUS},
                                            {"dpmsolver", SF_DPM_DPMSOLVER},
                                            {"sde-dpmsolver++", SF_DPM_SDE_PLUSPLUS},
                                            {"deis", SF_DPM_PLUSPLUS}};
    static const name_value solvers[] = {{"midpoint", SF_DPM_MIDPOINT},
                                         {"heun", SF_DPM_HEUN},
                                         {"logrho", SF_DPM_MIDPOINT},
                                         {"bh1", SF_DPM_MIDPOINT},
                                         {"bh2", SF_DPM_MIDPOINT}};
    static const name_value linear_only[] = {{"linear", 0}};
    static const name_value discrete_only[] = {{"discrete", 0}};
    int e;

    SF_CHECK(get_i64(doc, "num_train_timesteps", &c->num_train_timesteps));
    SF_CHECK(get_num(doc, "beta_start", 0, &c->beta_start));
    SF_CHECK(get_num(doc, "beta_end", 0, &c->beta_end));
    e = (int)c->beta_schedule;
    SF_CHECK(get_enum(doc, "beta_schedule", schedules, 3, 3, &e));
    c->beta_schedule = (sf_beta_schedule)e;
    e = (int)c->prediction_type;
    /* "original_sample" is an alias that only the Euler scheduler takes */
    SF_CHECK(get_enum(doc, "prediction_type", predictions, c->type == SF_SCHEDULER_EULER ? 4 : 3,
                      3, &e));
    c->prediction_type = (sf_prediction_type)e;
    e = (int)c->timestep_spacing;
    SF_CHECK(get_enum(doc, "timestep_spacing", spacings, 3, 3, &e));
    c->timestep_spacing = (sf_timestep_spacing)e;
    SF_CHECK(get_i64(doc, "steps_offset", &c->steps_offset));

    const sf_json *tb = sf_json_object_get(doc, "trained_betas");
    if (present(tb)) {
        if (sf_json_type(tb) != SF_JSON_ARRAY || sf_json_array_size(tb) == 0)
            SF_FAIL(SF_ERR_FORMAT, "scheduler config key 'trained_betas': expected null or a "
                    "list of numbers");
        size_t nb = sf_json_array_size(tb);
        if (nb > (size_t)SCHED_MAX_TRAIN)
            SF_FAIL(SF_ERR_FORMAT, "scheduler config key 'trained_betas': %zu values, more than "
                    "%lld", nb, (long long)SCHED_MAX_TRAIN);
        double *b = malloc(nb * sizeof *b);
        if (!b)
            SF_FAIL(SF_ERR_OOM, "scheduler config: out of memory for trained_betas");
        for (size_t i = 0; i < nb; i++) {
            if (json_num(sf_json_array_at(tb, i), &b[i]) != SF_OK || !isfinite(b[i])) {
                free(b);
                SF_FAIL(SF_ERR_FORMAT, "scheduler config key 'trained_betas'[%zu]: expected a "
                        "finite number", i);
            }
        }
        c->owned_betas_ = b;
        c->trained_betas = b;
        /* diffusers takes the length of the list as given; the schedule must cover it */
        if (!sf_json_object_get(doc, "num_train_timesteps"))
            c->num_train_timesteps = (int64_t)nb;
        else if ((int64_t)nb != c->num_train_timesteps)
            SF_FAIL(SF_ERR_FORMAT, "scheduler config: 'trained_betas' has %zu values but "
                    "num_train_timesteps is %lld", nb, (long long)c->num_train_timesteps);
    }

    if (m & (M(SF_SCHEDULER_DDIM) | M(SF_SCHEDULER_EULER) | M(SF_SCHEDULER_EULER_ANCESTRAL) |
             M(SF_SCHEDULER_LCM) | M(SF_SCHEDULER_DPMSOLVER_MULTISTEP)))
        SF_CHECK(get_bool(doc, "rescale_betas_zero_snr", &c->rescale_betas_zero_snr));
    if (m & (M(SF_SCHEDULER_PNDM) | M(SF_SCHEDULER_DDIM) | M(SF_SCHEDULER_LCM)))
        SF_CHECK(get_bool(doc, "set_alpha_to_one", &c->set_alpha_to_one));
    if (m & (M(SF_SCHEDULER_DDIM) | M(SF_SCHEDULER_LCM))) {
        SF_CHECK(get_bool(doc, "clip_sample", &c->clip_sample));
        SF_CHECK(get_num(doc, "clip_sample_range", 0, &c->clip_sample_range));
    }
    if (m & (M(SF_SCHEDULER_DDIM) | M(SF_SCHEDULER_LCM) | M(SF_SCHEDULER_DPMSOLVER_MULTISTEP)))
        SF_CHECK(get_false(doc, "thresholding"));
    if (m & M(SF_SCHEDULER_PNDM))
        SF_CHECK(get_bool(doc, "skip_prk_steps", &c->skip_prk_steps));
    if (m & (M(SF_SCHEDULER_EULER) | M(SF_SCHEDULER_DPMSOLVER_MULTISTEP) | M(SF_SCHEDULER_LMS))) {
        SF_CHECK(get_bool(doc, "use_karras_sigmas", &c->use_karras_sigmas));
        SF_CHECK(get_false(doc, "use_exponential_sigmas"));
        SF_CHECK(get_false(doc, "use_beta_sigmas"));
    }
    if (m & M(SF_SCHEDULER_EULER)) {
        SF_CHECK(get_num(doc, "sigma_min", 0, &c->sigma_min));
        SF_CHECK(get_num(doc, "sigma_max", 0, &c->sigma_max));
        e = 0;
        SF_CHECK(get_enum(doc, "interpolation_type", linear_only, 1, 1, &e));
        SF_CHECK(get_enum(doc, "timestep_type", discrete_only, 1, 1, &e));
    }
    if (m & (M(SF_SCHEDULER_EULER) | M(SF_SCHEDULER_DPMSOLVER_MULTISTEP))) {
        e = (int)c->final_sigmas_type;
        SF_CHECK(get_enum(doc, "final_sigmas_type", finals, 2, 2, &e));
        c->final_sigmas_type = (sf_final_sigmas_type)e;
    }
    if (m & M(SF_SCHEDULER_DPMSOLVER_MULTISTEP)) {
        int64_t order = c->solver_order;
        SF_CHECK(get_i64(doc, "solver_order", &order));
        if (order < 1 || order > 3)
            SF_FAIL(SF_ERR_UNSUPPORTED, "scheduler config key 'solver_order' = %lld is not "
                    "supported (1, 2 or 3)", (long long)order);
        c->solver_order = (int)order;
        e = (int)c->algorithm_type;
        SF_CHECK(get_enum(doc, "algorithm_type", algorithms, 4, 3, &e));
        c->algorithm_type = (sf_dpm_algorithm)e;
        e = (int)c->solver_type;
        SF_CHECK(get_enum(doc, "solver_type", solvers, 5, 2, &e));
        c->solver_type = (sf_dpm_solver_type)e;
        SF_CHECK(get_bool(doc, "lower_order_final", &c->lower_order_final));
        SF_CHECK(get_bool(doc, "euler_at_final", &c->euler_at_final));
        SF_CHECK(get_num(doc, "lambda_min_clipped", 1, &c->lambda_min_clipped));
        SF_CHECK(get_false(doc, "use_lu_lambdas"));
        SF_CHECK(get_false(doc, "use_flow_sigmas"));
        SF_CHECK(get_false(doc, "use_dynamic_shifting"));
        if (present(sf_json_object_get(doc, "variance_type")))
            SF_FAIL(SF_ERR_UNSUPPORTED, "scheduler config key 'variance_type' is not supported "
                    "(must be null)");
    }
    if (m & M(SF_SCHEDULER_LCM)) {
        SF_CHECK(get_i64(doc, "original_inference_steps", &c->original_inference_steps));
        SF_CHECK(get_num(doc, "timestep_scaling", 0, &c->timestep_scaling));
    }
fail:
    return st;
}

sf_status sf_scheduler_config_from_json(const char *json, size_t len, sf_scheduler_config *out) {
    return sf_scheduler_config_from_json_as(json, len, NULL, out);
}

sf_status sf_scheduler_config_from_json_as(const char *json, size_t len, const char *class_name,
                                           sf_scheduler_config *out) {
    if (!json || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_config_from_json: %s is NULL",
                        json ? "out" : "json");
    char *quoted = NULL;
    size_t qlen = 0;
    sf_json *doc = NULL;
    sf_scheduler_config c;
    sf_scheduler_config_default(SF_SCHEDULER_PNDM, &c);
    sf_status st = quote_nonfinite(json, len, &quoted, &qlen);
    if (st != SF_OK)
        return st;
    st = sf_json_parse(quoted ? quoted : json, quoted ? qlen : len, &doc);
    if (st != SF_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", sf_last_error());
        st = sf_error(st, "scheduler config: %s", msg);
        goto fail;
    }
    if (sf_json_type(doc) != SF_JSON_OBJECT)
        SF_FAIL(SF_ERR_FORMAT, "scheduler config: expected a JSON object, got %s",
                sf_json_kind_name(sf_json_type(doc)));
    const char *name = class_name;
    if (!name) {
        const sf_json *cls = sf_json_object_get(doc, "_class_name");
        size_t cls_len;
        name = sf_json_string(cls, &cls_len);
        if (!name)
            SF_FAIL(SF_ERR_FORMAT, "scheduler config: missing the string '_class_name' that "
                    "names the scheduler class");
        if (strlen(name) != cls_len)
            SF_FAIL(SF_ERR_UNSUPPORTED, "scheduler config: '_class_name' contains a NUL "
                    "character");
    }
    sf_scheduler_type type;
    SF_CHECK(sf_scheduler_type_from_name(name, &type));
    sf_scheduler_config_default(type, &c);
    SF_CHECK(parse_config(doc, &c));
    *out = c;
    sf_json_free(doc);
    free(quoted);
    return SF_OK;
fail:
    sf_scheduler_config_release(&c);
    sf_json_free(doc);
    free(quoted);
    return st;
}

static sf_status validate_config(const sf_scheduler_config *c) {
    if ((unsigned)c->type >= N_TYPES)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_create: unknown scheduler type %d",
                        (int)c->type);
    const char *cls = type_names[c->type];
    if (c->num_train_timesteps < 2 || c->num_train_timesteps > SCHED_MAX_TRAIN)
        return sf_error(SF_ERR_INVALID_ARG, "%s: num_train_timesteps = %lld out of range [2, %lld]",
                        cls, (long long)c->num_train_timesteps, (long long)SCHED_MAX_TRAIN);
    if ((unsigned)c->beta_schedule > SF_BETAS_SQUAREDCOS_CAP_V2)
        return sf_error(SF_ERR_INVALID_ARG, "%s: unknown beta schedule %d", cls,
                        (int)c->beta_schedule);
    if (!c->trained_betas && c->beta_schedule != SF_BETAS_SQUAREDCOS_CAP_V2) {
        if (!(c->beta_start >= 0 && c->beta_start < 1) || !(c->beta_end >= 0 && c->beta_end < 1))
            return sf_error(SF_ERR_INVALID_ARG, "%s: beta_start = %g and beta_end = %g must be in "
                            "[0, 1)", cls, c->beta_start, c->beta_end);
    }
    if (c->trained_betas) {
        for (int64_t i = 0; i < c->num_train_timesteps; i++)
            if (!(c->trained_betas[i] >= 0 && c->trained_betas[i] < 1))
                return sf_error(SF_ERR_INVALID_ARG, "%s: trained_betas[%lld] = %g is not in "
                                "[0, 1)", cls, (long long)i, c->trained_betas[i]);
    }
    if ((unsigned)c->prediction_type > SF_PREDICT_SAMPLE)
        return sf_error(SF_ERR_INVALID_ARG, "%s: unknown prediction type %d", cls,
                        (int)c->prediction_type);
    if (c->prediction_type == SF_PREDICT_SAMPLE &&
        (c->type == SF_SCHEDULER_PNDM || c->type == SF_SCHEDULER_EULER_ANCESTRAL))
        return sf_error(SF_ERR_UNSUPPORTED, "%s: prediction_type \"sample\" is not supported "
                        "(only \"epsilon\" and \"v_prediction\")", cls);
    if ((unsigned)c->timestep_spacing > SF_SPACING_LINSPACE)
        return sf_error(SF_ERR_INVALID_ARG, "%s: unknown timestep spacing %d", cls,
                        (int)c->timestep_spacing);
    if (c->steps_offset < 0 || c->steps_offset >= c->num_train_timesteps)
        return sf_error(SF_ERR_INVALID_ARG, "%s: steps_offset = %lld out of range [0, %lld)", cls,
                        (long long)c->steps_offset, (long long)c->num_train_timesteps);
    if (!(c->clip_sample_range > 0) || !isfinite(c->clip_sample_range))
        return sf_error(SF_ERR_INVALID_ARG, "%s: clip_sample_range = %g must be positive", cls,
                        c->clip_sample_range);
    if (c->type == SF_SCHEDULER_EULER) {
        if (!isnan(c->sigma_min) && !(c->sigma_min > 0 && isfinite(c->sigma_min)))
            return sf_error(SF_ERR_INVALID_ARG, "%s: sigma_min = %g must be positive", cls,
                            c->sigma_min);
        if (!isnan(c->sigma_max) && !(c->sigma_max > 0 && isfinite(c->sigma_max)))
            return sf_error(SF_ERR_INVALID_ARG, "%s: sigma_max = %g must be positive", cls,
                            c->sigma_max);
    }
    if ((unsigned)c->final_sigmas_type > SF_FINAL_SIGMAS_SIGMA_MIN)
        return sf_error(SF_ERR_INVALID_ARG, "%s: unknown final_sigmas_type %d", cls,
                        (int)c->final_sigmas_type);
    if (c->type == SF_SCHEDULER_DPMSOLVER_MULTISTEP) {
        if (c->solver_order < 1 || c->solver_order > 3)
            return sf_error(SF_ERR_UNSUPPORTED, "%s: solver_order = %d is not supported (1, 2 "
                            "or 3)", cls, c->solver_order);
        if ((unsigned)c->algorithm_type > SF_DPM_SDE_PLUSPLUS ||
            (unsigned)c->solver_type > SF_DPM_HEUN)
            return sf_error(SF_ERR_INVALID_ARG, "%s: unknown algorithm or solver type", cls);
        if (c->algorithm_type == SF_DPM_DPMSOLVER && c->final_sigmas_type == SF_FINAL_SIGMAS_ZERO)
            return sf_error(SF_ERR_INVALID_ARG, "%s: final_sigmas_type \"zero\" is not supported "
                            "with algorithm_type \"dpmsolver\" (use \"sigma_min\")", cls);
        if (isnan(c->lambda_min_clipped))
            return sf_error(SF_ERR_INVALID_ARG, "%s: lambda_min_clipped is NaN", cls);
    }
    if (c->type == SF_SCHEDULER_LCM) {
        if (c->original_inference_steps < 1 ||
            c->original_inference_steps > c->num_train_timesteps)
            return sf_error(SF_ERR_INVALID_ARG, "%s: original_inference_steps = %lld out of range "
                            "[1, num_train_timesteps = %lld]", cls,
                            (long long)c->original_inference_steps,
                            (long long)c->num_train_timesteps);
        if (!isfinite(c->timestep_scaling))
            return sf_error(SF_ERR_INVALID_ARG, "%s: timestep_scaling must be finite", cls);
    }
    return SF_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Training schedule                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* torch.linspace(a, b, N, dtype=float32) as the CPU kernel of torch 1.13 computes it (the
 * release the reference was made with): a float32 step, values start + step * i in the first
 * half and end - step * (N - 1 - i) in the second, evaluated with fused multiply-adds, in
 * vector blocks of 8 (two blocks at a time) whose lanes add k * step to the block's first
 * value; the tail is scalar. */
static void torch_linspace_f32(double a, double b, size_t N, float *out) {
    const float start = (float)a, end = (float)b;
    if (N == 1) {
        out[0] = start;
        return;
    }
    const float step = (end - start) / (float)(N - 1);
    const size_t half = N / 2, V = 8;
    size_t i = 0;
    if (N >= 2 * V) {
        for (; i <= N - 2 * V; i += V) {
            float base = i < half ? fmaf(step, (float)i, start)
                                  : fmaf(-step, (float)(N - i - 1), end);
            for (size_t k = 0; k < V; k++)
                out[i + k] = fmaf((float)k, step, base);
        }
    }
    for (; i < N; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(N - i - 1), end);
}

/* The cosine schedule of diffusers' betas_for_alpha_bar (float64, max_beta 0.999). */
static double alpha_bar_cos(double t) {
    double c = cos((t + 0.008) / 1.008 * SCHED_PI / 2);
    return c * c;
}

/* np.log on a float32 array as numpy's SIMD loop computes it (AVX2/AVX-512 builds; the
 * reference's log_sigmas): x = m 2^e with m in (sqrt(1/2), sqrt(2)], log(1 + (m - 1)) from a
 * rational minimax approximation evaluated with fused multiply-adds, plus e log(2). Up to ~4
 * ulp from the correctly rounded value, which moves Karras timesteps by an ulp; matching it
 * keeps them equal. Non-normal inputs take logf. */
static float numpy_logf(float x) {
    if (!(x >= FLT_MIN) || isinf(x))
        return logf(x);
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float e = (float)((int32_t)(bits >> 23) - 126);
    uint32_t mbits = (bits & 0x7fffffu) | (126u << 23);
    float m;
    memcpy(&m, &mbits, sizeof m);
    if (m <= 0.707106781186547524400844362104849039f) {
        m = m + m;
        e = e - 1.0f;
    }
    m = m - 1.0f;
    float num = fmaf(2.589979117907922693523e-02f, m, 3.808837741388407920751e-01f);
    num = fmaf(num, m, 1.480000633576506585156e+00f);
    num = fmaf(num, m, 2.112677543073053063722e+00f);
    num = fmaf(num, m, 9.999999999999998702752e-01f);
    num = fmaf(num, m, 0.0f);
    float den = fmaf(5.875095403124574342950e-03f, m, 1.546476374983906719538e-01f);
    den = fmaf(den, m, 9.864942958519418960339e-01f);
    den = fmaf(den, m, 2.453006071784736363091e+00f);
    den = fmaf(den, m, 2.612677543073109236779e+00f);
    den = fmaf(den, m, 1.0f);
    return fmaf(e, 0.693147180559945309417232121458176568f, num / den);
}

/* diffusers' rescale_zero_terminal_snr on float32 betas (in place; T >= 2). */
static void rescale_zero_snr(float *betas, size_t T, float *tmp) {
    if (T < 2)
        return;
    double acc = 1.0;
    for (size_t i = 0; i < T; i++) {
        acc *= (double)(1.0f - betas[i]);
        tmp[i] = sqrtf((float)acc);
    }
    const float a0 = tmp[0], aT = tmp[T - 1];
    const float scale = a0 / (a0 - aT);
    for (size_t i = 0; i < T; i++) {
        float v = (tmp[i] - aT) * scale;
        tmp[i] = v * v; /* alphas_bar */
    }
    for (size_t i = T - 1; i > 0; i--)
        betas[i] = 1.0f - tmp[i] / tmp[i - 1];
    betas[0] = 1.0f - tmp[0];
}

static sf_status training_schedule(sf_scheduler *s) {
    const sf_scheduler_config *c = &s->cfg;
    const size_t T = s->T;
    if (c->trained_betas) {
        for (size_t i = 0; i < T; i++)
            s->betas[i] = (float)c->trained_betas[i];
    } else if (c->beta_schedule == SF_BETAS_LINEAR) {
        torch_linspace_f32(c->beta_start, c->beta_end, T, s->betas);
    } else if (c->beta_schedule == SF_BETAS_SCALED_LINEAR) {
        torch_linspace_f32(sqrt(c->beta_start), sqrt(c->beta_end), T, s->betas);
        for (size_t i = 0; i < T; i++)
            s->betas[i] = s->betas[i] * s->betas[i];
    } else {
        for (size_t i = 0; i < T; i++) {
            double t1 = (double)i / (double)T, t2 = (double)(i + 1) / (double)T;
            double beta = 1 - alpha_bar_cos(t2) / alpha_bar_cos(t1);
            s->betas[i] = (float)(beta < 0.999 ? beta : 0.999);
        }
    }
    if (c->rescale_betas_zero_snr)
        rescale_zero_snr(s->betas, T, s->train_sigmas);
    double acc = 1.0;
    for (size_t i = 0; i < T; i++) {
        acc *= (double)(1.0f - s->betas[i]);
        s->alphas_cumprod[i] = (float)acc;
    }
    /* with a zero terminal SNR the sigma-based schedulers move the last alpha off zero */
    if (c->rescale_betas_zero_snr &&
        (c->type == SF_SCHEDULER_EULER || c->type == SF_SCHEDULER_EULER_ANCESTRAL ||
         c->type == SF_SCHEDULER_DPMSOLVER_MULTISTEP))
        s->alphas_cumprod[T - 1] = 0x1p-24f;
    for (size_t i = 0; i < T; i++) {
        float a = s->alphas_cumprod[i];
        s->train_sigmas[i] = sqrtf((1.0f - a) / a);
        s->log_sigmas[i] = numpy_logf(s->train_sigmas[i]);
    }
    s->final_alpha_cumprod = c->set_alpha_to_one ? 1.0f : s->alphas_cumprod[0];
    return SF_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* numpy's grids                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* i-th value of np.linspace(start, stop, num, endpoint) (float64). */
static double np_linspace(double start, double stop, size_t num, size_t i, int endpoint) {
    size_t div = endpoint ? num - 1 : num;
    double delta = stop - start;
    if (endpoint && num > 1 && i == num - 1)
        return stop;
    if (div == 0)
        return (double)i * delta + start;
    double step = delta / (double)div;
    if (step == 0)
        return (double)i / (double)div * delta + start;
    return (double)i * step + start;
}

/* np.arange(start, stop, step) for a float step: its length and i-th value (numpy stores start
 * and start + step, then fills start + i * ((start + step) - start)). */
static size_t np_arange_len(double start, double stop, double step) {
    double len = ceil((stop - start) / step);
    if (!(len > 0))
        return 0;
    return len > 1e15 ? (size_t)1e15 : (size_t)len;
}

static double np_arange_at(double start, double step, size_t i) {
    double second = start + step;
    if (i == 0)
        return start;
    if (i == 1)
        return second;
    return start + (double)i * (second - start);
}

/* np.interp(x, arange(T), fp) with fp float32. */
static double np_interp_grid(double x, const float *fp, size_t T) {
    if (isnan(x))
        return x;
    if (x < 0)
        return fp[0];
    if (x > (double)(T - 1))
        return fp[T - 1];
    size_t j = (size_t)floor(x);
    if (j >= T - 1)
        return fp[T - 1];
    if ((double)j == x)
        return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - (double)j) + (double)fp[j];
}

/* Karras et al. sigmas (rho 7) from sigma_max down to sigma_min, float64. */
static void karras_sigmas(double sigma_min, double sigma_max, size_t n, double *out) {
    const double rho = 7.0;
    const double min_inv = pow(sigma_min, 1.0 / rho), max_inv = pow(sigma_max, 1.0 / rho);
    for (size_t i = 0; i < n; i++) {
        double ramp = np_linspace(0.0, 1.0, n, i, 1);
        out[i] = pow(max_inv + ramp * (min_inv - max_inv), rho);
    }
}

/* diffusers' _sigma_to_t: the fractional timestep of a sigma by interpolating log sigmas.
 * With the numpy of the reference (1.24, value-based casting) the distances and the weight are
 * computed in float32 and only the final blend in float64. */
static double sigma_to_t(const sf_scheduler *s, double sigma) {
    const size_t T = s->T;
    double clamped = (sigma > 1e-10 || isnan(sigma)) ? sigma : 1e-10;
    float ls = (float)log(clamped);
    size_t low = 0;
    for (size_t i = 0; i < T; i++)
        if (ls - s->log_sigmas[i] >= 0.0f)
            low = i;
    if (low > T - 2)
        low = T - 2;
    float lo = s->log_sigmas[low], hi = s->log_sigmas[low + 1];
    float w = (lo - ls) / (lo - hi);
    w = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w);
    return (double)(1.0f - w) * (double)low + (double)w * (double)(low + 1);
}

/* ------------------------------------------------------------------------------------------ */
/* Creation                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static void free_state(sf_scheduler *s) {
    for (size_t i = 0; i < SCHED_HIST + 2; i++) {
        sf_aligned_free(s->buf[i]);
        s->buf[i] = NULL;
    }
    memset(s->hist, 0, sizeof s->hist);
    s->cur_mo = s->cur_sample = NULL;
    s->n = 0;
}

void sf_scheduler_destroy(sf_scheduler *s) {
    if (!s)
        return;
    free_state(s);
    free(s->trained);
    free(s->betas);
    free(s->alphas_cumprod);
    free(s->train_sigmas);
    free(s->log_sigmas);
    free(s->timesteps);
    free(s->sigmas);
    free(s);
}

sf_status sf_scheduler_create(const sf_scheduler_config *cfg, sf_scheduler **out) {
    if (!cfg || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_create: %s is NULL",
                        cfg ? "out" : "cfg");
    *out = NULL;
    sf_status st = validate_config(cfg);
    if (st != SF_OK)
        return st;
    sf_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return sf_error(SF_ERR_OOM, "sf_scheduler_create: out of memory");
    s->cfg = *cfg;
    s->cfg.owned_betas_ = NULL;
    s->T = (size_t)cfg->num_train_timesteps;
    const size_t T = s->T;
    if (cfg->trained_betas) {
        s->trained = malloc(T * sizeof *s->trained);
        if (!s->trained)
            SF_FAIL(SF_ERR_OOM, "sf_scheduler_create: out of memory");
        memcpy(s->trained, cfg->trained_betas, T * sizeof *s->trained);
        s->cfg.trained_betas = s->trained;
    }
    s->betas = malloc(T * sizeof(float));
    s->alphas_cumprod = malloc(T * sizeof(float));
    s->train_sigmas = malloc(T * sizeof(float));
    s->log_sigmas = malloc(T * sizeof(float));
    if (!s->betas || !s->alphas_cumprod || !s->train_sigmas || !s->log_sigmas)
        SF_FAIL(SF_ERR_OOM, "sf_scheduler_create: out of memory for %zu timesteps", T);
    SF_CHECK(training_schedule(s));
    /* before set_timesteps: the largest training sigma (diffusers' initial sigmas) */
    if (is_sigma_based(cfg->type) && cfg->type != SF_SCHEDULER_DPMSOLVER_MULTISTEP) {
        float mx = s->train_sigmas[T - 1];
        s->init_noise_sigma = cfg->timestep_spacing == SF_SPACING_LEADING
                                  ? (double)sqrtf(mx * mx + 1.0f) : (double)mx;
    } else {
        s->init_noise_sigma = 1.0;
    }
    *out = s;
    return SF_OK;
fail:
    sf_scheduler_destroy(s);
    return st;
}

sf_status sf_scheduler_create_from_json(const char *json, size_t len, sf_scheduler **out) {
    if (!json || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_create_from_json: %s is NULL",
                        json ? "out" : "json");
    *out = NULL;
    sf_scheduler_config c;
    sf_status st = sf_scheduler_config_from_json(json, len, &c);
    if (st != SF_OK)
        return st;
    st = sf_scheduler_create(&c, out);
    sf_scheduler_config_release(&c);
    return st;
}

const sf_scheduler_config *sf_scheduler_get_config(const sf_scheduler *s) {
    return s ? &s->cfg : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Inference schedules                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* The n training timesteps of a spacing in increasing order, as PNDM/DDIM/Euler build them:
 * linspace: np.linspace(0, T - 1, n), rounded (round != 0) or cast to float32; leading:
 * i * (T // n) + steps_offset; trailing: round(np.arange(T, 0, -T / n)) - 1. */
static sf_status spacing_increasing(const sf_scheduler *s, size_t n, int round, double **out,
                                    size_t *count) {
    const size_t T = s->T;
    double *v = NULL;
    size_t m = n;
    if (s->cfg.timestep_spacing == SF_SPACING_TRAILING)
        m = np_arange_len((double)T, 0.0, -((double)T / (double)n));
    v = malloc((m ? m : 1) * sizeof *v);
    if (!v)
        return sf_error(SF_ERR_OOM, "set_timesteps: out of memory");
    switch (s->cfg.timestep_spacing) {
    case SF_SPACING_LINSPACE:
        for (size_t i = 0; i < n; i++) {
            double x = np_linspace(0.0, (double)(T - 1), n, i, 1);
            v[i] = round ? rint(x) : (double)(float)x;
        }
        break;
    case SF_SPACING_LEADING: {
        size_t ratio = T / n;
        for (size_t i = 0; i < n; i++)
            v[i] = (double)(i * ratio) + (double)s->cfg.steps_offset;
        break;
    }
    case SF_SPACING_TRAILING: {
        double step = -((double)T / (double)n);
        for (size_t i = 0; i < m; i++)
            v[m - 1 - i] = rint(np_arange_at((double)T, step, i)) - 1.0;
        break;
    }
    }
    *out = v;
    *count = m;
    return SF_OK;
}

static sf_status alloc_schedule(sf_scheduler *s, size_t n_ts, int with_sigmas) {
    free(s->timesteps);
    free(s->sigmas);
    s->timesteps = NULL;
    s->sigmas = NULL;
    s->n_ts = 0;
    s->timesteps = malloc((n_ts ? n_ts : 1) * sizeof *s->timesteps);
    if (with_sigmas)
        s->sigmas = malloc((n_ts + 1) * sizeof *s->sigmas);
    if (!s->timesteps || (with_sigmas && !s->sigmas))
        return sf_error(SF_ERR_OOM, "set_timesteps: out of memory");
    s->n_ts = n_ts;
    return SF_OK;
}

static sf_status schedule_pndm(sf_scheduler *s, size_t n) {
    double *asc = NULL;
    size_t m;
    sf_status st = spacing_increasing(s, n, 1, &asc, &m);
    if (st != SF_OK)
        return st;
    if (m == 0)
        SF_FAIL(SF_ERR_INVALID_ARG, "PNDMScheduler: no timesteps for %zu steps", n);
    if (s->cfg.skip_prk_steps) {
        /* concat(t[:-1], t[-2:-1], t[-1:]) reversed: the second timestep repeats */
        size_t cnt = m >= 2 ? m + 1 : 1;
        SF_CHECK(alloc_schedule(s, cnt, 0));
        size_t o = 0;
        double *tmp = s->timesteps;
        for (size_t i = 0; i + 1 < m; i++)
            tmp[o++] = asc[i];
        if (m >= 2)
            tmp[o++] = asc[m - 2];
        tmp[o++] = asc[m - 1];
        for (size_t i = 0; i < cnt / 2; i++) {
            double x = tmp[i];
            tmp[i] = tmp[cnt - 1 - i];
            tmp[cnt - 1 - i] = x;
        }
        s->n_prk = 0;
    } else {
        if (m < 4)
            SF_FAIL(SF_ERR_INVALID_ARG, "PNDMScheduler: Runge-Kutta warm-up steps (skip_prk_steps "
                    "false) need at least 4 inference steps, got %zu", n);
        /* prk = t[-4:].repeat(2) + tile([0, T // n // 2], 4); then prk[:-1].repeat(2)[1:-1]
         * reversed: 12 timesteps; plms = t[:-3] reversed */
        double half = (double)(s->T / n / 2), prk[8], rep[14];
        for (size_t i = 0; i < 8; i++)
            prk[i] = asc[m - 4 + i / 2] + ((i & 1) ? half : 0.0);
        for (size_t i = 0; i < 14; i++)
            rep[i] = prk[i / 2];
        size_t cnt = 12 + (m - 3);
        SF_CHECK(alloc_schedule(s, cnt, 0));
        for (size_t i = 0; i < 12; i++)
            s->timesteps[i] = rep[12 - i];
        for (size_t i = 0; i < m - 3; i++)
            s->timesteps[12 + i] = asc[m - 4 - i];
        s->n_prk = 12;
    }
    free(asc);
    return SF_OK;
fail:
    free(asc);
    return st;
}

static sf_status schedule_ddim(sf_scheduler *s, size_t n) {
    double *asc = NULL;
    size_t m;
    sf_status st = spacing_increasing(s, n, 1, &asc, &m);
    if (st != SF_OK)
        return st;
    if (m == 0)
        SF_FAIL(SF_ERR_INVALID_ARG, "DDIMScheduler: no timesteps for %zu steps", n);
    SF_CHECK(alloc_schedule(s, m, 0));
    for (size_t i = 0; i < m; i++)
        s->timesteps[i] = asc[m - 1 - i];
    free(asc);
    return SF_OK;
fail:
    free(asc);
    return st;
}

/* Euler, Euler ancestral and LMS: float32 timesteps, sigmas interpolated at them. */
static sf_status schedule_euler(sf_scheduler *s, size_t n) {
    const sf_scheduler_config *c = &s->cfg;
    double *asc = NULL, *sig = NULL;
    size_t m;
    sf_status st = spacing_increasing(s, n, 0, &asc, &m);
    if (st != SF_OK)
        return st;
    if (m == 0)
        SF_FAIL(SF_ERR_INVALID_ARG, "%s: no timesteps for %zu steps", type_names[c->type], n);
    SF_CHECK(alloc_schedule(s, m, 1));
    sig = malloc(m * sizeof *sig);
    if (!sig)
        SF_FAIL(SF_ERR_OOM, "set_timesteps: out of memory");
    for (size_t i = 0; i < m; i++) {
        s->timesteps[i] = (double)(float)asc[m - 1 - i];
        sig[i] = np_interp_grid(s->timesteps[i], s->train_sigmas, s->T);
    }
    if (c->use_karras_sigmas && c->type != SF_SCHEDULER_EULER_ANCESTRAL) {
        double smin = sig[m - 1], smax = sig[0];
        if (c->type == SF_SCHEDULER_EULER) {
            if (!isnan(c->sigma_min))
                smin = c->sigma_min;
            if (!isnan(c->sigma_max))
                smax = c->sigma_max;
        }
        /* diffusers ramps over num_inference_steps values */
        double *k = realloc(sig, n * sizeof *sig);
        if (!k)
            SF_FAIL(SF_ERR_OOM, "set_timesteps: out of memory");
        sig = k;
        karras_sigmas(smin, smax, n, sig);
        if (n != m)
            SF_CHECK(alloc_schedule(s, n, 1));
        m = n;
        for (size_t i = 0; i < m; i++)
            s->timesteps[i] = (double)(float)sigma_to_t(s, sig[i]);
    }
    for (size_t i = 0; i < m; i++)
        s->sigmas[i] = (float)sig[i];
    const int sigma_min_last =
        c->type == SF_SCHEDULER_EULER && c->final_sigmas_type == SF_FINAL_SIGMAS_SIGMA_MIN;
    s->sigmas[m] = sigma_min_last ? s->train_sigmas[0] : 0.0f;
    float mx = s->sigmas[0];
    for (size_t i = 0; i <= m; i++)
        if (s->sigmas[i] > mx || isnan(s->sigmas[i]))
            mx = s->sigmas[i];
    s->init_noise_sigma = (c->timestep_spacing == SF_SPACING_LEADING)
                              ? (double)sqrtf(mx * mx + 1.0f) : (double)mx;
    free(asc);
    free(sig);
    return SF_OK;
fail:
    free(asc);
    free(sig);
    return st;
}

static sf_status schedule_dpm(sf_scheduler *s, size_t n) {
    const sf_scheduler_config *c = &s->cfg;
    const size_t T = s->T;
    double *ts = NULL, *sig = NULL;
    sf_status st = SF_OK;
    /* lambda_min_clipped cuts the end of the schedule: torch.searchsorted over the increasing
     * flipped lambdas (float32) */
    size_t clipped = 0;
    {
        const float lmc = (float)c->lambda_min_clipped;
        size_t lo = 0, hi = T;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            size_t t = T - 1 - mid;
            float a = s->alphas_cumprod[t];
            float lam = logf(sqrtf(a)) - logf(sqrtf(1.0f - a));
            if (lam < lmc)
                lo = mid + 1;
            else
                hi = mid;
        }
        clipped = lo;
    }
    const size_t last = T - clipped;
    size_t m = n;
    if (c->timestep_spacing == SF_SPACING_TRAILING)
        m = np_arange_len((double)last, 0.0, -((double)T / (double)n));
    if (m == 0 || last == 0)
        return sf_error(SF_ERR_INVALID_ARG, "DPMSolverMultistepScheduler: no timesteps for %zu "
                        "steps (lambda_min_clipped = %g)", n, c->lambda_min_clipped);
    ts = malloc(m * sizeof *ts);
    if (!ts)
        SF_FAIL(SF_ERR_OOM, "set_timesteps: out of memory");
    switch (c->timestep_spacing) {
    case SF_SPACING_LINSPACE:
        /* np.linspace(0, last - 1, n + 1).round()[::-1][:-1] */
        for (size_t i = 0; i < n; i++)
            ts[i] = rint(np_linspace(0.0, (double)last - 1.0, n + 1, n - i, 1));
        break;
    case SF_SPACING_LEADING: {
        size_t ratio = last / (n + 1);
        for (size_t i = 0; i < n; i++)
            ts[i] = (double)((n - i) * ratio) + (double)c->steps_offset;
        break;
    }
    case SF_SPACING_TRAILING: {
        double step = -((double)T / (double)n);
        for (size_t i = 0; i < m; i++)
            ts[i] = rint(np_arange_at((double)last, step, i)) - 1.0;
        break;
    }
    }
    float final_sigma;
    if (c->use_karras_sigmas) {
        sig = malloc(n * sizeof *sig);
        if (!sig)
            SF_FAIL(SF_ERR_OOM, "set_timesteps: out of memory");
        karras_sigmas((double)s->train_sigmas[0], (double)s->train_sigmas[T - 1], n, sig);
        SF_CHECK(alloc_schedule(s, n, 1));
        for (size_t i = 0; i < n; i++) {
            s->timesteps[i] = rint(sigma_to_t(s, sig[i]));
            s->sigmas[i] = (float)sig[i];
        }
        m = n;
        final_sigma = s->sigmas[n - 1];
    } else {
        SF_CHECK(alloc_schedule(s, m, 1));
        for (size_t i = 0; i < m; i++) {
            s->timesteps[i] = ts[i];
            s->sigmas[i] = (float)np_interp_grid(ts[i], s->train_sigmas, T);
        }
        final_sigma = s->train_sigmas[0];
    }
    if (c->final_sigmas_type == SF_FINAL_SIGMAS_ZERO)
        final_sigma = 0.0f;
    else if (c->final_sigmas_type == SF_FINAL_SIGMAS_SIGMA_MIN)
        final_sigma = s->train_sigmas[0];
    s->sigmas[m] = final_sigma;
    s->init_noise_sigma = 1.0;
    free(ts);
    free(sig);
    return SF_OK;
fail:
    free(ts);
    free(sig);
    return st;
}

static sf_status schedule_lcm(sf_scheduler *s, size_t n) {
    const sf_scheduler_config *c = &s->cfg;
    const size_t orig = (size_t)c->original_inference_steps;
    const size_t k = s->T / orig;
    if (n > orig)
        return sf_error(SF_ERR_INVALID_ARG, "LCMScheduler: num_inference_steps = %zu cannot be "
                        "larger than original_inference_steps = %zu", n, orig);
    sf_status st = alloc_schedule(s, n, 0);
    if (st != SF_OK)
        return st;
    /* lcm_origin_timesteps = [1..orig] * k - 1, reversed, taken at floor(linspace(0, orig, n,
     * endpoint=False)) */
    for (size_t i = 0; i < n; i++) {
        size_t idx = (size_t)floor(np_linspace(0.0, (double)orig, n, i, 0));
        if (idx >= orig)
            idx = orig - 1;
        s->timesteps[i] = (double)((orig - idx) * k) - 1.0;
    }
    s->init_noise_sigma = 1.0;
    return SF_OK;
}

static void reset_trajectory(sf_scheduler *s) {
    s->step_index = 0;
    s->counter = 0;
    s->n_hist = 0;
    s->has_cur_sample = 0;
    s->lower_order_nums = 0;
}

sf_status sf_scheduler_set_timesteps(sf_scheduler *s, size_t n) {
    if (!s)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_set_timesteps: s is NULL");
    const char *cls = type_names[s->cfg.type];
    if (n < 1 || n > s->T)
        return sf_error(SF_ERR_INVALID_ARG, "%s: num_inference_steps = %zu out of range [1, "
                        "num_train_timesteps = %zu]", cls, n, s->T);
    s->n_steps = 0;
    s->n_prk = 0;
    sf_status st;
    switch (s->cfg.type) {
    case SF_SCHEDULER_PNDM: st = schedule_pndm(s, n); break;
    case SF_SCHEDULER_DDIM: st = schedule_ddim(s, n); break;
    case SF_SCHEDULER_DPMSOLVER_MULTISTEP: st = schedule_dpm(s, n); break;
    case SF_SCHEDULER_LCM: st = schedule_lcm(s, n); break;
    default: st = schedule_euler(s, n); break;
    }
    if (st != SF_OK) {
        s->n_ts = 0;
        return st;
    }
    if (is_ddpm_style(s->cfg.type)) {
        for (size_t i = 0; i < s->n_ts; i++) {
            double t = s->timesteps[i];
            if (!(t >= 0 && t < (double)s->T)) {
                s->n_ts = 0;
                return sf_error(SF_ERR_INVALID_ARG, "%s: timestep %.0f of %zu steps is out of "
                                "range [0, %zu) (steps_offset = %lld)", cls, t, n, s->T,
                                (long long)s->cfg.steps_offset);
            }
        }
    }
    s->n_steps = n;
    reset_trajectory(s);
    return SF_OK;
}

const double *sf_scheduler_timesteps(const sf_scheduler *s, size_t *count) {
    if (count)
        *count = (s && s->n_steps) ? s->n_ts : 0;
    return (s && s->n_steps) ? s->timesteps : NULL;
}

const float *sf_scheduler_sigmas(const sf_scheduler *s, size_t *count) {
    int ok = s && s->n_steps && s->sigmas;
    if (count)
        *count = ok ? s->n_ts + 1 : 0;
    return ok ? s->sigmas : NULL;
}

const float *sf_scheduler_betas(const sf_scheduler *s, size_t *count) {
    if (count)
        *count = s ? s->T : 0;
    return s ? s->betas : NULL;
}

const float *sf_scheduler_alphas_cumprod(const sf_scheduler *s, size_t *count) {
    if (count)
        *count = s ? s->T : 0;
    return s ? s->alphas_cumprod : NULL;
}

double sf_scheduler_init_noise_sigma(const sf_scheduler *s) {
    return s ? s->init_noise_sigma : 1.0;
}

size_t sf_scheduler_num_inference_steps(const sf_scheduler *s) {
    return s ? s->n_steps : 0;
}

size_t sf_scheduler_step_index(const sf_scheduler *s) {
    return s ? s->step_index : 0;
}

sf_status sf_scheduler_set_step_index(sf_scheduler *s, size_t index) {
    if (!s)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_set_step_index: s is NULL");
    if (!s->n_steps)
        return sf_error(SF_ERR_INVALID_ARG, "%s: set_timesteps must be called before "
                        "set_step_index", type_names[s->cfg.type]);
    if (index >= s->n_ts)
        return sf_error(SF_ERR_INVALID_ARG, "%s: step index %zu out of range [0, %zu)",
                        type_names[s->cfg.type], index, s->n_ts);
    s->step_index = index;
    return SF_OK;
}

sf_status sf_scheduler_reset(sf_scheduler *s) {
    if (!s)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_reset: s is NULL");
    reset_trajectory(s);
    return SF_OK;
}

sf_status sf_scheduler_index_for_timestep(const sf_scheduler *s, double t, size_t *index) {
    if (!s || !index)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_index_for_timestep: %s is NULL",
                        s ? "index" : "s");
    if (!s->n_steps)
        return sf_error(SF_ERR_INVALID_ARG, "%s: set_timesteps must be called first",
                        type_names[s->cfg.type]);
    size_t found = 0, first = 0, second = 0;
    for (size_t i = 0; i < s->n_ts; i++) {
        if (s->timesteps[i] == t) {
            if (found == 0)
                first = i;
            else if (found == 1)
                second = i;
            found++;
        }
    }
    if (found == 0) {
        if (s->cfg.type == SF_SCHEDULER_DPMSOLVER_MULTISTEP) {
            *index = s->n_ts - 1;
            return SF_OK;
        }
        return sf_error(SF_ERR_INVALID_ARG, "%s: timestep %g is not one of the %zu timesteps of "
                        "the schedule", type_names[s->cfg.type], t, s->n_ts);
    }
    *index = found > 1 ? second : first;
    return SF_OK;
}

int sf_scheduler_step_needs_noise(const sf_scheduler *s) {
    if (!s || !s->n_steps || s->step_index >= s->n_ts)
        return 0;
    switch (s->cfg.type) {
    case SF_SCHEDULER_EULER_ANCESTRAL: return 1;
    case SF_SCHEDULER_LCM: return s->step_index != s->n_steps - 1;
    case SF_SCHEDULER_DPMSOLVER_MULTISTEP: return s->cfg.algorithm_type == SF_DPM_SDE_PLUSPLUS;
    default: return 0;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Model input scaling and forward diffusion                                                  */
/* ------------------------------------------------------------------------------------------ */

static int scales_input(const sf_scheduler *s) {
    return s->cfg.type == SF_SCHEDULER_EULER || s->cfg.type == SF_SCHEDULER_EULER_ANCESTRAL ||
           s->cfg.type == SF_SCHEDULER_LMS;
}

sf_status sf_scheduler_scale_model_input(const sf_scheduler *s, size_t step_index,
                                         const float *x, size_t n, float *y) {
    if (!s || !x || !y)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_scale_model_input: %s is NULL",
                        !s ? "s" : !x ? "x" : "y");
    if (n == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_scale_model_input: n is 0");
    if (!scales_input(s)) {
        if (y != x)
            memmove(y, x, n * sizeof *y);
        return SF_OK;
    }
    if (!s->n_steps)
        return sf_error(SF_ERR_INVALID_ARG, "%s: set_timesteps must be called before "
                        "scale_model_input", type_names[s->cfg.type]);
    if (step_index >= s->n_ts)
        return sf_error(SF_ERR_INVALID_ARG, "%s: step index %zu out of range [0, %zu)",
                        type_names[s->cfg.type], step_index, s->n_ts);
    const float sigma = s->sigmas[step_index];
    const float d = sqrtf(sigma * sigma + 1.0f);
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] / d;
    return SF_OK;
}

/* alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t (DPM-Solver). */
static void sigma_to_alpha_sigma(float sigma, float *alpha, float *sig) {
    *alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sig = sigma * *alpha;
}

sf_status sf_scheduler_add_noise(const sf_scheduler *s, const float *original,
                                 const float *noise, size_t n, double timestep, float *out) {
    if (!s || !original || !noise || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_add_noise: %s is NULL",
                        !s ? "s" : !original ? "original" : !noise ? "noise" : "out");
    if (n == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_add_noise: n is 0");
    const char *cls = type_names[s->cfg.type];
    if (is_ddpm_style(s->cfg.type)) {
        if (!(timestep >= 0 && timestep < (double)s->T) || timestep != floor(timestep))
            return sf_error(SF_ERR_INVALID_ARG, "%s.add_noise: timestep %g is not an integer in "
                            "[0, %zu)", cls, timestep, s->T);
        const float a = s->alphas_cumprod[(size_t)timestep];
        const float sa = sqrtf(a), so = sqrtf(1.0f - a);
        for (size_t i = 0; i < n; i++)
            out[i] = sa * original[i] + so * noise[i];
        return SF_OK;
    }
    size_t idx;
    sf_status st = sf_scheduler_index_for_timestep(s, timestep, &idx);
    if (st != SF_OK)
        return st;
    const float sigma = s->sigmas[idx];
    if (s->cfg.type == SF_SCHEDULER_DPMSOLVER_MULTISTEP) {
        float at, sg;
        sigma_to_alpha_sigma(sigma, &at, &sg);
        for (size_t i = 0; i < n; i++)
            out[i] = at * original[i] + sg * noise[i];
    } else {
        for (size_t i = 0; i < n; i++)
            out[i] = original[i] + noise[i] * sigma;
    }
    return SF_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Steps                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Make the state buffers fit n values (on the first step of a trajectory). */
static sf_status ensure_state(sf_scheduler *s, size_t n) {
    if (s->n == n)
        return SF_OK;
    size_t nbuf = 0;
    switch (s->cfg.type) {
    case SF_SCHEDULER_PNDM: nbuf = SCHED_HIST + 2; break;
    case SF_SCHEDULER_LMS: nbuf = SCHED_HIST; break;
    case SF_SCHEDULER_DPMSOLVER_MULTISTEP: nbuf = (size_t)s->cfg.solver_order; break;
    default: nbuf = 0; break;
    }
    free_state(s);
    size_t bytes;
    if (!sf_mul_ok(n, sizeof(float), &bytes))
        return sf_error(SF_ERR_INVALID_ARG, "%s.step: n = %zu is too large",
                        type_names[s->cfg.type], n);
    for (size_t i = 0; i < nbuf; i++) {
        s->buf[i] = sf_aligned_alloc(bytes);
        if (!s->buf[i]) {
            free_state(s);
            return sf_error(SF_ERR_OOM, "%s.step: out of memory for %zu values",
                            type_names[s->cfg.type], n);
        }
    }
    for (size_t i = 0; i < nbuf && i < SCHED_HIST; i++)
        s->hist[i] = s->buf[i];
    if (s->cfg.type == SF_SCHEDULER_PNDM) {
        s->cur_mo = s->buf[SCHED_HIST];
        s->cur_sample = s->buf[SCHED_HIST + 1];
    }
    s->n = n;
    return SF_OK;
}

/* Append a copy of x to the history of at most `cap` buffers, dropping the oldest. */
static void hist_push(sf_scheduler *s, size_t cap, const float *x, size_t n) {
    if (s->n_hist == cap) {
        float *oldest = s->hist[0];
        for (size_t i = 0; i + 1 < cap; i++)
            s->hist[i] = s->hist[i + 1];
        s->hist[cap - 1] = oldest;
        s->n_hist--;
    }
    memcpy(s->hist[s->n_hist], x, n * sizeof *x);
    s->n_hist++;
}

/* The k-th newest history entry (k = 1: newest). */
static const float *hist_back(const sf_scheduler *s, size_t k) {
    return s->hist[s->n_hist - k];
}

static float ac_at(const sf_scheduler *s, int64_t t) {
    return t >= 0 ? s->alphas_cumprod[t] : s->final_alpha_cumprod;
}

/* ---- PNDM ---- */

/* PNDM's _get_prev_sample (formula (9) of the paper). */
static sf_status pndm_prev_sample(const sf_scheduler *s, const float *sample, int64_t t,
                                  int64_t prev_t, const float *mo, size_t n, float *out) {
    if (t < 0 || t >= (int64_t)s->T || prev_t >= (int64_t)s->T)
        return sf_error(SF_ERR_INVALID_ARG, "PNDMScheduler: timestep %lld (previous %lld) out of "
                        "range [0, %zu)", (long long)t, (long long)prev_t, s->T);
    const float a_t = s->alphas_cumprod[t], a_p = ac_at(s, prev_t);
    const float b_t = 1.0f - a_t, b_p = 1.0f - a_p;
    const float coef = sqrtf(a_p / a_t);
    const float denom = a_t * sqrtf(b_p) + sqrtf(a_t * b_t * a_p);
    const float diff = a_p - a_t;
    if (s->cfg.prediction_type == SF_PREDICT_V) {
        const float sa = sqrtf(a_t), sb = sqrtf(b_t);
        for (size_t i = 0; i < n; i++) {
            float m = sa * mo[i] + sb * sample[i];
            out[i] = coef * sample[i] - diff * m / denom;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            out[i] = coef * sample[i] - diff * mo[i] / denom;
    }
    return SF_OK;
}

static sf_status pndm_step(sf_scheduler *s, const float *mo, const float *x, size_t n,
                           float *out) {
    const int64_t T = (int64_t)s->T, r = T / (int64_t)s->n_steps;
    int64_t t = (int64_t)s->timesteps[s->step_index];
    float *scratch = s->buf[SCHED_HIST]; /* cur_mo's buffer is free on PLMS steps */
    if (!s->cfg.skip_prk_steps && s->counter < s->n_prk) {
        /* Runge-Kutta: four evaluations per step */
        const size_t c4 = s->counter % 4;
        const int64_t prev_t = t - ((s->counter % 2) ? 0 : r / 2);
        const int64_t t_rk = (int64_t)s->timesteps[s->counter / 4 * 4];
        const float *use_mo = mo;
        if (c4 == 0) {
            const float w = (float)(1.0 / 6.0);
            hist_push(s, SCHED_HIST, mo, n);
            for (size_t i = 0; i < n; i++)
                s->cur_mo[i] = w * mo[i];
            memcpy(s->cur_sample, x, n * sizeof *x);
            s->has_cur_sample = 1;
        } else if (c4 == 1 || c4 == 2) {
            const float w = (float)(1.0 / 3.0);
            for (size_t i = 0; i < n; i++)
                s->cur_mo[i] = s->cur_mo[i] + w * mo[i];
        } else {
            const float w = (float)(1.0 / 6.0);
            for (size_t i = 0; i < n; i++)
                s->cur_mo[i] = s->cur_mo[i] + w * mo[i];
            use_mo = s->cur_mo;
        }
        const float *cur = s->has_cur_sample ? s->cur_sample : x;
        return pndm_prev_sample(s, cur, t_rk, prev_t, use_mo, n, out);
    }
    if (!s->cfg.skip_prk_steps && s->n_hist < 3)
        return sf_error(SF_ERR_INVALID_ARG, "PNDMScheduler: linear multistep steps need the "
                        "12 Runge-Kutta steps first");
    int64_t prev_t = t - r;
    if (s->counter != 1) {
        hist_push(s, SCHED_HIST, mo, n);
    } else {
        prev_t = t;
        t = t + r;
    }
    const float *sample = x;
    const float *eff = scratch;
    if (s->n_hist == 1 && s->counter == 0) {
        eff = mo;
        memcpy(s->cur_sample, x, n * sizeof *x);
        s->has_cur_sample = 1;
    } else if (s->n_hist == 1 && s->counter == 1) {
        const float *e1 = hist_back(s, 1);
        for (size_t i = 0; i < n; i++)
            scratch[i] = (mo[i] + e1[i]) / 2.0f;
        if (!s->has_cur_sample)
            return sf_error(SF_ERR_INVALID_ARG, "PNDMScheduler: the second step needs the "
                            "sample of the first");
        sample = s->cur_sample;
        s->has_cur_sample = 0;
    } else if (s->n_hist == 2) {
        const float *e1 = hist_back(s, 1), *e2 = hist_back(s, 2);
        for (size_t i = 0; i < n; i++)
            scratch[i] = (3.0f * e1[i] - e2[i]) / 2.0f;
    } else if (s->n_hist == 3) {
        const float *e1 = hist_back(s, 1), *e2 = hist_back(s, 2), *e3 = hist_back(s, 3);
        for (size_t i = 0; i < n; i++)
            scratch[i] = (23.0f * e1[i] - 16.0f * e2[i] + 5.0f * e3[i]) / 12.0f;
    } else {
        const float *e1 = hist_back(s, 1), *e2 = hist_back(s, 2), *e3 = hist_back(s, 3),
                    *e4 = hist_back(s, 4);
        const float w = (float)(1.0 / 24.0);
        for (size_t i = 0; i < n; i++)
            scratch[i] = w * (55.0f * e1[i] - 59.0f * e2[i] + 37.0f * e3[i] - 9.0f * e4[i]);
    }
    /* the second step reuses the first step's sample, which `out` may overwrite: safe, since
     * pndm_prev_sample reads element i before writing it */
    return pndm_prev_sample(s, sample, t, prev_t, eff, n, out);
}

/* ---- DDIM ---- */

static float clampf(float v, float lo, float hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

static sf_status ddim_step(sf_scheduler *s, const float *mo, const float *x, size_t n,
                           float *out, float *pred) {
    const int64_t T = (int64_t)s->T;
    const int64_t t = (int64_t)s->timesteps[s->step_index];
    const int64_t prev_t = t - T / (int64_t)s->n_steps;
    const float a_t = s->alphas_cumprod[t], a_p = ac_at(s, prev_t);
    const float b_t = 1.0f - a_t, b_p = 1.0f - a_p;
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    const float variance = (b_p / b_t) * (1.0f - a_t / a_p);
    const float std_dev = 0.0f * sqrtf(variance); /* eta = 0 */
    const float c_dir = sqrtf(1.0f - a_p - std_dev * std_dev);
    const float c_x0 = sqrtf(a_p);
    const int clip = s->cfg.clip_sample;
    const float r = (float)s->cfg.clip_sample_range;
    const sf_prediction_type pt = s->cfg.prediction_type;
    for (size_t i = 0; i < n; i++) {
        float x0, eps;
        if (pt == SF_PREDICT_EPSILON) {
            x0 = (x[i] - sb * mo[i]) / sa;
            eps = mo[i];
        } else if (pt == SF_PREDICT_SAMPLE) {
            x0 = mo[i];
            eps = (x[i] - sa * x0) / sb;
        } else {
            x0 = sa * x[i] - sb * mo[i];
            eps = sa * mo[i] + sb * x[i];
        }
        if (clip)
            x0 = clampf(x0, -r, r);
        if (pred)
            pred[i] = x0;
        out[i] = c_x0 * x0 + c_dir * eps;
    }
    return SF_OK;
}

/* ---- LCM ---- */

static sf_status lcm_step(sf_scheduler *s, const float *mo, const float *x, size_t n,
                          const float *noise, float *out, float *pred) {
    const size_t i0 = s->step_index;
    const int64_t t = (int64_t)s->timesteps[i0];
    const int64_t prev_t = i0 + 1 < s->n_ts ? (int64_t)s->timesteps[i0 + 1] : t;
    const float a_t = s->alphas_cumprod[t], a_p = ac_at(s, prev_t);
    const float b_t = 1.0f - a_t, b_p = 1.0f - a_p;
    /* boundary condition scalings (sigma_data 0.5), float32 as the 0-d tensor product */
    const float scaled = (float)t * (float)s->cfg.timestep_scaling;
    const float q = scaled * scaled + 0.25f;
    const float c_skip = (1.0f / q) * 0.25f;
    const float c_out = scaled / sqrtf(q);
    const float sa = sqrtf(a_t), sb = sqrtf(b_t);
    const int last = i0 == s->n_steps - 1;
    const float na = sqrtf(a_p), nb = sqrtf(b_p);
    const int clip = s->cfg.clip_sample;
    const float r = (float)s->cfg.clip_sample_range;
    const sf_prediction_type pt = s->cfg.prediction_type;
    for (size_t i = 0; i < n; i++) {
        float x0;
        if (pt == SF_PREDICT_EPSILON)
            x0 = (x[i] - sb * mo[i]) / sa;
        else if (pt == SF_PREDICT_SAMPLE)
            x0 = mo[i];
        else
            x0 = sa * x[i] - sb * mo[i];
        if (clip)
            x0 = clampf(x0, -r, r);
        float den = c_out * x0 + c_skip * x[i];
        if (pred)
            pred[i] = den;
        out[i] = last ? den : na * den + nb * noise[i];
    }
    return SF_OK;
}

/* ---- Euler, Euler ancestral ---- */

/* x0 from a sigma-space model output: epsilon, v or the sample itself. */
static inline float sigma_x0(sf_prediction_type pt, float mo, float x, float sigma, float vc,
                             float vd) {
    if (pt == SF_PREDICT_EPSILON)
        return x - sigma * mo;
    if (pt == SF_PREDICT_V)
        return mo * vc + x / vd;
    return mo;
}

static sf_status euler_step(sf_scheduler *s, const float *mo, const float *x, size_t n,
                            float *out, float *pred) {
    const size_t i0 = s->step_index;
    const float sigma = s->sigmas[i0];
    const float sigma_hat = sigma * 1.0f; /* no churn: gamma = 0 */
    const float vd = sigma * sigma + 1.0f, vc = -sigma / sqrtf(vd);
    const float dt = s->sigmas[i0 + 1] - sigma_hat;
    const sf_prediction_type pt = s->cfg.prediction_type;
    for (size_t i = 0; i < n; i++) {
        float x0 = sigma_x0(pt, mo[i], x[i], sigma_hat, vc, vd);
        float der = (x[i] - x0) / sigma_hat;
        if (pred)
            pred[i] = x0;
        out[i] = x[i] + der * dt;
    }
    return SF_OK;
}

static sf_status euler_ancestral_step(sf_scheduler *s, const float *mo, const float *x, size_t n,
                                      const float *noise, float *out, float *pred) {
    const size_t i0 = s->step_index;
    const float sigma = s->sigmas[i0], sigma_to = s->sigmas[i0 + 1];
    const float vd = sigma * sigma + 1.0f, vc = -sigma / sqrtf(vd);
    const float f2 = sigma * sigma, t2 = sigma_to * sigma_to;
    const float sigma_up = sqrtf(t2 * (f2 - t2) / f2);
    const float sigma_down = sqrtf(t2 - sigma_up * sigma_up);
    const float dt = sigma_down - sigma;
    const sf_prediction_type pt = s->cfg.prediction_type;
    for (size_t i = 0; i < n; i++) {
        float x0 = sigma_x0(pt, mo[i], x[i], sigma, vc, vd);
        float der = (x[i] - x0) / sigma;
        if (pred)
            pred[i] = x0;
        out[i] = (x[i] + der * dt) + noise[i] * sigma_up;
    }
    return SF_OK;
}

/* ---- LMS ---- */

/* Integral over [sigmas[t], sigmas[t + 1]] of the Lagrange basis polynomial of node
 * t - cur among nodes t, t - 1, ..., t - order + 1 (exact: 4-point Gauss-Legendre). */
static double lms_coefficient(const sf_scheduler *s, size_t order, size_t t, size_t cur) {
    static const double gx[4] = {-0.86113631159405257522, -0.33998104358485626480,
                                 0.33998104358485626480, 0.86113631159405257522};
    static const double gw[4] = {0.34785484513745385737, 0.65214515486254614263,
                                 0.65214515486254614263, 0.34785484513745385737};
    const double a = s->sigmas[t], b = s->sigmas[t + 1];
    const double mid = 0.5 * (a + b), half = 0.5 * (b - a);
    double sum = 0;
    for (int g = 0; g < 4; g++) {
        double tau = mid + half * gx[g];
        double prod = 1.0;
        for (size_t k = 0; k < order; k++) {
            if (k == cur)
                continue;
            double sk = s->sigmas[t - k], sc = s->sigmas[t - cur];
            prod *= (tau - sk) / (sc - sk);
        }
        sum += gw[g] * prod;
    }
    return sum * half;
}

static sf_status lms_step(sf_scheduler *s, const float *mo, const float *x, size_t n, float *out,
                          float *pred) {
    const size_t i0 = s->step_index;
    const float sigma = s->sigmas[i0];
    const float vd = sigma * sigma + 1.0f, vc = -sigma / sqrtf(vd);
    const sf_prediction_type pt = s->cfg.prediction_type;
    /* the new derivative goes into the history first (out may alias x or mo) */
    if (s->n_hist == SCHED_HIST) {
        float *oldest = s->hist[0];
        for (size_t i = 0; i + 1 < SCHED_HIST; i++)
            s->hist[i] = s->hist[i + 1];
        s->hist[SCHED_HIST - 1] = oldest;
        s->n_hist--;
    }
    float *d = s->hist[s->n_hist++];
    for (size_t i = 0; i < n; i++) {
        float x0 = sigma_x0(pt, mo[i], x[i], sigma, vc, vd);
        if (pred)
            pred[i] = x0;
        d[i] = (x[i] - x0) / sigma;
    }
    size_t order = i0 + 1 < SCHED_HIST ? i0 + 1 : SCHED_HIST;
    float coeff[SCHED_HIST];
    for (size_t k = 0; k < order; k++)
        coeff[k] = (float)lms_coefficient(s, order, i0, k);
    /* sum(coeff * derivative for coeff, derivative in zip(coeffs, reversed(derivatives))) */
    size_t terms = order < s->n_hist ? order : s->n_hist;
    const float *d0 = hist_back(s, 1);
    const float *d1 = terms > 1 ? hist_back(s, 2) : NULL;
    const float *d2 = terms > 2 ? hist_back(s, 3) : NULL;
    const float *d3 = terms > 3 ? hist_back(s, 4) : NULL;
    for (size_t i = 0; i < n; i++) {
        float acc = coeff[0] * d0[i];
        if (d1)
            acc = acc + coeff[1] * d1[i];
        if (d2)
            acc = acc + coeff[2] * d2[i];
        if (d3)
            acc = acc + coeff[3] * d3[i];
        out[i] = x[i] + acc;
    }
    return SF_OK;
}

/* ---- DPM-Solver multistep ---- */

typedef struct {
    float alpha, sigma, lambda;
} dpm_point;

static dpm_point dpm_at(const sf_scheduler *s, size_t idx) {
    dpm_point p;
    sigma_to_alpha_sigma(s->sigmas[idx], &p.alpha, &p.sigma);
    p.lambda = logf(p.alpha) - logf(p.sigma);
    return p;
}

static sf_status dpm_step(sf_scheduler *s, const float *mo, const float *x, size_t n,
                          const float *noise, float *out, float *pred) {
    const sf_scheduler_config *c = &s->cfg;
    const size_t i0 = s->step_index, len = s->n_ts;
    const int order = c->solver_order;
    const int plus = c->algorithm_type != SF_DPM_DPMSOLVER;
    const int sde = c->algorithm_type == SF_DPM_SDE_PLUSPLUS;
    const int lower_final = i0 == len - 1 &&
                            (c->euler_at_final || (c->lower_order_final && len < 15) ||
                             c->final_sigmas_type == SF_FINAL_SIGMAS_ZERO);
    const int lower_second = i0 == len - 2 && c->lower_order_final && len < 15;
    if (!plus && pred)
        return sf_error(SF_ERR_UNSUPPORTED, "DPMSolverMultistepScheduler: algorithm_type "
                        "\"dpmsolver\" predicts noise, it has no predicted clean sample");
    /* convert the model output to the data (dpmsolver++) or noise (dpmsolver) prediction and
     * append it to the history */
    dpm_point p0 = dpm_at(s, i0);
    if (s->n_hist == (size_t)order) {
        float *oldest = s->hist[0];
        for (int i = 0; i + 1 < order; i++)
            s->hist[i] = s->hist[i + 1];
        s->hist[order - 1] = oldest;
        s->n_hist--;
    }
    float *m0 = s->hist[s->n_hist++];
    const sf_prediction_type pt = c->prediction_type;
    for (size_t i = 0; i < n; i++) {
        float v;
        if (plus) {
            if (pt == SF_PREDICT_EPSILON)
                v = (x[i] - p0.sigma * mo[i]) / p0.alpha;
            else if (pt == SF_PREDICT_SAMPLE)
                v = mo[i];
            else
                v = p0.alpha * x[i] - p0.sigma * mo[i];
        } else {
            if (pt == SF_PREDICT_EPSILON)
                v = mo[i];
            else if (pt == SF_PREDICT_SAMPLE)
                v = (x[i] - p0.alpha * mo[i]) / p0.sigma;
            else
                v = p0.alpha * mo[i] + p0.sigma * x[i];
        }
        m0[i] = v;
    }
    if (pred)
        memcpy(pred, m0, n * sizeof *pred);

    const dpm_point pt_ = dpm_at(s, i0 + 1);
    const float alpha_t = pt_.alpha, sigma_t = pt_.sigma;
    const float h = pt_.lambda - p0.lambda;
    int use;
    if (order == 1 || s->lower_order_nums < 1 || lower_final)
        use = 1;
    else if (order == 2 || s->lower_order_nums < 2 || lower_second)
        use = 2;
    else
        use = 3;
    /* a trajectory entered part-way (set_step_index) has no older points */
    if ((size_t)use > s->n_hist)
        use = (int)s->n_hist;
    if ((size_t)use > i0 + 1)
        use = (int)i0 + 1;

    const float emh = expf(-h), eh = expf(h);
    const float e2 = expf(-2.0f * h);
    float c_x, c0, c1 = 0, c2 = 0, c_n = 0;
    if (sde) {
        c_x = sigma_t / p0.sigma * emh;
        c0 = alpha_t * (1.0f - e2);
        c_n = sigma_t * sqrtf(1.0f - e2);
    } else if (plus) {
        c_x = sigma_t / p0.sigma;
        c0 = alpha_t * (emh - 1.0f);
    } else {
        c_x = alpha_t / p0.alpha;
        c0 = sigma_t * (eh - 1.0f);
    }
    if (use == 1) {
        /* x_t = c_x x - c0 m0 (dpmsolver++, dpmsolver), c_x x + c0 m0 + c_n noise (SDE) */
        for (size_t i = 0; i < n; i++) {
            if (sde)
                out[i] = c_x * x[i] + c0 * m0[i] + c_n * noise[i];
            else
                out[i] = c_x * x[i] - c0 * m0[i];
        }
    } else if (use == 2) {
        const dpm_point p1 = dpm_at(s, i0 - 1);
        const float h0 = p0.lambda - p1.lambda;
        const float r0 = h0 / h;
        const float inv_r0 = 1.0f / r0;
        const float *m1 = hist_back(s, 2);
        if (c->solver_type == SF_DPM_MIDPOINT) {
            c1 = 0.5f * c0;
        } else if (sde) {
            c1 = alpha_t * ((1.0f - e2) / (-2.0f * h) + 1.0f);
        } else if (plus) {
            c1 = alpha_t * ((emh - 1.0f) / h + 1.0f);
        } else {
            c1 = sigma_t * ((eh - 1.0f) / h - 1.0f);
        }
        const int heun = c->solver_type == SF_DPM_HEUN;
        for (size_t i = 0; i < n; i++) {
            float D0 = m0[i];
            float D1 = inv_r0 * (m0[i] - m1[i]);
            if (sde)
                out[i] = c_x * x[i] + c0 * D0 + c1 * D1 + c_n * noise[i];
            else if (plus && heun)
                out[i] = c_x * x[i] - c0 * D0 + c1 * D1;
            else
                out[i] = c_x * x[i] - c0 * D0 - c1 * D1;
        }
    } else {
        const dpm_point p1 = dpm_at(s, i0 - 1), p2 = dpm_at(s, i0 - 2);
        const float h0 = p0.lambda - p1.lambda, h1 = p1.lambda - p2.lambda;
        const float r0 = h0 / h, r1 = h1 / h;
        const float inv_r0 = 1.0f / r0, inv_r1 = 1.0f / r1;
        const float w1 = r0 / (r0 + r1), w2 = 1.0f / (r0 + r1);
        const float *m1 = hist_back(s, 2), *m2 = hist_back(s, 3);
        if (sde) {
            c1 = alpha_t * ((1.0f - e2) / (-2.0f * h) + 1.0f);
            c2 = alpha_t * ((1.0f - e2 - 2.0f * h) / ((2.0f * h) * (2.0f * h)) - 0.5f);
        } else if (plus) {
            c1 = alpha_t * ((emh - 1.0f) / h + 1.0f);
            c2 = alpha_t * ((emh - 1.0f + h) / (h * h) - 0.5f);
        } else {
            c1 = sigma_t * ((eh - 1.0f) / h - 1.0f);
            c2 = sigma_t * ((eh - 1.0f - h) / (h * h) - 0.5f);
        }
        for (size_t i = 0; i < n; i++) {
            float D0 = m0[i];
            float D1_0 = inv_r0 * (m0[i] - m1[i]), D1_1 = inv_r1 * (m1[i] - m2[i]);
            float D1 = D1_0 + w1 * (D1_0 - D1_1);
            float D2 = w2 * (D1_0 - D1_1);
            if (sde)
                out[i] = c_x * x[i] + c0 * D0 + c1 * D1 + c2 * D2 + c_n * noise[i];
            else if (plus)
                out[i] = c_x * x[i] - c0 * D0 + c1 * D1 - c2 * D2;
            else
                out[i] = c_x * x[i] - c0 * D0 - c1 * D1 - c2 * D2;
        }
    }
    if (s->lower_order_nums < (size_t)order)
        s->lower_order_nums++;
    return SF_OK;
}

sf_status sf_scheduler_step_ex(sf_scheduler *s, const float *model_output, const float *sample,
                               size_t n, const float *noise, float *prev_sample,
                               float *pred_original) {
    if (!s || !model_output || !sample || !prev_sample)
        return sf_error(SF_ERR_INVALID_ARG, "sf_scheduler_step: %s is NULL",
                        !s ? "s" : !model_output ? "model_output" : !sample ? "sample"
                                                                            : "prev_sample");
    const char *cls = type_names[s->cfg.type];
    if (n == 0)
        return sf_error(SF_ERR_INVALID_ARG, "%s.step: n is 0", cls);
    if (!s->n_steps)
        return sf_error(SF_ERR_INVALID_ARG, "%s.step: set_timesteps must be called before step",
                        cls);
    if (s->step_index >= s->n_ts)
        return sf_error(SF_ERR_INVALID_ARG, "%s.step: all %zu timesteps have been stepped "
                        "(call set_timesteps or reset to start again)", cls, s->n_ts);
    if (s->counter > 0 && s->n != n && s->n != 0)
        return sf_error(SF_ERR_SHAPE, "%s.step: the sample has %zu values but this trajectory "
                        "has %zu (call set_timesteps or reset to start another)", cls, n, s->n);
    if (sf_scheduler_step_needs_noise(s) && !noise)
        return sf_error(SF_ERR_INVALID_ARG, "%s.step: this step needs noise (%zu standard normal "
                        "values), got NULL", cls, n);
    if (pred_original && s->cfg.type == SF_SCHEDULER_PNDM)
        return sf_error(SF_ERR_UNSUPPORTED, "PNDMScheduler.step: no predicted clean sample");
    sf_status st = ensure_state(s, n);
    if (st != SF_OK)
        return st;
    switch (s->cfg.type) {
    case SF_SCHEDULER_PNDM: st = pndm_step(s, model_output, sample, n, prev_sample); break;
    case SF_SCHEDULER_DDIM:
        st = ddim_step(s, model_output, sample, n, prev_sample, pred_original);
        break;
    case SF_SCHEDULER_EULER:
        st = euler_step(s, model_output, sample, n, prev_sample, pred_original);
        break;
    case SF_SCHEDULER_EULER_ANCESTRAL:
        st = euler_ancestral_step(s, model_output, sample, n, noise, prev_sample, pred_original);
        break;
    case SF_SCHEDULER_DPMSOLVER_MULTISTEP:
        st = dpm_step(s, model_output, sample, n, noise, prev_sample, pred_original);
        break;
    case SF_SCHEDULER_LCM:
        st = lcm_step(s, model_output, sample, n, noise, prev_sample, pred_original);
        break;
    case SF_SCHEDULER_LMS:
        st = lms_step(s, model_output, sample, n, prev_sample, pred_original);
        break;
    }
    if (st != SF_OK)
        return st;
    s->step_index++;
    s->counter++;
    return SF_OK;
}

sf_status sf_scheduler_step(sf_scheduler *s, const float *model_output, const float *sample,
                            size_t n, const float *noise, float *prev_sample) {
    return sf_scheduler_step_ex(s, model_output, sample, n, noise, prev_sample, NULL);
}
