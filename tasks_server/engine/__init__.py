"""The engine: runs tasks on time. ``scheduler`` claims due tasks and records their
outcomes, ``timers`` is its in-memory due-time index, ``retry`` the pure outcome and retry
rule, ``waiters`` the futures of callers waiting for a task's result."""
