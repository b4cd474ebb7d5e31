"""Core ML runner (macOS only): ``MLModel.predict`` on a compiled ML Program, per compute unit."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from runtime.backends import Backend, require
from runtime.backends.base import Runner
from runtime.errors import UserError

INSTALL = "pip install 'vitdeploy[coreml]' (execution needs macOS)"


class CoreMLRunner(Runner):
    """``infer({'input': [B,3,H,W]}) -> {'logits': [B, classes]}`` (or each named output map, in the package's
    order) through ``MLModel.predict``."""

    def __init__(self, path: str | Path, compute_units: str = "ALL"):
        super().__init__()
        if platform.system() != "Darwin":
            raise UserError("Core ML models execute only on macOS; on this system the bundle carries a validated "
                            "package and a proxy accuracy")
        ct = require("coremltools", INSTALL)
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self.input_name = spec.description.input[0].name
        self.input_shape = list(spec.description.input[0].type.multiArrayType.shape)
        self.output_names = [o.name for o in spec.description.output]
        self.compute_units = compute_units

    def infer_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self.model.predict({self.input_name: x})
        return {n: np.asarray(out[n], dtype=np.float32) for n in self.output_names}

    def describe(self):
        return {"device": f"Core ML {self.compute_units}", "compute_units": self.compute_units}


def open_artifact(path: Path, config: dict, device: str | None, threads: int | None,
                  mode: str = "latency") -> CoreMLRunner:
    # one inference at a time in either mode (no streams here)
    return CoreMLRunner(path, compute_units=config.get("compute_units", "ALL"))


BACKEND = Backend(name="coreml", sdk="coremltools", install=INSTALL, rank=40, open=open_artifact,
                  systems=("Darwin",))
