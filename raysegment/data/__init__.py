"""Datasets, transforms, image decoding and input sources."""
