/* hw.h - machine description from hwloc 2.x plus /proc and cgroups.
 *
 * hwloc: https://www.open-mpi.org/projects/hwloc/doc/ (v2.9 API).
 * Sizes in bytes. GPU memory comes from OS-device info attributes that hwloc
 * backends set in KiB (CUDAGlobalMemorySize, OpenCLGlobalMemorySize,
 * RSMIVRAMSize, LevelZero...), converted to bytes; -1 when no backend gives it.
 */
#ifndef G4_HW_H
#define G4_HW_H

#include <stdint.h>

#include "../common/g4err.h"

#define G4_HW_MAX_KINDS 8
#define G4_HW_MAX_NUMA 64
#define G4_HW_MAX_GPUS 64
#define G4_HW_MAX_CACHE_LEVELS 5

typedef struct g4_hw_cpukind {
    int n_pus;                 /* PUs of this kind */
    int efficiency;            /* hwloc efficiency rank, -1 unknown; higher = faster */
    char core_type[32];        /* "IntelCore", "IntelAtom", ... or "" */
} g4_hw_cpukind;

typedef struct g4_hw_gpu {
    char name[128];
    char vendor[64];
    char backend[16];          /* "CUDA", "NVML", "OpenCL", "RSMI", "LevelZero" (the one that gave memory, else the first) */
    char pci_busid[32];        /* "0000:03:00.0" or "" */
    int64_t memory_bytes;      /* -1 when unknown */
    /* Added by the hw owner: every hwloc OS device merged into this GPU
       ("cuda0,card0") and every compute backend seen ("CUDA,OpenCL"). */
    char osdevs[96];
    char backends[48];
    /* Added by the GPU probes (gpu_probe.c): what the vendor's driver says,
       read without hwloc's non-free plugins. 0 / -1 when unknown. */
    int64_t memory_free_bytes;   /* free device memory now, -1 unknown */
    int cc_major, cc_minor;      /* CUDA compute capability (NVML), 0.0 unknown */
    int mem_bus_width_bits;      /* memory bus width (NVML), 0 unknown */
    int mem_clock_mhz;           /* maximum memory clock (NVML), 0 unknown */
    double peak_bandwidth_gbs;   /* 2 x clock x bus width / 8, GB/s = 1e9 B/s; 0 unknown */
    int unified;                 /* 1: the GPU uses system RAM (Apple silicon) */
} g4_hw_gpu;

typedef struct g4_hw_report {
    char cpu_model[128];
    char cpu_vendor[64];
    char arch[16];             /* "x86_64", "aarch64" */
    int packages, cores, pus;
    int n_kinds; g4_hw_cpukind kinds[G4_HW_MAX_KINDS];
    /* Caches per level 1..N: size of one instance and how many instances.
       Level 1 is the data cache. 0 when absent. */
    uint64_t cache_bytes[G4_HW_MAX_CACHE_LEVELS + 1];
    int cache_count[G4_HW_MAX_CACHE_LEVELS + 1];
    int n_numa; uint64_t numa_bytes[G4_HW_MAX_NUMA];
    uint64_t total_ram_bytes;      /* hwloc total, cross-checked with /proc/meminfo MemTotal */
    uint64_t available_ram_bytes;  /* MemAvailable, capped by the cgroup limit; 0 when read from XML */
    uint64_t cgroup_limit_bytes;   /* 0 when none */
    /* SIMD features of the machine running this code (never from XML). */
    int avx2, avx512f, avx512vnni, avx512bw, avxvnni, f16c, fma, neon, dotprod;
    int from_xml;
    int n_gpus; g4_hw_gpu gpus[G4_HW_MAX_GPUS];
    /* Added by the hw owner (after the fields above, which stay as they are). */
    uint64_t hwloc_total_bytes;    /* sum of hwloc NUMA memory, before the MemTotal cross-check */
    uint64_t meminfo_total_bytes;  /* /proc/meminfo MemTotal, 0 when read from XML */
    int avx512bf16;
    int gpus_truncated;            /* 1 when more than G4_HW_MAX_GPUS were found */
    /* Added by the GPU probes: why a probe found nothing ("NVML: libnvidia-ml.so.1
       not loadable"), "; "-separated, "" when every probe ran. */
    char gpu_notes[256];
} g4_hw_report;

/* Detect this machine (xml_path NULL) or load an exported hwloc XML topology.
 * Errors: G4_ERR_IO (XML missing), G4_ERR_HW (hwloc failure). */
g4_status g4_hw_detect(const char *xml_path, g4_hw_report *out, g4_err *err);

/* GPU probes beside hwloc (see gpu_probe.c). G4_HW_PROBE_AUTO runs them for
 * this machine only (an XML describes another one); ALWAYS runs them even
 * with an XML (tests merge fake GPUs into saved topologies); NEVER skips them. */
enum { G4_HW_PROBE_AUTO = 0, G4_HW_PROBE_ALWAYS = 1, G4_HW_PROBE_NEVER = 2 };
g4_status g4_hw_detect_ex(const char *xml_path, int probe_gpus, g4_hw_report *out, g4_err *err);

