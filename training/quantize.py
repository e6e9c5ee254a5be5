"""INT8 with onnxruntime, and how fast each variant runs.

Two methods (``quantization.method`` in models.yaml):

- ``dynamic``: weights stored INT8 per channel; activations are quantized on the fly per batch.
  Needs no calibration data and no assumption about activation ranges.
- ``static``: QDQ nodes with activation ranges calibrated (MinMax) on training examples.

Which one is the default is decided by bench/training.py (see docs/training.md for the figures).
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import onnx

from millrace.training.encode import Encoded

# MatMul/Gemm carry the compute; embedding Gathers stay FP32 (they are lookups, not arithmetic,
# and quantizing them costs accuracy for no speed).
OP_TYPES = ["MatMul", "Gemm"]


def quantize(model: onnx.ModelProto, method: str, calibration: Encoded | None = None) -> onnx.ModelProto:
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    # onnxruntime logs "Please consider pre-processing" on every call; the graphs are already
    # shape-inferred and small, and the advice is not actionable by a user of millrace.
    logging.getLogger().addFilter(_NoPreprocessAdvice())

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        if method == "dynamic":
            # reduce_range: 7-bit weights. Full-range INT8 weights with UINT8 activations can
            # saturate the 16-bit intermediate sums of x86 u8s8 kernels; on the example this cost
            # 1.8 points of recall@10 vs FP32, reduce_range 0 (see docs/training.md).
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             op_types_to_quantize=OP_TYPES)
        elif method == "static":
            if calibration is None or calibration.rows == 0:
                raise ValueError("static quantization needs calibration examples")
            quantize_static(src, dst, _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=OP_TYPES)
        else:
            raise ValueError(f"unknown quantization method {method!r}")
        return onnx.load(dst)


class _NoPreprocessAdvice:
    def filter(self, record) -> bool:
        return "pre-process" not in record.getMessage()

    def __eq__(self, other) -> bool:  # added once, however often quantize runs
        return isinstance(other, _NoPreprocessAdvice)

    def __hash__(self) -> int:
        return 0


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over encoded examples."""

    def __init__(self, encoded: Encoded, batch: int = 256):
        self._batches = [{k: v[i:i + batch] for k, v in encoded.raw.items()} for i in range(0, encoded.rows, batch)]
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._batches)


def latency(sess, encoded: Encoded, batch: int, seconds: float = 0.5, min_runs: int = 5) -> dict:
    """Median latency (ms) and throughput (rows/s) of ``sess`` on batches of ``batch`` rows."""
    names = [i.name for i in sess.get_inputs()]
    rows = np.arange(batch) % max(encoded.rows, 1)
    feed = {n: encoded.raw[n][rows] for n in names}
    sess.run(None, feed)  # warm-up
    times, started = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {"batch": batch, "ms": median * 1e3, "rows_per_s": batch / median}
