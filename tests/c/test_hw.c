/* test_hw.c - hardware detection and the bandwidth probe.
 *
 * References: the numbers `hwloc-info --input FILE` and
 * `lstopo-no-graphics --input FILE -v` print for the XML topologies in
 * ../shared/hwloc-xml (see SOURCES.md there); for this machine sysconf,
 * /sys/devices/system/cpu/.../topology, /proc/meminfo and GCC's own CPU
 * feature detection (__builtin_cpu_supports).
 */
#define _GNU_SOURCE
#include "g4test.h"

#include <errno.h>
#include <ftw.h>
#include <sched.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench/bandwidth.h"
#include "hw/hw.h"

#define KIB 1024ULL

static g4_hw_report R;   /* ~30 KB: static, not on the stack */

static void load_xml(const char *name) {
    char path[1024];
    g4_err err;
    g4_err_clear(&err);
    g4test_path(path, sizeof path, name);
    g4_status st = g4_hw_detect(path, &R, &err);
    ck_assert_msg(st == G4_OK, "%s: %s", path, err.msg);
    ck_assert_int_eq(R.from_xml, 1);
}

/* ---- XML topologies ------------------------------------------------------- */

START_TEST(xml_32em64t_cpu_memory) {
    load_xml("hwloc-xml/32em64t-2n8c2t-pci-wholeio.xml");
    ck_assert_int_eq(R.packages, 2);
    ck_assert_int_eq(R.cores, 16);
    ck_assert_int_eq(R.pus, 32);
    ck_assert_str_eq(R.cpu_model, "Intel(R) Xeon(R) CPU E5-2650 0 @ 2.00GHz");
    ck_assert_str_eq(R.arch, "x86_64");
    ck_assert_int_eq(R.n_numa, 2);
    ck_assert_uint_eq(R.numa_bytes[0], 33525560 * KIB);
    ck_assert_uint_eq(R.numa_bytes[1], 33554432 * KIB);
    ck_assert_uint_eq(R.total_ram_bytes, 67079992 * KIB);
    /* L3Cache size=20480KB x2, L2 256KB x16, L1 32KB x16 */
    ck_assert_uint_eq(R.cache_bytes[3], 20480 * KIB); ck_assert_int_eq(R.cache_count[3], 2);
    ck_assert_uint_eq(R.cache_bytes[2], 256 * KIB);   ck_assert_int_eq(R.cache_count[2], 16);
    ck_assert_uint_eq(R.cache_bytes[1], 32 * KIB);    ck_assert_int_eq(R.cache_count[1], 16);
    /* another machine: nothing of the running one leaks in */
    ck_assert_uint_eq(R.available_ram_bytes, 0);
    ck_assert_int_eq(R.avx2 | R.avx512f | R.fma | R.neon, 0);
    ck_assert_int_eq(R.n_kinds, 1);
    ck_assert_int_eq(R.kinds[0].n_pus, 32);
}
END_TEST

START_TEST(xml_32em64t_gpus) {
    load_xml("hwloc-xml/32em64t-2n8c2t-pci-wholeio.xml");
    /* Tesla K40m via CUDA (CUDAGlobalMemorySize 11796032 KiB) with DRM card0
       on the same PCI device; AMD Radeon via OpenCL (3087360 KiB). The disks,
       NICs, InfiniBand HCA and the Teslas without an OS device are not GPUs. */
    ck_assert_int_eq(R.n_gpus, 2);
    const g4_hw_gpu *k40 = &R.gpus[0], *amd = &R.gpus[1];
    ck_assert_str_eq(k40->name, "Tesla K40m");
    ck_assert_str_eq(k40->vendor, "NVIDIA Corporation");
    ck_assert_str_eq(k40->backend, "CUDA");
    ck_assert_str_eq(k40->pci_busid, "0000:84:00.0");
    ck_assert_int_eq(k40->memory_bytes, 11796032 * 1024LL);
    ck_assert_str_eq(k40->osdevs, "cuda0,card0");
    ck_assert_str_eq(amd->name, "AMD Radeon R9 200 / HD 7900 Series");
    ck_assert_str_eq(amd->backend, "OpenCL");
    ck_assert_str_eq(amd->pci_busid, "0000:84:00.1");
    ck_assert_int_eq(amd->memory_bytes, 3087360 * 1024LL);
}
END_TEST

