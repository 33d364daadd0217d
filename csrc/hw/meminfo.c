/* meminfo.c - how much memory this process can really use.
 *
 * hwloc reports installed memory per NUMA node but no free memory, and in
 * VMs with hot-plugged memory its NUMA numbers can be far below MemTotal.
 * So the running system's totals come from the kernel:
 *
 *   /proc/meminfo MemTotal, MemAvailable  (Documentation/filesystems/proc.rst:
 *       MemAvailable estimates memory available for new applications without
 *       swapping, counting reclaimable page cache)
 *   the cgroup memory limit of this process, the smallest along its path to
 *   the root (Documentation/admin-guide/cgroup-v2.rst memory.max and
 *   memory.current; cgroup-v1/memory.rst memory.limit_in_bytes and
 *   memory.usage_in_bytes). A container sees the host's MemAvailable, so
 *   available is capped at limit - working set, where working set = usage -
 *   inactive_file as Kubernetes and `docker stats` count it.
 */
#include "hw.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A v1 "no limit" is PAGE_COUNTER_MAX pages (0x7ffffffffffff000 with 4 KiB pages). */
#define G4_CGROUP_UNLIMITED (UINT64_C(1) << 60)

/* ---- small file readers ----------------------------------------------------- */

static void join(char *buf, size_t cap, const char *root, const char *path) {
    snprintf(buf, cap, "%s%s", root ? root : "", path);
}

/* First line of a file as an unsigned number; "max" -> UINT64_MAX. 0 on failure. */
static int read_u64_file(const char *path, uint64_t *v) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[64];
    int ok = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    if (!ok) return 0;
    if (!strncmp(line, "max", 3)) { *v = UINT64_MAX; return 1; }
    char *end;
    errno = 0;
    unsigned long long x = strtoull(line, &end, 10);
    if (errno || end == line) return 0;
    *v = x;
    return 1;
}

/* Value of `key` in a "key value" file such as memory.stat; 0 when absent. */
static uint64_t read_stat_key(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[256];
    uint64_t v = 0;
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, klen) && line[klen] == ' ') { v = strtoull(line + klen + 1, NULL, 10); break; }
    fclose(f);
    return v;
}

/* ---- cgroup limit ----------------------------------------------------------- */

/* Where this process's cgroup of one hierarchy lives in the file system.
 * v2: the "0::" line of /proc/self/cgroup and the cgroup2 mount;
 * v1: the line whose controller list holds "memory" and the cgroup mount
 * with the "memory" super option. Returns 1 and fills dir / mnt. */
static int cgroup_dir(const char *sysroot, int v2, char *dir, size_t dcap, char *mnt, size_t mcap) {
    char path[4096], line[4096], cg[2048] = "";
    int found = 0;
    join(path, sizeof path, sysroot, "/proc/self/cgroup");
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    while (!found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = 0; *c2 = 0;     /* line = hierarchy id, c1 + 1 = controllers, c2 + 1 = path */
        const char *ctrls = c1 + 1;
        if (v2 && !strcmp(line, "0") && !*ctrls) found = 1;
        if (!v2) {
            char tmp[512]; snprintf(tmp, sizeof tmp, ",%s,", ctrls);
            if (strstr(tmp, ",memory,")) found = 1;
        }
        if (found) snprintf(cg, sizeof cg, "%s", c2 + 1);
    }
    fclose(f);
    if (!found) return 0;

    /* mountinfo: id parent maj:min root mountpoint opts [optional...] - fstype source superopts */
    join(path, sizeof path, sysroot, "/proc/self/mountinfo");
    f = fopen(path, "r");
    if (!f) return 0;
    int ok = 0;
    while (!ok && fgets(line, sizeof line, f)) {
        char root[2048], mp[2048];
        if (sscanf(line, "%*s %*s %*s %2047s %2047s", root, mp) != 2) continue;
        char *dash = strstr(line, " - ");
        if (!dash) continue;
        char fstype[64], source[1024], super[1024] = "";
        if (sscanf(dash + 3, "%63s %1023s %1023s", fstype, source, super) < 2) continue;
        if (v2 ? strcmp(fstype, "cgroup2") : strcmp(fstype, "cgroup")) continue;
        if (!v2) {
            char tmp[1100]; snprintf(tmp, sizeof tmp, ",%s,", super);
            if (!strstr(tmp, ",memory,")) continue;
        }
        /* The cgroup path is relative to the hierarchy root; the mount may
           show a sub-tree of it (containers): strip the mount's root. */
        size_t rl = strlen(root);
        const char *rel = cg;
        if (strcmp(root, "/") && !strncmp(cg, root, rl) && (cg[rl] == '/' || !cg[rl])) rel = cg + rl;
        else if (strcmp(root, "/")) rel = "";    /* not below the visible root: use the mount itself */
        snprintf(mnt, mcap, "%s%s", sysroot ? sysroot : "", mp);
        snprintf(dir, dcap, "%s%s", mnt, rel);
        size_t dl = strlen(dir);
        while (dl > strlen(mnt) && dir[dl - 1] == '/') dir[--dl] = 0;
        ok = 1;
    }
    fclose(f);
    return ok;
}

