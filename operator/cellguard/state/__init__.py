"""What the operator knows of the cluster, and the reservations of admitted changes (pure)."""
