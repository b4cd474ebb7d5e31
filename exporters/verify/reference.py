"""The PyTorch reference as one more runner: CUDA when a GPU is present, else the CPU."""
from __future__ import annotations

import numpy as np
import torch

from runtime.backends import Runner


def reference_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_name() -> str | None:
    """The CUDA GPU the reference would use, for the environment line; None without one."""
    if not torch.cuda.is_available():
        return None
    return f"{torch.cuda.get_device_name(0)} (cc {'.'.join(map(str, torch.cuda.get_device_capability(0)))})"


EVAL_BATCH = 32  # images per eager forward when the reference runs over the evaluation set
EVAL_ACTIVATIONS = 256 * 2**20  # ... within this many bytes of activations (exporters/models/memory.py's estimate)


def evaluation_batch(batch: int, activation_bytes_per_sample: int | None) -> int:
    """How many images the reference takes per forward over the evaluation set: eager PyTorch takes any batch, so
    up to ``EVAL_BATCH`` within ``EVAL_ACTIVATIONS`` (never fewer than the export's ``batch``). Its outputs are the
    same as one image at a time up to float rounding (a GEMM's blocking changes with its rows); latency is still
    timed at the export's batch."""
    if not activation_bytes_per_sample:
        return batch
    return max(batch, min(EVAL_BATCH, EVAL_ACTIVATIONS // activation_bytes_per_sample))


class TorchRunner(Runner):
    """``infer({'input': [B,3,H,W]}) -> {'logits': [B, classes]}`` in eager FP32."""

    eager = True  # takes any batch: the evaluation runs in chunks (exporters.pipeline.stages.evaluate)

    def __init__(self, model: torch.nn.Module, input_shape: list[int], device: str | None = None,
                 threads: int | None = None):
        super().__init__()
        self.device = device or reference_device()
        if threads and self.device == "cpu":
            torch.set_num_threads(threads)
        if self.device == "cuda":
            # reason: PyTorch lets cuDNN convolutions use TF32 by default (and matmuls where a library
            # enabled it); TF32 keeps 10 mantissa bits, so the "FP32" reference would not be FP32.
            # The report states it; this is the one global setting vitdeploy changes, for its reference.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.threads = threads
        self.model = model.to(self.device).eval()
        # eager PyTorch takes any batch (-1): the evaluation runs in chunks, latency at the export's batch
        self.input_name, self.input_shape = "input", [-1, *list(input_shape)[1:]]

    @torch.inference_mode()
    def infer_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(x).to(self.device)
        y = self.model(x)
        if self.device == "cuda":
            torch.cuda.synchronize()  # reason: CUDA launches are asynchronous; time the finished work
        if isinstance(y, (tuple, list)):  # a backbone's feature maps, in order (exporters/models/features.py)
            return {f"output{i}": t.float().cpu().numpy() for i, t in enumerate(y)}
        return {"logits": y.float().cpu().numpy()}

    def describe(self) -> dict:
        d = {"device": self.device, "threads": torch.get_num_threads() if self.device == "cpu" else None,
             "torch": torch.__version__, "mode": "eager fp32, no CUDA graphs"}
        if self.device == "cuda":
            d["gpu"] = torch.cuda.get_device_name(0)
            d["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
            d["mode"] = "eager fp32 (TF32 off for matmul and cuDNN), no CUDA graphs"
        return d
