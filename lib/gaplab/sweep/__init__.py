"""A scenario's cells measured in rounds of trials: the servers they run against, the measure notebook
that runs each trial, and the Ray cluster that can spread them."""
