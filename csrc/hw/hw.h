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
} g4_hw_report;

/* Detect this machine (xml_path NULL) or load an exported hwloc XML topology.
 * Errors: G4_ERR_IO (XML missing), G4_ERR_HW (hwloc failure). */
g4_status g4_hw_detect(const char *xml_path, g4_hw_report *out, g4_err *err);

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

#endif
