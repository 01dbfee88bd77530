"""Echoes are not prompts: an optimizer answer that only repeats the request's own wording (a
field's name or title, a field description, the instructions) is discarded with an ``echo`` reason,
for MetaSPO's rewrites and SPRIG's rephrasings alike; real short prompts are never discarded."""

from __future__ import annotations

import json

import dspy
import pytest
from conftest import exact_metric, load_examples

from metaspo_dspy import MetaSPO, compile_kwargs, load_task
from metaspo_dspy.errors import TooManyFailures
from metaspo_dspy.meta_test import generate_user_prompts
from metaspo_dspy.optimize.proposer import signatures as sigs
from metaspo_dspy.optimize.proposer.echoes import echo_of, vocabulary
from metaspo_dspy.optimize.proposer.proposals import Proposal, Proposer
from metaspo_dspy.optimize.sprig.library import load_components
from metaspo_dspy.optimize.sprig.teleprompter import SPRIG
from metaspo_dspy.program.system_prompt import DEFAULT_SYSTEM_PROMPT
from metaspo_dspy.store.journal import Journal
from metaspo_dspy.tasks.specs import SPECS
from metaspo_dspy.testing.fake_lm import unit

#: Real echoes: proposal texts the embedded SmolLM2-135M-Instruct model wrote as optimizer, copied
#: from the proposals journals (``proposals.jsonl``: the ``text`` of a kept proposal, or the answer
#: quoted in a discard reason) of these runs on 2 CPU cores:
#:   run1: metaspo train -c generated --task-model embedded --optimizer-model embedded --iterations 1
#:         --system-candidates 4 --user-candidates 2 --user-top-k 2 --train-size 4 --test-size 4
#:   run2: the same with --train-size 8 --test-size 8 (scripts/demo's train step)
#:   run3: the same with --system-candidates 8 --user-candidates 4 --train-size 2 --test-size 2
#:         --set seed=7
#: and, where marked, from the runs reported in issue 23.
REAL_ECHOES = [
    "{improved_user_prompt}",  # run1, run2, run3 (a bare placeholder: discarded before this rule too)
    "{improved_system_prompt}",  # run2
    "{improvement_to_sentence}}",  # run2: kept and scored before this rule
    "Your improved system prompt",  # run3, discarded there as an echo
    "Improved System Prompt 3.1.0",  # run3, kept there: numbers were not yet dropped
    "Improved System Prompt",  # issue 23: scripts/demo's "optimized system prompt"
    "Improved User Prompt",  # issue 23: the notebook, a resumed generated run, a mock optimizer
]

#: Real proposals of the same runs that are poor prompts but not echoes: they say something besides
#: the request's wording, so they are kept and left to the scores (the rule is not a quality judge).
REAL_NOT_ECHOES = [
    "Your new user prompt has improved and is accurate.",  # run1
    "You are refining a system prompt that generalizes across tasks, so write an improved response body. "
    "The complete new response.",  # run1
    "Improvement #1: Using diagnostic to help other systems in various domains",  # run2: its optimized prompt
    "The system prompt does not answer this question.",  # run3
    # run3, each cut after its first sentence
    "The improved system prompt will be delivered to any device that has the ability to read and write text.",
    "[Improve user prompt] Review: [Improved User Prompt Response - Your Answer] is not true.",
]

#: Near-echoes of the same kind: a title as a label with nothing after it, with an article, as
#: markdown, with DSPy's marker or a placeholder for the field beside it, a field description, the
#: instructions copied back.
NEAR_ECHOES = [
    "Improved system prompt:",
    "**Improved System Prompt:**",
    "## Improved User Prompt",
    '"Proposed Instruction"',
    "The improved system prompt",
    "Here is the improved user prompt:",
    "Improved System Prompt: {improved_system_prompt}",
    "[[ ## improved_user_prompt ## ]]\nImproved User Prompt",
    "[[ ## improved_system_prompt ## ]]",
    "improved_system_prompt",
    "ImprovedUserPrompt",
    "User Prompt Analysis",
    "paraphrased_instruction:",
    "System prompt",
    "Instruction:",
    "1. Improved System Prompt",
    "the complete improved system prompt",
    "The reworded instruction, same meaning.",
    "Improved User Prompt\nImproved System Prompt",
    # a title and the input slot: nothing is said besides where the input goes
    "Improved User Prompt: {question}",
    "Improved User Prompt: <Question>{question}</Question>",
    "Instruction: {question}",
    "<improved_user_prompt>Improved User Prompt</improved_user_prompt>",
    "Respond with a JSON object in the following order of fields: `improved_system_prompt`.",
    " ".join(sigs.RewriteSystemPrompt.instructions.split()),
    sigs.InduceInstruction.instructions,
    "Write a variation of the instruction below that keeps its meaning exactly but uses different words.",
]

