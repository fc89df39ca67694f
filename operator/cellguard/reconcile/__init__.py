"""The reconciler (thin kopf handlers) and pure status construction."""
