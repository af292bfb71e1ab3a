"""Judging: a layer above the engine that turns a submission and a problem package into
jobs and reads their Results - checkers, scores, verdicts. It knows nothing of
namespaces or cgroups."""
