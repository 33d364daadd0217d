/* replay_main.c - run a fuzz harness over saved inputs, without libFuzzer.
 *
 *   replay_<harness> FILE_OR_DIR...
 *
 * Links with one harness (fuzz_*.c) in place of -fsanitize=fuzzer's main, so
 * the committed regression inputs (tests/data/fuzz-regress/<harness>/) and
 * seed corpora can be replayed by any compiler, with or without sanitizers
 * (make test-asan, tests/test_fuzz_regress.py). Each input is read into a
 * heap buffer of exactly its size, as libFuzzer does, so ASan sees overreads.
 * Exit status 0 when every input ran; a broken check aborts as under libFuzzer.
 */
#include "fuzz.h"

#include <dirent.h>
#include <sys/stat.h>

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv) { return 0; }

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return -1; }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += r;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (!buf) { fprintf(stderr, "%s: out of memory\n", path); return -1; }
    uint8_t *exact = malloc(n ? n : 1);   /* no slack after the input */
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of a directory, in name order (reproducible runs). */
static int run_dir(const char *dir, int *count) {
    DIR *d = opendir(dir);
    if (!d) { perror(dir); return -1; }
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        names = realloc(names, (n + 1) * sizeof *names);
        names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
        sprintf(names[n++], "%s/%s", dir, e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat sb;
        if (stat(names[i], &sb) == 0 && S_ISREG(sb.st_mode)) {
            if (run_file(names[i]) < 0) rc = -1;
            else (*count)++;
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv) {
    LLVMFuzzerInitialize(&argc, &argv);
    int count = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) { perror(argv[i]); rc = 1; continue; }
        if (S_ISDIR(sb.st_mode)) { if (run_dir(argv[i], &count) < 0) rc = 1; }
        else if (run_file(argv[i]) < 0) rc = 1;
        else count++;
    }
    fprintf(stderr, "%s: %d inputs replayed\n", argv[0], count);
    return rc;
}
