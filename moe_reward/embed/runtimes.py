"""Where a backbone's forward pass runs: torch (any device and precision) or ONNX Runtime on the CPU.

- ``torch``: the `transformers` model as loaded (the reference; bf16/fp16 on a GPU).
- ``onnx``: the same graph exported to ONNX and run by ONNX Runtime in fp32 (the same embeddings to ~1e-7;
  faster on CPU because the runtime's kernels and graph beat eager PyTorch on small models).
- ``onnx-int8``: that graph with its matrix-multiply weights quantized to int8 per output channel and
  activations quantized on the fly (ONNX Runtime's dynamic quantization), except the feed-forward output
  projections (`quantize_int8` says why). `bench/bench_embed.py` measures its throughput and its cosine to
  the fp32 embeddings. Per-tensor int8 (the usual default) was measured at a mean cosine of 0.95 and
  torch's dynamic quantization (`torch.ao.quantization.quantize_dynamic`) at 0.94 on the same texts, so
  neither is offered.

The exported and quantized graphs are cached on disk (``$MOE_REWARD_CACHE/onnx/<key>/``), keyed by the
model's files and the torch / transformers / onnxruntime versions, and written atomically (temp + rename),
so a second process reuses them and concurrent exports never leave half a file behind.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import torch

RUNTIMES = ("torch", "onnx", "onnx-int8")
ONNX_OPSET = 17


def onnx_cache_root() -> Path:
    return Path(os.environ.get("MOE_REWARD_CACHE", Path.home() / ".cache" / "moe_reward")) / "onnx"


def _model_fingerprint(model_path: str) -> str:
    """Name, size and modification time of the model's files (a local folder), or the hub id as given."""
    p = Path(model_path)
    parts = [str(p.resolve()) if p.exists() else model_path]
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    import onnxruntime

    # (transformers' version from its installed metadata: a run of an exported graph never imports it)
    parts += [torch.__version__, _version("transformers"), onnxruntime.__version__, str(ONNX_OPSET)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        import importlib

        return str(getattr(importlib.import_module(package), "__version__", "unknown"))


def _require_onnxruntime(exporting: bool = True) -> None:
    """onnxruntime runs a graph; exporting or quantizing one also needs `onnx` (a second or more to import,
    which a run of an already exported graph does not pay)."""
    try:
        if exporting:
            import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            "the onnx runtimes need `pip install onnxruntime onnx` (moe-reward-lens[fast])"
        ) from exc


class _LastHidden(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state: a plain signature for the exporter."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _atomic(dst: Path, write) -> None:
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_onnx(model: torch.nn.Module, dst: Path) -> None:
    """Export a `transformers` model (fp32, CPU) to ONNX with dynamic batch and sequence axes."""
    import warnings

    model = model.float().to("cpu").eval()
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    axes = {
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
        "last_hidden_state": {0: "batch", 1: "tokens"},
    }

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
            # The TorchScript exporter: it needs only `onnx`, and traces transformers' models as they run.
            torch.onnx.export(
                _LastHidden(model),
                example,
                str(tmp),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )

    _atomic(dst, write)


FFN_OUTPUT_PATTERNS = ("down_proj", "mlp/c_proj", "/fc2/", "/wo/", "/output/dense/")


def ffn_output_matmuls(onnx_path: Path) -> list[str]:
    """The feed-forward blocks' output projections (BERT ``output.dense``, Llama ``down_proj``, GPT-2
    ``mlp.c_proj``): they read the GELU/SiLU activations, whose outliers make int8 lose the most."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm")
        and any(p in n.name for p in FFN_OUTPUT_PATTERNS)
        and "attention" not in n.name
    ]


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization per output channel, feed-forward output projections kept in fp32.

    Measured on all-MiniLM-L6-v2 over 600 texts of the default data: per-tensor scales give a mean cosine
    of 0.95 to fp32; per-channel 0.994 (worst text 0.986); per-channel with the FFN output projections in
    fp32 0.997 (worst text 0.991).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = ffn_output_matmuls(src)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing": shape inference gains nothing for these graphs
    try:
        _atomic(
            dst,
            lambda tmp: quantize_dynamic(
                str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude
            ),
        )
    finally:
        root.setLevel(level)


def _runtime_file(folder: Path, runtime: str) -> Path:
    return folder / ("model.onnx" if runtime == "onnx" else "model-int8.onnx")


def cached_onnx_file(model_path: str, runtime: str) -> Path | None:
    """The ONNX graph of this model and runtime when an earlier run exported it (None: not yet). With it a
    backbone needs no torch model at all (`Backbone` then skips loading one: seconds, cold)."""
    _require_onnxruntime(exporting=False)
    path = _runtime_file(onnx_cache_root() / _model_fingerprint(model_path), runtime)
    return path if path.is_file() else None


def onnx_model_file(model: torch.nn.Module, model_path: str, runtime: str) -> Path:
    """The cached ONNX graph for this model and runtime, exported (and quantized) on first use."""
    _require_onnxruntime()
    folder = onnx_cache_root() / _model_fingerprint(model_path)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "model.onnx"
    if not fp32.is_file():
        try:
            export_onnx(model, fp32)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; say which model failed
            raise ValueError(
                f"{model_path}: could not export to ONNX ({type(exc).__name__}: {exc}); use --runtime torch"
            ) from exc
    if runtime == "onnx":
        return fp32
    int8 = folder / "model-int8.onnx"
    if not int8.is_file():
        quantize_int8(fp32, int8)
    return int8


class OnnxRunner:
    """Runs an exported backbone graph: (input_ids, attention_mask) int64 [B, T] -> hidden [B, T, D] float32."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {
            "input_ids": input_ids.numpy().astype(np.int64, copy=False),
            "attention_mask": attention_mask.numpy().astype(np.int64, copy=False),
        }
        return torch.from_numpy(self.session.run(None, feeds)[0])
