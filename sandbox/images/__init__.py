"""Layer 3: OCI/Docker images - references, registry client, content-addressed store,
safe layer unpacking, garbage collection, and the reverse: a directory tree written as a
layer and new images composed from layers.

Knows nothing about running jobs: the runner asks the store for an image's layer
directories and config, and holds a lease while a job uses them.
"""
