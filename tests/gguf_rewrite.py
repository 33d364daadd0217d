"""Copy a GGUF with edits (tests of bad input and of alternative tensor layouts), with gguf-py.

    >>> rewrite(src, dst, drop_keys={"gemma4.attention.key_length_swa"})
    >>> rewrite(src, dst, tensors=lambda name, a: None if name == "blk.0.attn_k.weight" else a)

Metadata is copied key by key with its GGUF value type; tensors of F32/F16 files are copied as
numpy arrays (numpy shape = reversed ggml shape), others as raw blocks.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

import gguf

TensorEdit = Callable[[str, np.ndarray], "np.ndarray | list[tuple[str, np.ndarray]] | None"]


def copy_keys(r: gguf.GGUFReader, w: gguf.GGUFWriter, skip: Iterable[str] = ()) -> None:
    """Every key of r but skip (and the reader's GGUF.* and general.architecture, which the
    writer sets) into w, with its GGUF value type."""
    skip = set(skip)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in skip:
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), vt, sub_type=f.types[-1])
        else:
            w.add_key_value(name, f.contents(), vt)


def rewrite(src: str | Path, dst: str | Path, drop_keys: Iterable[str] = (),
            set_keys: dict[str, tuple[object, gguf.GGUFValueType]] | None = None,
            tensors: TensorEdit | None = None) -> Path:
    """Write dst = src without the keys in drop_keys, with set_keys {key: (value, type)} added
    or replaced, and each float tensor passed through tensors(name, array): return the array
    (possibly reshaped), None to drop it, or a list of (name, array) to replace it by several."""
    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    copy_keys(r, w, set(drop_keys) | set(set_keys or {}))
    for name, (val, vt) in (set_keys or {}).items():
        w.add_key_value(name, val, vt)
    for t in r.tensors:
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            a = np.asarray(t.data).reshape([int(x) for x in reversed(t.shape)])
            out = tensors(t.name, a) if tensors else a
            if out is None:
                continue
            for n, arr in (out if isinstance(out, list) else [(t.name, out)]):
                w.add_tensor(n, np.ascontiguousarray(arr))
        else:
            w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed([int(x) for x in t.shape])),
                         raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)
