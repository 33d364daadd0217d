/* fuzz_hwloc.c - libFuzzer harness: the input as an hwloc XML topology,
 * loaded by g4_hw_detect (csrc/hw/hw.c), as gemma4stack.detect(topology_xml=)
 * and `gemma4stack detect --topology-xml F` do with a file from a user.
 *
 * The input goes to an in-memory file. hwloc has two XML importers, libxml2
 * and its own minimal parser (HWLOC_LIBXML_IMPORT=0); odd-length inputs
 * use the minimal one so both are fuzzed. hwloc itself is not instrumented,
 * so coverage counts our code, but ASan still sees what hwloc hands back.
 * Checks: a failure sets an error; a report has counts within the arrays'
 * capacities and NUL-terminated strings, and kinds cover at most every PU.
 */
#include "fuzz.h"

#include "../hw/hw.h"

#include <hwloc.h>

/* hwloc 2.9's XML import leaks the objects it was building when it rejects
 * an attribute (a cpuset "0x000w00001", say): allocated inside
 * hwloc_topology_load by the functions below and lost before
 * hwloc_topology_destroy can see them. That is hwloc's. A topology we forgot
 * to destroy is still reported: its own struct comes from
 * hwloc_topology_init. (LeakSanitizer hook; libFuzzer's leak stacks are
 * short, so the allocating function is what can be matched.) */
const char *__lsan_default_suppressions(void) {
    return "leak:hwloc_alloc_setup_object\nleak:hwloc_bitmap_alloc\n";
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    setenv("HWLOC_HIDE_ERRORS", "2", 1);   /* hwloc 2.x: no "hwloc has encountered ..." banners */
    /* hwloc loads its plugins (libxml2 import among them) when the first
       topology is created and unloads them with the last; one topology kept
       for the whole run saves a dlopen per input. */
    static hwloc_topology_t keep;
    hwloc_topology_init(&keep);
    return 0;
}

static void check_str(const char *s, size_t cap, const char *what) {
    G4FUZZ_CHECK(strnlen(s, cap) < cap, "%s is not NUL-terminated", what);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static g4fuzz_file file;
    const char *path = g4fuzz_file_put(&file, data, size);
    setenv("HWLOC_LIBXML_IMPORT", size % 2 ? "0" : "1", 1);
    g4_hw_report r;
    g4_err err;
    if (g4_hw_detect(path, &r, &err) != G4_OK) {
        G4FUZZ_CHECK_ERR(err, "g4_hw_detect");
        return 0;
    }
    G4FUZZ_CHECK(r.from_xml == 1, "from_xml not set");
    check_str(r.cpu_model, sizeof r.cpu_model, "cpu_model");
    check_str(r.cpu_vendor, sizeof r.cpu_vendor, "cpu_vendor");
    check_str(r.arch, sizeof r.arch, "arch");
    G4FUZZ_CHECK(r.n_kinds >= 1 && r.n_kinds <= G4_HW_MAX_KINDS, "n_kinds %d", r.n_kinds);
    G4FUZZ_CHECK(r.n_numa >= 0 && r.n_numa <= G4_HW_MAX_NUMA, "n_numa %d", r.n_numa);
    G4FUZZ_CHECK(r.n_gpus >= 0 && r.n_gpus <= G4_HW_MAX_GPUS, "n_gpus %d", r.n_gpus);
    G4FUZZ_CHECK(r.packages >= 1 && r.cores >= 0 && r.pus >= 0, "packages %d cores %d pus %d",
                 r.packages, r.cores, r.pus);
    /* (Kinds may hold more PUs than there are PU objects: hwloc keeps the
       root cpuset of an XML whose PU objects it dropped, see the report.) */
    for (int i = 0; i < r.n_kinds; i++) {
        check_str(r.kinds[i].core_type, sizeof r.kinds[i].core_type, "core_type");
        G4FUZZ_CHECK(r.kinds[i].n_pus >= 0, "kind %d has %d PUs", i, r.kinds[i].n_pus);
    }
    for (int i = 0; i < r.n_gpus; i++) {
        const g4_hw_gpu *g = &r.gpus[i];
        check_str(g->name, sizeof g->name, "gpu name");
        check_str(g->vendor, sizeof g->vendor, "gpu vendor");
        check_str(g->backend, sizeof g->backend, "gpu backend");
        check_str(g->pci_busid, sizeof g->pci_busid, "gpu pci_busid");
        check_str(g->osdevs, sizeof g->osdevs, "gpu osdevs");
        check_str(g->backends, sizeof g->backends, "gpu backends");
        G4FUZZ_CHECK(g->memory_bytes == -1 || g->memory_bytes > 0, "gpu memory %lld",
                     (long long)g->memory_bytes);
    }
    G4FUZZ_CHECK(r.available_ram_bytes == 0 && r.meminfo_total_bytes == 0,
                 "memory of this machine in a report of an XML");
    return 0;
}
