/* fuzz.h - helpers shared by the libFuzzer harnesses in csrc/fuzz/.
 *
 * Each harness defines LLVMFuzzerTestOneInput (libFuzzer,
 * https://llvm.org/docs/LibFuzzer.html) and is linked either with
 * -fsanitize=fuzzer (make fuzz) or with replay_main.c, which feeds it the
 * files named on its command line (make test-asan, tests/test_fuzz_regress.py).
 *
 * A harness checks the promises of the public headers (pointers inside the
 * file, error messages filled, ids in range) and calls g4fuzz_fail() when
 * one is broken: abort() turns a broken promise into a crash libFuzzer
 * records and minimizes, like the sanitizers' own reports. The code under
 * test must never abort; only harnesses do.
 */
#ifndef G4_FUZZ_H
#define G4_FUZZ_H

#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ---- failing a check ---------------------------------------------------- */

__attribute__((noreturn, format(printf, 1, 2)))
static inline void g4fuzz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("g4fuzz: broken promise: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

#define G4FUZZ_CHECK(cond, ...) do { if (!(cond)) g4fuzz_fail(__VA_ARGS__); } while (0)

/* A failed call must say why: a status and a message. */
#define G4FUZZ_CHECK_ERR(err, what)                                                  \
    G4FUZZ_CHECK((err).status != G4_OK && (err).msg[0] != '\0',                      \
                 "%s failed without an error status and message (status %d)", what,  \
                 (int)(err).status)

/* ---- an in-memory file -------------------------------------------------- */

/* The readers under test take a path (the GGUF reader maps it, hwloc reads
 * it). A memfd reached through /proc/self/fd/N is a real file that never
 * touches the disk; one is reused for every input. */
typedef struct g4fuzz_file { int fd; char path[64]; } g4fuzz_file;

static inline const char *g4fuzz_file_put(g4fuzz_file *f, const uint8_t *data, size_t n) {
    if (f->fd <= 0) {
        f->fd = memfd_create("g4fuzz", MFD_CLOEXEC);
        if (f->fd < 0) { perror("memfd_create"); abort(); }
        snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
    }
    if (ftruncate(f->fd, 0) != 0) { perror("ftruncate"); abort(); }
    for (size_t done = 0; done < n;) {
        ssize_t w = pwrite(f->fd, data + done, n - done, (off_t)done);
        if (w <= 0) { perror("pwrite"); abort(); }
        done += (size_t)w;
    }
    return f->path;
}

/* ---- reading structured input ------------------------------------------- */

/* A cursor over the fuzz input; reads past the end give zeros / empty
 * strings, so every input is a valid (if short) description. */
typedef struct g4fuzz_in { const uint8_t *p; size_t n; } g4fuzz_in;

static inline uint8_t g4fuzz_u8(g4fuzz_in *in) {
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t g4fuzz_u16(g4fuzz_in *in) {
    uint16_t lo = g4fuzz_u8(in);
    return (uint16_t)(lo | (uint16_t)g4fuzz_u8(in) << 8);
}

/* Up to `len` bytes (fewer at the end of the input). */
static inline const uint8_t *g4fuzz_take(g4fuzz_in *in, size_t len, size_t *got) {
    const uint8_t *p = in->p;
    *got = len < in->n ? len : in->n;
    in->p += *got;
    in->n -= *got;
    return p;
}

/* ---- test data ----------------------------------------------------------- */

/* $GEMMA4STACK_SHARED/<rel>, default ../shared as in tests/c/g4test.h. */
static inline const char *g4fuzz_shared(char *buf, size_t cap, const char *rel) {
    const char *s = getenv("GEMMA4STACK_SHARED");
    snprintf(buf, cap, "%s/%s", s && *s ? s : "../shared", rel);
    return buf;
}

/* Keep a value alive so reads of it are not optimized away. */
static volatile uint64_t g4fuzz_sink;

static inline void g4fuzz_touch(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) h = h * 31 + b[i];
    g4fuzz_sink += h;
}

#endif
