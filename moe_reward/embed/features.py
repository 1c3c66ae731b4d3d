"""Pair features: the embeddings of N pairs (router input and expert inputs) and their file formats.

`PairFeatures` is the central data type every later stage reads. This module is the only reader and
writer of a features file (one safetensors file, ``moe-reward-features/1``) and of a folder of feature
shards (``moe-reward-feature-shards/1`` with its ``manifest.json``); everyone else calls it.
"""

from __future__ import annotations

import hashlib
import json
import mmap as mmap_module
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..core import atomic
from ..data.pairs import PreferencePair

FEATURES_FORMAT = "moe-reward-features/1"
ProgressFn = Callable[[int, int], object]  # (done, total); return ignored


def default_cache_dir() -> Path:
    return Path(os.environ.get("MOE_REWARD_CACHE", Path.home() / ".cache" / "moe_reward")) / "embeddings"


SHARDS_FORMAT = "moe-reward-feature-shards/1"
MANIFEST = "manifest.json"
# Features whose float32 copy would exceed this are kept as stored (float16, or float32 memory-mapped)
# instead of being converted to float32 in memory; readers convert the rows they use (`PairFeatures.rows`).
LARGE_FEATURES_BYTES = int(os.environ.get("MOE_REWARD_LARGE_FEATURES_BYTES", 1 << 30))
MATRICES = ("prompt", "chosen", "rejected")
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "I32": np.int32, "I64": np.int64}


