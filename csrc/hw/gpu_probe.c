/* gpu_probe.c - GPUs found by asking the driver, not hwloc.
 *
 * Debian's libhwloc-plugins 2.9 ships the pci, opencl, gl and xml plugins only
 * (CUDA, NVML, RSMI and LevelZero are non-free), so on a real NVIDIA or AMD
 * machine hwloc sees a PCI display controller and no memory. Three probes fill
 * that gap; hw.c merges their GPUs with hwloc's by PCI bus id:
 *
 *   NVIDIA  NVML (libnvidia-ml.so.1, shipped with the driver), dlopen'ed at run
 *           time. API: NVML API Reference Guide (docs.nvidia.com/deploy/nvml-api),
 *           types as in nvml.h: nvmlReturn_t is an int (NVML_SUCCESS 0),
 *           nvmlDevice_t an opaque pointer, nvmlMemory_t {total, free, used}
 *           unsigned long long, nvmlPciInfo_t as declared below.
 *   AMD     amdgpu's sysfs files (Linux Documentation/gpu/amdgpu/driver-misc.rst:
 *           mem_info_vram_total, mem_info_vram_used, in bytes).
 *   Intel   xe's per-tile physical_vram_size_bytes (drivers/gpu/drm/xe/xe_tile_sysfs.c,
 *           created for discrete GPUs only). i915 exposes no local-memory size in
 *           sysfs, so an Arc card under i915 keeps hwloc's answer.
 *   Apple   sysctl (hw.memsize, machdep.cpu.brand_string, hw.perflevel{0,1}.physicalcpu).
 */
#define _GNU_SOURCE
#include "hw.h"

#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#ifdef __APPLE__
#include <sys/sysctl.h>
#endif

static void gp_copy(char *dst, size_t cap, const char *src) {
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, src, n);
    dst[n] = 0;
}

static void gp_note(char *why, size_t cap, const char *fmt, const char *a, const char *b) {
    if (why && cap) snprintf(why, cap, fmt, a, b ? b : "");
}

static void gpu_init(g4_hw_gpu *g) {
    memset(g, 0, sizeof *g);
    g->memory_bytes = -1;
    g->memory_free_bytes = -1;
}

double g4_hw_peak_bandwidth_gbs(int mem_clock_mhz, int bus_width_bits) {
    if (mem_clock_mhz <= 0 || bus_width_bits <= 0) return 0.0;
    return 2.0 * (double)mem_clock_mhz * 1e6 * ((double)bus_width_bits / 8.0) / 1e9;
}

int g4_hw_parse_busid(const char *s, unsigned *domain, unsigned *bus, unsigned *dev, unsigned *func) {
    unsigned d = 0, b = 0, v = 0, f = 0;
    int used = 0;
    if (!s || sscanf(s, "%x:%x:%x.%x%n", &d, &b, &v, &f, &used) != 4 || s[used] != 0) return 0;
    if (b > 0xff || v > 0x1f || f > 7 || d > 0xffff) return 0;
    *domain = d; *bus = b; *dev = v; *func = f;
    return 1;
}

static void set_busid(g4_hw_gpu *g, const char *raw) {
    unsigned d, b, v, f;
    if (g4_hw_parse_busid(raw, &d, &b, &v, &f))
        snprintf(g->pci_busid, sizeof g->pci_busid, "%04x:%02x:%02x.%x", d, b, v, f);
}

/* ---- NVIDIA: NVML through dlopen ---------------------------------------------- */

typedef int nvml_ret;
typedef struct nvml_dev *nvml_device;
typedef struct { unsigned long long total, free, used; } nvml_memory;
typedef struct {                   /* nvmlPciInfo_t (nvml.h, NVML API >= 10) */
    char busIdLegacy[16];          /* NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE */
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];                /* NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE: "00000000:65:00.0" */
} nvml_pci;
enum { NVML_SUCCESS = 0, NVML_CLOCK_MEM = 2, NVML_NAME_LEN = 96 };

typedef struct nvml_api {
    nvml_ret (*init)(void);
    nvml_ret (*shutdown)(void);
    nvml_ret (*count)(unsigned *);
    nvml_ret (*handle)(unsigned, nvml_device *);
    nvml_ret (*name)(nvml_device, char *, unsigned);
    nvml_ret (*memory)(nvml_device, nvml_memory *);
    nvml_ret (*pci)(nvml_device, nvml_pci *);
    nvml_ret (*cc)(nvml_device, int *, int *);             /* optional */
    nvml_ret (*bus_width)(nvml_device, unsigned *);        /* optional */
    nvml_ret (*max_clock)(nvml_device, int, unsigned *);   /* optional */
} nvml_api;

