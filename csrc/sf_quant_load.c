/*
 * sf_quant_load.c — quantized layers from named weights: `<layer>.weight` (I8) with its
 * companion tensors `<layer>.weight_scale` (F32, one per output channel) and the optional
 * activation parameters `<layer>.input_scale` / `<layer>.input_zero_point` and
 * `<layer>.output_scale` / `<layer>.output_zero_point` (docs/quantization.md).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_nn.h"
#include "sf_quant.h"

/* Prefix the last error message with the file and layer. */
static sf_status with_context(sf_status st, const sf_weights *w, const char *layer) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", sf_last_error());
    return sf_error(st, "%s: layer '%s': %s", sf_weights_label(w), layer, msg);
}

/* Load a scale vector (n,) and check every value is finite and > 0. */
static sf_status load_scales(sf_weights *w, const char *name, size_t n, float **out) {
    int64_t shape[1] = {(int64_t)n};
    sf_status st = sf_weights_load_f32(w, name, 1, shape, out);
    if (st != SF_OK)
        return st;
    for (size_t i = 0; i < n; i++) {
        float s = (*out)[i];
        if (!(s > 0.0f) || !isfinite(s) || s < 1e-30f) {
            sf_weights_free_buffer(*out);
            *out = NULL;
            return sf_error(SF_ERR_FORMAT, "%s: tensor '%s' has the invalid scale %g at index "
                            "%zu (scales must be finite and > 0)", sf_weights_label(w), name,
                            (double)s, i);
        }
    }
    return SF_OK;
}

/* Optional per-tensor parameters `prefix.<what>_scale` (F32 scalar) and
 * `prefix.<what>_zero_point` (I8 scalar): both or neither. */
static sf_status load_qparams(sf_weights *w, const char *prefix, const char *what,
                              sf_qparams *out) {
    sf_status st = SF_OK;
    char ns[SF_NAME_MAX], nz[SF_NAME_MAX], suffix[32];
    float *scale = NULL;
    int8_t *zp = NULL;
    memset(out, 0, sizeof *out);
    snprintf(suffix, sizeof suffix, "%s_scale", what);
    SF_CHECK(sf_name(ns, prefix, suffix));
    snprintf(suffix, sizeof suffix, "%s_zero_point", what);
    SF_CHECK(sf_name(nz, prefix, suffix));
    int has_s = sf_weights_has(w, ns), has_z = sf_weights_has(w, nz);
    if (!has_s && !has_z)
        return SF_OK;
    if (has_s != has_z)
        SF_FAIL(SF_ERR_FORMAT, "%s: tensor '%s' needs its companion '%s'", sf_weights_label(w),
                has_s ? ns : nz, has_s ? nz : ns);
    SF_CHECK(load_scales(w, ns, 1, &scale));
    SF_CHECK(sf_weights_load_i8(w, nz, 0, NULL, &zp));
    out->enabled = 1;
    out->scale = scale[0];
    out->zero_point = zp[0];
fail:
    sf_weights_free_buffer(scale);
    sf_aligned_free(zp);
    return st;
}

sf_status sf_qconv_load(sf_weights *w, const char *prefix, const sf_qconv_params *geometry,
                        int has_bias, sf_qconv **out) {
    sf_status st = SF_OK;
    char name[SF_NAME_MAX];
    int8_t *weight = NULL;
    float *scale = NULL, *bias = NULL;
    if (!w || !prefix || !geometry || !out)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_load: NULL argument");
    *out = NULL;
    sf_qconv_params p = *geometry;
    size_t o = p.out_channels;
    SF_CHECK(sf_name(name, prefix, "weight"));
    int64_t shape[4] = {(int64_t)o, (int64_t)p.in_channels, (int64_t)p.kernel_h,
                        (int64_t)p.kernel_w};
    SF_CHECK(sf_weights_load_i8(w, name, 4, shape, &weight));
    SF_CHECK(sf_name(name, prefix, "weight_scale"));
    SF_CHECK(load_scales(w, name, o, &scale));
    if (has_bias) {
        int64_t bs[1] = {(int64_t)o};
        SF_CHECK(sf_name(name, prefix, "bias"));
        SF_CHECK(sf_weights_load_f32(w, name, 1, bs, &bias));
    }
    SF_CHECK(load_qparams(w, prefix, "input", &p.input));
    SF_CHECK(load_qparams(w, prefix, "output", &p.output));
    st = sf_qconv_create(&p, weight, scale, bias, out);
    if (st != SF_OK)
        st = with_context(st, w, prefix);
fail:
    sf_aligned_free(weight);
    sf_weights_free_buffer(scale);
    sf_weights_free_buffer(bias);
    return st;
}

