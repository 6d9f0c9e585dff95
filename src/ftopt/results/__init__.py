"""What a run measured: the memory/time measurement helper, the typed result rows and the task-quality metrics."""
