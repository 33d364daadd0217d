/* hw.c - describe a machine with hwloc 2.x: CPU, caches, CPU kinds, NUMA
 * memory and GPUs; memory totals and SIMD of the running machine come from
 * meminfo.c and cpuid.c.
 *
 * hwloc API: https://www.open-mpi.org/projects/hwloc/doc/v2.9.0/ ("I/O
 * devices", "CPU kinds", "Exporting topologies to XML"). The topology is
 * either this machine or an exported XML (hwloc_topology_set_xml), so other
 * machines can be described and tested. Sections: topology, CPU, caches, CPU
 * kinds, memory, GPUs, public entry points.
 */
#include "hw.h"

#include <errno.h>
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/utsname.h>

/* ---- topology ----------------------------------------------------------------- */

/* hwloc 2.9 (Debian bookworm) dereferences NULL while loading an XML whose
 * <object> has a cpuset but no complete_cpuset, or a nodeset but no
 * complete_nodeset: the process dies (found by csrc/fuzz/fuzz_hwloc.c; fixed
 * upstream by open-mpi/hwloc PR #783 "xml: reject imported object missing
 * complete_cpuset/nodeset"). lstopo always writes the sets in pairs, so such a
 * file is malformed; refuse it before hwloc reads it. hwloc's own minimal XML
 * parser reads broken quoting its own way, so start tags must be well formed
 * (XML 1.0 section 3.1: name="value" pairs apart by spaces, no '<' in a
 * value), which every file libxml2 or lstopo accepts is. */
typedef struct xml_scan { FILE *f; int line; } xml_scan;

static int xs_get(xml_scan *x) {
    int c = getc(x->f);
    if (c == '\n') x->line++;
    return c;
}

