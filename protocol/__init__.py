"""What crosses the wire between Parley's processes: models, keys, Redis scripts and the hub."""
