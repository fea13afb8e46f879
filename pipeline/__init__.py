"""autolabel: SAM 2 pseudo-labels for large image collections, on Ray.

The package in wings; imports flow one way (``tests/test_architecture.py`` checks it):

- ``core``: what every wing shares (config, storage locations, image decoding, RLE, the run's
  on-disk format). Imports no other wing.
- ``model``: SAM 2 models and mask generation. Imports ``core``.
- ``job``: the labelling job on Ray (listing, shard plan, driver, actor worker, manifest,
  progress). Imports ``core`` and ``model``.
- ``results``: after the run (dataset API, filters, stats, export, overlays, eval). Imports
  ``core``.
- ``synthetic``: procedural scenes with exact masks. Imports ``core``.
- ``web``: the local pages of ``autolabel view`` (browse a run, pick filter thresholds) and
  ``autolabel tune`` (try generator settings). Imports ``core``, ``model``, ``job`` and
  ``results``.
- ``cli``: the ``autolabel`` command; imports any wing, and nothing imports it.

``pipeline.dataset`` is the public API for reading runs (``open_run``, ``decode_mask``).
"""
