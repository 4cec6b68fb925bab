"""From raw rows to figures: the metric definitions, their intervals, and the rule that says when a
cell or a comparison has had trials enough."""
