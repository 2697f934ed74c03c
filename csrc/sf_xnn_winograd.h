/*
 * sf_xnn_winograd.h — Winograd F(2x2, 3x3) for dense 3x3 stride-1 convolutions (internal to
 * sf_xnn.c), on top of the own GEMM (sf_xnn_gemm.h).
 *
 * The input is cut into 4x4 tiles at a stride of 2 (zeros where a tile reaches into the padding
 * or past the input); each tile d becomes V = B^T d B, the weights g became U = G g G^T at
 * creation, the 16 positions of the 4x4 transformed tile are 16 independent GEMMs
 * M[k] (tiles x out) = V[k] (tiles x in) * U[k] (in x out), and each tile's 2x2 outputs are
 * A^T M A + bias, clamped (cropped at the right and bottom edges). That is 16 multiplies per
 * 4 outputs instead of 36: 2.25 times fewer multiply-accumulates than the direct convolution.
 *
 * Numerics: the transforms only add and subtract (the 1/2 factors of G are folded into the
 * weights, computed in double), so an input value reaches exactly the outputs whose 3x3 window
 * covers it, as in the direct convolution: NaN propagates to the same outputs (an infinite
 * input makes the same outputs non-finite, some NaN where the direct sum gives inf). Rounding: the
 * transforms add a few roundings, but each GEMM sums `in` products instead of 9 * in; against
 * a float64 convolution on standard-normal data (SD shapes, 320 to 1920 channels) the largest
 * error was 1.8e-6 x max |y|, against 4.9e-6 for the direct GEMM and 4.4e-6 for PyTorch's
 * float32 convolution.
 */
#ifndef SF_XNN_WINOGRAD_H
#define SF_XNN_WINOGRAD_H

#include <stdbool.h>
#include <stddef.h>

#include "sf_internal.h"
#include "sf_xnn_gemm.h"

typedef struct sf_wino sf_wino;

/* The environment variable SNAPFUSION_WINOGRAD (read when called): "0" disables Winograd
 * (SF_WINO_OFF), "force" uses it for every layer it can run regardless of the size heuristics
 * (SF_WINO_FORCE: tests, benchmarks), anything else or unset: SF_WINO_AUTO. */
typedef enum { SF_WINO_OFF = 0, SF_WINO_AUTO, SF_WINO_FORCE } sf_wino_mode;
sf_wino_mode sf_wino_env_mode(void);

/* Transform and pack 3x3 weights in PyTorch layout (out, in, 3, 3) and an optional bias (out,);
 * the output is clamped to [out_min, out_max]. Only for CPUs where sf_gemm_supported(). */
sf_status sf_wino_create(size_t in, size_t out, const float *weight, const float *bias,
                         float out_min, float out_max, sf_wino **out_wino);

/* y = conv3x3(x), stride 1, on `pool` (NULL: the calling thread); geo->stride_h/stride_w must
 * be 1, sizes were validated by the caller. Each thread that takes part computes in its own
 * scratch (up to about 8 MB, see SF_WINO_SCRATCH): allocated on the thread's first use, grown
 * to the largest size needed, freed when the thread exits. */
sf_status sf_wino_run(const sf_wino *w, const sf_gemm_geometry *geo, const float *x, float *y,
                      pthreadpool_t pool);

void sf_wino_destroy(sf_wino *w);

#endif /* SF_XNN_WINOGRAD_H */
