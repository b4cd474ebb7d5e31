"""The PyTorch reference as one more runner: CUDA when a GPU is present, else the CPU."""
from __future__ import annotations

import time

import numpy as np
import torch


def reference_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchRunner:
    """``infer({'input': [B,3,H,W]}) -> {'logits': [B, classes]}`` in eager FP32."""

    def __init__(self, model: torch.nn.Module, input_shape: list[int], device: str | None = None,
                 threads: int | None = None):
        self.device = device or reference_device()
        if threads and self.device == "cpu":
            torch.set_num_threads(threads)
        self.threads = threads
        self.model = model.to(self.device).eval()
        self.input_name, self.input_shape = "input", list(input_shape)
        self.last_latency = 0.0

    @torch.inference_mode()
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(next(iter(feeds.values())), dtype=np.float32)).to(self.device)
        if self.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = self.model(x)
        if self.device == "cuda":
            torch.cuda.synchronize()  # reason: CUDA launches are asynchronous; time the finished work
        self.last_latency = (time.perf_counter() - t0) * 1000.0
        return {"logits": y.float().cpu().numpy()}

    def describe(self) -> dict:
        d = {"device": self.device, "threads": torch.get_num_threads() if self.device == "cpu" else None,
             "torch": torch.__version__, "mode": "eager fp32, no CUDA graphs"}
        if self.device == "cuda":
            d["gpu"] = torch.cuda.get_device_name(0)
        return d
