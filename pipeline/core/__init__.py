"""What every wing shares: config, storage locations, image decoding, RLE, the run's on-disk
format (schema, whole-or-absent shards, commit markers) and errors. Imports no other wing."""
