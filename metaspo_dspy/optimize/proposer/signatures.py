"""The optimizer LM's tasks, written as DSPy signatures (our own wording).

MetaSPO's proposals are two calls each: a diagnosis of the failures, then a rewrite that uses it.
APE-style proposals are one call: infer an instruction from input/output pairs, or paraphrase one.
"""

import dspy


class DiagnoseUserPrompt(dspy.Signature):
    """You are refining the user prompt: the task-specific instruction a language model reads after a
    fixed, task-independent system prompt. Below are cases the model answered wrongly while using both
    prompts. Work out what in the user prompt led to these mistakes -- missing task knowledge, an
    unclear answer format, ambiguous wording, a missing procedure -- and say concretely how the user
    prompt should change. Discuss only the user prompt; the system prompt stays as it is."""

    system_prompt: str = dspy.InputField(desc="the system prompt, fixed")
    user_prompt: str = dspy.InputField(desc="the current user prompt")
    wrong_examples: str = dspy.InputField(desc="cases the model got wrong, with its response and the correct answer")
    user_prompt_analysis: str = dspy.OutputField(desc="diagnosis of the user prompt's shortcomings and how to fix them")


class RewriteUserPrompt(dspy.Signature):
    """You are refining the user prompt: the task-specific instruction a language model reads after a
    fixed, task-independent system prompt. Using the wrong cases and the diagnosis, write a better user
    prompt for this task that fixes the problems observed. Write the complete new user prompt itself,
    ready to use, with no commentary around it."""

    system_prompt: str = dspy.InputField(desc="the system prompt, fixed")
    user_prompt: str = dspy.InputField(desc="the current user prompt")
    wrong_examples: str = dspy.InputField(desc="cases the model got wrong, with its response and the correct answer")
    user_prompt_analysis: str = dspy.InputField(desc="diagnosis of the current user prompt")
    improved_user_prompt: str = dspy.OutputField(desc="the complete improved user prompt")


class DiagnoseSystemPrompt(dspy.Signature):
    """You are refining a system prompt that a language model uses for many different tasks, each with
    its own user prompt. Below are cases from several tasks that the model answered wrongly. Explain
    what the system prompt fails to provide that would have prevented these mistakes across tasks --
    general reasoning habits, care with answer formats, use of the given context, calibration -- rather
    than fixes for any single task. Discuss only the system prompt."""

    system_prompt: str = dspy.InputField(desc="the current system prompt")
    wrong_examples: str = dspy.InputField(desc="wrong cases from several tasks")
    system_prompt_analysis: str = dspy.OutputField(desc="why the system prompt falls short, across tasks")


class RewriteSystemPrompt(dspy.Signature):
    """You are refining a system prompt that a language model uses for many different tasks, each with
    its own user prompt. Using the diagnosis, write an improved system prompt that generalizes across
    tasks and domains: it must help on unseen tasks too, so avoid anything specific to one task. Write
    the complete new system prompt itself, with no commentary around it."""

    system_prompt: str = dspy.InputField(desc="the current system prompt")
    system_prompt_analysis: str = dspy.InputField(desc="diagnosis of the current system prompt")
    improved_system_prompt: str = dspy.OutputField(desc="the complete improved system prompt")


class InduceInstruction(dspy.Signature):
    """A friend was given an instruction and some inputs, and wrote an output for each input. Here are
    the input/output pairs. Infer the instruction the friend was most likely given, and write it so
    that someone else following it would produce the same outputs."""

    input_output_pairs: str = dspy.InputField(desc="inputs with the outputs written for them")
    proposed_instruction: str = dspy.OutputField(desc="the inferred instruction")


class ParaphraseInstruction(dspy.Signature):
    """Write a variation of the instruction below that keeps its meaning exactly but uses different
    words."""

    instruction: str = dspy.InputField(desc="the instruction to vary")
    paraphrased_instruction: str = dspy.OutputField(desc="the reworded instruction, same meaning")


#: Added to rewrite/paraphrase instructions when the current user prompt carries input slots such as
#: ``{question}`` (reference prompt format): the new prompt must keep them.
SLOT_NOTE = (
    " The current user prompt contains the placeholder(s) {slots}, where the actual input is inserted"
    " before the model reads it; the new user prompt must contain each placeholder exactly once."
)
