"""Test machinery shared by tests/ and bench/: the stand-in model, Parley processes, the
embedded Redis Cluster, the WebSocket drivers and the delivery checker. Not part of the product.
"""
