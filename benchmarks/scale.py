"""``python -m benchmarks eval``: one process, or shards on Ray (a local Ray with N workers, or a cluster).

Ray is optional (``pip install 'vitdeploy[scale]'``). Each Ray task evaluates one shard and returns
it to the driver, which stores it (with its hash) as it arrives; a task whose worker dies is
retried by Ray (``max_retries``), and the store keeps one copy per shard, so nothing is counted twice.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import benchmarks
from benchmarks.evaluate import Plan, ShardResult, ShardStore, eval_shard, metrics, row_names
from benchmarks.reference import rebuild_reason
from calibration.sources import from_folder
from runtime.backends import backend
from runtime.cli import keep
from runtime.errors import UserError
from runtime.manifest import MANIFEST, read_manifest, sha256_file

INSTALL = "pip install 'vitdeploy[scale]'"
RETRIES = 3


def make_plan(bundle: Path, data: Path, targets: list[str] | None, precisions: list[str] | None, reference: str,
              limit: int | None, shard_size: int, threads: int | None, weights: str | None = None) -> Plan:
    """Fix the image list (sorted), the labels (class folders named as the model's labels, or digits) and the artefacts."""
    m = read_manifest(bundle)
    arts = [(a.target, a.precision) for a in m.artifacts if a.status == "built"
            and (not targets or a.target in targets) and (not precisions or a.precision in precisions)]
    runnable = [(t, p) for t, p in arts if backend(t).available() is None]
    if not runnable:
        why = "; ".join(f"{t} {p}: {backend(t).available()}" for t, p in arts) or "none matches the filters"
        raise UserError(f"no artefact of {bundle} can run here ({why})")
    if reference == "auto":
        reference = "onnx" if rebuild_reason(m) and not weights else "torch"
    if shard_size < 1 or (limit is not None and limit < 1):
        raise UserError("--shard-size and --limit must be at least 1")
    raw = from_folder(Path(data), {name: i for i, name in enumerate(m.labels or [])})
    ids, labels = raw.ids[:limit], raw.labels[:limit]
    return Plan(bundle=str(Path(bundle).resolve()), data=str(Path(data).resolve()), ids=ids, labels=labels,
                artefacts=runnable, reference=reference, shard_size=shard_size, threads=threads,
                manifest_sha256=sha256_file(Path(bundle) / MANIFEST), notes=tuple(raw.notes),
                weights=str(Path(weights).resolve()) if weights else None)


def _progress(total: int, done: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                   TimeRemainingColumn(), console=Console(file=sys.stderr), transient=True)
    task = bar.add_task("eval", total=total, completed=done)
    return bar, task


def _images(plan: Plan, index: int) -> int:
    return len(plan.shards()[index])


def run_local(plan: Plan, store: ShardStore, pending: list[int], done_images: int) -> list[ShardResult]:
    bar, task = _progress(len(plan.ids), done_images)
    out = []
    with bar:
        for i in pending:
            res = eval_shard(plan, i)
            store.save(res)
            out.append(res)
            bar.advance(task, _images(plan, i))
    return out


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--workers/--ray need Ray: {INSTALL}")
    return ray


def run_ray(plan: Plan, store: ShardStore, pending: list[int], done_images: int, workers: int | None,
            address: str | None) -> list[ShardResult]:
    """Every pending shard as a Ray task (one CPU each); results stored as they arrive."""
    ray = _ray()
    root = str(Path(benchmarks.__file__).resolve().parent.parent)
    env = {"env_vars": {"PYTHONPATH": root}}  # workers import vitdeploy as the driver does
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False,
                 configure_logging=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(eval_shard)
        refs = {task.remote(plan, i): i for i in pending}
        bar, bar_task = _progress(len(plan.ids), done_images)
        out = []
        with bar:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for r in ready:
                    i = refs.pop(r)
                    try:
                        res = ray.get(r)
                    except ray.exceptions.RayError as exc:
                        raise UserError(f"shard {i} failed after {RETRIES} retries: "
                                        f"{str(exc).strip().splitlines()[0][:200]}")
                    store.save(res)
                    out.append(res)
                    bar.advance(bar_task, _images(plan, i))
        return out
    finally:
        ray.shutdown()


def evaluate(plan: Plan, out: Path, workers: int | None = None, address: str | None = None) -> dict:
    """Evaluate ``plan`` (resuming from finished shards under ``out``); the merged metrics."""
    if (workers and workers > 1) or address:
        _ray()  # without Ray: one line, before any work
    store = ShardStore(out, plan)
    keep(lambda: f"{store.finished()} finished shard(s) in {store.folder}, from which the next run resumes")
    n = len(plan.shards())
    finished = {i: s for i in range(n) if (s := store.load(i, row_names(plan))) is not None}
    pending = [i for i in range(n) if i not in finished]
    done_images = sum(_images(plan, i) for i in finished)
    t0 = time.perf_counter()
    if (workers and workers > 1) or address:
        new = run_ray(plan, store, pending, done_images, workers, address)
        mode = f"Ray, {'cluster ' + address if address else f'{workers} local workers'}"
    else:
        new = run_local(plan, store, pending, done_images)
        mode = "one process"
    wall = time.perf_counter() - t0
    res = metrics(plan, [*finished.values(), *new])
    evaluated_now = sum(len(s.kept) for s in new)
    res.update(bundle=plan.bundle, data=plan.data, shard_size=plan.shard_size, mode=mode, wall_s=round(wall, 2),
               wall_images_per_s=round(evaluated_now / wall, 2) if wall and evaluated_now else 0.0,
               resumed=len(finished), threads_per_worker=plan.threads, reference=plan.reference,
               data_notes=list(plan.notes),
               shard_folder=str(store.folder))
    return res
