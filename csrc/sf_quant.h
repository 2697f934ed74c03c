/*
 * sf_quant.h — int8 layers of the engine (W8A8), their kernels, and the observer used by
 * calibration. Internal to the engine (the Python glue includes it for snapfusion._engine's
 * quantization functions). docs/quantization.md describes the file format.
 *
 * Scheme:
 * - Weights: int8, symmetric, one float32 scale per output channel: w = scale[o] * q.
 * - Activations (a layer's input): int8 asymmetric per tensor, x ~ scale * (q - zero_point)
 *   with q = clamp(round_half_even(x * (1 / scale) + zero_point), -128, 127), from calibrated
 *   (static) parameters, or from the min/max of each input (dynamic) when the model has
 *   none.
 * - y = bias + scale_x * scale_w[o] * sum_k (q_x[k] - zero_point) * q_w[o][k], accumulated in
 *   int32 and written as float32 (our kernels); XNNPACK's qc8 operators also requantize the
 *   output to int8 with calibrated output parameters.
 *
 * Back ends of a quantized layer:
 * - SF_QBACKEND_VNNI: our implicit-GEMM kernel with AVX512-VNNI (vpdpbusd: unsigned activations
 *   q + 128 times signed weights; the zero point's contribution, (zero_point + 128) times the
 *   weight sums of each output channel, is folded into the bias).
 * - SF_QBACKEND_XNNPACK: xnn_create_convolution2d_nhwc_qc8 (per-channel weight scales; a fully
 *   connected layer is a 1x1 convolution), needs static input and output parameters.
 * - SF_QBACKEND_AMX: the same packed data and blocking, with AMX-INT8 tiles (tdpbusd on
 *   16 x 64-byte tiles) for the products (Intel Sapphire Rapids and later; Linux grants the
 *   tile state on request).
 * - SF_QBACKEND_REFERENCE: the same blocked kernel as VNNI in portable C (any CPU).
 * SF_QBACKEND_AUTO picks AMX where the CPU and OS have it, else VNNI where the CPU has it, else
 * XNNPACK where the layer has static parameters, else REFERENCE. The environment variable
 * SNAPFUSION_INT8 (amx, vnni, xnnpack, reference), read when a layer is created, overrides
 * AUTO.
 */
#ifndef SF_QUANT_H
#define SF_QUANT_H

#include <pthreadpool.h>
#include <stddef.h>
#include <stdint.h>

#include "snapfusion.h"

typedef enum {
    SF_QBACKEND_AUTO = 0,
    SF_QBACKEND_VNNI,
    SF_QBACKEND_XNNPACK,
    SF_QBACKEND_REFERENCE,
    SF_QBACKEND_AMX
} sf_qbackend;

/* "auto", "vnni", "xnnpack", "reference", "amx". */
const char *sf_qbackend_name(sf_qbackend b);
/* Parse a name (as above); SF_ERR_INVALID_ARG for others. */
sf_status sf_qbackend_from_name(const char *name, sf_qbackend *out);
/* 1 if this machine can run the back end (VNNI: AVX512-VNNI CPU; AMX: AMX-INT8 CPU and an OS
 * that grants the tile state; XNNPACK: built with qc8). */
int sf_qbackend_available(sf_qbackend b);
/* What AUTO means here for a layer with (1) or without (0) static parameters, after
 * SNAPFUSION_INT8. */
sf_qbackend sf_qbackend_resolve(sf_qbackend requested, int has_static);

/* Activation quantization parameters (per tensor). */
typedef struct {
    int enabled;      /* 0: none (dynamic for inputs; no XNNPACK for outputs) */
    float scale;      /* > 0, finite */
    int zero_point;   /* in [-128, 127] */
} sf_qparams;

/* Geometry and options of a quantized convolution (a linear layer is 1x1, stride 1, no pad). */
typedef struct {
    size_t in_channels, out_channels;
    uint32_t kernel_h, kernel_w, stride_h, stride_w;
    uint32_t pad_top, pad_left, pad_bottom, pad_right;
    sf_qparams input, output;
    sf_qbackend backend;
} sf_qconv_params;

/* 1x1, stride 1, no padding, no parameters, AUTO. */
void sf_qconv_params_default(sf_qconv_params *p);

typedef struct sf_qconv sf_qconv;

/* Create from int8 weights (out, in, kh, kw) (PyTorch layout; a linear (out, in)), per-channel
 * scales (out,) (finite, > 0) and an optional float bias (out,). The weights are packed for the
 * kernel; the arrays may be freed afterwards. An explicitly requested back end that cannot run
 * here (or XNNPACK without static input/output parameters) is SF_ERR_UNSUPPORTED. */
sf_status sf_qconv_create(const sf_qconv_params *p, const int8_t *weight,
                          const float *weight_scale, const float *bias, sf_qconv **out);
