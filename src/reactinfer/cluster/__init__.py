"""Scale-out on Ray: batch inference, serving replicas, heterogeneous and pipeline
parallelism, aggregation and result compression.

This is the only package that uses Ray, and only through `cluster.ray_api`; importing
`reactinfer` or `reactinfer.cluster` does not import Ray. See docs/cluster.md.
"""