START_TEST(xml_dgx2_nvml_gpus_once_each) {
    load_xml("hwloc-xml/nvidiaDGX2.xml");
    ck_assert_int_eq(R.packages, 2);
    ck_assert_int_eq(R.cores, 4);
    ck_assert_int_eq(R.pus, 4);
    ck_assert_int_eq(R.n_numa, 2);
    ck_assert_uint_eq(R.numa_bytes[0], 791244484 * KIB);
    ck_assert_uint_eq(R.numa_bytes[1], 792712816 * KIB);
    ck_assert_uint_eq(R.total_ram_bytes, 1583957300 * KIB);
    ck_assert_int_eq(R.n_gpus, 16);
    for (int i = 0; i < R.n_gpus; i++) {
        ck_assert_str_eq(R.gpus[i].name, "Tesla V100-SXM3-32GB-H");
        ck_assert_str_eq(R.gpus[i].backend, "NVML");
        ck_assert_int_eq(R.gpus[i].memory_bytes, -1);   /* NVML gives no size */
        char want[16];
        snprintf(want, sizeof want, "nvml%d", i);
        ck_assert_str_eq(R.gpus[i].osdevs, want);
        for (int j = 0; j < i; j++) ck_assert_str_ne(R.gpus[i].pci_busid, R.gpus[j].pci_busid);
    }
}
END_TEST

START_TEST(xml_96em64t_numa_no_display_gpu) {
    load_xml("hwloc-xml/96em64t-4n4d3ca2co-pci.xml");
    ck_assert_int_eq(R.packages, 16);
    ck_assert_int_eq(R.cores, 96);
    ck_assert_int_eq(R.pus, 96);
    ck_assert_int_eq(R.n_numa, 4);
    ck_assert_uint_eq(R.numa_bytes[0], 50068292 * KIB);
    for (int i = 1; i < 4; i++) ck_assert_uint_eq(R.numa_bytes[i], 50069504 * KIB);
    ck_assert_uint_eq(R.total_ram_bytes, 200276804 * KIB);
    ck_assert_uint_eq(R.cache_bytes[3], 16384 * KIB); ck_assert_int_eq(R.cache_count[3], 16);
    ck_assert_int_eq(R.cache_count[2], 48);
    /* card0 (ATI ES1000 VGA) has no compute backend: a display, not a GPU */
    ck_assert_int_eq(R.n_gpus, 0);
}
END_TEST

START_TEST(xml_fakecpukinds_three_kinds) {
    load_xml("hwloc-xml/fakecpukinds.xml");
    ck_assert_int_eq(R.cores, 2);
    ck_assert_int_eq(R.pus, 4);
    ck_assert_int_eq(R.n_kinds, 3);
    static const struct { int pus, eff; const char *type; } want[] = {
        {2, 0, "MySmallCore"}, {1, 1, "YouBigcore"}, {1, 2, "IntelCore"}};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(R.kinds[i].n_pus, want[i].pus);
        ck_assert_int_eq(R.kinds[i].efficiency, want[i].eff);
        ck_assert_str_eq(R.kinds[i].core_type, want[i].type);
    }
}
END_TEST

START_TEST(xml_memattrs_synthetic) {
    load_xml("hwloc-xml/8intel64-4n2t-memattrs.xml");
    ck_assert_int_eq(R.pus, 8);
    ck_assert_int_eq(R.cores, 8);      /* no Core level: one core per PU */
    ck_assert_int_eq(R.packages, 1);   /* no Package level */
    ck_assert_int_eq(R.n_numa, 4);
    for (int i = 0; i < 4; i++) ck_assert_uint_eq(R.numa_bytes[i], 1048576 * KIB);
    ck_assert_int_eq(R.n_gpus, 0);
}
END_TEST

/* ---- bad input ------------------------------------------------------------- */