/* ---- pieces of g4_hw_detect, public so they can be tested on their own ---- */

/* Memory of the running system. `sysroot` prefixes every path read ("" or NULL
 * for the real /proc and /sys; tests point it at a fake tree). Reads MemTotal
 * and MemAvailable from <sysroot>/proc/meminfo, then the memory limit of this
 * process's cgroup (v2 memory.max / v1 memory.limit_in_bytes, the smallest
 * along the path to the root) found through <sysroot>/proc/self/cgroup and
 * <sysroot>/proc/self/mountinfo. available is capped at limit - usage.
 * cgroup_limit is 0 when no limit is set. Errors: G4_ERR_IO (no meminfo). */
g4_status g4_hw_read_memory(const char *sysroot, uint64_t *mem_total, uint64_t *mem_available,
                            uint64_t *cgroup_limit, g4_err *err);

/* SIMD features of the CPU running this code (cpuid + xgetbv on x86,
 * getauxval on Arm): sets the avx2..dotprod flags of `out`, nothing else. */
void g4_hw_detect_simd(g4_hw_report *out);

/* Total bytes of all last-level caches of this machine (sum over instances),
 * 0 when hwloc cannot tell. Used to size the bandwidth probe's arrays. */
uint64_t g4_hw_llc_total_bytes(void);

/* ---- GPU probes (gpu_probe.c): GPUs hwloc's Debian build cannot see ---------
 *
 * Debian's libhwloc-plugins has no CUDA, NVML, RSMI or LevelZero backend (they
 * are non-free), so the driver is asked directly. Each probe fills up to `cap`
 * entries of `out` (name, vendor, backend, pci_busid "dddd:bb:dd.f", memory)
 * and returns how many; 0 when there is nothing to find. None of them fails:
 * a missing library or file means "no such GPU", said in `why` (may be NULL). */

/* NVIDIA through NVML, loaded at run time with dlopen(lib, or
 * "libnvidia-ml.so.1" when NULL: what the driver installs), so there is no
 * build-time dependency. Reads name, memory total/free, CUDA compute
 * capability, PCI bus id, memory bus width and maximum memory clock. */
int g4_hw_probe_nvml(const char *lib, g4_hw_gpu *out, int cap, char *why, size_t why_cap);

/* AMD (PCI vendor 0x1002, amdgpu: mem_info_vram_total / mem_info_vram_used)
 * and Intel discrete (0x8086, xe: tile<N>/physical_vram_size_bytes) GPUs from
 * <sysfs_root>/class/drm/card<N>/device. sysfs_root NULL: $GEMMA4STACK_SYSFS_ROOT,
 * else "/sys". Cards without local memory (integrated GPUs) are skipped. */
int g4_hw_probe_drm(const char *sysfs_root, g4_hw_gpu *out, int cap, char *why, size_t why_cap);

/* Apple silicon, from sysctl: hw.memsize (bytes), machdep.cpu.brand_string
 * ("Apple M4 Pro"), hw.perflevel0.physicalcpu / hw.perflevel1.physicalcpu
 * (performance / efficiency cores). */
typedef struct g4_hw_apple {
    char brand[128];
    uint64_t memsize;
    int p_cores, e_cores;     /* 0 when unknown */
} g4_hw_apple;

/* Parse `sysctl hw.memsize machdep.cpu.brand_string hw.perflevel0.physicalcpu
 * hw.perflevel1.physicalcpu` output ("name: value" lines, any order, others
 * ignored). Returns 1 when the brand is an Apple chip and memsize is known. */
int g4_hw_apple_parse(const char *text, g4_hw_apple *out);

/* The same values through sysctlbyname(); 0 on anything but macOS. */
int g4_hw_apple_probe(g4_hw_apple *out);

/* The unified-memory GPU of an Apple chip: memory = hw.memsize, unified = 1,
 * backend "Metal". The Metal working-set limit is applied by recommend(). */
void g4_hw_apple_gpu(const g4_hw_apple *a, g4_hw_gpu *out);

/* Peak memory bandwidth in GB/s (1e9 B/s) of a double-data-rate bus:
 * 2 x clock x bus width / 8 (NVIDIA, "How to Implement Performance Metrics in
 * CUDA C/C++": BW = memoryClockRate x (memoryBusWidth / 8) x 2). The clock is
 * the one NVML reports for NVML_CLOCK_MEM (e.g. 9751 MHz x 384 bits on an RTX
 * 3090 -> 936 GB/s, its datasheet figure). 0 when either is unknown. */
double g4_hw_peak_bandwidth_gbs(int mem_clock_mhz, int bus_width_bits);

/* Parse a PCI bus id ("0000:03:00.0", NVML's "00000000:03:00.0", case-insensitive)
 * into its parts; 1 on success. */
int g4_hw_parse_busid(const char *s, unsigned *domain, unsigned *bus, unsigned *dev, unsigned *func);

#endif
