"""Packed low-bit weights: ternary codes in 2 bits, binary codes in 1 bit, unpacked at load.

An ONNX model's int8 initializers whose values are all in {-1, +1} (binary) or {-1, 0, +1}
(ternary) are taken out of the ``.onnx`` file and written, bit-packed, to
``weights.lowbit``; the manifest's ``settings.packed`` lists each one (bits, shape, offset,
bytes, and the sha256 of its *unpacked* int8 bytes). Loading unpacks them with numpy,
refuses any tensor whose unpacked bytes do not hash to the manifest's value, and appends
them to the model bytes as ordinary int8 initializers (protobuf wire format, written here,
so the deploy side needs neither ``onnx`` nor torch), then hands the bytes to the runtime.

Why not ONNX's own low-bit types (measured with onnxruntime 1.31 on this CPU): an ``INT2``
weight feeding ``DequantizeLinear`` is rejected once ONNX Runtime fuses it
(``MatMulIntegerToFloat`` takes only 8-bit types), and an ``INT4`` weight runs, but as a
float ``DequantizeLinear + MatMul``: the integer matmul is lost. Unpacking at load keeps
the INT8 kernels and costs milliseconds.

The 8-bit parts of a mixed-precision plan (codes beyond {-1, 0, +1}) stay in the ``.onnx``
file as plain int8 initializers; ``kept_int8`` in the manifest entry counts them.

Layout: 2-bit code = value + 1 (0, 1, 2), four per byte, first value in the low bits;
1-bit code = value > 0, eight per byte, little bit order (``numpy.packbits(..., 'little')``).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError

PACKED_FILE = "weights.lowbit"
FORMAT = "edgekit-lowbit-1"
IR_FORMAT = "edgekit-lowbit-ir-1"  # OpenVINO IR: low-bit i8 constants cut out of the .bin (pack_ir)
MIN_ELEMENTS = 256  # smaller int8 tensors (zero points, tiny tables) stay in the model file
_INT8 = 3  # onnx.TensorProto.INT8


def pack(values: np.ndarray, bits: int) -> bytes:
    flat = np.ascontiguousarray(values, dtype=np.int8).reshape(-1)
    if bits == 1:
        return np.packbits(flat > 0, bitorder="little").tobytes()
    if bits != 2:
        raise ValueError(f"cannot pack {bits}-bit codes")
    codes = (flat + 1).astype(np.uint8)
    codes = np.concatenate([codes, np.zeros((-len(codes)) % 4, np.uint8)]).reshape(-1, 4)
    return (codes[:, 0] | codes[:, 1] << 2 | codes[:, 2] << 4 | codes[:, 3] << 6).astype(np.uint8).tobytes()


def unpack(data: bytes, bits: int, shape: list[int]) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 1:
        flat = np.unpackbits(raw, bitorder="little")[:n].astype(np.int8) * 2 - 1
    elif bits == 2:
        flat = ((raw[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3).reshape(-1)[:n].astype(np.int8) - 1
    else:
        raise ValueError(f"cannot unpack {bits}-bit codes")
    if flat.size != n:
        raise ArtifactError(
            f"packed tensor holds {flat.size} values, its shape {shape} needs {n}", hint="the artifact is corrupt; rebuild it"
        )
    return flat.astype(np.int8).reshape(shape)


def lowbit_width(values: np.ndarray) -> int | None:
    """1 if every value is -1 or +1, 2 if every value is in {-1, 0, +1}, else None."""
    if values.dtype != np.int8 or values.size == 0:
        return None
    lo, hi = int(values.min()), int(values.max())
    if lo < -1 or hi > 1:
        return None
    return 2 if (values == 0).any() else 1


def sha256(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _graphs(graph, path: str = "") -> Iterator[tuple[Any, str]]:
    """``graph`` and its subgraphs (an ``If``'s branches), each with its path: ``""`` for the main
    graph, else ``NODE/ATTRIBUTE`` steps joined by ``/`` (the node's name, the branch attribute)."""
    yield graph, path
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == 5:  # AttributeProto.GRAPH
                yield from _graphs(attr.g, f"{path}/{node.name}/{attr.name}".lstrip("/"))


def pack_onnx(model_path: Path, out_dir: Path, *, min_elements: int = MIN_ELEMENTS, file: str = PACKED_FILE) -> dict[str, Any] | None:
    """Move the low-bit int8 initializers of ``model_path`` into ``out_dir/file``, packed.

    Initializers of subgraphs (the one-graph exit model keeps each stage's weights in its ``If``
    branch) are packed too; their entry names the graph (``graph``: the :func:`_graphs` path) so
    loading puts them back where they were. Rewrites ``model_path`` without them. Returns the
    manifest entry, or None (nothing to pack)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    tensors, blob = {}, bytearray()
    kept_int8 = {"tensors": 0, "bytes": 0}
    for graph, path in list(_graphs(model.graph)):
        keep = []
        for init in graph.initializer:
            bits = None
            if init.data_type == _INT8 and int(np.prod(init.dims)) >= min_elements:
                values = numpy_helper.to_array(init)
                bits = lowbit_width(values)
                if bits is None:
                    kept_int8["tensors"] += 1
                    kept_int8["bytes"] += int(values.size)
            if bits is None:
                keep.append(init)
                continue
            data = pack(values, bits)
            entry = {"bits": bits, "shape": list(values.shape), "offset": len(blob), "bytes": len(data), "sha256": sha256(values)}
            tensors[init.name] = entry | ({"graph": path} if path else {})
            blob += data
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)
    if not tensors:
        return None
    onnx.save(model, str(model_path))
    (Path(out_dir) / file).write_bytes(bytes(blob))
    unpacked = sum(int(np.prod(t["shape"])) for t in tensors.values())
    entry = {"file": file, "format": FORMAT, "tensors": tensors, "unpacked_bytes": unpacked, "packed_bytes": len(blob)}
    return {**entry, "kept_int8": kept_int8} if kept_int8["tensors"] else entry


def unpack_all(artifact_dir: Path, packed: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every packed tensor, unpacked and checked against its sha256 in the manifest."""
    if packed.get("format") not in (FORMAT, IR_FORMAT):
        raise ArtifactError(
            f"{artifact_dir}: packed weights in format {packed.get('format')!r}, this edgekit reads {FORMAT} and {IR_FORMAT}",
            hint="rebuild the artifact with this edgekit version",
        )
    try:
        blob = (Path(artifact_dir) / packed["file"]).read_bytes()
    except OSError as err:
        raise ArtifactError(
            f"{artifact_dir}: cannot read the packed weights {packed['file']} ({err.strerror})",
            hint="the artifact is incomplete; rebuild it",
        ) from err
    out = {}
    for name, t in packed["tensors"].items():
        data = blob[t["offset"] : t["offset"] + t["bytes"]]
        values = unpack(data, t["bits"], t["shape"])
        if sha256(values) != t["sha256"]:
            raise ArtifactError(
                f"{artifact_dir}: packed weight {name!r} unpacks to values whose sha256 does not match the manifest; refusing to load",
                hint="the packed file or the manifest was altered, or written by an incompatible packer; rebuild the artifact",
            )
        out[name] = values
    return out


# ----------------------------------------------------------------------------- OpenVINO IR


def pack_ir(xml_path: Path, bin_path: Path, out_dir: Path, *, min_elements: int = MIN_ELEMENTS) -> dict[str, Any] | None:
    """Cut the low-bit i8 constants out of an OpenVINO IR's ``.bin`` into ``out_dir/weights.lowbit``, packed.

    The ``.xml`` is untouched: it keeps every constant's offset into the *original* ``.bin``,
    which :func:`ir_weights` rebuilds in memory (the remaining bytes, with the unpacked codes
    put back at their offsets). Constants OpenVINO shares (the same offset) are stored once.
    Returns the manifest entry, or None (nothing to pack)."""
    import xml.etree.ElementTree as ET

    original = Path(bin_path).read_bytes()
    regions: dict[int, tuple[str, int, np.ndarray, int]] = {}
    for layer in ET.parse(xml_path).getroot().iter("layer"):
        data = layer.find("data")
        if layer.get("type") != "Const" or data is None or data.get("element_type") != "i8":
            continue
        offset, size = int(data.get("offset", -1)), int(data.get("size", 0))
        if size < min_elements or offset < 0 or offset + size > len(original) or offset in regions:
            continue
        values = np.frombuffer(original, dtype=np.int8, count=size, offset=offset)
        bits = lowbit_width(values)
        if bits is not None:
            regions[offset] = (layer.get("name", f"const@{offset}"), size, values, bits)
    residual, blob, tensors, pos = bytearray(), bytearray(), {}, 0
    for offset in sorted(regions):
        name, size, values, bits = regions[offset]
        if offset < pos:  # inside a region already cut: restored with it
            continue
        residual += original[pos:offset]
        data = pack(values, bits)
        tensors[f"{name}@{offset}"] = {
            "bits": bits,
            "shape": [size],
            "offset": len(blob),
            "bytes": len(data),
            "sha256": sha256(values),
            "bin_offset": offset,
        }
        blob += data
        pos = offset + size
    if not tensors:
        return None
    residual += original[pos:]
    Path(bin_path).write_bytes(bytes(residual))
    (Path(out_dir) / PACKED_FILE).write_bytes(bytes(blob))
    unpacked = sum(t["shape"][0] for t in tensors.values())
    return {
        "file": PACKED_FILE,
        "format": IR_FORMAT,
        "bin": Path(bin_path).name,
        "bin_bytes": len(original),
        "tensors": tensors,
        "unpacked_bytes": unpacked,
        "packed_bytes": len(blob),
    }


def ir_weights(artifact_dir: Path, packed: dict[str, Any]) -> np.ndarray:
    """The IR's original ``.bin`` (uint8), rebuilt from the remaining bytes and the unpacked, hash-checked codes."""
    artifact_dir = Path(artifact_dir)
    try:
        residual = (artifact_dir / packed["bin"]).read_bytes()
    except OSError as err:
        raise ArtifactError(
            f"{artifact_dir}: cannot read {packed['bin']} ({err.strerror})", hint="the artifact is incomplete; rebuild it"
        ) from err
    values = unpack_all(artifact_dir, packed)
    full, pos, cur = bytearray(), 0, 0
    for name, t in sorted(packed["tensors"].items(), key=lambda kv: kv[1]["bin_offset"]):
        gap = t["bin_offset"] - cur
        full += residual[pos : pos + gap]
        full += values[name].tobytes()
        pos, cur = pos + gap, t["bin_offset"] + t["shape"][0]
    full += residual[pos:]
    if len(full) != packed["bin_bytes"]:
        raise ArtifactError(
            f"{artifact_dir}: {packed['bin']} rebuilt to {len(full)} bytes, the manifest says {packed['bin_bytes']}",
            hint="the .bin or the packed weights were altered; rebuild the artifact",
        )
    return np.frombuffer(bytes(full), dtype=np.uint8)


# ----------------------------------------------------------------------------- protobuf, by hand


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def tensor_proto(name: str, values: np.ndarray) -> bytes:
    """An ONNX ``TensorProto`` (int8, raw_data) in wire format: dims=1, data_type=2, name=8, raw_data=9."""
    dims = b"".join(_varint(1 << 3) + _varint(int(d)) for d in values.shape)
    return dims + _varint(2 << 3) + _varint(_INT8) + _field(8, name.encode()) + _field(9, np.ascontiguousarray(values).tobytes())


def _fields(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """Top-level protobuf fields of ``buf``: (field number, wire type, start, payload start, end)."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _read_varint(buf, i)
        wire, j = key & 7, i
        if wire == 0:
            _, i = _read_varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, j = _read_varint(buf, i)
            i = j + length
        else:
            raise ArtifactError(
                f"unexpected protobuf wire type {wire} in the model file", hint="the model file is corrupt; rebuild the artifact"
            )
        yield key >> 3, wire, start, j, i


def _name_of(buf: bytes, number: int) -> str:
    """The string field ``number`` of a message (a NodeProto's or AttributeProto's name is field 3 / 1)."""
    return next((buf[j:e].decode() for f, w, _, j, e in _fields(buf) if f == number and w == 2), "")


def _with_initializers(graph: bytes, by_path: dict[str, dict[str, np.ndarray]], path: str = "") -> tuple[bytes, int]:
    """A GraphProto with the tensors of ``by_path[path]`` appended to its initializers, and those of
    deeper paths to the subgraphs they name (NodeProto.attribute=5, AttributeProto.g=6); and how
    many tensors went in."""
    if not any(p == path or p.startswith(f"{path}/" if path else "") for p in by_path):
        return graph, 0
    out, placed = bytearray(), 0
    for number, wire, start, j, end in _fields(graph):
        if number != 1 or wire != 2:  # GraphProto.node = 1
            out += graph[start:end]
            continue
        node = graph[j:end]
        name, rebuilt, changed = _name_of(node, 3), bytearray(), False
        for f, w, s, k, e in _fields(node):
            attr = node[k:e]
            if f == 5 and w == 2:
                sub = f"{path}/{name}/{_name_of(attr, 1)}".lstrip("/")
                body = bytearray()
                for f2, w2, s2, k2, e2 in _fields(attr):
                    if f2 == 6 and w2 == 2:
                        g, n = _with_initializers(attr[k2:e2], by_path, sub)
                        placed, changed = placed + n, changed or n > 0
                        body += _field(6, g)
                    else:
                        body += attr[s2:e2]
                rebuilt += _field(5, bytes(body))
            else:
                rebuilt += node[s:e]
        out += _field(1, bytes(rebuilt)) if changed else graph[start:end]
    here = by_path.get(path, {})
    out += b"".join(_field(5, tensor_proto(n, v)) for n, v in here.items())  # GraphProto.initializer = 5
    return bytes(out), placed + len(here)


def append_initializers(model_bytes: bytes, tensors: dict[str, np.ndarray], graphs: dict[str, str] | None = None) -> bytes:
    """``model_bytes`` (a serialized ModelProto) with ``tensors`` added to its graph's initializers, or,
    for a name in ``graphs``, to the subgraph at that path (see :func:`pack_onnx`)."""
    by_path: dict[str, dict[str, np.ndarray]] = {}
    for name, values in tensors.items():
        by_path.setdefault((graphs or {}).get(name, ""), {})[name] = values
    out, found, placed = bytearray(), False, 0
    for number, wire, start, j, end in _fields(model_bytes):
        if number == 7 and wire == 2:  # ModelProto.graph
            graph, placed = _with_initializers(model_bytes[j:end], by_path)
            out += _field(7, graph)
            found = True
        else:
            out += model_bytes[start:end]
    if not found:
        raise ArtifactError("the model file has no graph", hint="the model file is corrupt; rebuild the artifact")
    if placed != len(tensors):
        raise ArtifactError(
            f"{len(tensors) - placed} packed weights name a subgraph the model file does not have",
            hint="the artifact is corrupt; rebuild it",
        )
    return bytes(out)


def model_bytes(artifact_dir: Path, model_file: str, packed: dict[str, Any] | None) -> bytes:
    """The complete model: the file itself, plus its unpacked weights when ``packed``."""
    data = (Path(artifact_dir) / model_file).read_bytes()
    if not packed:
        return data
    graphs = {name: t["graph"] for name, t in packed["tensors"].items() if t.get("graph")}
    return append_initializers(data, unpack_all(artifact_dir, packed), graphs)


@contextlib.contextmanager
def unpacked_dir(artifact_dir: Path, manifest) -> Iterator[Path]:
    """``artifact_dir`` itself, or (packed artifacts) a temp copy whose model file holds every weight."""
    packed = manifest.settings.get("packed") if manifest.settings else None
    if not packed:
        yield Path(artifact_dir)
        return
    with tempfile.TemporaryDirectory(prefix="edgekit-unpacked-") as tmp:
        for f in Path(artifact_dir).iterdir():
            if f.is_file() and f.name not in (packed["file"], manifest.model_file):
                shutil.copy2(f, Path(tmp) / f.name)
        (Path(tmp) / manifest.model_file).write_bytes(model_bytes(artifact_dir, manifest.model_file, packed))
        yield Path(tmp)
