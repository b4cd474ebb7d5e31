"""The PyTorch reference evaluates in batches within a memory bound, and falls back to the export's batch for a
module that takes no other."""
import torch
from torch import nn

from exporters.verify.reference import EVAL_BATCH, evaluation_batch


def test_the_evaluation_batch_is_bounded_by_activation_memory():
    assert evaluation_batch(1, None) == 1  # no estimate: the export's batch
    assert evaluation_batch(1, 2_545_960) == EVAL_BATCH  # digits_vit: 2.4 MiB a sample
    assert evaluation_batch(1, 171 * 2**20) == 1  # swin_t at 224: 171 MiB a sample
    assert evaluation_batch(4, 171 * 2**20) == 4  # never fewer than the export's batch


class _BatchOne(nn.Module):
    """A classifier whose forward only works at batch 1."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(x.reshape(1, -1))


def test_a_module_that_takes_only_batch_one_is_evaluated_one_image_at_a_time(tmp_path):
    import exporters
    torch.manual_seed(0)
    rep = exporters.export(_BatchOne(), input_shape=(3, 8, 8), out=tmp_path, runs=2, data="digits")
    ref = rep.result("pytorch", "fp32")
    assert rep.result("onnxruntime", "fp32")["passed"] and ref["passed"]
