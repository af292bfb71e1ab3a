"""Load, soak and fault tests of the worker (see README "Hostile suite, soak and fuzz")."""
