"""After the run: the dataset API, filters, stats, export, overlays and eval. Imports ``core``
only: reading a run never needs the Ray driver or a model."""
