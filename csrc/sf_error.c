/* sf_error.c — status names and the thread-local last-error message. */
#include <stdio.h>
#include <string.h>

#include "sf_internal.h"

static _Thread_local char sf_error_text[1024];

const char *sf_status_str(sf_status status) {
    switch (status) {
    case SF_OK: return "SF_OK";
    case SF_ERR_INVALID_ARG: return "SF_ERR_INVALID_ARG";
    case SF_ERR_SHAPE: return "SF_ERR_SHAPE";
    case SF_ERR_OOM: return "SF_ERR_OOM";
    case SF_ERR_IO: return "SF_ERR_IO";
    case SF_ERR_FORMAT: return "SF_ERR_FORMAT";
    case SF_ERR_UNSUPPORTED: return "SF_ERR_UNSUPPORTED";
    case SF_ERR_XNNPACK: return "SF_ERR_XNNPACK";
    case SF_ERR_CANCELLED: return "SF_ERR_CANCELLED";
    }
    return "SF_ERR_UNKNOWN";
}

const char *sf_last_error(void) {
    return sf_error_text;
}

void sf_clear_error(void) {
    sf_error_text[0] = '\0';
}

sf_status sf_error(sf_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sf_error_text, sizeof sf_error_text, fmt, ap);
    va_end(ap);
    return status;
}

bool sf_mul_n_ok(size_t *out, int n, ...) {
    va_list ap;
    size_t acc = 1;
    bool ok = true;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        size_t f = va_arg(ap, size_t);
        if (ok && __builtin_mul_overflow(acc, f, &acc))
            ok = false;
    }
    va_end(ap);
    *out = ok ? acc : 0;
    return ok;
}