/* Smallest limit along dir -> mnt, and the working set of the cgroup that sets it. */
static void cgroup_limit(const char *sysroot, int v2, uint64_t *limit, uint64_t *working_set) {
    char dir[4096], mnt[4096], path[4200];
    *limit = 0; *working_set = 0;
    if (!cgroup_dir(sysroot, v2, dir, sizeof dir, mnt, sizeof mnt)) return;
    const char *lim_name = v2 ? "memory.max" : "memory.limit_in_bytes";
    const char *use_name = v2 ? "memory.current" : "memory.usage_in_bytes";
    const char *inactive = v2 ? "inactive_file" : "total_inactive_file";
    size_t ml = strlen(mnt);
    for (;;) {
        uint64_t v;
        snprintf(path, sizeof path, "%s/%s", dir, lim_name);
        if (read_u64_file(path, &v) && v < G4_CGROUP_UNLIMITED && (*limit == 0 || v < *limit)) {
            uint64_t use = 0;
            snprintf(path, sizeof path, "%s/%s", dir, use_name);
            read_u64_file(path, &use);
            snprintf(path, sizeof path, "%s/memory.stat", dir);
            uint64_t inact = read_stat_key(path, inactive);
            *limit = v;
            *working_set = use > inact ? use - inact : 0;
        }
        size_t dl = strlen(dir);
        if (dl <= ml) break;
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < ml) break;
        *slash = 0;
    }
}

/* ---- public ----------------------------------------------------------------- */

g4_status g4_hw_read_memory(const char *sysroot, uint64_t *mem_total, uint64_t *mem_available,
                            uint64_t *cgroup_limit_out, g4_err *err) {
    char path[4096], line[256];
    join(path, sizeof path, sysroot, "/proc/meminfo");
    FILE *f = fopen(path, "r");
    if (!f) return g4_err_errno(err, errno, "cannot read %s", path);
    uint64_t total = 0, avail = 0, free_kb = 0;
    int have_avail = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb;
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) total = kb * 1024;
        else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) { avail = kb * 1024; have_avail = 1; }
        else if (sscanf(line, "MemFree: %llu kB", &kb) == 1) free_kb = kb;
    }
    fclose(f);
    if (!total) return g4_err_set(err, G4_ERR_HW, "no MemTotal line in %s", path);
    if (!have_avail) avail = free_kb * 1024;   /* kernels before 3.14 have no MemAvailable */

    uint64_t limit = 0;
    for (int v2 = 1; v2 >= 0; v2--) {
        uint64_t l, ws;
        cgroup_limit(sysroot, v2, &l, &ws);
        if (!l) continue;
        if (!limit || l < limit) limit = l;
        uint64_t room = l > ws ? l - ws : 0;
        if (room < avail) avail = room;
    }
    *mem_total = total;
    *mem_available = avail;
    *cgroup_limit_out = limit;
    return G4_OK;
}