void sf_qconv_destroy(sf_qconv *q);
sf_qbackend sf_qconv_backend(const sf_qconv *q);
const sf_qconv_params *sf_qconv_get_params(const sf_qconv *q);
/* Bytes of packed weights and per-channel constants the layer holds. */
size_t sf_qconv_packed_bytes(const sf_qconv *q);
sf_status sf_qconv_output_size(const sf_qconv *q, size_t h, size_t w, size_t *out_h,
                               size_t *out_w);
/* x: (batch, h, w, in) float32 NHWC -> y: (batch, out_h, out_w, out); x and y must not overlap.
 * An input with a NaN gives an all-NaN output. */
sf_status sf_qconv_run(sf_qconv *q, const float *x, size_t batch, size_t h, size_t w, float *y);
/* A 1x1 layer as a linear one: x (rows, in) -> y (rows, out). */
sf_status sf_qconv_run_linear(sf_qconv *q, const float *x, size_t rows, float *y);

/* ---- quantization helpers (also used by tests) ---- */

/* Symmetric per-row quantization of w (rows, cols): scale[r] = max|w[r]| / 127 (1 for an
 * all-zero row), q = clamp(round_half_even(w / scale), -127, 127). Non-finite weights:
 * SF_ERR_INVALID_ARG. */
sf_status sf_quantize_rows(const float *w, size_t rows, size_t cols, int8_t *q, float *scale);
/* Asymmetric per-tensor parameters covering [lo, hi] (extended to contain 0): scale =
 * (hi - lo) / 255 (1 if that is 0), zero_point = clamp(round(-128 - lo / scale)). */
sf_qparams sf_qparams_from_range(float lo, float hi);
/* q = clamp(round_half_even(x * (1 / p->scale) + zero_point), -128, 127); NaN -> -128. */
void sf_quantize_activations(const float *x, size_t n, const sf_qparams *p, int8_t *q);

/* ---- the kernel: C (m x n) = A (m x k, uint8) * B (k x n, int8), tested directly ---- */

/* Reference products for tests: c[i][j] = sum_k a[i*k + kk] * b[j*k + kk] (b is n rows of k,
 * the weight layout) with our packed kernel of `backend` (AMX, VNNI or REFERENCE), in int32. */
sf_status sf_qgemm_u8s8_test(sf_qbackend backend, const uint8_t *a, const int8_t *b, size_t m,
                             size_t n, size_t k, int32_t *c);

/* ---- calibration observer ---- */

/* Histograms of |x| on a log scale: SF_QHIST_PER_OCTAVE bins per power of two from
 * 2^SF_QHIST_MIN_EXP to 2^(SF_QHIST_MIN_EXP + SF_QHIST_OCTAVES); bin b of the positive
 * (negative) histogram counts values in [lower(b), lower(b + 1)) (their negatives), bin 0 also
 * counts smaller magnitudes and zeros, the last bin larger ones. lower(b) =
 * 2^(MIN_EXP + b / PER_OCTAVE) * (1 + (b % PER_OCTAVE) / PER_OCTAVE). */
#define SF_QHIST_PER_OCTAVE 64
#define SF_QHIST_MIN_EXP (-24)
#define SF_QHIST_OCTAVES 48
#define SF_QHIST_BINS (SF_QHIST_PER_OCTAVE * SF_QHIST_OCTAVES)

/* Statistics of the inputs (or outputs) of one layer over every call observed. */
typedef struct {
    uint64_t count, nan_count;
    float min, max; /* of the finite values (+inf/-inf if none) */
    uint64_t pos[SF_QHIST_BINS], neg[SF_QHIST_BINS];
} sf_qstats;

typedef struct sf_qobserver sf_qobserver;

sf_status sf_qobserver_create(sf_qobserver **out);
void sf_qobserver_destroy(sf_qobserver *o);
/* Make `o` the process-wide observer: while it is installed, every convolution and linear
 * layer built from named weights registers itself when created and records the statistics of
 * its input and output on every run. SF_ERR_INVALID_ARG if another one is installed. */
sf_status sf_qobserver_install(sf_qobserver *o);
/* Uninstall `o` (no effect if it is not the installed one). Waits for running observations. */
void sf_qobserver_uninstall(sf_qobserver *o);
size_t sf_qobserver_count(sf_qobserver *o);
/* i-th layer (registration order): name (layer names joined by '|' for fused layers), kind
 * ("conv" or "linear"), its statistics (input, output; valid until the observer is destroyed,
 * not while it is installed and running). */
sf_status sf_qobserver_layer(sf_qobserver *o, size_t i, const char **name, const char **kind,
                             const sf_qstats **input, const sf_qstats **output);