/* The versioned symbol the driver exports, else the old name. */
static void *nvml_sym(void *h, const char *versioned, const char *plain) {
    void *p = versioned ? dlsym(h, versioned) : NULL;
    return p ? p : plain ? dlsym(h, plain) : NULL;
}

int g4_hw_probe_nvml(const char *lib, g4_hw_gpu *out, int cap, char *why, size_t why_cap) {
    const char *name = lib ? lib : "libnvidia-ml.so.1";
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        gp_note(why, why_cap, "NVML: %s not loadable (no NVIDIA driver)%s", name, NULL);
        return 0;
    }
    nvml_api api;
    *(void **)&api.init = nvml_sym(h, "nvmlInit_v2", "nvmlInit");
    *(void **)&api.shutdown = nvml_sym(h, NULL, "nvmlShutdown");
    *(void **)&api.count = nvml_sym(h, "nvmlDeviceGetCount_v2", "nvmlDeviceGetCount");
    *(void **)&api.handle = nvml_sym(h, "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex");
    *(void **)&api.name = nvml_sym(h, NULL, "nvmlDeviceGetName");
    *(void **)&api.memory = nvml_sym(h, NULL, "nvmlDeviceGetMemoryInfo");
    *(void **)&api.pci = nvml_sym(h, "nvmlDeviceGetPciInfo_v3", NULL);
    *(void **)&api.cc = nvml_sym(h, NULL, "nvmlDeviceGetCudaComputeCapability");
    *(void **)&api.bus_width = nvml_sym(h, NULL, "nvmlDeviceGetMemoryBusWidth");
    *(void **)&api.max_clock = nvml_sym(h, NULL, "nvmlDeviceGetMaxClockInfo");
    int n = 0;
    unsigned count = 0;
    if (!api.init || !api.shutdown || !api.count || !api.handle || !api.name || !api.memory || !api.pci) {
        gp_note(why, why_cap, "NVML: %s lacks a required function%s", name, NULL);
    } else if (api.init() != NVML_SUCCESS) {
        gp_note(why, why_cap, "NVML: nvmlInit failed in %s (driver not loaded?)%s", name, NULL);
    } else {
        if (api.count(&count) != NVML_SUCCESS) count = 0;
        for (unsigned i = 0; i < count && n < cap; i++) {
            nvml_device d = NULL;
            if (api.handle(i, &d) != NVML_SUCCESS) continue;
            g4_hw_gpu *g = &out[n];
            gpu_init(g);
            char nm[NVML_NAME_LEN] = "";
            if (api.name(d, nm, sizeof nm) == NVML_SUCCESS) { nm[sizeof nm - 1] = 0; gp_copy(g->name, sizeof g->name, nm); }
            gp_copy(g->vendor, sizeof g->vendor, "NVIDIA Corporation");
            gp_copy(g->backend, sizeof g->backend, "NVML");
            gp_copy(g->backends, sizeof g->backends, "NVML");
            snprintf(g->osdevs, sizeof g->osdevs, "nvml%u", i);
            nvml_memory m;
            if (api.memory(d, &m) == NVML_SUCCESS && m.total > 0 && m.total <= INT64_MAX) {
                g->memory_bytes = (int64_t)m.total;
                g->memory_free_bytes = m.free <= m.total ? (int64_t)m.free : -1;
            }
            nvml_pci p;
            memset(&p, 0, sizeof p);
            if (api.pci(d, &p) == NVML_SUCCESS) {
                p.busId[sizeof p.busId - 1] = 0;
                set_busid(g, p.busId);
            }
            int ma = 0, mi = 0;
            if (api.cc && api.cc(d, &ma, &mi) == NVML_SUCCESS && ma > 0) { g->cc_major = ma; g->cc_minor = mi; }
            unsigned w = 0, clk = 0;
            if (api.bus_width && api.bus_width(d, &w) == NVML_SUCCESS && w < 1u << 16) g->mem_bus_width_bits = (int)w;
            if (api.max_clock && api.max_clock(d, NVML_CLOCK_MEM, &clk) == NVML_SUCCESS && clk < 1u << 20)
                g->mem_clock_mhz = (int)clk;
            g->peak_bandwidth_gbs = g4_hw_peak_bandwidth_gbs(g->mem_clock_mhz, g->mem_bus_width_bits);
            n++;
        }
        api.shutdown();
    }
    dlclose(h);
    return n;
}

