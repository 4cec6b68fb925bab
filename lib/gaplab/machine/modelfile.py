"""What a model makes each decode step read: its weights' bytes, and the bytes of K and V
cache per token of context of one sequence. From the GGUF header (what llama.cpp serves)
or from a Hugging Face folder's config.json and safetensors files (what vLLM serves).

Only the header of a GGUF file is read (its metadata key-value pairs, GGUF v2 and v3);
array values, such as the tokenizer's vocabulary, are skipped.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

# GGUF value types: struct format of each scalar type; 8 is a string, 9 an array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Traffic:
    weight_bytes: int | None  # read once per decode step, whatever the batch
    kv_bytes_per_token: int | None  # K and V over all layers, per token of one sequence's context


class ModelFileError(ValueError):
    """A file that is not the model format it claims to be."""


def _read(f, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ModelFileError("the GGUF header ends early")
    return struct.unpack(fmt, data)[0]


def _string(f) -> str:
    n = _read(f, "<Q")
    data = f.read(n)
    if len(data) != n:
        raise ModelFileError("the GGUF header ends early")
    return data.decode("utf-8", errors="replace")


def _value(f, kind: int):
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, n = _read(f, "<I"), _read(f, "<Q")
        values = [_value(f, item) for _ in range(n)]
        # kept: short arrays of numbers (a per-layer KV head count); skipped: the vocabulary and its scores
        return values if item in _SCALARS and n <= 4096 else None
    raise ModelFileError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: Path) -> dict:
    """The scalar key-value pairs of a GGUF file's header."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelFileError(f"{path} is not a GGUF file")
        version = _read(f, "<I")
        if version < 2:
            raise ModelFileError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        _read(f, "<Q")  # tensor count
        pairs = _read(f, "<Q")
        meta = {}
        for _ in range(pairs):
            key = _string(f)
            value = _value(f, _read(f, "<I"))
            if value is not None:
                meta[key] = value
    return meta


def gguf_traffic(path: Path, kv_element_bytes: int = 2) -> Traffic:
    """A GGUF file's traffic; llama.cpp keeps its K and V cache in f16 unless told otherwise."""
    return Traffic(Path(path).stat().st_size, gguf_kv_bytes(gguf_metadata(path), kv_element_bytes))


def gguf_kv_bytes(meta: dict, kv_element_bytes: int = 2) -> int | None:
    """K and V bytes per token of context from GGUF metadata keys (a file's header, or Ollama's
    /api/show model_info, which holds the same keys); None when they do not say."""
    arch = meta.get("general.architecture", "")
    get = lambda key: meta.get(f"{arch}.{key}")  # noqa: E731
    layers, heads = get("block_count"), get("attention.head_count")
    if isinstance(heads, list):  # per layer: the widest layer sets the head size
        heads = max(heads) or None
    key_len = get("attention.key_length") or (get("embedding_length") // heads if heads and get("embedding_length")
                                               else None)
    if not (layers and key_len):
        return None
    value_len = get("attention.value_length") or key_len
    kv_heads = get("attention.head_count_kv") or heads
    per_layer = kv_heads if isinstance(kv_heads, list) else [kv_heads] * layers  # some models vary by layer
    return sum(per_layer) * (key_len + value_len) * kv_element_bytes


def traffic_or_none(read, *args) -> Traffic:
    """A runtime's traffic, or unknown: a model file this module cannot read must not stop a
    measurement (the roofline then leaves the cell out)."""
    try:
        return read(*args)
    except (ModelFileError, OSError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return Traffic(None, None)


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # a dtype missing here: traffic unknown


def hf_traffic(folder: Path, dtype: str | None = None) -> Traffic:
    """A Hugging Face folder's traffic (or that of the config file named, and the safetensors
    beside it) when served in `dtype` (vLLM keeps K and V in it too); without a dtype, as
    stored (a quantized checkpoint is read as it is), K and V in the config's dtype. No
    safetensors beside the config: the weights are unknown."""
    config = Path(folder) if Path(folder).is_file() else Path(folder) / "config.json"
    folder = config.parent
    cfg = json.loads(config.read_text())
    cfg = {**cfg, **cfg.get("text_config", {})}  # multimodal configs nest the language model's sizes
    stored = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    # tensors only: a safetensors file is an 8-byte length, a JSON header, then the tensors
    tensors = 0
    files = list(Path(folder).glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            tensors += f.stat().st_size - 8 - struct.unpack("<Q", fh.read(8))[0]
    size = DTYPE_BYTES[dtype or stored]
    weights = (tensors // DTYPE_BYTES[stored] * size if dtype else tensors) if files else None
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv = cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * 2 * size
    return Traffic(weights, kv)


def config_traffic(path: Path) -> Traffic:
    """The traffic of a model named by a scenario's model_config: a GGUF file, a Hugging Face
    config.json, or the folder that holds one."""
    path = Path(path)
    if path.is_dir():
        return hf_traffic(path)
    with open(path, "rb") as f:
        gguf = f.read(4) == b"GGUF"
    return gguf_traffic(path) if gguf else hf_traffic(path)
