"""Read a GGUF file's header, metadata and tensor index (C core, mmap; no tensor data is read).

    >>> from gemma4stack.gguf import read_gguf
    >>> f = read_gguf("TinyStories-656K-Q8_0.gguf")
    >>> f.architecture, f.metadata["llama.embedding_length"], f.tensors[1]
    ('llama', 128, TensorInfo(name='token_embd.weight', type_name='Q8_0', shape=(128, 2048), ...))

The format is llama.cpp's (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
Shapes are in ggml order: ``shape[0]`` is the number of elements in a row (the
fastest-varying dimension), the reverse of numpy's order.
"""
from __future__ import annotations

import html
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _core

__all__ = ["GGUFFile", "TensorInfo", "read_gguf"]


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor index.

    shape: elements per dimension in ggml order (ne[0] first).
    type: ggml type id (0 = F32, 8 = Q8_0, ...); type_name as ggml spells it.
    offset: bytes from the start of the file's data section (GGUFFile.data_offset).
    nbytes: bytes of tensor data in the file.
    """

    name: str
    type: int
    type_name: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["n_elements"] = self.n_elements
        return d


@dataclass
class GGUFFile:
    """A parsed GGUF header.

    version: 2 or 3. alignment: bytes (general.alignment, default 32).
    file_size, data_offset: bytes (data_offset = start of the tensor data section).
    metadata: key -> value (int, float, bool, str, or list for arrays).
    tensors: the tensor index, in file order.
    """

    path: str
    version: int
    alignment: int
    file_size: int
    data_offset: int
    metadata: dict[str, Any] = field(repr=False)
    tensors: list[TensorInfo] = field(repr=False)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def tensor(self, name: str) -> TensorInfo:
        """The tensor called `name`; KeyError if absent."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def type_counts(self) -> dict[str, int]:
        """Tensor count per type name, e.g. {'Q8_0': 15, 'F32': 5}."""
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.type_name] = out.get(t.type_name, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "version": self.version, "alignment": self.alignment,
            "file_size": self.file_size, "data_offset": self.data_offset,
            "metadata": dict(self.metadata),
            "tensors": [t.to_dict() for t in self.tensors],
        }

    def _repr_html_(self, max_rows: int = 12) -> str:
        e = html.escape
        arr_note = lambda v: f"[{len(v)} items]" if isinstance(v, list) else e(repr(v)[:80])
        summary = [
            ("file", os.path.basename(self.path)),
            ("architecture", self.architecture or "?"),
            ("name", self.metadata.get("general.name", "")),
            ("GGUF version", self.version),
            ("metadata keys", len(self.metadata)),
            ("tensors", f"{len(self.tensors)} ({', '.join(f'{n} {k}' for k, n in self.type_counts().items())})"),
            ("parameters", f"{self.n_parameters:,}"),
            ("tensor data", f"{self.tensor_bytes / 1e6:.2f} MB of {self.file_size / 1e6:.2f} MB file"),
        ]
        rows = "".join(f"<tr><th style='text-align:left'>{e(str(k))}</th><td>{e(str(v))}</td></tr>"
                       for k, v in summary)
        keys = [k for k in self.metadata if not k.startswith("tokenizer.ggml.")][:max_rows]
        meta = "".join(f"<tr><td>{e(k)}</td><td>{arr_note(self.metadata[k])}</td></tr>" for k in keys)
        trows = "".join(
            f"<tr><td>{e(t.name)}</td><td>{e(t.type_name)}</td><td>{e(str(list(t.shape)))}</td>"
            f"<td style='text-align:right'>{t.nbytes:,}</td></tr>" for t in self.tensors[:max_rows])
        more = len(self.tensors) - max_rows
        if more > 0:
            trows += f"<tr><td colspan=4>... {more} more</td></tr>"
        return (f"<table>{rows}</table>"
                f"<details><summary>metadata (first {len(keys)})</summary><table>{meta}</table></details>"
                f"<table><tr><th>tensor</th><th>type</th><th>shape (ggml order)</th><th>bytes</th></tr>"
                f"{trows}</table>")


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse and validate the header, metadata and tensor index of a GGUF file.

    Only headers are read (the file is memory-mapped); tensor data is bounds-checked, not loaded.
    Raises FileNotFoundError/OSError (unreadable), GGUFError (malformed: the message names the
    problem and the key or tensor), UnsupportedError (GGUF version or tensor type not known),
    LimitError (a memory cap such as GEMMA4STACK_MAX_TENSORS was hit; the message says which).
    """
    d = _core.gguf_read(os.fspath(path))
    tensors = [TensorInfo(name=t["name"], type=t["type"], type_name=t["type_name"],
                          shape=tuple(t["shape"]), offset=t["offset"], nbytes=t["nbytes"])
               for t in d["tensors"]]
    return GGUFFile(path=d["path"], version=d["version"], alignment=d["alignment"],
                    file_size=d["file_size"], data_offset=d["data_offset"],
                    metadata=d["metadata"], tensors=tensors)