/* ---- AMD and Intel: DRM sysfs ---------------------------------------------------- */

/* The first line of a small sysfs file, newline stripped; 0 when unreadable. */
static int read_line(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int ok = fgets(buf, (int)cap, f) != NULL;
    fclose(f);
    if (!ok) return 0;
    buf[strcspn(buf, "\r\n")] = 0;
    return 1;
}

static int64_t read_u64(const char *path) {
    char buf[64];
    if (!read_line(path, buf, sizeof buf)) return -1;
    char *end;
    unsigned long long v = strtoull(buf, &end, 0);
    if (end == buf || v > INT64_MAX) return -1;
    return (int64_t)v;
}

/* "card" followed by digits only: connectors ("card0-DP-1") and render nodes are not GPUs. */
static int is_card(const char *name) {
    if (strncmp(name, "card", 4) || !name[4]) return 0;
    for (const char *p = name + 4; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    return 1;
}

/* The PCI bus id of a DRM device: PCI_SLOT_NAME in its uevent (real and fake
   trees alike), else the name the `device` symlink points at. */
static void drm_busid(const char *dev, g4_hw_gpu *g) {
    char path[1100], line[256];
    snprintf(path, sizeof path, "%s/uevent", dev);
    FILE *f = fopen(path, "r");
    if (f) {
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n")] = 0;
            if (!strncmp(line, "PCI_SLOT_NAME=", 14)) { set_busid(g, line + 14); break; }
        }
        fclose(f);
    }
    if (g->pci_busid[0]) return;
    char target[512];
    ssize_t n = readlink(dev, target, sizeof target - 1);
    if (n <= 0) return;
    target[n] = 0;
    const char *base = strrchr(target, '/');
    set_busid(g, base ? base + 1 : target);
}

/* Sum of tile<N>/physical_vram_size_bytes under an xe device; -1 when none. */
static int64_t xe_vram(const char *dev) {
    DIR *d = opendir(dev);
    if (!d) return -1;
    int64_t total = -1;
    struct dirent *e;
    char path[1400];
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "tile", 4)) continue;
        snprintf(path, sizeof path, "%s/%s/physical_vram_size_bytes", dev, e->d_name);
        int64_t v = read_u64(path);
        if (v > 0) total = (total < 0 ? 0 : total) + v;
    }
    closedir(d);
    return total;
}

static int cmp_name(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    size_t lx = strlen(x), ly = strlen(y);   /* card2 before card10 */
    return lx != ly ? (lx < ly ? -1 : 1) : strcmp(x, y);
}

int g4_hw_probe_drm(const char *sysfs_root, g4_hw_gpu *out, int cap, char *why, size_t why_cap) {
    if (!sysfs_root) sysfs_root = getenv("GEMMA4STACK_SYSFS_ROOT");
    if (!sysfs_root || !*sysfs_root) sysfs_root = "/sys";
    char dir[768];
    snprintf(dir, sizeof dir, "%s/class/drm", sysfs_root);
    DIR *d = opendir(dir);
    if (!d) {
        gp_note(why, why_cap, "sysfs: no %s%s", dir, NULL);
        return 0;
    }
    char *names[256];
    int nn = 0;
    struct dirent *e;
    while ((e = readdir(d)) && nn < 256)
        if (is_card(e->d_name) && (names[nn] = strdup(e->d_name))) nn++;
    closedir(d);
    qsort(names, (size_t)nn, sizeof names[0], cmp_name);
    int n = 0;
    for (int i = 0; i < nn; i++) {
        char dev[1024], path[1100], vendor[32];
        snprintf(dev, sizeof dev, "%s/%s/device", dir, names[i]);
        snprintf(path, sizeof path, "%s/vendor", dev);
        if (n >= cap || !read_line(path, vendor, sizeof vendor)) continue;
        int amd = !strcasecmp(vendor, "0x1002"), intel = !strcasecmp(vendor, "0x8086");
        if (!amd && !intel) continue;      /* NVIDIA comes from NVML */
        int64_t total, used = -1;
        if (amd) {
            snprintf(path, sizeof path, "%s/mem_info_vram_total", dev);
            total = read_u64(path);
            snprintf(path, sizeof path, "%s/mem_info_vram_used", dev);
            used = read_u64(path);
        } else {
            total = xe_vram(dev);
        }
        if (total <= 0) continue;          /* an APU / integrated GPU: no local memory */
        g4_hw_gpu *g = &out[n];
        gpu_init(g);
        gp_copy(g->vendor, sizeof g->vendor, amd ? "Advanced Micro Devices, Inc. [AMD/ATI]" : "Intel Corporation");
        gp_copy(g->backend, sizeof g->backend, "sysfs");
        gp_copy(g->backends, sizeof g->backends, "sysfs");
        gp_copy(g->osdevs, sizeof g->osdevs, names[i]);
        g->memory_bytes = total;
        if (used >= 0 && used <= total) g->memory_free_bytes = total - used;
        snprintf(path, sizeof path, "%s/product_name", dev);   /* amdgpu, from the board FRU; often absent */
        char pn[128];
        if (read_line(path, pn, sizeof pn) && pn[0]) gp_copy(g->name, sizeof g->name, pn);
        drm_busid(dev, g);
        n++;
    }
    for (int i = 0; i < nn; i++) free(names[i]);
    if (!n) gp_note(why, why_cap, "sysfs: no AMD or Intel GPU with local memory under %s%s", dir, NULL);
    return n;
}

