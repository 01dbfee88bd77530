"""Fine-tuning data that matches what a system-prompt program sends.

``dspy.BootstrapFinetune`` (DSPy 3.4.1) formats its training messages with its own ``adapter=``
argument, else the adapter configured when ``compile`` runs, else ``ChatAdapter``. It reads no
adapter from the program or its predictors, so the system-prompt scope of a
:class:`~metaspo_dspy.program.system_prompt.WithSystemPrompt` -- which runs only inside the program's
``forward`` -- never reaches that data: without help, a model is trained on messages without the
system prompt and with DSPy's placement of the instructions, i.e. not what the program sends at
inference. Pass the adapter :func:`finetune_adapter` returns::

    dspy.BootstrapFinetune(metric=..., adapter=finetune_adapter(program)).compile(program, trainset=...)
"""

from __future__ import annotations

import dspy
from dspy.adapters.base import Adapter

from metaspo_dspy.program.adapters import with_system_prompt
from metaspo_dspy.program.system_prompt import unwrap


def finetune_adapter(program: dspy.Module) -> Adapter:
    """The adapter that formats ``program``'s fine-tuning data as ``program`` sends it.

    Contract: for a :class:`~metaspo_dspy.program.system_prompt.WithSystemPrompt` (nested: the innermost system
    prompt and the innermost base adapter given, as at inference) the result is that base adapter
    -- else the adapter configured now, else ``ChatAdapter`` -- carrying the system prompt and its
    placement, so its ``format_finetune_data`` gives, for a traced call, the messages the program
    sent for it followed by the answer. For a program without a system prompt it is the adapter
    ``BootstrapFinetune`` would use anyway (configured, else ``ChatAdapter``). Nothing is modified.
    """
    _, prompt, adapter = unwrap(program)
    base = adapter if adapter is not None else dspy.settings.adapter
    if prompt is None:
        return base if base is not None else dspy.ChatAdapter()
    return with_system_prompt(base, prompt.text, prompt.instructions_in)
