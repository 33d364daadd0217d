/* err.c - see g4err.h. */
#include "g4err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

g4_status g4_err_set(g4_err *err, g4_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = status;
        err->sys_errno = 0;
    }
    return status;
}

g4_status g4_err_errno(g4_err *err, int sys_errno, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < sizeof err->msg)
            snprintf(err->msg + n, sizeof err->msg - (size_t)n, ": %s", strerror(sys_errno));
        err->status = G4_ERR_IO;
        err->sys_errno = sys_errno;
    }
    return G4_ERR_IO;
}
