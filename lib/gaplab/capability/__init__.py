"""What a runtime can do: the capability probes and the judges of what a server answered."""
