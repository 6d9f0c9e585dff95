"""Building and quantizing the model a run trains: shared by the traced estimator and the trainer, so the memory
the planner predicts is the memory of the model the trainer builds."""
