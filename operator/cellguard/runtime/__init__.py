"""The operator process: leader election, probes, metrics server, kopf wiring."""
