"""Proof that an artefact is faithful: the PyTorch reference runner, gates and repair, the golden set, ``--recipe
auto``, the accuracy budget, and block-level drift probes. Sits above the targets and below the pipeline."""
