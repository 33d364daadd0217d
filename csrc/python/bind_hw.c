/* bind_hw.c - Python functions for csrc/hw/ and csrc/bench/bandwidth.c.
 *
 *   _core.hw_detect(topology_xml=None, probe_gpus=None) -> dict   (g4_hw_report as plain values)
 *   _core.hw_memory(sysroot=None) -> dict        (g4_hw_read_memory: no hwloc, ~50 us)
 *   _core.bandwidth(bytes_per_array=0, threads=0, reps=5) -> dict
 *
 * Thin on purpose: the GIL is released around the C calls and the result is
 * returned as a dict; gemma4stack/hardware.py shapes it into dataclasses.
 */
#include "g4py.h"

#include <stdlib.h>

#include "../bench/bandwidth.h"
#include "../hw/hw.h"

/* dict[key] = value, stealing the reference to value; -1 on error. */
static int put(PyObject *d, const char *key, PyObject *value) {
    if (!value) return -1;
    int rc = PyDict_SetItemString(d, key, value);
    Py_DECREF(value);
    return rc;
}

static PyObject *gpu_dict(const g4_hw_gpu *g) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    if (put(d, "name", PyUnicode_DecodeUTF8(g->name, (Py_ssize_t)strlen(g->name), "replace")) < 0 ||
        put(d, "vendor", PyUnicode_DecodeUTF8(g->vendor, (Py_ssize_t)strlen(g->vendor), "replace")) < 0 ||
        put(d, "backend", PyUnicode_FromString(g->backend)) < 0 ||
        put(d, "backends", PyUnicode_FromString(g->backends)) < 0 ||
        put(d, "osdevs", PyUnicode_FromString(g->osdevs)) < 0 ||
        put(d, "pci_busid", PyUnicode_FromString(g->pci_busid)) < 0 ||
        put(d, "memory_bytes", PyLong_FromLongLong(g->memory_bytes)) < 0 ||
        put(d, "memory_free_bytes", PyLong_FromLongLong(g->memory_free_bytes)) < 0 ||
        put(d, "cc_major", PyLong_FromLong(g->cc_major)) < 0 ||
        put(d, "cc_minor", PyLong_FromLong(g->cc_minor)) < 0 ||
        put(d, "mem_bus_width_bits", PyLong_FromLong(g->mem_bus_width_bits)) < 0 ||
        put(d, "mem_clock_mhz", PyLong_FromLong(g->mem_clock_mhz)) < 0 ||
        put(d, "peak_bandwidth_gbs", PyFloat_FromDouble(g->peak_bandwidth_gbs)) < 0 ||
        put(d, "unified", PyBool_FromLong(g->unified)) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

/* A new container stored in d[key] at once, so freeing d frees it on any
   error; returns a borrowed reference or NULL. */
static PyObject *child(PyObject *d, const char *key, PyObject *container) {
    return put(d, key, container) < 0 ? NULL : container;
}

static PyObject *report_dict(const g4_hw_report *r) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    PyObject *kinds, *numa, *gpus, *caches, *counts, *simd;
    if (!(kinds = child(d, "kinds", PyList_New(r->n_kinds))) || !(numa = child(d, "numa_bytes", PyList_New(r->n_numa))) ||
        !(gpus = child(d, "gpus", PyList_New(r->n_gpus))) || !(caches = child(d, "cache_bytes", PyDict_New())) ||
        !(counts = child(d, "cache_count", PyDict_New())) || !(simd = child(d, "simd", PyDict_New())))
        goto fail;
    for (int i = 0; i < r->n_kinds; i++) {
        PyObject *k = Py_BuildValue("{s:i,s:i,s:s}", "pus", r->kinds[i].n_pus, "efficiency", r->kinds[i].efficiency,
                                    "core_type", r->kinds[i].core_type);
        if (!k) goto fail;
        PyList_SET_ITEM(kinds, i, k);
    }
    for (int i = 0; i < r->n_numa; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(r->numa_bytes[i]);
        if (!v) goto fail;
        PyList_SET_ITEM(numa, i, v);
    }
    for (int i = 0; i < r->n_gpus; i++) {
        PyObject *g = gpu_dict(&r->gpus[i]);
        if (!g) goto fail;
        PyList_SET_ITEM(gpus, i, g);
    }
    for (int l = 1; l <= G4_HW_MAX_CACHE_LEVELS; l++) {   /* {level: bytes of one instance}, {level: instances} */
        if (!r->cache_count[l]) continue;
        PyObject *lv = PyLong_FromLong(l), *sz = PyLong_FromUnsignedLongLong(r->cache_bytes[l]),
                 *ct = PyLong_FromLong(r->cache_count[l]);
        int ok = lv && sz && ct && PyDict_SetItem(caches, lv, sz) == 0 && PyDict_SetItem(counts, lv, ct) == 0;
        Py_XDECREF(lv); Py_XDECREF(sz); Py_XDECREF(ct);
        if (!ok) goto fail;
    }
    const struct { const char *name; int on; } feats[] = {
        {"avx2", r->avx2}, {"fma", r->fma}, {"f16c", r->f16c}, {"avx512f", r->avx512f},
        {"avx512bw", r->avx512bw}, {"avx512vnni", r->avx512vnni}, {"avx512bf16", r->avx512bf16},
        {"avxvnni", r->avxvnni}, {"neon", r->neon}, {"dotprod", r->dotprod},
    };
    for (size_t i = 0; i < sizeof feats / sizeof feats[0]; i++)
        if (put(simd, feats[i].name, PyBool_FromLong(feats[i].on)) < 0) goto fail;

    if (put(d, "cpu_model", PyUnicode_DecodeUTF8(r->cpu_model, (Py_ssize_t)strlen(r->cpu_model), "replace")) < 0 ||
        put(d, "cpu_vendor", PyUnicode_DecodeUTF8(r->cpu_vendor, (Py_ssize_t)strlen(r->cpu_vendor), "replace")) < 0 ||
        put(d, "arch", PyUnicode_FromString(r->arch)) < 0 ||
        put(d, "packages", PyLong_FromLong(r->packages)) < 0 ||
        put(d, "cores", PyLong_FromLong(r->cores)) < 0 ||
        put(d, "pus", PyLong_FromLong(r->pus)) < 0 ||
        put(d, "total_ram_bytes", PyLong_FromUnsignedLongLong(r->total_ram_bytes)) < 0 ||
        put(d, "available_ram_bytes", PyLong_FromUnsignedLongLong(r->available_ram_bytes)) < 0 ||
        put(d, "cgroup_limit_bytes", PyLong_FromUnsignedLongLong(r->cgroup_limit_bytes)) < 0 ||
        put(d, "hwloc_total_bytes", PyLong_FromUnsignedLongLong(r->hwloc_total_bytes)) < 0 ||
        put(d, "meminfo_total_bytes", PyLong_FromUnsignedLongLong(r->meminfo_total_bytes)) < 0 ||
        put(d, "from_xml", PyBool_FromLong(r->from_xml)) < 0 ||
        put(d, "gpus_truncated", PyBool_FromLong(r->gpus_truncated)) < 0 ||
        put(d, "gpu_notes", PyUnicode_DecodeUTF8(r->gpu_notes, (Py_ssize_t)strlen(r->gpu_notes), "replace")) < 0)
        goto fail;
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

static PyObject *py_hw_detect(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"topology_xml", "probe_gpus", NULL};
    PyObject *path_obj = Py_None, *probe_obj = Py_None, *bytes = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO:hw_detect", kwlist, &path_obj, &probe_obj)) return NULL;
    int probe = G4_HW_PROBE_AUTO;
    if (probe_obj != Py_None) {
        int on = PyObject_IsTrue(probe_obj);
        if (on < 0) return NULL;
        probe = on ? G4_HW_PROBE_ALWAYS : G4_HW_PROBE_NEVER;
    }
    const char *path = NULL;
    if (path_obj != Py_None) {
        if (!PyUnicode_FSConverter(path_obj, &bytes)) return NULL;   /* str or os.PathLike */
        path = PyBytes_AS_STRING(bytes);
    }
    g4_hw_report *r = malloc(sizeof *r);   /* ~30 KB: keep it off the stack */
    if (!r) { Py_XDECREF(bytes); return PyErr_NoMemory(); }
    g4_err err;
    g4_err_clear(&err);
    g4_status st;
    Py_BEGIN_ALLOW_THREADS
    st = g4_hw_detect_ex(path, probe, r, &err);
    Py_END_ALLOW_THREADS
    Py_XDECREF(bytes);
    PyObject *res = st == G4_OK ? report_dict(r) : g4py_raise(&err);
    free(r);
    return res;
}

