/* g4err.h - status codes and error messages shared by every part of the C core.
 *
 * Every fallible public function returns a g4_status and fills a caller-owned
 * g4_err. Nothing in the core calls exit() or abort() on bad input; the CPython
 * binding (csrc/python/g4py.c) maps statuses to Python exceptions:
 *
 *   G4_ERR_IO          -> OSError (FileNotFoundError when sys_errno == ENOENT)
 *   G4_ERR_FORMAT      -> gemma4stack.GGUFError (a ValueError): the file is malformed
 *   G4_ERR_UNSUPPORTED -> gemma4stack.UnsupportedError (a GGUFError): well formed, not supported
 *   G4_ERR_NOMEM       -> MemoryError
 *   G4_ERR_INVALID     -> ValueError: a bad argument from the caller
 *   G4_ERR_LIMIT       -> gemma4stack.LimitError (a ValueError): a cap was hit (context, sizes)
 *   G4_ERR_HW          -> RuntimeError: hwloc or the OS failed
 */
#ifndef G4_ERR_H
#define G4_ERR_H

#include <stddef.h>

typedef enum g4_status {
    G4_OK = 0,
    G4_ERR_IO = 1,
    G4_ERR_FORMAT = 2,
    G4_ERR_UNSUPPORTED = 3,
    G4_ERR_NOMEM = 4,
    G4_ERR_INVALID = 5,
    G4_ERR_LIMIT = 6,
    G4_ERR_HW = 7,
} g4_status;

typedef struct g4_err {
    g4_status status;
    int sys_errno;   /* errno for G4_ERR_IO, else 0 */
    char msg[512];   /* human readable, names the file/key/tensor at fault */
} g4_err;

/* Record an error (printf-style message) and return `status`, so callers can
 * write `return g4_err_set(err, G4_ERR_FORMAT, "bad magic in %s", path);`.
 * `err` may be NULL (the message is then dropped). */
g4_status g4_err_set(g4_err *err, g4_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like g4_err_set for G4_ERR_IO, keeping `errno` in err->sys_errno and
 * appending strerror(errno) to the message. */
g4_status g4_err_errno(g4_err *err, int sys_errno, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline void g4_err_clear(g4_err *err) {
    if (err) { err->status = G4_OK; err->sys_errno = 0; err->msg[0] = '\0'; }
}

#endif
