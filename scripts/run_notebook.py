#!/usr/bin/env python
"""Executes a notebook headless, as CI does: every code cell in order, in a fresh kernel, with a timeout per cell.

    .venv-modern/bin/python scripts/run_notebook.py examples/quickstart.ipynb [--timeout 600] [--output run.ipynb]

The kernel is this interpreter (``sys.executable``): a ``python3`` kernelspec pointing at it is written to a
temporary directory put first on ``JUPYTER_PATH``, so neither a user-level ``python3`` kernel nor another
environment's one can be picked up. The kernel runs in a temporary working directory (files the notebook
writes go there and are deleted afterwards), with ``MPLBACKEND=Agg``. The notebook file itself is never
modified; ``--output`` writes the executed copy, with its outputs, elsewhere.

On success it prints ``notebook PATH: N cells passed, 0 failed`` and exits 0. The first failing cell (an
error, a timeout or a dead kernel) stops the run: its source and error go to stderr, the summary line says
``1 failed`` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

KERNEL_NAME = "python3"


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", help="path of the .ipynb file to execute")
    parser.add_argument("--timeout", type=int, default=600,
                        help="seconds each cell may run before it counts as failed (default: %(default)s)")
    parser.add_argument("--output", default=None, metavar="PATH",
                        help="also write the executed notebook, with its outputs, to PATH (also on failure)")
    args = parser.parse_args(argv)
    if args.timeout < 1:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if not os.path.isfile(args.notebook):
        parser.error(f"no notebook at {args.notebook!r}")
    return args


def install_kernelspec(prefix: str) -> str:
    """Writes a ``python3`` kernelspec for ``sys.executable`` under ``prefix``; returns its JUPYTER_PATH entry."""
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name=f"Python 3 ({sys.executable})", prefix=prefix,
            env={"MPLBACKEND": "Agg"})
    return os.path.join(prefix, "share", "jupyter")


def _error_text(cell) -> str:
    """The error outputs of an executed cell (ename, evalue and the traceback, ANSI colours removed)."""
    import re

    lines = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            lines.append(f"{output.get('ename')}: {output.get('evalue')}")
            lines.extend(output.get("traceback", []))
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", "\n".join(lines))


def run(path: str, timeout: int, output: str | None = None) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    code_cells = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    current = {"index": None}
    finished = []

    def on_cell_start(cell, cell_index):
        current["index"] = cell_index

    def on_cell_executed(cell, cell_index, execute_reply):
        if execute_reply.get("content", {}).get("status") == "ok":
            finished.append(cell_index)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfmoe-kernelspec-") as prefix, \
            tempfile.TemporaryDirectory(prefix="tfmoe-notebook-") as workdir:
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [install_kernelspec(prefix), *filter(None, [os.environ.get("JUPYTER_PATH")])])
        os.environ["MPLBACKEND"] = "Agg"  # inherited by the kernel as well
        client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL_NAME, allow_errors=False,
                                resources={"metadata": {"path": workdir}}, on_cell_start=on_cell_start,
                                on_cell_executed=on_cell_executed)
        failure, timed_out = None, False
        try:
            client.execute()
        except CellTimeoutError as error:
            failure, timed_out = f"the cell ran past the per-cell timeout of {timeout} s\n{error}", True
        except DeadKernelError as error:
            failure = f"the kernel died\n{error}"
        except CellExecutionError as error:
            failure = str(error)
    seconds = time.perf_counter() - start
    if output:
        nbformat.write(nb, output)
    passed = len(finished)
    if failure is None:
        print(f"notebook {path}: {passed} cells passed, 0 failed ({seconds:.0f} s)")
        return 0

    index = current["index"]
    cell = nb.cells[index] if index is not None else None
    number = code_cells.index(index) + 1 if index in code_cells else "?"
    not_run = len(code_cells) - passed - 1
    print(f"notebook {path}: code cell {number} of {len(code_cells)} (cell index {index}) failed", file=sys.stderr)
    if cell is not None:
        print("---- cell source ----", file=sys.stderr)
        print(cell.source, file=sys.stderr)
        print("---- error ----", file=sys.stderr)
        print(_error_text(cell) or failure, file=sys.stderr)
        if timed_out:
            print(f"(the cell ran past the per-cell timeout of {timeout} s and was interrupted)", file=sys.stderr)
    else:
        print(failure, file=sys.stderr)
    print(f"notebook {path}: {passed} cells passed, 1 failed, {not_run} not run ({seconds:.0f} s)")
    return 1


def main(argv=None) -> int:
    args = _parse_args(argv)
    return run(args.notebook, args.timeout, args.output)


if __name__ == "__main__":
    sys.exit(main())
