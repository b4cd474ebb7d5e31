import torch

from exporters.graph.rewrites import apply_rewrites


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


def lively(model, seed: int = 0):
    """``model`` with every parameter drawn at random, so no block is an identity at init (SwinV2's post-norm
    weights, a zero-initialised head or bias table would make an equivalence test vacuous): norm scales near 1,
    SwinV2's logit scales around log(10) with some above the clamp at log(100), the rest small normals."""
    import math
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("logit_scale"):
                p.copy_(math.log(10) + 2.0 * noise)
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()
