"""The public API for reading a run: ``from pipeline.dataset import open_run, decode_mask``.

A stable name for users' code and notebooks; the implementation lives in the after-the-run
wing, ``pipeline.results.dataset``.
"""

from pipeline.results.dataset import Run, RunNotFoundError, decode_mask, open_run

__all__ = ["Run", "RunNotFoundError", "decode_mask", "open_run"]
