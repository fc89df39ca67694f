"""Scenarios on the local control plane shared by the e2e tests and the benchmarks:
randomized placement (placement.py), scale storms and settling (load.py), generated
invalid objects (invalid_specs.py; needs hypothesis, from the `dev` extra)."""
