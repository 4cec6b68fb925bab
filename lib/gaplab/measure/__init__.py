"""One trial: the requests a cell sends, the load that sends them, the client that times every chunk,
and the telemetry sampled beside them."""