static PyObject *py_hw_memory(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"sysroot", NULL};
    PyObject *root_obj = Py_None, *bytes = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:hw_memory", kwlist, &root_obj)) return NULL;
    const char *root = NULL;
    if (root_obj != Py_None) {
        if (!PyUnicode_FSConverter(root_obj, &bytes)) return NULL;
        root = PyBytes_AS_STRING(bytes);
    }
    uint64_t total = 0, avail = 0, limit = 0;
    g4_err err;
    g4_err_clear(&err);
    g4_status st;
    Py_BEGIN_ALLOW_THREADS
    st = g4_hw_read_memory(root, &total, &avail, &limit, &err);
    Py_END_ALLOW_THREADS
    Py_XDECREF(bytes);
    if (st != G4_OK) return g4py_raise(&err);
    return Py_BuildValue("{s:K,s:K,s:K}", "total_bytes", (unsigned long long)total,
                         "available_bytes", (unsigned long long)avail,
                         "cgroup_limit_bytes", (unsigned long long)limit);
}

static PyObject *py_bandwidth(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"bytes_per_array", "threads", "reps", NULL};
    Py_ssize_t bytes = 0;
    int threads = 0, reps = 5;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|nii:bandwidth", kwlist, &bytes, &threads, &reps)) return NULL;
    if (bytes < 0) return PyErr_Format(PyExc_ValueError, "bytes_per_array must be >= 0, got %zd", bytes);
    g4_bw_result r;
    g4_err err;
    g4_err_clear(&err);
    g4_status st;
    Py_BEGIN_ALLOW_THREADS
    st = g4_bandwidth_measure((size_t)bytes, threads, reps, &r, &err);
    Py_END_ALLOW_THREADS
    if (st != G4_OK) return g4py_raise(&err);
    return Py_BuildValue("{s:d,s:d,s:n,s:i,s:i,s:s}", "read_gbs", r.read_gbs, "triad_gbs", r.triad_gbs,
                         "bytes_per_array", (Py_ssize_t)r.bytes_per_array, "threads", r.threads, "reps", r.reps,
                         "kernel", r.kernel);
}

