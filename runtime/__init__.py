"""What every Parley process runs on: shared settings, logging, retries, task cancellation."""