START_TEST(xml_missing_file) {
    g4_err err;
    g4_status st = g4_hw_detect("/nonexistent/dir/topo.xml", &R, &err);
    ck_assert_int_eq(st, G4_ERR_IO);
    ck_assert_int_eq(err.sys_errno, ENOENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/dir/topo.xml"));
}
END_TEST

START_TEST(xml_not_xml_or_not_hwloc) {
    char path[] = "/tmp/g4_test_hw_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "GGUF\x03\0\0\0 binary", 15), 15);
    close(fd);
    g4_err err;
    ck_assert_int_eq(g4_hw_detect(path, &R, &err), G4_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, path));

    FILE *f = fopen(path, "w");
    fputs("<?xml version=\"1.0\"?>\n<html><body>not a topology</body></html>\n", f);
    fclose(f);
    ck_assert_int_eq(g4_hw_detect(path, &R, &err), G4_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    unlink(path);
}
END_TEST

/* ---- this machine --------------------------------------------------------- */

static uint64_t meminfo_kb(const char *key) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    uint64_t v = 0;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') v = strtoull(line + kl + 1, NULL, 10);
    if (f) fclose(f);
    return v;
}

/* Cores as distinct (package, core) pairs over the CPUs this process may use. */
static int sysfs_cores(void) {
    cpu_set_t set;
    ck_assert_int_eq(sched_getaffinity(0, sizeof set, &set), 0);
    long seen[1024][2];
    int n = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &set)) continue;
        char p[256];
        long pkg = 0, core = c;
        snprintf(p, sizeof p, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", c);
        FILE *f = fopen(p, "r"); if (f) { if (fscanf(f, "%ld", &pkg) != 1) pkg = 0; fclose(f); }
        snprintf(p, sizeof p, "/sys/devices/system/cpu/cpu%d/topology/core_id", c);
        f = fopen(p, "r"); if (f) { if (fscanf(f, "%ld", &core) != 1) core = c; fclose(f); }
        int dup = 0;
        for (int i = 0; i < n; i++) if (seen[i][0] == pkg && seen[i][1] == core) dup = 1;
        if (!dup && n < 1024) { seen[n][0] = pkg; seen[n][1] = core; n++; }
    }
    return n;
}

START_TEST(this_machine_cpus_memory) {
    g4_err err;
    ck_assert_msg(g4_hw_detect(NULL, &R, &err) == G4_OK, "%s", err.msg);
    ck_assert_int_eq(R.from_xml, 0);
    cpu_set_t set;
    sched_getaffinity(0, sizeof set, &set);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    ck_assert_msg(R.pus == online || R.pus == CPU_COUNT(&set), "hwloc PUs %d, sysconf %ld, affinity %d",
                  R.pus, online, CPU_COUNT(&set));
    ck_assert_int_eq(R.cores, sysfs_cores());
    ck_assert_uint_eq(R.total_ram_bytes, meminfo_kb("MemTotal") * KIB);
    ck_assert_uint_gt(R.available_ram_bytes, 0);
    ck_assert_uint_le(R.available_ram_bytes, R.total_ram_bytes);
    ck_assert_int_ge(R.n_numa, 1);
    ck_assert_uint_gt(R.cache_bytes[1], 0);
}
END_TEST

START_TEST(this_machine_simd_matches_gcc) {
    g4_hw_report *r = calloc(1, sizeof *r);
    g4_hw_detect_simd(r);
#if defined(__x86_64__)
    __builtin_cpu_init();
    ck_assert_int_eq(r->avx2, !!__builtin_cpu_supports("avx2"));
    ck_assert_int_eq(r->fma, !!__builtin_cpu_supports("fma"));
    ck_assert_int_eq(r->avx512f, !!__builtin_cpu_supports("avx512f"));
    ck_assert_int_eq(r->avx512bw, !!__builtin_cpu_supports("avx512bw"));
    ck_assert_int_eq(r->avx512vnni, !!__builtin_cpu_supports("avx512vnni"));
#endif
    free(r);
}
END_TEST

/* ---- memory and cgroups on a fake /proc + /sys tree ------------------------------ */

