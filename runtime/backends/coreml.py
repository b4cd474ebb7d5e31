"""Core ML runner (macOS only): ``MLModel.predict`` on a compiled ML Program, per compute unit."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from runtime.backends import require
from runtime.errors import UserError


class CoreMLRunner:
    def __init__(self, path: str | Path, compute_units: str = "ALL"):
        if platform.system() != "Darwin":
            raise UserError("Core ML models execute only on macOS; on this system the bundle carries a validated "
                            "package and a proxy accuracy")
        ct = require("coremltools")
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self.input_name = spec.description.input[0].name
        self.input_shape = list(spec.description.input[0].type.multiArrayType.shape)
        self.output_name = spec.description.output[0].name
        self.compute_units = compute_units
        self.last_latency = 0.0

    def infer(self, feeds):
        x = np.ascontiguousarray(next(iter(feeds.values())), dtype=np.float32)
        t0 = time.perf_counter()
        out = self.model.predict({self.input_name: x})
        self.last_latency = (time.perf_counter() - t0) * 1000.0
        return {self.output_name: np.asarray(out[self.output_name], dtype=np.float32)}

    def describe(self):
        return {"device": f"Core ML {self.compute_units}", "compute_units": self.compute_units}
