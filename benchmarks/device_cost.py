"""What a bundle costs on the device: bytes per artefact, cold start and peak memory.

``python -m benchmarks device-cost BUNDLE``: each run is a new process, ``python -m runtime BUNDLE IMAGE`` (the
device's own command; for a backbone, segmentation or embedding bundle, which that command does not print, a new
interpreter that opens the bundle with ``runtime.open`` and runs one input), timed from its start to its exit
after the first prediction, with its peak resident memory from the kernel (``wait4``'s ``ru_maxrss``). The runs are
started by a small launcher process, not by this one: Linux carries the resident size of the process that forks
into the child's ``ru_maxrss`` (the fork's copy of its memory, counted again at ``exec``), so a child of this process,
which has the export side imported, would report this process's memory as its own. The first
run may read the bundle from disk; the page cache serves the later ones, so both are shown. The image is a uniform
grey picture at the bundle's input size: the cost does not depend on what the picture shows.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from runtime.errors import UserError
from runtime.manifest import read_manifest, resolve_inside
from runtime.sizes import read_sizes


def artefact_bytes(bundle: Path) -> list[dict]:
    """Each artefact of each size: its files' bytes, the weights a bundle of sizes shares counted with it."""
    sizes = read_sizes(bundle)
    folders = [(e.bundle, sizes.folder(bundle, e.input_size)) for e in sizes.sizes] if sizes else [("", bundle)]
    rows = []
    for name, folder in folders:
        m = read_manifest(folder)
        for a in m.artifacts:
            paths = [resolve_inside(folder, f) for f in a.files]
            size = sum(p.stat().st_size for p in paths if p.is_file())
            rows.append({"size": name, "target": a.target, "precision": a.precision, "status": a.status, "bytes": size})
    return rows


# One input through a bundle the runtime CLI does not print (features, segmentation, embedding): the API's path.
ONE_INPUT = """import sys, numpy as np, runtime
with runtime.open(sys.argv[1], size=sys.argv[2] or None) as s:
    shape = [max(d, 1) for d in s.manifest.input.shape]
    out = s.infer({s.runner.input_name: np.zeros(shape, np.float32)})
    assert all(np.isfinite(v).all() for v in out.values())
"""

# Runs ``cmd`` (JSON on argv[1]) ``runs`` times (argv[2]), each a new process, and prints one JSON line per run. It
# imports only the standard library, so the children it forks start from its own few megabytes.
LAUNCHER = """import json, os, subprocess, sys, time
cmd, runs = json.loads(sys.argv[1]), int(sys.argv[2])
for _ in range(runs):
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.stderr.close()
    print(json.dumps({"seconds": seconds, "rss_kb": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status),
                      "error": err[-1] if err else ""}), flush=True)
"""


def cold_starts(bundle: Path, runs: int, extra: list[str]) -> list[dict]:
    """``runs`` new processes, each serving one image; seconds and peak RSS of each."""
    from PIL import Image

    sizes = read_sizes(bundle)
    folder = sizes.folder(bundle, sizes.sizes[0].input_size) if sizes else bundle
    manifest = read_manifest(folder)
    h, w = manifest.input.shape[-2:]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "grey.png"
        Image.new("RGB", (w, h), (128, 128, 128)).save(image)
        cmd = [sys.executable, "-m", "runtime", str(bundle), str(image), *extra]
        if manifest.task != "classification":
            cmd = [sys.executable, "-c", ONE_INPUT, str(bundle), f"{h}x{w}" if sizes else ""]
        done = subprocess.run([sys.executable, "-c", LAUNCHER, json.dumps(cmd), str(runs)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise UserError(f"the launcher failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}")
        for line in done.stdout.splitlines():
            run = json.loads(line)
            if run["code"] != 0:
                raise UserError(f"python -m runtime exited {run['code']}: {run['error'] or 'no message'}")
            results.append({"seconds": round(run["seconds"], 3), "peak_rss_mb": round(run["rss_kb"] / 1024, 1)})
    return results


def render(bundle: Path, rows: list[dict], starts: list[dict], command: str, machine: str) -> str:
    mb = 1e6
    lines = [f"## Device cost: {bundle.name}", "", f"Command: `{command}`", "", f"Machine: {machine}", "",
             "| size | target | precision | status | MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['size'] or '–'} | {r['target']} | {r['precision']} | {r['status']} | {r['bytes'] / mb:.1f} |"
              for r in rows]
    lines += ["", "| run | cold start s | peak RSS MB |", "|---|---|---|"]
    lines += [f"| {i + 1}{' (first)' if i == 0 else ''} | {s['seconds']:.2f} | {s['peak_rss_mb']:.0f} |"
              for i, s in enumerate(starts)]
    if len(starts) > 1:
        later = starts[1:]
        lines += ["", f"Later runs (page cache warm): median {statistics.median(s['seconds'] for s in later):.2f} s, "
                      f"peak RSS {max(s['peak_rss_mb'] for s in later):.0f} MB."]
    return "\n".join(lines) + "\n"


__all__ = ["artefact_bytes", "cold_starts", "render"]