/* Lower edge of positive bin b (b in [0, SF_QHIST_BINS]). */
double sf_qhist_edge(size_t b);

/* Used by the layers of sf_nn.c: 1 if an observer is installed (cheap). */
int sf_qobserver_active(void);
/* Register a layer (no effect without an observer). */
void sf_qobserve_register(const char *name, const char *kind);
/* Record n values of a layer's input (is_output 0) or output (1). */
void sf_qobserve(const char *name, int is_output, const float *x, size_t n);

/* ---- loading quantized layers from named weights (sf_quant_load.c) ---- */

/* Load I8 tensor `name` of exactly `shape` (trailing 1s ignored) into a new buffer (free with
 * sf_aligned_free) and mark it used. Missing -> SF_ERR_FORMAT, float data -> SF_ERR_FORMAT,
 * wrong shape -> SF_ERR_SHAPE. (Implemented in sf_weights.c.) */
sf_status sf_weights_load_i8(sf_weights *w, const char *name, int ndim, const int64_t *shape,
                             int8_t **out);

/* A quantized convolution or linear layer `prefix` whose `prefix.weight` is I8: reads
 * `prefix.weight_scale` (out,), `prefix.bias` if has_bias, and the optional activation
 * parameters `prefix.input_scale`/`prefix.input_zero_point` and
 * `prefix.output_scale`/`prefix.output_zero_point` (scalars: F32 scale, I8 zero point; both
 * or neither). geometry: sizes, kernel, stride and padding (its qparams are ignored). */
sf_status sf_qconv_load(sf_weights *w, const char *prefix, const sf_qconv_params *geometry,
                        int has_bias, sf_qconv **out);
/* Several linear layers sharing an input fused along the outputs (q/k/v projections): every
 * part must be I8 with equal activation parameters. */
sf_status sf_qconv_load_fused(sf_weights *w, size_t n, const char *const *prefixes, size_t in,
                              const size_t *outs, int has_bias, sf_qconv **out);

/* ---- internal: the packed int8 GEMM of the VNNI and REFERENCE back ends (sf_quant_gemm.c) --- */

/* Output channels per register tile: the padded length of the per-channel arrays. */
#define SF_QGEMM_NR 32

typedef struct sf_qgemm sf_qgemm;

/* Implicit-GEMM geometry: input (batch, h, w, in) uint8 NHWC, output (batch, out_h, out_w,
 * out); a linear layer is batch = rows, h = w = out_h = out_w = 1. */
typedef struct {
    size_t batch, h, w, out_h, out_w;
    uint32_t stride_h, stride_w, pad_top, pad_left;
} sf_qgemm_geometry;

/* The kernels of sf_qgemm (one packed layout for all three). */
enum { SF_QGEMM_REF = 0, SF_QGEMM_VNNI = 1, SF_QGEMM_AMX = 2 };
/* The kernel of a back end (SF_QGEMM_REF for those without one of ours). */
int sf_qgemm_isa_of(sf_qbackend b);
/* 1 if this CPU runs the VNNI kernel (x86-64 with AVX512-F/BW/VNNI). */
int sf_qgemm_vnni_supported(void);
/* 1 if this CPU and OS run the AMX kernel (AMX-TILE/INT8, XCR0 tile state, and Linux's
 * permission, requested for the process on the first call). */
int sf_qgemm_amx_supported(void);
/* Pack weights (out, in, kh, kw) for kernel `isa` (SF_QGEMM_*). K = kh*kw*in must be at most
 * 65536 (the int32 accumulators cannot overflow). */
sf_status sf_qgemm_create(size_t in, size_t out, uint32_t kh, uint32_t kw, const int8_t *weight,
                          int isa, sf_qgemm **out_gemm);
void sf_qgemm_destroy(sf_qgemm *g);
/* Per output channel sums of the weights (out values). */
const int32_t *sf_qgemm_colsum(const sf_qgemm *g);
/* Number of padded output channels (a multiple of SF_QGEMM_NR). */
size_t sf_qgemm_padded_out(const sf_qgemm *g);
size_t sf_qgemm_bytes(const sf_qgemm *g);
/* acc[m][n] = sum_k x_patch[m][k] * w[n][k] with x uint8 (taps outside the image read
 * pad_value); y[m][n] = alpha[n] * acc + beta[n] (alpha, beta: sf_qgemm_padded_out values),
 * or the raw int32 acc stored into y's memory when alpha is NULL. Sizes are validated by the
 * caller. Runs on `pool`. */
sf_status sf_qgemm_run(const sf_qgemm *g, const sf_qgemm_geometry *geo, const uint8_t *x,
                       uint8_t pad_value, const float *alpha, const float *beta, void *y,
                       pthreadpool_t pool);

#endif /* SF_QUANT_H */
