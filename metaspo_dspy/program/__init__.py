"""The DSPy side of a system prompt: the ``SystemPrompt`` parameter and the programs that carry it,
the adapters and scope that put it into every call, what a call sent and got back, and the metric
contract the optimizers score with."""
