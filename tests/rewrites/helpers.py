import torch

from exporters.rewrites import apply_rewrites


def max_err(model, input_shape, passes=None, batches=(1, 3)):
    """Rewrite ``model`` for ``input_shape`` ([3, H, W]); return (max abs error over batches, report, rewritten)."""
    rewritten, report = apply_rewrites(model, (1, *input_shape), passes=passes)
    torch.manual_seed(0)
    err = 0.0
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, *input_shape)
            err = max(err, (model(x) - rewritten(x)).abs().max().item())
    return err, report, rewritten
