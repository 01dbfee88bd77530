"""The MetaSPO reference code's raw messages as a DSPy adapter (the paper's protocol)."""

from __future__ import annotations

from typing import Any

from dspy.adapters.base import Adapter
from dspy.utils.exceptions import AdapterParseError


class ReferenceAdapter(Adapter):
    """The raw messages of the MetaSPO reference code, for reproducing the paper's protocol.

    User message: the instructions with every ``{input_field}`` slot replaced by that input's
    value (the reference's prompts contain ``<Question>{question}</Question>``); when a prompt has
    no slot for an input -- an optimizer can drop it -- the input is appended in the reference's
    ``<Question>...</Question>`` form so the query is never silently lost (the reference itself
    would then send no question). Other braces are left as they are. No system message unless a
    system prompt is set (:func:`with_system_prompt`). The whole completion becomes the single
    output field; the task's metric does the reference's answer parsing.
    """

    embeds_instructions = True

    def _single_output(self, signature) -> str:
        outputs = list(signature.output_fields)
        if len(outputs) != 1:
            raise ValueError(
                f"ReferenceAdapter needs a signature with exactly one output field, got {outputs}; "
                "use a DSPy adapter (Chat, JSON, XML) for multi-output signatures."
            )
        return outputs[0]

    def fill(self, signature, inputs: dict[str, Any]) -> str:
        """The user message for ``inputs``: instructions with their slots filled."""
        text = signature.instructions
        missing = []
        for name in signature.input_fields:
            slot = "{" + name + "}"
            value = "" if inputs.get(name) is None else str(inputs.get(name))
            if slot in text:
                text = text.replace(slot, value)
            elif name in inputs:
                missing.append(value)
        for value in missing:
            text = f"{text}<Question>{value}</Question>"
        return text

    def format(self, signature, demos, inputs):
        output = self._single_output(signature)
        messages = []
        for demo in demos:
            if all(name in demo for name in signature.input_fields) and output in demo:
                messages.append({"role": "user", "content": self.fill(signature, demo)})
                messages.append({"role": "assistant", "content": str(demo[output])})
        messages.append({"role": "user", "content": self.fill(signature, inputs)})
        return messages

    def parse(self, signature, completion):
        output = self._single_output(signature)
        if completion is None or not str(completion).strip():
            raise AdapterParseError(
                adapter_name="ReferenceAdapter",
                signature=signature,
                lm_response=str(completion),
                message="The LM returned an empty response.",
            )
        return {output: str(completion)}

    def format_field_description(self, signature):  # pragma: no cover - not used by format()
        return ""

    def format_field_structure(self, signature):  # pragma: no cover - not used by format()
        return ""

    def format_task_description(self, signature):  # pragma: no cover - not used by format()
        return signature.instructions

    def format_user_message_content(self, signature, inputs, prefix="", suffix="", main_request=False):
        return self.fill(signature, inputs)

    def format_assistant_message_content(self, signature, outputs, missing_field_message=None):
        return str(outputs.get(self._single_output(signature), missing_field_message or ""))
