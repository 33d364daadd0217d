/* check.h - the subset of the Check unit-test API (libcheck.github.io) that
 * tests/c/test_kernels.c uses, for the cross-compiled Arm build run under
 * qemu-user (`make test-arm`): Debian's check package has no cross
 * (arm64) build to link against without enabling a foreign dpkg
 * architecture. Same macros, same output format for failures; each test
 * runs in-process (a failed assertion longjmps back to the runner).
 */
#ifndef G4_ARM_CHECK_SHIM_H
#define G4_ARM_CHECK_SHIM_H

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*ck_fn)(void);
typedef struct TCase { const char *name; ck_fn fns[64]; const char *names[64]; int n; } TCase;
typedef struct Suite { const char *name; TCase *tcs[16]; int n; } Suite;
typedef struct SRunner { Suite *s; int failed, run; } SRunner;
enum print_output { CK_NORMAL };

static jmp_buf ck_jmp;
static const char *ck_current;

#define START_TEST(name) static void name(void) {
#define END_TEST }

#define ck_assert_msg(expr, ...)                                                        \
    do {                                                                                \
        if (!(expr)) {                                                                  \
            fprintf(stderr, "%s:%d:F:%s: ", __FILE__, __LINE__, ck_current);            \
            fprintf(stderr, "" __VA_ARGS__);                                            \
            fprintf(stderr, " (%s)\n", #expr);                                         \
            longjmp(ck_jmp, 1);                                                         \
        }                                                                               \
    } while (0)
#define ck_assert(expr) ck_assert_msg(expr, "assertion failed")
#define ck_assert_int_eq(a, b) ck_assert_msg((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a), (long long)(b))
#define ck_assert_uint_eq(a, b) ck_assert_msg((unsigned long long)(a) == (unsigned long long)(b), "%llu != %llu", \
                                              (unsigned long long)(a), (unsigned long long)(b))
#define ck_assert_ptr_null(p) ck_assert_msg((p) == NULL, "pointer not NULL")
#define ck_assert_ptr_nonnull(p) ck_assert_msg((p) != NULL, "pointer NULL")

static inline Suite *suite_create(const char *name) {
    Suite *s = calloc(1, sizeof *s);
    s->name = name;
    return s;
}
static inline TCase *tcase_create(const char *name) {
    TCase *t = calloc(1, sizeof *t);
    t->name = name;
    return t;
}
static inline void tcase_set_timeout(TCase *t, double s) { (void)t; (void)s; }
#define tcase_add_test(tc, fn) do { (tc)->names[(tc)->n] = #fn; (tc)->fns[(tc)->n++] = (fn); } while (0)
static inline void suite_add_tcase(Suite *s, TCase *t) { s->tcs[s->n++] = t; }
static inline SRunner *srunner_create(Suite *s) {
    SRunner *r = calloc(1, sizeof *r);
    r->s = s;
    return r;
}
static inline void srunner_run_all(SRunner *r, int mode) {
    (void)mode;
    printf("Running suite(s): %s\n", r->s->name);
    for (volatile int i = 0; i < r->s->n; i++)
        for (volatile int j = 0; j < r->s->tcs[i]->n; j++) {
            ck_current = r->s->tcs[i]->names[j];
            r->run++;
            if (setjmp(ck_jmp) == 0) r->s->tcs[i]->fns[j]();
            else r->failed++;
        }
    printf("%d%%: Checks: %d, Failures: %d, Errors: 0\n", r->run ? 100 * (r->run - r->failed) / r->run : 100,
           r->run, r->failed);
}
static inline int srunner_ntests_failed(SRunner *r) { return r->failed; }
static inline void srunner_free(SRunner *r) {
    for (int i = 0; i < r->s->n; i++) free(r->s->tcs[i]);
    free(r->s);
    free(r);
}

#endif
