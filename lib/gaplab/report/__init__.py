"""The report: what the site's pages read, computed from the store.

One module per concept; the notebooks call them, never the store's files directly:

- speed.py          the trials the report combines and one estimate per cell, with its interval
- claims.py         every comparison the site states, as rows with their intervals and verdicts
- speed_prose.py    the throughput page's sentences, rendered from claims, estimates and runs
- time_prose.py     the sentences of the page on where the time goes (decomposition, roofline)
- claims_prose.py   the published claims page's sentences
- over_time.py      one run's server telemetry over time, beside the client's in-flight count
- cold_start.py     seconds from a server's start to healthy and to its first token
- energy.py         joules per output token from the CPU packages' RAPL counters, or why not measured
- decompose.py      each request's latency in parts (queues, prompt, decode, front end) and waterfalls
- roofline.py       each cell's decode speed against the memory-bandwidth bound
- checker.py        the published claims (data/reference/claims.csv) tested on this machine's rows
- definitions.py    the headline metrics under other tools' conventions
- cost.py           dollars per million output tokens from a price the user gives
- quality.py        the quality page's frames (fidelity, task accuracy, agreement, size and speed)
- quality_prose.py  the quality page's sentences
- charts.py         Altair charts of those frames
- markup.py         strings from servers and others' files as text on a page (prose, tables, chart specs)
- site.py           the site build (quarto render, or the same pages without Quarto)

Prose modules take frames, never a data folder: the page reads the store through the modules
above and hands the sentences what it drew. Every table is read through store.read_table or store.scan_table: one lazy scan per table,
kept while its files are unchanged, so a page reads the store once however many frames it draws.
"""
