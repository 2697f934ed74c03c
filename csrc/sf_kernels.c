/* sf_kernels.c — our own vectorized kernels (filled in by its owner). */
#include "sf_internal.h"

const char *sf_kernel_isa(void) {
    return "generic";
}
