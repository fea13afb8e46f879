"""Training sam2-tiny-synthetic (not part of the runtime package; see training/README.md)."""
