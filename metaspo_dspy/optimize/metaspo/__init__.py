"""MetaSPO: the teleprompter and its bilevel search loop."""