static int same_qparams(const sf_qparams *a, const sf_qparams *b) {
    return a->enabled == b->enabled &&
           (!a->enabled || (a->scale == b->scale && a->zero_point == b->zero_point));
}

sf_status sf_qconv_load_fused(sf_weights *w, size_t n, const char *const *prefixes, size_t in,
                              const size_t *outs, int has_bias, sf_qconv **out) {
    sf_status st = SF_OK;
    char name[SF_NAME_MAX];
    int8_t *weight = NULL, *part = NULL;
    float *scale = NULL, *bias = NULL, *fpart = NULL;
    size_t total = 0, row = 0, bytes;
    sf_qconv_params p;
    if (!w || !prefixes || !outs || !out || n == 0)
        return sf_error(SF_ERR_INVALID_ARG, "sf_qconv_load_fused: NULL argument");
    *out = NULL;
    sf_qconv_params_default(&p);
    for (size_t i = 0; i < n; i++)
        total += outs[i];
    if (!sf_mul_ok(total, in, &bytes))
        return sf_error(SF_ERR_OOM, "%s: fused projection too large", prefixes[0]);
    weight = sf_aligned_alloc(bytes);
    scale = sf_aligned_alloc(total * sizeof(float));
    bias = has_bias ? sf_aligned_alloc(total * sizeof(float)) : NULL;
    if (!weight || !scale || (has_bias && !bias))
        SF_FAIL(SF_ERR_OOM, "%s: out of memory", prefixes[0]);
    for (size_t i = 0; i < n; i++) {
        int64_t shape[2] = {(int64_t)outs[i], (int64_t)in}, vs[1] = {(int64_t)outs[i]};
        sf_qparams pin, pout;
        SF_CHECK(sf_name(name, prefixes[i], "weight"));
        SF_CHECK(sf_weights_load_i8(w, name, 2, shape, &part));
        memcpy(weight + row * in, part, outs[i] * in);
        sf_aligned_free(part);
        part = NULL;
        SF_CHECK(sf_name(name, prefixes[i], "weight_scale"));
        SF_CHECK(load_scales(w, name, outs[i], &fpart));
        memcpy(scale + row, fpart, outs[i] * sizeof(float));
        sf_weights_free_buffer(fpart);
        fpart = NULL;
        if (has_bias) {
            SF_CHECK(sf_name(name, prefixes[i], "bias"));
            SF_CHECK(sf_weights_load_f32(w, name, 1, vs, &fpart));
            memcpy(bias + row, fpart, outs[i] * sizeof(float));
            sf_weights_free_buffer(fpart);
            fpart = NULL;
        }
        SF_CHECK(load_qparams(w, prefixes[i], "input", &pin));
        SF_CHECK(load_qparams(w, prefixes[i], "output", &pout));
        if (i == 0) {
            p.input = pin;
            p.output = pout;
        } else if (!same_qparams(&pin, &p.input) || !same_qparams(&pout, &p.output)) {
            SF_FAIL(SF_ERR_FORMAT, "%s: layers '%s' and '%s' share their input but not their "
                    "activation quantization parameters", sf_weights_label(w), prefixes[0],
                    prefixes[i]);
        }
        row += outs[i];
    }
    p.in_channels = in;
    p.out_channels = total;
    st = sf_qconv_create(&p, weight, scale, bias, out);
    if (st != SF_OK)
        st = with_context(st, w, prefixes[0]);
fail:
    sf_aligned_free(part);
    sf_weights_free_buffer(fpart);
    sf_aligned_free(weight);
    sf_aligned_free(scale);
    sf_aligned_free(bias);
    return st;
}
