"""MkDocs hook: the CLI reference, written from the argparse parsers themselves at build time.

Each command's ``--help`` is what its parser prints, run with this interpreter; the subcommands come from each CLI's
own ``SUBCOMMANDS`` table, so a new command or flag appears here without an edit.
"""
from __future__ import annotations

import os
import subprocess
import sys

MARKER = "<!-- cli-reference -->"


def _commands() -> list[tuple[str, list[str]]]:
    from benchmarks.__main__ import SUBCOMMANDS as BENCH
    from runtime.__main__ import SUBCOMMANDS as RUNTIME
    return ([("exporters", [])] + [("runtime", [])] + [("runtime", [c]) for c in RUNTIME]
            + [("benchmarks", [])] + [("benchmarks", [c]) for c in BENCH])


def _help(module: str, sub: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "110"}
    done = subprocess.run([sys.executable, "-m", module, *sub, "--help"], capture_output=True, text=True, env=env,
                          timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"python -m {module} {' '.join(sub)} --help exited {done.returncode}: {done.stderr[-300:]}")
    return done.stdout.rstrip()


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    parts = []
    for module, sub in _commands():
        title = " ".join(["python -m", module, *sub])
        parts += [f"## `{title}`", "", "```text", _help(module, sub), "```", ""]
    return markdown.replace(MARKER, "\n".join(parts))
