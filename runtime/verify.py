"""``python -m runtime verify BUNDLE``: prove a bundle's artefacts on this machine with their golden set.

Each artefact's golden set runs here and is judged with the gates it passed at build; one that fails is
repaired through its backend's safe runtime configurations unless ``--no-repair``. Verdicts are recorded
outside the bundle (``runtime/proof.py``), so ``runtime.open()`` uses them. Exit 0 when every artefact
checked can run correctly here (as built or repaired), 1 when one cannot, 2 for bad input.
"""
from __future__ import annotations

import argparse
import json

from runtime import values
from runtime.backends import backends
from runtime.cli import GATE_FAILED, OK
from runtime.errors import UserError
from runtime.golden import read_golden
from runtime.proof import attempt_lines, prove, record, run_options
from runtime.session import check_open, name_of, ranked, standing
from runtime.signing import Checked, read_trusted, trust_flag, trusted
from runtime.sizes import read_sizes


def parser() -> argparse.ArgumentParser:
    p = values.Parser(prog="python -m runtime verify",
                                description="Run the bundle's golden set through its artefacts on this machine and "
                                            "apply the gates they passed at build; exit 1 when one fails here.")
    p.add_argument("bundle")
    p.add_argument("--target", choices=list(backends()), default=None)
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None)
    p.add_argument("--all", action="store_true",
                   help="also check artefacts that failed their gates at build or were never proven")
    p.add_argument("--no-repair", action="store_true",
                   help="judge only the runtime configuration the bundle records (no safe alternatives tried)")
    p.add_argument("--device", default=None, help="OpenVINO device (CPU, GPU, NPU)")
    p.add_argument("--threads", type=values.threads, default=None)
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    trust_flag(p)
    return p


def verify_main(argv: list[str]) -> int:
    from pathlib import Path

    a = parser().parse_args(argv)
    check_open(a.target, a.precision, a.device, a.threads)
    bundle = Path(a.bundle)
    signer = trusted(bundle, a.trust)
    size_set = read_sizes(bundle) if bundle.is_dir() else None
    folders = [(None, bundle)] if size_set is None else [
        (f"{e.input_size[0]}x{e.input_size[1]}", size_set.folder(bundle, e.input_size)) for e in size_set.sizes]
    verdicts, out = [], []
    for size, folder in folders:
        manifest, _ = read_trusted(folder, Checked(signer) if signer else None)
        arts = [x for x in ranked(manifest, a.target, a.precision, a.device) if a.all or standing(x) == "passed"]
        if not arts:
            raise UserError("no artefact that passed its gates at build matches (--all checks the others too)"
                            + (f" at {size}" if size else ""))
        golden = read_golden(folder, manifest)
        mine = []
        for art in arts:
            manifest.verify(folder, art.files)
            v = prove(folder, manifest, art, golden, a.device, a.threads, repair=not a.no_repair)
            record(folder, art, v, run_options(not a.no_repair, a.device))
            mine.append((art, v))
        verdicts += [(size, art, v) for art, v in mine]
        out.append((f"input {size}\n" if size else "") + table(mine, golden, standing, name_of))
    if a.json:
        print(json.dumps([{**v.to_dict(), "at_build": standing(art), **({"input_size": size} if size else {})}
                          for size, art, v in verdicts], default=str))
    else:
        if signer:
            print(f"signature: {bundle / 'model.sig'} verified with {a.trust or 'VITDEPLOY_TRUST'} (key {signer[:16]})")
        print("\n\n".join(out))
    return OK if all(v.passed for _, _, v in verdicts) else GATE_FAILED


def moved_head(verdicts) -> str:
    """What the golden check counts moving: a segmentation model's pixels of another class, else top-1 flips."""
    return "pixels of another class" if any("pixels_differing" in v.values for _, v in verdicts) else "top-1 flips"


def moved(art, v) -> str:
    """One artefact's count of what moved on the golden set, with the number its gates allow."""
    gates = art.verification.gates if art.verification else {}
    if "pixels_differing" in v.values:
        return f"{v.values['pixels_differing']} ({gates.get('golden_max_pixels_differing', '–')})"
    allowed = gates.get("golden_max_flips", "–") if gates.get("gate_agreement", True) else "not gated"
    return f"{v.values['flips']} ({allowed})" if "flips" in v.values else "–"


def table(verdicts, golden, standing, name_of) -> str:
    fp = verdicts[0][1].fingerprint
    out = [f"golden set: {len(golden.pixels)} samples · this machine: {fp.get('cpu')} "
           f"({' '.join(fp.get('isa', []))}), {fp.get('sdk')}" + (f", GPU {fp['gpu']}" if fp.get("gpu") else ""), "",
           f"| artefact | at build | here | golden cosine min | {moved_head(verdicts)} (allowed) | runs with |",
           "|---|---|---|---|---|---|"]
    for art, v in verdicts:
        here = ("repaired" if v.repaired else "passed") if v.passed else "**FAILED**"
        cos = f"{v.values['cosine_min']:.6f}" if "cosine_min" in v.values else "–"
        out.append(f"| {name_of(art)} | {standing(art)} | {here} | {cos} | {moved(art, v)} | {config_line(v.config)} |")
    for art, v in verdicts:
        if v.differs:
            out.append(f"\n{name_of(art)}: proven at build on another machine ({'; '.join(v.differs)[:300]})")
        if not v.passed or v.repaired:
            out.append(f"{name_of(art)}: " + "; ".join(v.failures or []) if not v.passed else
                       f"{name_of(art)}: repaired")
            out += [f"  - {line}" for line in attempt_lines(v)]
    return "\n".join(out)


def config_line(config: dict) -> str:
    keys = ("inference_precision", "snippets_mode", "execution_mode", "graph_optimization_level", "device")
    return ", ".join(f"{k}={config[k]}" for k in keys if k in config) or "as built"
