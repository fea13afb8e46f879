"""Procedural scenes with exact instance masks (``autolabel synth``). Imports ``core``."""
