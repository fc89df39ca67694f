"""`cellguard demo`: the narrated end-to-end story on a local real control plane."""
