"""What a scenario says: its runtimes, models, workloads and load, checked once when it is loaded."""
