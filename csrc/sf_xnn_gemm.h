/*
 * sf_xnn_gemm.h — the engine's own blocked GEMM for dense convolutions and fully connected
 * layers (internal to sf_xnn.c).
 *
 * XNNPACK's f32 convolution walks the whole packed weight matrix for every 7-row output tile;
 * when the weights (kh*kw*in x out floats) outgrow the L2 cache, as in SD's 3x3 convolutions
 * at 640/1280 channels, it becomes bound by the L3 bandwidth. This GEMM blocks the reduction
 * dimension so that a slice of weights stays in L1/L2 while a block of output rows is computed
 * (BLIS-style), with an AVX-512 12x32 register tile. A convolution is an implicit im2col: the
 * rows of the packed input block are copied straight from the NHWC input (no im2col buffer).
 * It is used on x86-64 CPUs with AVX-512F; elsewhere sf_xnn.c uses XNNPACK.
 */
#ifndef SF_XNN_GEMM_H
#define SF_XNN_GEMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sf_internal.h"

typedef struct sf_gemm sf_gemm;

/* Geometry of a convolution as an implicit GEMM. A fully connected layer is the 1x1 case with
 * h = rows, w = 1. */
typedef struct {
    size_t batch, h, w;         /* input (batch, h, w, in) NHWC */
    size_t out_h, out_w;        /* output (batch, out_h, out_w, out) NHWC */
    uint32_t stride_h, stride_w;
    uint32_t pad_top, pad_left; /* bottom/right padding is implied by out_h/out_w */
} sf_gemm_geometry;

/* True if this CPU runs the own GEMM (x86-64 with AVX-512F, and not disabled by the
 * environment variable SNAPFUSION_GEMM=xnnpack). */
bool sf_gemm_supported(void);

/* Pack weights in PyTorch layout (out, in, kh, kw) (a linear layer's (out, in) is the 1x1
 * case) and an optional bias (out,). The output is clamped to [out_min, out_max]. */
sf_status sf_gemm_create(size_t in, size_t out, uint32_t kh, uint32_t kw, const float *weight,
                         const float *bias, float out_min, float out_max, sf_gemm **out_gemm);

/* y = conv(x) on `pool` (NULL: the calling thread). Sizes were validated by the caller. */
sf_status sf_gemm_run(const sf_gemm *g, const sf_gemm_geometry *geo, const float *x, float *y,
                      pthreadpool_t pool);

void sf_gemm_destroy(sf_gemm *g);

#endif /* SF_XNN_GEMM_H */
