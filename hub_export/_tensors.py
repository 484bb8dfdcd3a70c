"""Reading source checkpoints lazily and writing sharded safetensors one tensor at a time.

Sources: pickled `.bin` / `.pt` files are opened with `torch.load(weights_only=True, mmap=True)` (only tensors and
plain containers are unpickled; tensor data stays on disk until read), `.safetensors` with `safe_open`. Output: the
safetensors format written directly (8-byte header length, JSON header, raw data), so a tensor is written as soon as
it is computed and the process never holds a whole shard.
"""

import json
import math
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import ConversionError


def parse_size(size: str | int) -> int:
    """`"5GB"`, `"500MB"`, `"2GiB"` or a byte count -> bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", size.upper().replace("IB", "iB"), flags=re.IGNORECASE)
    if m is None:
        raise ConversionError(f"--max-shard-size must look like '5GB', '500MB' or a byte count; got {size!r}.")
    number, unit, binary = float(m[1]), m[2].upper(), m[3]
    base = 1024 if binary else 1000
    return int(number * base ** "_KMGT".index(unit or "_"))


class TensorFile:
    """One checkpoint file: keys and shapes without reading data; tensors on demand."""

    def __init__(self, path: str | os.PathLike, label: str | None = None, subdict: str | None = None):
        self.path = Path(path)
        self.label = label or self.path.name
        if not self.path.is_file():
            raise ConversionError(f"{self.label}: file not found at {self.path}.")
        self._safe = None
        self._dict = None
        self.extra = {}  # non-tensor entries of a .pt file (BEATs' "cfg")
        if self.path.suffix == ".safetensors":
            self._safe = safe_open(str(self.path), framework="pt")
            self._shapes = {k: tuple(self._safe.get_slice(k).get_shape()) for k in self._safe.keys()}
            self._dtypes = {k: _SAFE_DTYPES[self._safe.get_slice(k).get_dtype()] for k in self._safe.keys()}
        else:
            obj = load_bin(self.path, self.label)
            if subdict is not None:
                if not isinstance(obj.get(subdict), dict):
                    raise ConversionError(
                        f"{self.label} ({self.path}) has no {subdict!r} state dict (top-level keys: {sorted(obj)[:10]}); "
                        f"expected a dict with {subdict!r} holding the weights."
                    )
                self.extra = {k: v for k, v in obj.items() if k != subdict}
                obj = obj[subdict]
            bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise ConversionError(
                    f"{self.label} ({self.path}) is not a flat state dict: entries {bad[:5]} are not tensors. Expected "
                    "a dict of tensors, as torch.save(model.state_dict()) writes."
                )
            self._dict = obj
            self._shapes = {k: tuple(v.shape) for k, v in self._dict.items()}
            self._dtypes = {k: v.dtype for k, v in self._dict.items()}

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str):
        return self._dtypes[key]

    def get(self, key: str) -> torch.Tensor:
        if self._safe is not None:
            return self._safe.get_tensor(key)
        return self._dict[key]

    def close(self):
        """Drop every reference to the file's data (unmaps it)."""
        self._dict = None
        self._safe = None


def load_bin(path: Path, label: str) -> dict[str, torch.Tensor]:
    """Load a pickled checkpoint with `weights_only=True` (memory-mapped when the file is in the zip format)."""
    try:
        mmap = zipfile.is_zipfile(path)
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise ConversionError(
            f"{label} ({path}) holds more than tensors and plain containers, and is only ever loaded with "
            f"torch.load(weights_only=True) here. Received: {str(error).splitlines()[0]}. Re-save it as a plain "
            "state dict, or check that the file is the released one."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ConversionError(
            f"{label} ({path}) is not a readable PyTorch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}). Expected a torch.save file; download it again if it is truncated."
        ) from None
    if not isinstance(obj, dict):
        raise ConversionError(
            f"{label} ({path}) holds a {type(obj).__name__}; expected a state dict (a dict of tensors)."
        )
    return obj


_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.bool: "BOOL",
}


_SAFE_DTYPES = {name: dtype for dtype, name in _DTYPES.items()}


def tensor_bytes(shape, dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


class ShardedSafetensorsWriter:
    """Write planned tensors, in plan order, into `model-0000i-of-0000N.safetensors` (+ index) or `model.safetensors`.

    `entries` is the ordered list of (key, shape, dtype); shards are cut greedily at `max_shard_bytes`.
    """

    def __init__(self, folder: Path, entries: list[tuple[str, tuple, torch.dtype]], max_shard_bytes: int):
        self.folder = Path(folder)
        shards, current, size = [], [], 0
        for key, shape, dtype in entries:
            nbytes = tensor_bytes(shape, dtype)
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append((key, tuple(shape), dtype))
            size += nbytes
        if current or not shards:
            shards.append(current)
        n = len(shards)
        self.names = (
            ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self.shards = shards
        self.total_size = sum(tensor_bytes(s, d) for s_ in shards for _, s, d in s_)
        self._order = [(i, key, shape, dtype) for i, shard in enumerate(shards) for key, shape, dtype in shard]
        self._next = 0
        self._file = None
        self._shard = -1

    def _open_shard(self, index: int):
        if self._file is not None:
            self._file.close()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for key, shape, dtype in self.shards[index]:
            nbytes = tensor_bytes(shape, dtype)
            header[key] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._file = open(self.folder / self.names[index], "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._shard = index

    def write(self, key: str, tensor: torch.Tensor):
        shard, expected_key, shape, dtype = self._order[self._next]
        if key != expected_key or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise RuntimeError(
                f"writer out of order: got {key} {tuple(tensor.shape)} {tensor.dtype}, planned {expected_key} "
                f"{shape} {dtype}"
            )
        if shard != self._shard:
            self._open_shard(shard)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(data))
        self._next += 1

    def close(self):
        if self._next != len(self._order):
            raise RuntimeError(f"writer closed after {self._next} of {len(self._order)} tensors")
        if self._file is not None:
            self._file.close()
        if len(self.names) == 1 and not self.shards[0]:
            self._open_shard(0)
            self._file.close()
        if len(self.names) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {key: self.names[i] for i, key, _, _ in self._order},
            }
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
