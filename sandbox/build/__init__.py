"""``sandbox build``: an image from a Sandboxfile (a subset of the Dockerfile syntax) and a
build context, into the image store (docs/architecture.md, "Building an image")."""
