"""The planner: enumerate combinations, predict each, recommend one and explain why; the what-ifs (longest
context, fewest GPUs); the time-model calibration and its store."""
