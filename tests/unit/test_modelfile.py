"""What a model makes a decode step read, from a GGUF header written here by the format's
rules (the real files are read in tests/integration/test_llamacpp.py) and from a Hugging
Face folder."""

import json
import struct

import pytest

from gaplab.machine import modelfile


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf(path, pairs: list[tuple[str, int, bytes]], padding: int = 1000):
    body = b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 0) + struct.pack("<Q", len(pairs))
    for key, kind, value in pairs:
        body += _str(key) + struct.pack("<I", kind) + value
    path.write_bytes(body + b"\0" * padding)
    return path


def u32(v):
    return struct.pack("<I", v)


VOCAB = struct.pack("<I", 8) + struct.pack("<Q", 3) + _str("a") + _str("b") + _str("<eos>")  # an array of strings


def test_a_gguf_header_gives_the_weights_and_the_kv_bytes_per_token(tmp_path):
    path = gguf(tmp_path / "m.gguf", [("general.architecture", 8, _str("llama")), ("tokenizer.ggml.tokens", 9, VOCAB),
                                       ("llama.block_count", 4, u32(30)), ("llama.attention.head_count", 4, u32(9)),
                                       ("llama.attention.head_count_kv", 4, u32(3)),
                                       ("llama.embedding_length", 4, u32(576)),
                                       ("general.size_label", 8, _str("135M"))])
    meta = modelfile.gguf_metadata(path)
    assert meta["llama.block_count"] == 30 and meta["general.size_label"] == "135M"
    assert "tokenizer.ggml.tokens" not in meta  # arrays are skipped, and what follows still reads
    t = modelfile.gguf_traffic(path)
    assert t.weight_bytes == path.stat().st_size
    assert t.kv_bytes_per_token == 30 * 3 * (64 + 64) * 2  # head size 576 / 9; K and V in f16


def test_explicit_key_and_value_lengths_win(tmp_path):
    path = gguf(tmp_path / "g.gguf", [("general.architecture", 8, _str("gemma3")), ("gemma3.block_count", 4, u32(18)),
                                       ("gemma3.attention.head_count", 4, u32(4)),
                                       ("gemma3.attention.head_count_kv", 4, u32(1)),
                                       ("gemma3.embedding_length", 4, u32(640)),
                                       ("gemma3.attention.key_length", 4, u32(256)),
                                       ("gemma3.attention.value_length", 4, u32(256))])
    assert modelfile.gguf_traffic(path).kv_bytes_per_token == 18 * 1 * 512 * 2


def test_not_a_gguf_file_or_a_cut_header_is_refused(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04")
    with pytest.raises(modelfile.ModelFileError, match="not a GGUF file"):
        modelfile.gguf_metadata(tmp_path / "x.gguf")
    full = gguf(tmp_path / "y.gguf", [("general.architecture", 8, _str("llama"))], padding=0).read_bytes()
    (tmp_path / "y.gguf").write_bytes(full[:-3])
    with pytest.raises(modelfile.ModelFileError, match="ends early"):
        modelfile.gguf_metadata(tmp_path / "y.gguf")


def test_a_hugging_face_folder_in_another_dtype(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "dtype": "float32", "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
        "num_hidden_layers": 30}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [250], "data_offsets": [0, 1000]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 1000)
    t = modelfile.hf_traffic(tmp_path, "bfloat16")
    assert t.weight_bytes == 500  # 250 float32 values served as bfloat16
    assert t.kv_bytes_per_token == 30 * 3 * 64 * 2 * 2


def test_per_layer_kv_heads_and_an_unreadable_file(tmp_path):
    kv_per_layer = struct.pack("<I", 4) + struct.pack("<Q", 3) + u32(2) + u32(0) + u32(4)  # an array of u32
    path = gguf(tmp_path / "v.gguf", [("general.architecture", 8, _str("x")), ("x.block_count", 4, u32(3)),
                                       ("x.attention.head_count", 4, u32(8)), ("x.attention.head_count_kv", 9,
                                                                               kv_per_layer),
                                       ("x.attention.key_length", 4, u32(64))])
    assert modelfile.gguf_traffic(path).kv_bytes_per_token == (2 + 0 + 4) * (64 + 64) * 2
    (tmp_path / "bad.gguf").write_bytes(b"GGUF")
    assert modelfile.traffic_or_none(modelfile.gguf_traffic, tmp_path / "bad.gguf") == modelfile.Traffic(None, None)