PyMethodDef g4py_hw_methods[] = {
    {"hw_detect", (PyCFunction)(void (*)(void))py_hw_detect, METH_VARARGS | METH_KEYWORDS,
     "hw_detect(topology_xml=None, probe_gpus=None) -> dict\n\nDescribe this machine, or the machine in an hwloc XML export.\n"
     "Sizes in bytes. probe_gpus: None = ask NVML / sysfs / sysctl for GPUs on this machine only; True = also\n"
     "with an XML (tests); False = never. Raises FileNotFoundError / ValueError for a bad XML path or file."},
    {"hw_memory", (PyCFunction)(void (*)(void))py_hw_memory, METH_VARARGS | METH_KEYWORDS,
     "hw_memory(sysroot=None) -> dict\n\nMemTotal, MemAvailable capped by the cgroup's room (limit - "
     "usage) and the cgroup memory limit (0 = none), in bytes, from /proc and /sys under sysroot.\n"
     "Raises OSError when meminfo cannot be read."},
    {"bandwidth", (PyCFunction)(void (*)(void))py_bandwidth, METH_VARARGS | METH_KEYWORDS,
     "bandwidth(bytes_per_array=0, threads=0, reps=5) -> dict\n\nSTREAM-style read and triad bandwidth in GB/s "
     "(1e9 bytes/s); 0 = defaults (4 x last-level cache, all CPUs)."},
    {NULL, NULL, 0, NULL},
};
