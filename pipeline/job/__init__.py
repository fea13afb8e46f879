"""The labelling job on Ray: listing and shard plan, the driver, the actor worker, the run
manifest and progress. Imports ``core`` and ``model``."""
