"""SAM 2 models and mask generation: registry and loading, the reference and fast generators,
their shared records and clean-up, the shared-image decoder, parity. Imports ``core`` only."""
