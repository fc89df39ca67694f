"""cellguard: refuses scale-ups that would push nodes past their thread and PID limits."""

__version__ = "0.1.0"
