"""Answers: the parsers of both prompt formats (DSPy and the reference's) and the task metrics."""