@dataclass
class PairFeatures:
    """Embeddings of N pairs: router input (`prompt`) and expert inputs (`chosen`, `rejected`).

    The matrices are float32, except float16 ones, which stay float16 (features at scale: a million pairs
    of 384-d vectors take 2.3 GB as float16, 4.6 GB as float32); memory-mapped arrays stay mapped. Code
    that needs float32 reads rows through `rows(name, index)`.
    """

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    pairs: list[PreferencePair]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected"):
            arr = getattr(self, name)
            if not (isinstance(arr, np.ndarray) and arr.dtype == np.float16 and arr.ndim == 2):
                arr = np.ascontiguousarray(arr, dtype=np.float32)  # no copy when it already is
            setattr(self, name, arr)
        if not len(self.prompt) == len(self.chosen) == len(self.rejected) == len(self.pairs):
            raise ValueError(
                f"features and pairs disagree in length: {len(self.prompt)}, {len(self.chosen)}, "
                f"{len(self.rejected)} vectors for {len(self.pairs)} pairs"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def dim(self) -> int:
        return int(self.chosen.shape[1])

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.pairs]

    @property
    def storage_dtype(self) -> str:
        return str(self.chosen.dtype)

    def rows(self, name: str, index: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Rows of one matrix ("prompt", "chosen" or "rejected") as a float32 array (a batch, not everything)."""
        arr = getattr(self, name)
        part = arr if index is None else arr[index]
        return np.ascontiguousarray(part, dtype=np.float32)

    def as_float32(self) -> PairFeatures:
        """The same features with float32 matrices in memory (a copy when they are stored otherwise)."""
        if all(
            getattr(self, k).dtype == np.float32 and not isinstance(getattr(self, k), np.memmap)
            for k in ("prompt", "chosen", "rejected")
        ):
            return self
        return PairFeatures(
            self.rows("prompt"), self.rows("chosen"), self.rows("rejected"), self.pairs, dict(self.metadata)
        )

    def subset(self, index: Sequence[int] | np.ndarray) -> PairFeatures:
        """The pairs at `index` (a copy; from memory-mapped features only the subset lands in memory)."""
        index = np.asarray(index, dtype=np.int64)
        return PairFeatures(
            _take_rows(self.prompt, index),
            _take_rows(self.chosen, index),
            _take_rows(self.rejected, index),
            [self.pairs[i] for i in index],
            dict(self.metadata),
        )

    def save(
        self,
        path: str | Path,
        dtype: str = "float32",
        include_records: bool = True,
        source: str | None = None,
    ) -> None:
        """One safetensors file: the three matrices plus JSON metadata (backbone, ids, and the records).

        ``dtype="int8"`` stores each distinct vector once, quantized per row (unit-norm embeddings lose
        under 0.5% per component), for shipping; ``include_records=False`` stores only ids plus `source`
        (a data file, relative to this file) that `load` joins on id. The write is atomic (temp + rename).
        """
        if dtype not in ("float32", "float16", "int8"):
            raise ValueError(f"dtype must be float32, float16 or int8, got {dtype!r}")
        meta = {"format": FEATURES_FORMAT, "metadata": json.dumps(self.metadata), "ids": json.dumps(self.ids)}
        if include_records:
            meta["records"] = json.dumps([p.to_dict() for p in self.pairs], ensure_ascii=False)
        elif source is None:
            raise ValueError("include_records=False needs the source data file to join on")
        if source is not None:
            meta["source"] = source
        if dtype == "int8":
            stacked = np.concatenate([self.rows("prompt"), self.rows("chosen"), self.rows("rejected")])
            unique, index = np.unique(stacked, axis=0, return_inverse=True)
            scale = np.abs(unique).max(1).clip(min=1e-12) / 127
            tensors = {
                "vectors": np.round(unique / scale[:, None]).astype(np.int8),
                "scale": scale.astype(np.float32),
                "index": index.reshape(-1).astype(np.int32),
            }
        else:
            tensors = {
                k: np.ascontiguousarray(getattr(self, k), dtype=dtype)
                for k in ("prompt", "chosen", "rejected")
            }
        atomic.write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | Path, mmap: bool | None = None) -> PairFeatures:
        """A features file, or a folder of shards (`ShardWriter`). ``mmap=None`` decides by size: features
        whose float32 copy exceeds `LARGE_FEATURES_BYTES` are memory-mapped / kept float16."""
        from safetensors import safe_open

        if Path(path).is_dir():
            return load_shards(path, mmap=mmap)
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != FEATURES_FORMAT:
                    raise ValueError(
                        f"{path}: not a moe-reward features file (format={meta.get('format')!r})"
                    )
                shapes = {k: fh.get_slice(k).get_shape() for k in fh.keys()}  # noqa: SIM118 (no __iter__)
                rows = shapes["index"][0] if "index" in shapes else 3 * shapes["chosen"][0]
                dim = shapes["vectors"][1] if "vectors" in shapes else shapes["chosen"][1]
                large = mmap if mmap is not None else rows * dim * 4 > LARGE_FEATURES_BYTES
                tensors = _mmap_tensors(Path(path)) if large else {k: fh.get_tensor(k) for k in shapes}
        except ValueError:
            raise
        except Exception as exc:  # safetensors raises its own error type for corrupt files
            raise ValueError(f"{path}: not a readable safetensors features file ({exc})") from exc
        if "vectors" in tensors:
            arrays = _dequantize(tensors, np.float16 if large else np.float32)
        else:
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in tensors]
            if missing:
                raise ValueError(f"{path}: the features file has no {missing[0]!r} matrix")
            arrays = {
                k: tensors[k] if large else tensors[k].astype(np.float32)
                for k in ("prompt", "chosen", "rejected")
            }
        if "records" in meta:
            pairs = [PreferencePair(**r) for r in json.loads(meta["records"])]
        else:
            pairs = _join_source(Path(path), meta.get("source"), json.loads(meta["ids"]))
        return cls(pairs=pairs, metadata=json.loads(meta["metadata"]), **arrays)


def _dequantize(tensors: dict[str, np.ndarray], dtype, chunk: int = 65536) -> dict[str, np.ndarray]:
    """int8 storage (distinct vectors, per-row scale, index) -> the three matrices, `chunk` rows at a time."""
    vectors, scale, index = tensors["vectors"], tensors["scale"], np.asarray(tensors["index"])
    if len(index) % 3 or (len(index) and (index.min() < 0 or index.max() >= len(vectors))):
        raise ValueError("int8 features: the index does not fit the stored vectors")
    stacked = np.empty((len(index), vectors.shape[1]), dtype)
    for s in range(0, len(index), chunk):
        rows = index[s : s + chunk]
        stacked[s : s + chunk] = (
            np.asarray(vectors[rows], np.float32) * np.asarray(scale[rows], np.float32)[:, None]
        )
    n = len(stacked) // 3
    return {"prompt": stacked[:n], "chosen": stacked[n : 2 * n], "rejected": stacked[2 * n :]}


def _mmap_tensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as read-only memory maps (nothing read until used).

    Reads the file's JSON header (sizes are checked against the file before any map is made); never
    unpickles.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if not 0 < n <= size - 8:
            raise ValueError(f"{path}: bad safetensors header length {n}")
        header = json.loads(fh.read(n))
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        shape = tuple(int(x) for x in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != count * np.dtype(dtype).itemsize or begin < 0 or base + end > size:
            raise ValueError(
                f"{path}: tensor {name!r} does not fit the file (shape {shape}, bytes {begin}-{end})"
            )
        out[name] = (
            np.zeros(shape, dtype)
            if count == 0
            else np.memmap(path, dtype=dtype, mode="r", offset=base + begin, shape=shape)
        )
    return out


def is_features_path(path: str | Path) -> bool:
    """A features file (.safetensors) or a folder of feature shards (with its manifest)."""
    p = Path(path)
    return str(path).endswith(".safetensors") or (p.is_dir() and (p / MANIFEST).is_file())


class ShardWriter:
    """Writes features as a folder of shards: ``shard-00000.safetensors`` … (each a features file of its
    own, records included) and ``manifest.json`` (written last, atomically: a folder without it is not
    read). Rows are buffered and written `shard_rows` at a time, so memory holds one shard."""

    def __init__(self, folder: str | Path, dtype: str = "float16", shard_rows: int = 100_000):
        if dtype not in ("float32", "float16", "int8"):
            raise ValueError(f"dtype must be float32, float16 or int8, got {dtype!r}")
        self.folder, self.dtype, self.shard_rows = Path(folder), dtype, max(1, int(shard_rows))
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder}: exists and is not a folder")
        if self.folder.is_dir() and any(self.folder.iterdir()) and not (self.folder / MANIFEST).is_file():
            raise ValueError(
                f"{self.folder}: a non-empty folder that is not a features folder; pick another --out"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self.metadata: dict = {}
        self.rows = 0
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[PreferencePair]]] = []
        self._buffered = 0

    def add(
        self,
        prompt: np.ndarray,
        chosen: np.ndarray,
        rejected: np.ndarray,
        pairs: list[PreferencePair],
        metadata: dict | None = None,
    ) -> None:
        if metadata:
            self.metadata = dict(metadata)
        self._buf.append((prompt, chosen, rejected, list(pairs)))
        self._buffered += len(pairs)
        while self._buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, count: int) -> None:
        parts = [  # prompt, chosen, rejected
            np.concatenate([b[0] for b in self._buf]),
            np.concatenate([b[1] for b in self._buf]),
            np.concatenate([b[2] for b in self._buf]),
        ]
        pairs = [p for b in self._buf for p in b[3]]
        head = PairFeatures(
            parts[0][:count], parts[1][:count], parts[2][:count], pairs[:count], dict(self.metadata)
        )
        name = f"shard-{len(self.shards):05d}.safetensors"
        head.save(self.folder / name, dtype=self.dtype)
        self.shards.append({"file": name, "rows": len(head)})
        self.rows += len(head)
        rest = len(pairs) - count
        self._buf = [(parts[0][count:], parts[1][count:], parts[2][count:], pairs[count:])] if rest else []
        self._buffered = rest

    def close(self, extra: dict | None = None) -> dict:
        if self._buffered:
            self._flush(self._buffered)
        manifest = {
            "format": SHARDS_FORMAT,
            "rows": self.rows,
            "dtype": self.dtype,
            "shards": self.shards,
            "metadata": self.metadata | (extra or {}),
        }
        tmp = self.folder / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.folder / MANIFEST)
        listed = {s["file"] for s in self.shards}
        for old in self.folder.glob("shard-*.safetensors"):  # shards of an earlier, longer run
            if old.name not in listed:
                old.unlink()
        return manifest


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder}: not a features folder (no {MANIFEST}; was the run interrupted?)")
    if path.stat().st_size > 64 << 20:
        raise ValueError(f"{path}: too large for a manifest")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDS_FORMAT:
        raise ValueError(f"{path}: not a moe-reward shards manifest")
    for i, shard in enumerate(manifest.get("shards", [])):
        name = shard.get("file") if isinstance(shard, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            raise ValueError(f"{path}: shards[{i}]: file: not a shard file name ({name!r})")
        if not isinstance(shard.get("rows"), int) or shard["rows"] < 0:
            raise ValueError(f"{path}: shards[{i}]: rows: not a row count")
    return manifest


def _take_rows(arr: np.ndarray, index: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``arr[index]``; from a memory-mapped array in chunks, releasing the mapped pages after each
    (``madvise(MADV_DONTNEED)``: they stay in the page cache, out of this process), so that a subset of a
    large mapped file costs the subset's memory, not the file's."""
    mapping = getattr(arr, "_mmap", None) if isinstance(arr, np.memmap) else None
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap_module, "MADV_DONTNEED"):
        return arr[index]
    out = np.empty((len(index), *arr.shape[1:]), arr.dtype)
    for s in range(0, len(index), chunk):
        out[s : s + chunk] = arr[index[s : s + chunk]]
        mapping.madvise(mmap_module.MADV_DONTNEED)
    return out


