"""Compression techniques, one module each; each registers its configs on import."""
