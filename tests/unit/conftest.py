"""Hypothesis without its per-example deadline: ./dev test builds the compiled offload on the
other core while these tests run, and a slow example on a busy machine is not a failure."""

from hypothesis import settings

settings.register_profile("offload", deadline=None)
settings.load_profile("offload")
