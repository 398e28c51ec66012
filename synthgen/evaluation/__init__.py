"""`synthgen eval`: fidelity, utility and privacy of a synthetic dataset against real data."""