def _shards_key(folder: Path, shards: list[dict]) -> str:
    parts = [str(folder.resolve())]
    for name in [MANIFEST] + [s["file"] for s in shards]:
        st = (folder / name).stat()
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def _mapped_matrices(folder: Path, shards: list[dict], total: int, dim: int) -> dict[str, np.ndarray]:
    """The shards' matrices as three float16 files in the cache (written once per version of the folder,
    shard by shard, atomically) and memory-mapped read-only from there."""
    import shutil

    root = default_cache_dir().parent / "mapped_features" / _shards_key(folder, shards)
    if not (root / "done.json").is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.with_name(f".{root.name}.{os.getpid()}-{time.time_ns()}.tmp")
        tmp.mkdir()
        try:
            handles = {k: open(tmp / f"{k}.f16", "wb") for k in MATRICES}  # noqa: SIM115 (closed below)
            try:
                for shard in shards:
                    part = PairFeatures.load(folder / shard["file"], mmap=True)
                    for k, fh in handles.items():
                        fh.write(np.ascontiguousarray(getattr(part, k), np.float16).data.cast("B"))
                    del part
            finally:
                for fh in handles.values():
                    fh.close()
            (tmp / "done.json").write_text(json.dumps({"rows": total, "dim": dim}))
            try:
                os.replace(tmp, root)
            except OSError:  # another process finished first: use its copy
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {k: np.memmap(root / f"{k}.f16", dtype=np.float16, mode="r", shape=(total, dim)) for k in MATRICES}


