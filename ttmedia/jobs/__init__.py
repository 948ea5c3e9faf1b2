"""Long-running jobs (video generation, fine-tuning): durable store, state machine, runner."""