/* ---- Apple silicon: sysctl ------------------------------------------------------- */

int g4_hw_apple_parse(const char *text, g4_hw_apple *out) {
    memset(out, 0, sizeof *out);
    if (!text) return 0;
    const char *p = text;
    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char line[256];
        if (len >= sizeof line) len = sizeof line - 1;
        memcpy(line, p, len);
        line[len] = 0;
        p += eol ? (size_t)(eol - p) + 1 : strlen(p);
        char *colon = strchr(line, ':');
        if (!colon) continue;
        *colon = 0;
        char *val = colon + 1;
        while (*val == ' ' || *val == '\t') val++;
        val[strcspn(val, "\r")] = 0;
        if (!strcmp(line, "hw.memsize")) out->memsize = strtoull(val, NULL, 10);
        else if (!strcmp(line, "machdep.cpu.brand_string")) gp_copy(out->brand, sizeof out->brand, val);
        else if (!strcmp(line, "hw.perflevel0.physicalcpu")) out->p_cores = atoi(val);
        else if (!strcmp(line, "hw.perflevel1.physicalcpu")) out->e_cores = atoi(val);
    }
    if (out->p_cores < 0) out->p_cores = 0;
    if (out->e_cores < 0) out->e_cores = 0;
    return !strncmp(out->brand, "Apple ", 6) && out->memsize > 0;
}

int g4_hw_apple_probe(g4_hw_apple *out) {
    memset(out, 0, sizeof *out);
#ifdef __APPLE__
    size_t len = sizeof out->brand;
    if (sysctlbyname("machdep.cpu.brand_string", out->brand, &len, NULL, 0) != 0) out->brand[0] = 0;
    out->brand[sizeof out->brand - 1] = 0;
    uint64_t mem = 0;
    len = sizeof mem;
    if (sysctlbyname("hw.memsize", &mem, &len, NULL, 0) == 0) out->memsize = mem;
    int v = 0;
    len = sizeof v;
    if (sysctlbyname("hw.perflevel0.physicalcpu", &v, &len, NULL, 0) == 0) out->p_cores = v;
    len = sizeof v;
    if (sysctlbyname("hw.perflevel1.physicalcpu", &v, &len, NULL, 0) == 0) out->e_cores = v;
    return !strncmp(out->brand, "Apple ", 6) && out->memsize > 0;
#else
    return 0;
#endif
}

void g4_hw_apple_gpu(const g4_hw_apple *a, g4_hw_gpu *out) {
    gpu_init(out);
    gp_copy(out->name, sizeof out->name, a->brand);
    gp_copy(out->vendor, sizeof out->vendor, "Apple");
    gp_copy(out->backend, sizeof out->backend, "Metal");
    gp_copy(out->backends, sizeof out->backends, "sysctl");
    out->memory_bytes = a->memsize <= INT64_MAX ? (int64_t)a->memsize : -1;
    out->unified = 1;
}