def load_shards(folder: str | Path, mmap: bool | None = None) -> PairFeatures:
    """A folder of shards as one `PairFeatures`. Small: float32 arrays in memory, filled shard by shard.
    Large (the float32 copy would exceed `LARGE_FEATURES_BYTES`, or ``mmap=True``): float16 matrices
    memory-mapped from a consolidated copy in the cache (``$MOE_REWARD_CACHE/mapped_features/``), so
    loading a million pairs costs their records, not their vectors, and `subset` copies only what it takes."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    shards = manifest.get("shards", [])
    total = sum(s["rows"] for s in shards)
    if not shards:
        raise ValueError(f"{folder}: the manifest lists no shards")
    dim = PairFeatures.load(folder / shards[0]["file"], mmap=True).dim
    large = mmap if mmap is not None else total * dim * 3 * 4 > LARGE_FEATURES_BYTES
    out = None if large else {k: np.empty((total, dim), np.float32) for k in MATRICES}
    pairs: list[PreferencePair] = []
    for shard in shards:
        part = PairFeatures.load(folder / shard["file"], mmap=True)  # records now, vectors only when read
        if len(part) != shard["rows"] or part.dim != dim:
            raise ValueError(
                f"{folder / shard['file']}: {len(part)} rows of {part.dim}-d, but the manifest says "
                f"{shard['rows']} rows of {dim}-d"
            )
        if out is not None:
            for k in MATRICES:
                out[k][len(pairs) : len(pairs) + len(part)] = getattr(part, k)
        pairs += part.pairs
        del part
    if out is None:
        out = _mapped_matrices(folder, shards, total, dim)
    meta = dict(manifest.get("metadata") or {})
    return PairFeatures(out["prompt"], out["chosen"], out["rejected"], pairs, meta)


def _join_source(path: Path, source: str | None, ids: list[str]) -> list[PreferencePair]:
    from ..data.pairs import load_pairs

    if not source:
        raise ValueError(f"{path}: the features file has neither records nor a source data file")
    data = load_pairs(path.parent / source)
    by_id = {p.id: p for p in data.pairs}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} ids are not in {source} (first: {missing[0]}); re-run `moe-reward embed`"
        )
    return [by_id[i] for i in ids]
