/* g4test.h - helpers shared by the Check unit tests. */
#ifndef G4TEST_H
#define G4TEST_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

/* ../shared, or $GEMMA4STACK_SHARED: test data (models/, hwloc-xml/). */
static inline const char *g4test_shared(void) {
    const char *s = getenv("GEMMA4STACK_SHARED");
    return s && *s ? s : "../shared";
}

static inline const char *g4test_path(char *buf, size_t cap, const char *rel) {
    snprintf(buf, cap, "%s/%s", g4test_shared(), rel);
    return buf;
}

/* Standard main: run one suite built by `make_suite`, exit non-zero on failure. */
#define G4TEST_MAIN(make_suite)                                        \
    int main(void) {                                                   \
        SRunner *sr = srunner_create(make_suite());                    \
        srunner_run_all(sr, CK_NORMAL);                                \
        int failed = srunner_ntests_failed(sr);                        \
        srunner_free(sr);                                              \
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;                   \
    }

#endif
