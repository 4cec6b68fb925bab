"""The Parquet store: where it lives, how a run is written (part files while it runs) and read."""
