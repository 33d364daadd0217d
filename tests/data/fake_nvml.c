/* fake_nvml.c - a stand-in libnvidia-ml.so.1 for tests/test_gpu_detect.py.
 *
 * Exports the NVML functions csrc/hw/gpu_probe.c calls, with the signatures of
 * nvml.h, answering for two made-up GPUs shaped like the Tesla V100-SXM3-32GB
 * of a DGX-2 (the PCI bus ids of nvml0 and nvml1 in
 * ../shared/hwloc-xml/nvidiaDGX2.xml, so a test can merge them into that
 * topology). Values an NVIDIA driver reports for that card: 32510 MiB total,
 * compute capability 7.0, 4096-bit HBM2 bus, 958 MHz maximum memory clock.
 * FAKE_NVML_FAIL_INIT=1 makes nvmlInit fail (a driver that is not loaded).
 *
 * Build: cc -shared -fPIC -o DIR/libnvidia-ml.so.1 fake_nvml.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct { int index; } dev_t_;
typedef dev_t_ *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

enum { OK = 0, UNINITIALIZED = 1, INVALID_ARGUMENT = 2, NOT_SUPPORTED = 3, INSUFFICIENT_SIZE = 7 };

static dev_t_ devs[2] = {{0}, {1}};
static const char *bus_ids[2] = {"00000000:34:00.0", "00000000:36:00.0"};
static const unsigned long long free_mib[2] = {30000, 12000};
static int inited;

nvmlReturn_t nvmlInit_v2(void) {
    const char *fail = getenv("FAKE_NVML_FAIL_INIT");
    if (fail && *fail == '1') return 9;   /* NVML_ERROR_DRIVER_NOT_LOADED */
    inited = 1;
    return OK;
}
nvmlReturn_t nvmlShutdown(void) { inited = 0; return OK; }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *n) {
    if (!inited) return UNINITIALIZED;
    *n = 2;
    return OK;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned i, nvmlDevice_t *d) {
    if (!inited) return UNINITIALIZED;
    if (i >= 2) return INVALID_ARGUMENT;
    *d = &devs[i];
    return OK;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned len) {
    const char *n = "Tesla V100-SXM3-32GB";
    if (len <= strlen(n)) return INSUFFICIENT_SIZE;
    strcpy(name, n);
    (void)d;
    return OK;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    m->total = 32510ULL << 20;
    m->free = free_mib[d->index] << 20;
    m->used = m->total - m->free;
    return OK;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) {
    memset(p, 0, sizeof *p);
    snprintf(p->busId, sizeof p->busId, "%s", bus_ids[d->index]);
    snprintf(p->busIdLegacy, sizeof p->busIdLegacy, "%s", bus_ids[d->index] + 4);
    p->bus = d->index ? 0x36 : 0x34;
    p->pciDeviceId = 0x1db810de;
    return OK;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    (void)d;
    *major = 7;
    *minor = 0;
    return OK;
}

nvmlReturn_t nvmlDeviceGetMemoryBusWidth(nvmlDevice_t d, unsigned *w) {
    (void)d;
    *w = 4096;
    return OK;
}

nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t d, int type, unsigned *mhz) {
    (void)d;
    if (type != 2) return NOT_SUPPORTED;   /* only NVML_CLOCK_MEM here */
    *mhz = 958;
    return OK;
}