#: Short real prompts that are never discarded, whatever their length.
MUST_KEEP = [
    "You are a helpful assistant.",
    "Let's think step by step.",
    "Answer concisely.",
    "Be concise.",
    "Think step by step, then answer.",
    "Answer the question.",
    "Predict the customer's rating from 1 to 5.",
    "Classify the sentiment of the review.",
    "Answer the medical question.",
    "Read the passage and answer the question.",
    "Choose the best answer.",
    "Improve your answer.",
    "Answer yes or no.",
    "Be precise.",
    "Think carefully.",
    "Explain your reasoning, then give the answer.",
    # a title used as a label in front of a real instruction; a slot inside a sentence
    "Improved System Prompt: Answer concisely.",
    "System prompt: be careful with the answer format.",
    "Improved User Prompt: answer the question in <Question>{question}</Question> with one letter.",
    "Rate the review in {review} from 1 to 5.",
    "Improved System Prompt: 请简洁地回答。",  # content in another script is content
]


def _library_texts() -> list[str]:
    return load_components().texts


@pytest.mark.parametrize("text", REAL_ECHOES + NEAR_ECHOES)
def test_echoes_are_recognised(text):
    assert echo_of(text) is not None, text


@pytest.mark.parametrize("text", REAL_ECHOES)
def test_real_echoes_are_discarded_by_the_proposer(text):
    proposal = Proposal(id=0, kind="system", iteration=0, candidate=0, task=None, parent_node=None, predictor=None)
    Proposer(optimizer_lm=None)._validate(proposal, text)
    assert proposal.status == "discarded" and not proposal.failed
    assert proposal.reason.startswith("echo: ")


@pytest.mark.parametrize("text", MUST_KEEP + REAL_NOT_ECHOES)
def test_real_prompts_are_kept(text):
    assert echo_of(text) is None, (text, echo_of(text))


def test_no_shipped_prompt_is_an_echo():
    """Every task's initial and reference user prompt, its answer-format line, the default system
    prompt and every SPRIG library component pass."""
    texts = [DEFAULT_SYSTEM_PROMPT, *_library_texts()]
    for spec in SPECS.values():
        texts += [spec.base_prompt, spec.reference_prompt, spec.format_line]
    echoes = {t: echo_of(t) for t in texts if t and echo_of(t) is not None}
    assert not echoes
    assert len(texts) > 150


def test_the_reason_names_what_was_echoed():
    assert echo_of("Improved System Prompt") == "the field title 'Improved System Prompt'"
    assert echo_of("improved_user_prompt") == "the field name 'improved_user_prompt'"
    assert echo_of("the inferred instruction") == (
        "the description of the field InduceInstruction.proposed_instruction ('the inferred instruction')"
    )
    assert echo_of(sigs.ParaphraseInstruction.instructions) == "the instructions of ParaphraseInstruction"
    assert echo_of("") is None and echo_of(None) is None


