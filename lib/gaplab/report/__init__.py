"""The report: what the site's pages read, computed from the store.

One module per concept; the notebooks call them, never the store's files directly:

- speed.py          the trials the report combines and one estimate per cell, with its interval
- claims.py         every comparison the site states, as rows with their intervals and verdicts
- speed_prose.py    the throughput page's sentences, rendered from claims and estimates
- telemetry.py      one run's server telemetry over time, beside the client's in-flight count
- cold_start.py     seconds from a server's start to healthy and to its first token
- quality.py        the quality page's frames (fidelity, task accuracy, agreement, size and speed)
- quality_prose.py  the quality page's sentences
- charts.py         Altair charts of those frames
- site.py           the site build (quarto render, or the same pages without Quarto)

Every table is read through store.read_table: one lazy scan per table, kept while its
files are unchanged, so a page reads the store once however many frames it draws.
"""
