"""What a run is measured on: the hardware, its memory bandwidth, the model files' bytes, and what this
machine can launch (`gaplab doctor`)."""