static int xs_space(int c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static int xs_namechar(int c) {
    return c == '_' || c == ':' || c == '-' || c == '.' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c >= 0x80;
}

/* hwloc_bitmap_sscanf reads what hwloc_bitmap_snprintf writes: 32-bit groups "0x" + hex
 * digits joined by ',', empty for a zero group after the first, the first possibly
 * "0xf...f" (an infinite set). hwloc 2.9 fails an
 * assertion, aborting the process, on a value such as ",0x1" (found by fuzz_hwloc), so
 * every *cpuset / *nodeset value must have that form. */
static int xs_hex(int c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static int xs_bitmap_group_ok(const char *g, size_t n, int first) {
    if (!first && n == 0) return 1;   /* a zero group after the first: "0x00000011,,0x0" */
    if (n < 3 || g[0] != '0' || g[1] != 'x') return 0;
    if (first && n == 7 && !memcmp(g + 2, "f...f", 5)) return 1;
    if (n > 2 + 16) return 0;
    for (size_t i = 2; i < n; i++)
        if (!xs_hex((unsigned char)g[i])) return 0;
    return 1;
}

static int xs_ends(const char *s, size_t n, const char *suffix) {
    size_t k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int xs_is_bitmap(const char *name, size_t n) { return xs_ends(name, n, "cpuset") || xs_ends(name, n, "nodeset"); }

/* After "<name": the attributes up to '>'. Sets bits 1..4 of *sets for
   cpuset, complete_cpuset, nodeset, complete_nodeset. 0; -1 when malformed;
   -2 when the bitmap attribute copied to bad_attr is not an hwloc bitmap. */
static int xs_attributes(xml_scan *x, int c, int *sets, char *bad_attr, size_t bad_cap) {
    static const char *const names[] = {"cpuset", "complete_cpuset", "nodeset", "complete_nodeset"};
    for (;;) {
        if (!xs_space(c) && c != '/' && c != '>') return -1;   /* a space before each attribute */
        while (xs_space(c)) c = xs_get(x);
        if (c == '/') c = xs_get(x);
        if (c == '>') return 0;
        char name[32];
        size_t n = 0;
        while (xs_namechar(c)) { if (n < sizeof name - 1) name[n++] = (char)c; c = xs_get(x); }
        name[n] = 0;
        while (xs_space(c)) c = xs_get(x);
        if (!n || c != '=') return -1;
        do c = xs_get(x); while (xs_space(c));
        if (c != '"' && c != '\'') return -1;
        int q = c, bitmap = xs_is_bitmap(name, n), ok = 1, first = 1;
        char grp[20];
        size_t gn = 0;
        while ((c = xs_get(x)) != q) {
            if (c == EOF || c == '<') return -1;
            if (!bitmap) continue;
            if (c == ',') { ok &= xs_bitmap_group_ok(grp, gn, first); first = 0; gn = 0; }
            else if (gn < sizeof grp) grp[gn++] = (char)c;
            else ok = 0;
        }
        if (bitmap && !(ok && xs_bitmap_group_ok(grp, gn, first))) {
            snprintf(bad_attr, bad_cap, "%s", name);
            return -2;
        }
        for (int i = 0; i < 4; i++)
            if (!strcmp(name, names[i])) *sets |= 1 << i;
        c = xs_get(x);
    }
}

static g4_status check_xml_sets(const char *path, g4_err *err) {
    xml_scan x = {fopen(path, "rb"), 1};
    if (!x.f) return g4_err_errno(err, errno, "cannot open hwloc XML topology %s", path);
    g4_status st = G4_OK;
    for (int c = xs_get(&x); st == G4_OK && c != EOF; c = xs_get(&x)) {
        if (c != '<') continue;
        int line = x.line;
        c = xs_get(&x);
        if (c == '?' || c == '!' || c == '/') {   /* declarations, comments, end tags */
            while (c != EOF && c != '>') c = xs_get(&x);
            continue;
        }
        char name[16];
        size_t n = 0;
        while (xs_namechar(c)) { if (n < sizeof name - 1) name[n++] = (char)c; c = xs_get(&x); }
        name[n] = 0;
        int sets = 0, rc = -1;
        char bad[32] = "";
        if (n) rc = xs_attributes(&x, c, &sets, bad, sizeof bad);
        if (rc == -2)
            st = g4_err_set(err, G4_ERR_INVALID, "%s line %d: <%s %s=...> is not an hwloc bitmap "
                            "(\"0x\" and hex digits in groups joined by ',')", path, line, name, bad);
        else if (rc < 0)
            st = g4_err_set(err, G4_ERR_INVALID, "%s line %d: malformed XML tag <%s", path, line, name);
        else if (!strcmp(name, "object") && (((sets & 1) != 0) != ((sets & 2) != 0) ||
                                             ((sets & 4) != 0) != ((sets & 8) != 0)))
            st = g4_err_set(err, G4_ERR_INVALID,
                            "%s line %d: an <object> has a cpuset or nodeset without its complete_ twin "
                            "(lstopo writes both; hwloc " HWLOC_VERSION " would crash on this file)",
                            path, line);
    }
    fclose(x.f);
    return st;
}

/* A readable check before hwloc sees the file: a missing path becomes
 * FileNotFoundError naming it, a binary or text file a clear ValueError,
 * instead of hwloc's generic load failure. */
static g4_status check_xml_file(const char *path, g4_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return g4_err_errno(err, errno, "cannot open hwloc XML topology %s", path);
    unsigned char head[256];
    size_t n = fread(head, 1, sizeof head, f);
    int rerr = ferror(f) ? errno : 0;
    fclose(f);
    if (rerr) return g4_err_errno(err, rerr, "cannot read hwloc XML topology %s", path);
    size_t i = 0;
    if (n >= 3 && head[0] == 0xef && head[1] == 0xbb && head[2] == 0xbf) i = 3;   /* UTF-8 BOM */
    while (i < n && (head[i] == ' ' || head[i] == '\t' || head[i] == '\r' || head[i] == '\n')) i++;
    if (i >= n || head[i] != '<')
        return g4_err_set(err, G4_ERR_INVALID,
                          "%s is not an XML file (expected a topology exported by hwloc, e.g. `lstopo machine.xml`)",
                          path);
    return check_xml_sets(path, err);
}

/* build_topology / free_topology: with_io keeps GPUs (and, filtered by
 * KEEP_IMPORTANT, the PCI devices they hang from); without it the load is
 * a few times cheaper. */
static g4_status build_topology(hwloc_topology_t *out, const char *xml_path, int with_io, g4_err *err) {
    hwloc_topology_t t;
    if (hwloc_topology_init(&t) < 0) return g4_err_set(err, G4_ERR_HW, "hwloc_topology_init failed");
    /* I/O objects are dropped unless asked for; KEEP_IMPORTANT keeps GPUs,
       coprocessors and their PCI parents but not every bridge. */
    if (with_io) hwloc_topology_set_io_types_filter(t, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    /* The gl component queries the X server (NV-CONTROL) and can hang
       without one; GPUs come from CUDA/NVML/OpenCL/RSMI/LevelZero instead. */
    hwloc_topology_set_components(t, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "gl");
    if (xml_path && hwloc_topology_set_xml(t, xml_path) < 0) {
        int e = errno;
        hwloc_topology_destroy(t);
        return g4_err_set(err, G4_ERR_INVALID, "hwloc cannot use %s as an XML topology (%s)",
                          xml_path, strerror(e));
    }
    if (hwloc_topology_load(t) < 0) {
        int e = errno;
        hwloc_topology_destroy(t);
        if (xml_path)
            return g4_err_set(err, G4_ERR_INVALID,
                              "cannot load %s as an hwloc topology: hwloc %s reads topology XML format 2.x (%s)",
                              xml_path, HWLOC_VERSION, strerror(e));
        return g4_err_set(err, G4_ERR_HW, "hwloc_topology_load failed: %s", strerror(e));
    }
    *out = t;
    return G4_OK;
}

static void free_topology(hwloc_topology_t t) { if (t) hwloc_topology_destroy(t); }

/* Bounded copy that always terminates (hwloc strings have no length cap). */
static void copy_str(char *dst, size_t cap, const char *src) {
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, src, n);
    dst[n] = 0;
}

/* ---- CPU ------------------------------------------------------------------------ */

/* Info attribute `name` on the first object of `type` that has it. */
static const char *first_info(hwloc_topology_t t, hwloc_obj_type_t type, const char *name) {
    hwloc_obj_t o = NULL;
    while ((o = hwloc_get_next_obj_by_type(t, type, o)))
        if (hwloc_obj_get_info_by_name(o, name)) return hwloc_obj_get_info_by_name(o, name);
    return NULL;
}

static void read_cpu(hwloc_topology_t t, int from_xml, g4_hw_report *r) {
    hwloc_obj_t root = hwloc_get_root_obj(t);
    const char *model = first_info(t, HWLOC_OBJ_PACKAGE, "CPUModel");
    if (!model) model = hwloc_obj_get_info_by_name(root, "CPUModel");
    const char *vendor = first_info(t, HWLOC_OBJ_PACKAGE, "CPUVendor");
    if (!vendor) vendor = hwloc_obj_get_info_by_name(root, "CPUVendor");
    copy_str(r->cpu_model, sizeof r->cpu_model, model);
    copy_str(r->cpu_vendor, sizeof r->cpu_vendor, vendor);

    const char *arch = hwloc_obj_get_info_by_name(root, "Architecture");
    struct utsname u;
    if (!arch && !from_xml && uname(&u) == 0) arch = u.machine;
    copy_str(r->arch, sizeof r->arch, arch);

    /* Synthetic or partial topologies may have no Package or Core level
       (8intel64-4n2t-memattrs.xml has only Groups and PUs): count a PU as a
       core then, and one package, rather than report a machine with none. */
    r->pus = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
    r->cores = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
    r->packages = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PACKAGE);
    if (r->cores <= 0) r->cores = r->pus;
    if (r->packages <= 0) r->packages = 1;
}

/* ---- caches --------------------------------------------------------------------- */

/* Level L (1..5) data or unified cache: size of one instance (the largest,
   as hybrid CPUs have different L2s per kind) and the number of instances. */
static void read_caches(hwloc_topology_t t, g4_hw_report *r) {
    for (int level = 1; level <= G4_HW_MAX_CACHE_LEVELS; level++) {
        hwloc_obj_type_t type = (hwloc_obj_type_t)(HWLOC_OBJ_L1CACHE + (level - 1));
        hwloc_obj_t o = NULL;
        uint64_t size = 0;
        int n = 0;
        while ((o = hwloc_get_next_obj_by_type(t, type, o))) {
            if (o->attr->cache.type == HWLOC_OBJ_CACHE_INSTRUCTION) continue;
            if (o->attr->cache.size > size) size = o->attr->cache.size;
            n++;
        }
        r->cache_bytes[level] = size;
        r->cache_count[level] = n;
    }
}

/* ---- CPU kinds ------------------------------------------------------------------ */

/* hwloc_cpukinds_*: kinds come sorted by efficiency, 0 = most power
   efficient (E cores); efficiency is -1 when hwloc cannot rank them. A
   topology without kinds gets one kind holding every PU, so callers can
   always sum kinds[].n_pus. */
static void read_kinds(hwloc_topology_t t, g4_hw_report *r) {
    hwloc_const_cpuset_t all = hwloc_topology_get_topology_cpuset(t);
    int nr = hwloc_cpukinds_get_nr(t, 0);
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    r->n_kinds = 0;
    for (int i = 0; set && i < nr && r->n_kinds < G4_HW_MAX_KINDS; i++) {
        int eff = -1;
        unsigned n_infos = 0;
        struct hwloc_info_s *infos = NULL;
        if (hwloc_cpukinds_get_info(t, (unsigned)i, set, &eff, &n_infos, &infos, 0) < 0) continue;
        hwloc_bitmap_and(set, set, all);
        g4_hw_cpukind *k = &r->kinds[r->n_kinds];
        k->n_pus = hwloc_bitmap_weight(set);
        if (k->n_pus <= 0) continue;     /* kind of PUs outside this (restricted) topology */
        k->efficiency = eff;
        k->core_type[0] = 0;
        for (unsigned j = 0; j < n_infos; j++)
            if (!strcmp(infos[j].name, "CoreType")) copy_str(k->core_type, sizeof k->core_type, infos[j].value);
        r->n_kinds++;
    }
    hwloc_bitmap_free(set);
    if (r->n_kinds == 0) {
        r->n_kinds = 1;
        r->kinds[0].n_pus = r->pus;
        r->kinds[0].efficiency = -1;
        r->kinds[0].core_type[0] = 0;
    }
}

/* ---- memory ------------------------------------------------------------------- */

static void read_numa(hwloc_topology_t t, g4_hw_report *r) {
    hwloc_obj_t o = NULL;
    uint64_t total = 0;
    r->n_numa = 0;
    while ((o = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, o))) {
        total += o->attr->numanode.local_memory;
        if (r->n_numa < G4_HW_MAX_NUMA) r->numa_bytes[r->n_numa++] = o->attr->numanode.local_memory;
    }
    r->hwloc_total_bytes = total;
    r->total_ram_bytes = total;
}

/* This machine: the kernel's MemTotal wins over hwloc's NUMA sum. They agree
   on bare metal, but a VM with hot-plugged memory can show a fraction of
   MemTotal in /sys/devices/system/node (seen here: 5.1 GiB vs 23.5 GiB).
   Per-node numbers stay as hwloc gives them. */
static void read_system_memory(g4_hw_report *r) {
    uint64_t total = 0, avail = 0, limit = 0;
    g4_err e;
    if (g4_hw_read_memory(NULL, &total, &avail, &limit, &e) != G4_OK) return;
    r->meminfo_total_bytes = total;
    r->total_ram_bytes = total;
    r->available_ram_bytes = avail;
    r->cgroup_limit_bytes = limit;
}

/* ---- GPUs --------------------------------------------------------------------- */

/* One physical GPU may appear as several OS devices, one per backend: CUDA
   "cuda0", NVML "nvml0", OpenCL "opencl0d0", RSMI "rsmi0", LevelZero "ze0",
   and the kernel's DRM "card0"/"renderD128". They share a PCI device parent,
   so the PCI object is the identity; an OS device with no PCI parent stands
   alone. Only compute backends create a GPU: a display adapter with nothing
   but a DRM device (the ES1000 "card0" in 96em64t-4n4d3ca2co-pci.xml) cannot
   run a model, so it is not reported; DRM devices beside a compute backend
   are merged into that GPU's osdev list. */

enum { BK_CUDA, BK_NVML, BK_RSMI, BK_LEVELZERO, BK_OPENCL, BK_NONE };
static const char *const backend_names[] = {"CUDA", "NVML", "RSMI", "LevelZero", "OpenCL"};

/* The backend of an OS device, ranked by how much we trust its name and
   memory (the vendor's own runtime first, OpenCL last); BK_NONE otherwise. */
static int osdev_backend(hwloc_obj_t o) {
    const char *b = hwloc_obj_get_info_by_name(o, "Backend");
    if (!b) b = o->subtype;
    if (!b) return BK_NONE;
    for (int i = 0; i < BK_NONE; i++)
        if (!strcasecmp(b, backend_names[i])) {
            if (i == BK_OPENCL) {   /* CPU OpenCL devices (pocl, Intel CPU runtime) are not GPUs */
                const char *dt = hwloc_obj_get_info_by_name(o, "OpenCLDeviceType");
                if (dt && !strcmp(dt, "CPU")) return BK_NONE;
            }
            return i;
        }
    return BK_NONE;
}

/* Memory the backend reports, in bytes (hwloc stores KiB); -1 when none. */
static int64_t osdev_memory(hwloc_obj_t o, int bk) {
    static const char *const keys[][4] = {
        [BK_CUDA] = {"CUDAGlobalMemorySize"},
        [BK_NVML] = {NULL},
        [BK_RSMI] = {"RSMIVRAMSize"},
        /* hwloc topology-levelzero.c: LevelZero{HBM,DDR,Memory}Size per memory module kind */
        [BK_LEVELZERO] = {"LevelZeroHBMSize", "LevelZeroDDRSize", "LevelZeroMemorySize"},
        [BK_OPENCL] = {"OpenCLGlobalMemorySize"},
    };
    int64_t kib = -1;
    for (int i = 0; i < 4 && keys[bk][i]; i++) {
        const char *v = hwloc_obj_get_info_by_name(o, keys[bk][i]);
        if (!v) continue;
        long long x = strtoll(v, NULL, 10);
        if (x > 0) kib = (kib < 0 ? 0 : kib) + x;
    }
    return kib < 0 ? -1 : kib * 1024;
}

static hwloc_obj_t pci_parent(hwloc_obj_t o) {
    for (hwloc_obj_t p = o->parent; p; p = p->parent) {
        if (p->type == HWLOC_OBJ_PCI_DEVICE) return p;
        if (p->type != HWLOC_OBJ_OS_DEVICE && p->type != HWLOC_OBJ_BRIDGE) return NULL;
    }
    return NULL;
}

static void append_list(char *dst, size_t cap, const char *item) {
    size_t n = strlen(dst);
    if (n && n + 1 < cap) { dst[n++] = ','; dst[n] = 0; }
    snprintf(dst + n, cap - n, "%s", item);
}

typedef struct gpu_acc {     /* per GPU while merging its OS devices */
    hwloc_obj_t key;         /* PCI device, or the OS device itself */
    int name_rank, mem_rank;
} gpu_acc;

static void read_gpus(hwloc_topology_t t, g4_hw_report *r) {
    gpu_acc acc[G4_HW_MAX_GPUS];
    hwloc_obj_t o = NULL;
    r->n_gpus = 0;
    while ((o = hwloc_get_next_osdev(t, o))) {
        int bk = osdev_backend(o);
        if (bk == BK_NONE) continue;
        if (o->parent && o->parent->type == HWLOC_OBJ_OS_DEVICE) continue;   /* LevelZero sub-device */
        hwloc_obj_t pci = pci_parent(o), key = pci ? pci : o;
        int g = 0;
        while (g < r->n_gpus && acc[g].key != key) g++;
        if (g == r->n_gpus) {
            if (r->n_gpus == G4_HW_MAX_GPUS) { r->gpus_truncated = 1; continue; }
            g4_hw_gpu *n = &r->gpus[g];
            memset(n, 0, sizeof *n);
            n->memory_bytes = -1;
            n->memory_free_bytes = -1;
            acc[g] = (gpu_acc){key, BK_NONE + 1, BK_NONE + 1};
            if (pci) snprintf(n->pci_busid, sizeof n->pci_busid, "%04x:%02x:%02x.%01x",
                              pci->attr->pcidev.domain, pci->attr->pcidev.bus,
                              pci->attr->pcidev.dev, pci->attr->pcidev.func);
            r->n_gpus++;
        }
        g4_hw_gpu *gpu = &r->gpus[g];
        append_list(gpu->osdevs, sizeof gpu->osdevs, o->name ? o->name : "?");
        if (!strstr(gpu->backends, backend_names[bk]))
            append_list(gpu->backends, sizeof gpu->backends, backend_names[bk]);

        if (bk < acc[g].name_rank) {
            const char *name = hwloc_obj_get_info_by_name(o, "GPUModel");
            if (!name) name = hwloc_obj_get_info_by_name(o, "LevelZeroModel");
            if (!name && pci) name = hwloc_obj_get_info_by_name(pci, "PCIDevice");
            if (!name) name = o->name;
            const char *vendor = hwloc_obj_get_info_by_name(o, "GPUVendor");
            if (!vendor) vendor = hwloc_obj_get_info_by_name(o, "LevelZeroVendor");
            if (!vendor && pci) vendor = hwloc_obj_get_info_by_name(pci, "PCIVendor");
            copy_str(gpu->name, sizeof gpu->name, name);
            copy_str(gpu->vendor, sizeof gpu->vendor, vendor);
            acc[g].name_rank = bk;
            if (acc[g].mem_rank > BK_NONE) copy_str(gpu->backend, sizeof gpu->backend, backend_names[bk]);
        }
        int64_t mem = osdev_memory(o, bk);
        if (mem > 0 && bk < acc[g].mem_rank) {
            gpu->memory_bytes = mem;
            acc[g].mem_rank = bk;
            copy_str(gpu->backend, sizeof gpu->backend, backend_names[bk]);
        }
    }
    /* Second pass: display / render nodes sharing a PCI device with a GPU. */
    o = NULL;
    while ((o = hwloc_get_next_osdev(t, o))) {
        if (osdev_backend(o) != BK_NONE || o->attr->osdev.type != HWLOC_OBJ_OSDEV_GPU) continue;
        hwloc_obj_t pci = pci_parent(o);
        for (int g = 0; pci && g < r->n_gpus; g++)
            if (acc[g].key == pci) append_list(r->gpus[g].osdevs, sizeof r->gpus[g].osdevs, o->name ? o->name : "?");
    }
}

/* ---- GPUs from the driver probes (gpu_probe.c), merged by PCI bus id ----------- */

static int same_busid(const char *a, const char *b) {
    unsigned d1, b1, v1, f1, d2, b2, v2, f2;
    return g4_hw_parse_busid(a, &d1, &b1, &v1, &f1) && g4_hw_parse_busid(b, &d2, &b2, &v2, &f2) &&
           d1 == d2 && b1 == b2 && v1 == v2 && f1 == f2;
}

/* One probed GPU into the report. The same PCI device already listed (hwloc's
   CUDA/OpenCL/... OS devices, or another probe) gets the driver's figures;
   else a new entry named after hwloc's PCI object when the probe has no name
   (amdgpu rarely has one; hwloc's pci plugin reads pci.ids). The driver's
   memory size wins over hwloc's: it is the same number for CUDA, and OpenCL's
   CL_DEVICE_GLOBAL_MEM_SIZE may be a part of it. */
static void merge_probed(hwloc_topology_t t, g4_hw_report *r, const g4_hw_gpu *p) {
    g4_hw_gpu *g = NULL;
    for (int i = 0; p->pci_busid[0] && i < r->n_gpus && !g; i++)
        if (same_busid(r->gpus[i].pci_busid, p->pci_busid)) g = &r->gpus[i];
    if (!g) {
        if (r->n_gpus == G4_HW_MAX_GPUS) { r->gpus_truncated = 1; return; }
        g = &r->gpus[r->n_gpus++];
        *g = *p;
        unsigned d, b, v, f;
        hwloc_obj_t pci = g4_hw_parse_busid(p->pci_busid, &d, &b, &v, &f)
                              ? hwloc_get_pcidev_by_busid(t, d, b, v, f) : NULL;
        const char *pn = pci ? hwloc_obj_get_info_by_name(pci, "PCIDevice") : NULL;
        const char *pv = pci ? hwloc_obj_get_info_by_name(pci, "PCIVendor") : NULL;
        if (!g->name[0]) copy_str(g->name, sizeof g->name, pn ? pn : g->osdevs);
        if (pv) copy_str(g->vendor, sizeof g->vendor, pv);
        return;
    }
    if (p->memory_bytes > 0) {
        g->memory_bytes = p->memory_bytes;
        g->memory_free_bytes = p->memory_free_bytes;
        copy_str(g->backend, sizeof g->backend, p->backend);
    }
    if (p->name[0] && (!g->name[0] || p->cc_major)) copy_str(g->name, sizeof g->name, p->name);
    if (p->cc_major) { g->cc_major = p->cc_major; g->cc_minor = p->cc_minor; }
    if (p->mem_bus_width_bits) g->mem_bus_width_bits = p->mem_bus_width_bits;
    if (p->mem_clock_mhz) g->mem_clock_mhz = p->mem_clock_mhz;
    if (p->peak_bandwidth_gbs > 0) g->peak_bandwidth_gbs = p->peak_bandwidth_gbs;
    if (!strstr(g->backends, p->backends)) append_list(g->backends, sizeof g->backends, p->backends);
    if (!strstr(g->osdevs, p->osdevs)) append_list(g->osdevs, sizeof g->osdevs, p->osdevs);
}

static void add_note(g4_hw_report *r, const char *note) {
    if (!note[0]) return;
    size_t n = strlen(r->gpu_notes);
    snprintf(r->gpu_notes + n, sizeof r->gpu_notes - n, "%s%s", n ? "; " : "", note);
}

static void probe_gpus(hwloc_topology_t t, g4_hw_report *r) {
    g4_hw_gpu *found = malloc(G4_HW_MAX_GPUS * sizeof *found);
    if (!found) return;
    char why[160];
    why[0] = 0;
    int n = g4_hw_probe_nvml(NULL, found, G4_HW_MAX_GPUS, why, sizeof why);
    if (!n) add_note(r, why);
    for (int i = 0; i < n; i++) merge_probed(t, r, &found[i]);
    why[0] = 0;
    n = g4_hw_probe_drm(NULL, found, G4_HW_MAX_GPUS, why, sizeof why);
    if (!n) add_note(r, why);
    for (int i = 0; i < n; i++) merge_probed(t, r, &found[i]);
    g4_hw_apple apple;
    if (g4_hw_apple_probe(&apple)) {
        g4_hw_apple_gpu(&apple, &found[0]);
        merge_probed(t, r, &found[0]);
        /* hwloc may give one kind on Apple silicon; sysctl knows P and E cores
           (no SMT there, so cores = PUs). Efficiency 0 = the E cores, as hwloc ranks. */
        if (r->n_kinds <= 1 && apple.p_cores > 0 && apple.e_cores > 0) {
            r->n_kinds = 2;
            r->kinds[0] = (g4_hw_cpukind){apple.e_cores, 0, "AppleEfficiency"};
            r->kinds[1] = (g4_hw_cpukind){apple.p_cores, 1, "ApplePerformance"};
        }
    }
    free(found);
}

/* ---- public ------------------------------------------------------------------- */

g4_status g4_hw_detect(const char *xml_path, g4_hw_report *out, g4_err *err) {
    return g4_hw_detect_ex(xml_path, G4_HW_PROBE_AUTO, out, err);
}

g4_status g4_hw_detect_ex(const char *xml_path, int probe, g4_hw_report *out, g4_err *err) {
    memset(out, 0, sizeof *out);
    g4_status st;
    if (xml_path && (st = check_xml_file(xml_path, err)) != G4_OK) return st;
    hwloc_topology_t t;
    if ((st = build_topology(&t, xml_path, 1, err)) != G4_OK) return st;
    out->from_xml = xml_path != NULL;
    read_cpu(t, out->from_xml, out);
    read_caches(t, out);
    read_kinds(t, out);
    read_numa(t, out);
    read_gpus(t, out);
    if (probe == G4_HW_PROBE_ALWAYS || (probe == G4_HW_PROBE_AUTO && !xml_path)) probe_gpus(t, out);
    free_topology(t);
    if (!out->from_xml) {
        /* Only the running machine: an XML describes another one. */
        read_system_memory(out);
        g4_hw_detect_simd(out);
    }
    return G4_OK;
}

uint64_t g4_hw_llc_total_bytes(void) {
    hwloc_topology_t t;
    g4_err e;
    if (build_topology(&t, NULL, 0, &e) != G4_OK) return 0;
    uint64_t total = 0;
    for (int level = G4_HW_MAX_CACHE_LEVELS; level >= 1 && !total; level--) {
        hwloc_obj_t o = NULL;
        while ((o = hwloc_get_next_obj_by_type(t, (hwloc_obj_type_t)(HWLOC_OBJ_L1CACHE + (level - 1)), o)))
            total += o->attr->cache.size;
    }
    free_topology(t);
    return total;
}