static void write_file(const char *root, const char *rel, const char *text) {
    char path[1024], dir[1024];
    snprintf(path, sizeof path, "%s%s", root, rel);
    for (char *s = strchr(path + strlen(root) + 1, '/'); s; s = strchr(s + 1, '/')) {
        snprintf(dir, sizeof dir, "%.*s", (int)(s - path), path);
        mkdir(dir, 0755);
    }
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

static void rm_tree(const char *root) { nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static const char *MEMINFO =
    "MemTotal:       16000000 kB\nMemFree:         9000000 kB\nMemAvailable:   12000000 kB\n";

START_TEST(cgroup_v2_limit_caps_available) {
    char root[] = "/tmp/g4_sysroot_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(root));
    write_file(root, "/proc/meminfo", MEMINFO);
    write_file(root, "/proc/self/cgroup", "0::/user.slice/app\n");
    write_file(root, "/proc/self/mountinfo",
               "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
               "35 22 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
    write_file(root, "/sys/fs/cgroup/user.slice/memory.max", "max\n");
    write_file(root, "/sys/fs/cgroup/user.slice/app/memory.max", "1073741824\n");
    write_file(root, "/sys/fs/cgroup/user.slice/app/memory.current", "536870912\n");
    write_file(root, "/sys/fs/cgroup/user.slice/app/memory.stat", "anon 100\ninactive_file 134217728\nactive_file 5\n");
    uint64_t total, avail, limit;
    g4_err err;
    ck_assert_int_eq(g4_hw_read_memory(root, &total, &avail, &limit, &err), G4_OK);
    ck_assert_uint_eq(total, 16000000 * KIB);
    ck_assert_uint_eq(limit, 1073741824ULL);
    /* 1 GiB - (512 MiB used - 128 MiB inactive file cache) */
    ck_assert_uint_eq(avail, 1073741824ULL - (536870912ULL - 134217728ULL));
    rm_tree(root);
}
END_TEST

START_TEST(cgroup_v1_parent_limit_and_no_limit) {
    char root[] = "/tmp/g4_sysroot_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(root));
    write_file(root, "/proc/meminfo", MEMINFO);
    write_file(root, "/proc/self/cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n");
    write_file(root, "/proc/self/mountinfo",
               "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
               "30 22 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory\n");
    /* the v1 "no limit" value on the container, a real one on its parent */
    write_file(root, "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
    write_file(root, "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes", "2147483648\n");
    write_file(root, "/sys/fs/cgroup/memory/docker/memory.usage_in_bytes", "1073741824\n");
    uint64_t total, avail, limit;
    g4_err err;
    ck_assert_int_eq(g4_hw_read_memory(root, &total, &avail, &limit, &err), G4_OK);
    ck_assert_uint_eq(limit, 2147483648ULL);
    ck_assert_uint_eq(avail, 1073741824ULL);

    /* no limit anywhere: MemAvailable as is */
    write_file(root, "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes", "9223372036854771712\n");
    ck_assert_int_eq(g4_hw_read_memory(root, &total, &avail, &limit, &err), G4_OK);
    ck_assert_uint_eq(limit, 0);
    ck_assert_uint_eq(avail, 12000000 * KIB);
    rm_tree(root);
}
END_TEST

START_TEST(meminfo_missing_is_io_error) {
    uint64_t total, avail, limit;
    g4_err err;
    ck_assert_int_eq(g4_hw_read_memory("/nonexistent-sysroot", &total, &avail, &limit, &err), G4_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent-sysroot/proc/meminfo"));
}
END_TEST

/* ---- GPU probes (csrc/hw/gpu_probe.c) --------------------------------------------- */

/* A fake /sys/class/drm: what amdgpu and xe expose (Documentation/gpu/amdgpu/
   driver-misc.rst, drivers/gpu/drm/xe/xe_tile_sysfs.c), plus entries that are
   not GPUs with local memory and must be skipped. */
START_TEST(drm_probe_fake_sysfs) {
    char root[] = "/tmp/g4_sysfs_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(root));
    /* card10 sorts after card2: numeric order, as the kernel numbers them */
    write_file(root, "/class/drm/card10/device/vendor", "0x1002\n");
    write_file(root, "/class/drm/card10/device/mem_info_vram_total", "17163091968\n");
    write_file(root, "/class/drm/card10/device/mem_info_vram_used", "1163091968\n");
    write_file(root, "/class/drm/card10/device/uevent", "DRIVER=amdgpu\nPCI_SLOT_NAME=0000:C3:00.0\n");
    write_file(root, "/class/drm/card2/device/vendor", "0x1002\n");
    write_file(root, "/class/drm/card2/device/mem_info_vram_total", "25753026560\n");
    write_file(root, "/class/drm/card2/device/uevent", "PCI_SLOT_NAME=0000:03:00.0\n");
    write_file(root, "/class/drm/card2/device/product_name", "Radeon RX 7900 XTX\n");
    write_file(root, "/class/drm/card2-DP-1/status", "connected\n");          /* a connector */
    write_file(root, "/class/drm/renderD128/device/vendor", "0x1002\n");     /* a render node */
    write_file(root, "/class/drm/card3/device/vendor", "0x10de\n");          /* NVIDIA: NVML's job */
    write_file(root, "/class/drm/card4/device/vendor", "0x1002\n");          /* an APU: no VRAM file */
    write_file(root, "/class/drm/card5/device/vendor", "0x8086\n");          /* Intel iGPU: no tiles */
    write_file(root, "/class/drm/card6/device/vendor", "0x8086\n");          /* Intel discrete on xe */
    write_file(root, "/class/drm/card6/device/tile0/physical_vram_size_bytes", "8589934592\n");
    write_file(root, "/class/drm/card6/device/tile1/physical_vram_size_bytes", "8589934592\n");
    write_file(root, "/class/drm/card6/device/uevent", "PCI_SLOT_NAME=0000:4d:00.0\n");

    g4_hw_gpu g[8];
    char why[160] = "";
    int n = g4_hw_probe_drm(root, g, 8, why, sizeof why);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(g[0].osdevs, "card2");
    ck_assert_str_eq(g[0].name, "Radeon RX 7900 XTX");
    ck_assert_str_eq(g[0].pci_busid, "0000:03:00.0");
    ck_assert_int_eq(g[0].memory_bytes, 25753026560LL);
    ck_assert_int_eq(g[0].memory_free_bytes, -1);             /* no mem_info_vram_used */
    ck_assert_str_eq(g[0].backend, "sysfs");
    ck_assert_str_eq(g[1].osdevs, "card6");
    ck_assert_str_eq(g[1].vendor, "Intel Corporation");
    ck_assert_int_eq(g[1].memory_bytes, 2 * 8589934592LL);    /* both tiles */
    ck_assert_str_eq(g[1].pci_busid, "0000:4d:00.0");
    ck_assert_str_eq(g[2].osdevs, "card10");
    ck_assert_str_eq(g[2].pci_busid, "0000:c3:00.0");         /* normalized to lower case */
    ck_assert_int_eq(g[2].memory_free_bytes, 17163091968LL - 1163091968LL);
    ck_assert_str_eq(g[2].name, "");                          /* hw.c names it from hwloc's PCI object */
    /* cap respected */
    ck_assert_int_eq(g4_hw_probe_drm(root, g, 1, NULL, 0), 1);
    ck_assert_str_eq(g[0].osdevs, "card2");
    rm_tree(root);
    /* no tree: nothing, and a note saying where it looked */
    ck_assert_int_eq(g4_hw_probe_drm("/nonexistent-sysfs", g, 8, why, sizeof why), 0);
    ck_assert_ptr_nonnull(strstr(why, "/nonexistent-sysfs/class/drm"));
}
END_TEST

START_TEST(nvml_missing_library_is_no_gpu) {
    g4_hw_gpu g[2];
    char why[160] = "";
    ck_assert_int_eq(g4_hw_probe_nvml("/nonexistent/libnvidia-ml.so.1", g, 2, why, sizeof why), 0);
    ck_assert_ptr_nonnull(strstr(why, "not loadable"));
}
END_TEST

START_TEST(peak_bandwidth_formula) {
    /* datasheets: RTX 3090 936 GB/s (19.5 Gbps GDDR6X x 384 bit; NVML max mem clock 9751 MHz),
       A100 40GB 1555 GB/s (NVML 1215 MHz x 5120 bit), V100 SXM3 981 GB/s (958 MHz x 4096 bit) */
    ck_assert_double_eq_tol(g4_hw_peak_bandwidth_gbs(9751, 384), 936.1, 0.1);
    ck_assert_double_eq_tol(g4_hw_peak_bandwidth_gbs(1215, 5120), 1555.2, 0.1);
    ck_assert_double_eq_tol(g4_hw_peak_bandwidth_gbs(958, 4096), 981.0, 0.1);
    ck_assert_double_eq(g4_hw_peak_bandwidth_gbs(0, 384), 0.0);
    ck_assert_double_eq(g4_hw_peak_bandwidth_gbs(9751, 0), 0.0);
}
END_TEST

START_TEST(busid_parse) {
    unsigned d, b, v, f;
    ck_assert_int_eq(g4_hw_parse_busid("00000000:65:00.0", &d, &b, &v, &f), 1);   /* NVML's 8-digit domain */
    ck_assert_uint_eq(d, 0); ck_assert_uint_eq(b, 0x65); ck_assert_uint_eq(v, 0); ck_assert_uint_eq(f, 0);
    ck_assert_int_eq(g4_hw_parse_busid("0001:C3:1f.7", &d, &b, &v, &f), 1);
    ck_assert_uint_eq(d, 1); ck_assert_uint_eq(b, 0xc3); ck_assert_uint_eq(v, 0x1f); ck_assert_uint_eq(f, 7);
    ck_assert_int_eq(g4_hw_parse_busid("", &d, &b, &v, &f), 0);
    ck_assert_int_eq(g4_hw_parse_busid("0000:03:00", &d, &b, &v, &f), 0);
    ck_assert_int_eq(g4_hw_parse_busid("0000:03:00.0 junk", &d, &b, &v, &f), 0);
    ck_assert_int_eq(g4_hw_parse_busid("0000:103:00.0", &d, &b, &v, &f), 0);   /* bus > 0xff */
    ck_assert_int_eq(g4_hw_parse_busid(NULL, &d, &b, &v, &f), 0);
}
END_TEST

START_TEST(apple_sysctl_parse) {
    /* `sysctl hw.memsize machdep.cpu.brand_string hw.perflevel0.physicalcpu hw.perflevel1.physicalcpu`
       on a Mac mini M4 Pro (24 GB, 10 P + 4 E cores), with an unrelated line */
    const char *m4pro = "hw.memsize: 25769803776\nmachdep.cpu.brand_string: Apple M4 Pro\n"
                        "hw.ncpu: 14\nhw.perflevel0.physicalcpu: 10\nhw.perflevel1.physicalcpu: 4\n";
    g4_hw_apple a;
    ck_assert_int_eq(g4_hw_apple_parse(m4pro, &a), 1);
    ck_assert_str_eq(a.brand, "Apple M4 Pro");
    ck_assert_uint_eq(a.memsize, 25769803776ULL);
    ck_assert_int_eq(a.p_cores, 10);
    ck_assert_int_eq(a.e_cores, 4);
    g4_hw_gpu g;
    g4_hw_apple_gpu(&a, &g);
    ck_assert_str_eq(g.name, "Apple M4 Pro");
    ck_assert_int_eq(g.unified, 1);
    ck_assert_int_eq(g.memory_bytes, 25769803776LL);
    ck_assert_str_eq(g.backend, "Metal");
    /* an Intel Mac has no perflevels and is not Apple silicon; no trailing newline */
    ck_assert_int_eq(g4_hw_apple_parse("hw.memsize: 17179869184\nmachdep.cpu.brand_string: "
                                       "Intel(R) Core(TM) i7-8700B CPU @ 3.20GHz", &a), 0);
    ck_assert_uint_eq(a.memsize, 17179869184ULL);
    ck_assert_int_eq(a.p_cores, 0);
    ck_assert_int_eq(g4_hw_apple_parse("machdep.cpu.brand_string: Apple M1\n", &a), 0);   /* no memsize */
    ck_assert_int_eq(g4_hw_apple_parse("", &a), 0);
    ck_assert_int_eq(g4_hw_apple_parse(NULL, &a), 0);
#ifndef __APPLE__
    ck_assert_int_eq(g4_hw_apple_probe(&a), 0);
#endif
}
END_TEST

/* ---- bandwidth probe --------------------------------------------------------------- */

START_TEST(bandwidth_small_run_plausible) {
    g4_bw_result r;
    g4_err err;
    ck_assert_msg(g4_bandwidth_measure(32u << 20, 0, 2, &r, &err) == G4_OK, "%s", err.msg);
    ck_assert_uint_eq(r.bytes_per_array, 32u << 20);
    ck_assert_int_ge(r.threads, 1);
    ck_assert_int_eq(r.reps, 2);
    /* anything from a Raspberry Pi to an HBM server lies in 0.5 .. 5000 GB/s */
    ck_assert_msg(r.read_gbs > 0.5 && r.read_gbs < 5000, "read %.2f GB/s", r.read_gbs);
    ck_assert_msg(r.triad_gbs > 0.5 && r.triad_gbs < 5000, "triad %.2f GB/s", r.triad_gbs);
    ck_assert_msg(g4_bandwidth_measure(8u << 20, 1, 1, &r, &err) == G4_OK, "%s", err.msg);
    ck_assert_int_eq(r.threads, 1);
}
END_TEST

START_TEST(bandwidth_bad_arguments) {
    g4_bw_result r;
    g4_err err;
    ck_assert_int_eq(g4_bandwidth_measure(1000, 1, 1, &r, &err), G4_ERR_INVALID);
    ck_assert_int_eq(g4_bandwidth_measure(8u << 20, 1, 0, &r, &err), G4_ERR_INVALID);
    ck_assert_int_eq(g4_bandwidth_measure(8u << 20, 100000, 1, &r, &err), G4_ERR_INVALID);
}
END_TEST

START_TEST(llc_total_covers_detected_llc) {
    g4_err err;
    ck_assert_int_eq(g4_hw_detect(NULL, &R, &err), G4_OK);
    int top = 0;
    for (int l = 1; l <= G4_HW_MAX_CACHE_LEVELS; l++) if (R.cache_count[l]) top = l;
    if (!top) return;   /* a machine hwloc sees no caches on */
    ck_assert_uint_ge(g4_hw_llc_total_bytes(), R.cache_bytes[top]);
    ck_assert_uint_le(g4_hw_llc_total_bytes(), R.cache_bytes[top] * (uint64_t)R.cache_count[top]);
}
END_TEST

static Suite *hw_suite(void) {
    Suite *s = suite_create("hw");
    TCase *xml = tcase_create("xml");
    tcase_add_test(xml, xml_32em64t_cpu_memory);
    tcase_add_test(xml, xml_32em64t_gpus);
    tcase_add_test(xml, xml_dgx2_nvml_gpus_once_each);
    tcase_add_test(xml, xml_96em64t_numa_no_display_gpu);
    tcase_add_test(xml, xml_fakecpukinds_three_kinds);
    tcase_add_test(xml, xml_memattrs_synthetic);
    tcase_add_test(xml, xml_missing_file);
    tcase_add_test(xml, xml_not_xml_or_not_hwloc);
    suite_add_tcase(s, xml);
    TCase *sys = tcase_create("this_machine");
    tcase_add_test(sys, this_machine_cpus_memory);
    tcase_add_test(sys, this_machine_simd_matches_gcc);
    tcase_add_test(sys, cgroup_v2_limit_caps_available);
    tcase_add_test(sys, cgroup_v1_parent_limit_and_no_limit);
    tcase_add_test(sys, meminfo_missing_is_io_error);
    tcase_add_test(sys, llc_total_covers_detected_llc);
    suite_add_tcase(s, sys);
    TCase *gpu = tcase_create("gpu_probes");
    tcase_add_test(gpu, drm_probe_fake_sysfs);
    tcase_add_test(gpu, nvml_missing_library_is_no_gpu);
    tcase_add_test(gpu, peak_bandwidth_formula);
    tcase_add_test(gpu, busid_parse);
    tcase_add_test(gpu, apple_sysctl_parse);
    suite_add_tcase(s, gpu);
    TCase *bw = tcase_create("bandwidth");
    tcase_set_timeout(bw, 60);
    tcase_add_test(bw, bandwidth_small_run_plausible);
    tcase_add_test(bw, bandwidth_bad_arguments);
    suite_add_tcase(s, bw);
    return s;
}

G4TEST_MAIN(hw_suite)
