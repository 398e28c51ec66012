"""synthgen: recipe-driven synthetic medical image datasets with a memorization audit and provenance."""

__version__ = "0.1.0"
