"""The Redis layer: connection, keys, the session store, the Pub/Sub hub and the scripts."""
