"""The node agent: reads the host's thread and PID limits and usage from /proc and the
cgroup filesystem, and keeps the node's NodeBudget up to date.

`reading` is pure (files in, NodeBudgetSpec out), `manifest` turns a spec into the object
the agent applies, `loop` paces reports and handles signals, `kube` is the only part that
talks to the API server, and `cli` wires them into `cellguard agent`.
"""