def test_a_new_signature_is_covered_without_editing_the_module(monkeypatch):
    class SummarizeFailures(dspy.Signature):
        """Summarise the failures in one paragraph."""

        failures: str = dspy.InputField(desc="the cases that went wrong")
        failure_summary: str = dspy.OutputField(desc="one paragraph about the failures")
        better_rubric: str = dspy.OutputField(prefix="Revised Grading Rubric:")

    assert echo_of("Failure Summary") is None, "not a field of the optimizer signatures yet"
    assert echo_of("Failure Summary", [SummarizeFailures]) == "the field title 'Failure Summary'"
    assert echo_of("Revised grading rubric:", [SummarizeFailures]) == "the field title 'Revised Grading Rubric'"
    assert echo_of("The cases that went wrong.", [SummarizeFailures]) is not None
    assert echo_of("Summarise the failures in one paragraph.", [SummarizeFailures]) is not None
    # Added to the optimizer signatures' module, it is part of the default vocabulary at once.
    monkeypatch.setattr(sigs, "SummarizeFailures", SummarizeFailures, raising=False)
    assert echo_of("FAILURE SUMMARY:") == "the field title 'Failure Summary'"
    assert "failure summary" in vocabulary()


def test_every_optimizer_field_is_in_the_vocabulary():
    words = vocabulary()
    for signature in (v for v in vars(sigs).values() if isinstance(v, type) and issubclass(v, dspy.Signature)):
        for name, field in signature.fields.items():
            assert echo_of(name) and echo_of(field.json_schema_extra["prefix"]), (signature.__name__, name)
    assert {"improved system prompt", "improved user prompt", "proposed instruction"} <= set(words)


def test_validate_discards_an_echo_as_a_content_discard():
    proposer = Proposer(optimizer_lm=None)
    proposal = Proposal(id=0, kind="system", iteration=0, candidate=0, task=None, parent_node=None, predictor=None)
    proposer._validate(proposal, "  Improved System Prompt  ")
    assert proposal.status == "discarded" and not proposal.failed
    assert proposal.reason == (
        "echo: the optimizer repeated the field title 'Improved System Prompt': 'Improved System Prompt'"
    )
    kept = Proposal(id=1, kind="system", iteration=0, candidate=1, task=None, parent_node=None, predictor=None)
    proposer._validate(kept, "Be concise.")
    assert kept.ok and kept.text == "Be concise."


def test_an_echo_journaled_as_ok_by_an_older_version_is_discarded_on_resume(engine_factory, tmp_path):
    """A run directory from before the echo rule holds echoes journaled as usable: reused on resume,
    they are checked again (and discarded) without asking the optimizer again."""
    engine, _task_lm, opt_lm = engine_factory("old-journal")
    path = tmp_path / "proposals.jsonl"

    def paraphrase() -> Proposal:
        proposal = Proposal(id=0, kind="ape_paraphrase", iteration=0, candidate=0, task="t", parent_node=None,
                            predictor=None)  # fmt: skip
        return Proposer(opt_lm, journal=Journal(path)).paraphrase(proposal, "Answer the question.", [])

    assert paraphrase().ok and engine.counts["optimizer"] == 1
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[-1]["value"]["text"] = "Improved System Prompt"  # what the old version kept
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    again = paraphrase()
    assert again.status == "discarded" and again.reason.startswith("echo: ") and not again.failed
    assert engine.counts["optimizer"] == 1


# -- the real code path: an optimizer that only echoes ------------------------------------------
ECHO_FORMS = ("{title}", "{title}:", "The {lower}", "**{title}**", "{title}: {{{name}}}")


def _echoing(request):
    """Answer every rewrite/paraphrase request with its output field's title in some echo form;
    analyses and task calls stay the fake's own."""
    if request.kind != "optimizer" or not request.outputs or request.outputs[-1].endswith("analysis"):
        return None
    name = request.outputs[-1]
    title = name.replace("_", " ").title()
    form = ECHO_FORMS[int(unit("echo", request.user) * len(ECHO_FORMS))]
    value = form.format(title=title, lower=title.lower(), name=name)
    if request.format == "json":
        return json.dumps({name: value})
    return f"[[ ## {name} ## ]]\n{value}\n\n[[ ## completed ## ]]"


def test_metaspo_discards_every_echo_and_keeps_the_initial_system_prompt(data_dir, engine_factory):
    tasks = ("ob_gyn", "medicine")
    train = {t: load_examples(data_dir, "medmcqa", t, 8) for t in tasks}
    gold = {e.question: e.answer for t in tasks for e in train[t]}
    engine, task_lm, opt_lm = engine_factory("echoes", gold=gold, override=_echoing)
    initial = "Answer with care."
    artifact = MetaSPO(
        metric=exact_metric,
        optimizer_lm=opt_lm,
        task_lm=task_lm,
        num_iterations=1,
        num_system_candidates=3,
        num_user_candidates=2,
        initial_system_prompt=initial,
        progress=False,
    ).compile(dspy.Predict(dspy.Signature("question -> answer", "Choose the best answer.")), trainsets=train)
    details = artifact.detailed_results
    proposals = details["proposals"]
    assert len(proposals) == 2 * 2 + 3
    assert all(p["status"] == "discarded" and p["reason"].startswith("echo: ") for p in proposals), [
        (p["text"], p["reason"]) for p in proposals
    ]
    assert not any(p["failed"] or p["node_ids"] for p in proposals)
    assert len({p["reason"] for p in proposals}) >= 3, "several echo forms, each with the answer in its reason"
    assert {n["origin"] for n in details["nodes"]} == {"initial"}
    phases = {p["phase"]: p for p in details["phases"]}
    assert (phases["inner"]["proposals"], phases["inner"]["discarded"]) == (4, 4)
    assert (phases["outer"]["proposals"], phases["outer"]["discarded"]) == (3, 3)
    assert phases["inner"]["task_lm_calls"] == phases["outer"]["task_lm_calls"] == 0
    assert details["optimized_system_prompt"] == initial == artifact.system_prompt.text
    # Each proposal paid its two optimizer calls; no echo ever reached the task model.
    assert engine.counts["optimizer"] == 2 * len(proposals)
    assert all(r.system_prompt == initial for r in engine.requests if r.kind == "task")


def test_sprig_treats_an_echoed_rephrasing_as_an_unusable_rephrase(engine_factory):
    tasks = [load_task(t, train_size=8, test_size=0) for t in ("gen_counting", "gen_boolean")]
    gold = {e.question: e.answer for t in tasks for e in t.train}
    engine, task_lm, opt_lm = engine_factory("sprig-echoes", gold=gold, override=_echoing)
    artifact = (
        SPRIG(optimizer_lm=opt_lm, task_lm=task_lm, num_candidates=8, task_call_budget=16 * 30, progress=False)
        .compile(**compile_kwargs(tasks))
        .detailed_results
    )
    rephrasings = [p for p in artifact["proposals"] if p["kind"] == "sprig_rephrase"]
    assert rephrasings, "the seeded run asks for rephrasings"
    assert all(p["status"] == "discarded" and p["reason"].startswith("echo: ") for p in rephrasings)
    assert not any(p["failed"] for p in rephrasings)
    made = [c for c in artifact["candidates"] if c["edit"]]
    assert made and all(c["edit"]["type"] != "rephrase" for c in made)
    assert artifact["edit_stats"]["rephrase"]["successes"] == 0
    assert artifact["edit_stats"]["rephrase"]["pulls"] == len(rephrasings)
    assert not any("Paraphrased Instruction" in c["text"] for c in artifact["candidates"])
    assert not any("Paraphrased" in r.system_prompt for r in engine.requests if r.kind == "task")


def test_unseen_user_prompts_from_an_echoing_optimizer_stop_with_the_reasons_not_a_bug(engine_factory):
    """APE for an unseen task retries unusable proposals (here: every one an echo) a bounded number
    of times, then stops with TooManyFailures naming the reason (the CLI's `stopped:` line, exit 1)."""
    engine, _task_lm, opt_lm = engine_factory("ape-echo", override=_echoing)
    task = load_task("gen_sorting", train_size=4, test_size=1)
    with pytest.raises(TooManyFailures) as stop:
        generate_user_prompts(task, opt_lm, num=1)
    assert engine.counts["optimizer"] == 6  # max(3 * num, num + 5) calls
    assert "wrote only 0 of 1 usable user prompts for unseen task 'gen_sorting' in 6 calls" in str(stop.value)
    assert "echo: " in str(stop.value)
