"""SPRIG as a DSPy teleprompter: edit-based genetic search for one system prompt over many tasks.

Paper: Zhang, Ergen, Logeswaran, Lee, Jurgens, "SPRIG: Improving Large Language Model Performance
by System Prompt Optimization", arXiv 2410.14826. We follow the edit-based genetic algorithm with
upper-confidence-bound pre-selection of its first version (v1, October 2024); the learned reward
model that its latest version (v3, 2026) puts in front of the evaluations is out of scope. Written
from the paper's description; SPRIG's published code (github.com/orange0629/prompting) was read to
understand it, not copied, and the component library is our own
(:mod:`~metaspo_dspy.optimize.sprig.library`).

The search (:class:`~metaspo_dspy.optimize.sprig.loop.SprigRun`):

1. A system prompt is an ordered list of components from a library, joined by single spaces. The
   population starts from the initial system prompt as one component (default "You are a helpful
   assistant.", MetaSPO's start; ``initial_system_prompt=""`` starts blank, as SPRIG does).
2. Every prompt is scored on the source tasks' train sets, each task with its own initial user
   prompt (never optimized): the score is the mean of the task scores, like MetaSPO's meta-score.
3. Each iteration makes up to ``num_candidates`` candidates from the beam (the best ``beam_size``
   prompts). Candidate slot ``j`` edits beam member ``j mod beam_size``; its edit type --
   *add* a library component, *rephrase* one component with the optimizer LM, *swap* two
   components, *delete* one -- is pre-selected by UCB1 on each edit type's past success rate (an
   edit succeeds when its candidate scores strictly higher than its parent); the concrete edit is
   then drawn: for *add* the component with the highest UCB1 on the score changes it caused before
   (as SPRIG's code ranks components), at a random position; otherwise a random position or pair.
4. All candidates of an iteration are scored in one grid; the beam becomes the best ``beam_size``
   of old and new prompts (ties keep the older). The result is the best prompt of the final beam.
5. The search stops when the next candidate no longer fits the budget of task-model calls
   (default: the train-phase task calls of a MetaSPO run with the same settings on the same tasks,
   18,200 for 4 tasks x 50 and the paper's defaults; the last iteration may be partial), after
   ``max_iterations``, or when an iteration can make no new candidate. Optimizer calls (one per
   rephrase) are counted apart. The final beam is then scored on the test sets.

Where the paper is silent, or its published code differs from what fits here, we chose:

* **Budget.** SPRIG's code iterates until it is stopped; we stop at a budget of task-model calls,
  counted as example evaluations (one call each for a one-call program, the unit of MetaSPO's
  estimate), so a resumed run decides exactly as the original did. Test-set scoring is outside the
  budget, as in MetaSPO's estimate; ``max_lm_calls``/``max_cost`` still apply on top.
* **Beam and candidates.** SPRIG's code keeps a beam of 10 and scores every candidate its
  pre-selection keeps (hundreds per iteration); on MetaSPO's budget that would be one iteration,
  so the beam holds ``beam_size=3`` prompts (MetaSPO's ``user_top_k``) and an iteration scores
  ``num_candidates=9`` (MetaSPO's ``num_system_candidates``): 10 iterations with the default budget.
* **Elitism.** SPRIG's code keeps the best new candidates only; we let the beam's prompts compete
  with their children, so the best prompt found is never lost on a small budget.
* **What the UCB ranks.** SPRIG's code applies UCB to components (which one to add, rewarded by
  the score change); the issue asks for UCB on edit types. We do both: edit types for the slots,
  components for *add*.
* **UCB on edit types.** Rewards are successes (0/1); UCB1 with exploration constant
  ``exploration=2`` (``mean + sqrt(2 ln N / n)``); an untried type comes first; slots already given
  out in the iteration count as pulls at the type's mean, so the slots spread; ties go in the order
  add, rephrase, swap, delete. A rephrase the optimizer could not make (unusable or a duplicate
  answer) counts as a failure. An edit type that has nothing to offer a parent (no component
  left to add, fewer than two components to swap or delete) is skipped for that slot, so a beam of
  one-component prompts gets mostly *add* and *rephrase* whatever the bounds say.
* **Components' UCB.** Rewards are score changes in [-1, 1] (``child - parent`` for *add*,
  ``parent - child`` for *delete*; a rephrased component keeps its original's library index);
  untried components come first, ties in a seeded random order.
* **Rephrasing.** SPRIG used a paraphrase model (10 paraphrases per component); we ask the
  optimizer LM once per rephrase candidate (the proposer's paraphrase call, our own wording: same
  meaning, different words), at a random position of the parent.
* **No empty prompt.** *delete* needs two components, so an edit never empties the prompt.
* **Fixed train sets.** SPRIG's code draws a few questions per task in each iteration; we score
  every prompt on the whole train sets (MetaSPO's protocol), so scores are comparable.
* **No duplicates.** An edit that would give a prompt already made in the run is replaced by the
  next one of its type; an iteration that can make no new candidate ends the search.
* **Artifact.** MetaSPO's shape (``steps`` with phases ``initial`` and ``search``,
  ``outer_decisions`` with one record per candidate, ``accepted`` meaning it entered the beam) plus
  ``candidates`` (every prompt's component list and edit), ``edit_stats``, ``component_stats``,
  ``library`` and ``search_budget``; no ``bilevel_nodes.json`` (that format is MetaSPO's).
"""

from __future__ import annotations

import inspect
from typing import Any

from metaspo_dspy.errors import ConfigError
from metaspo_dspy.evaluation.task_run import TaskRun
from metaspo_dspy.optimize.engine.teleprompter import SearchTeleprompter
from metaspo_dspy.optimize.estimate import sprig_budget
from metaspo_dspy.optimize.settings import SearchSettings
from metaspo_dspy.optimize.sprig.loop import SprigRun
from metaspo_dspy.optimize.sprig.settings import Components, SprigSettings
from metaspo_dspy.program.metrics import Metric

__all__ = ["SPRIG"]


#: MetaSPO's own arguments: refused by name, so that a call switched from MetaSPO says what SPRIG
#: does not take (it has no variants, user-prompt proposals, failures shown or screening).
_METASPO_ONLY = ("method", "num_wrong_user", "num_wrong_system", "screening", "screening_keep")


class SPRIG(SearchTeleprompter):
    """Optimize one system prompt for many tasks by SPRIG's edit-based genetic search (see the
    module docstring). ``compile`` takes the same arguments as :meth:`MetaSPO.compile` and returns
    a :class:`~metaspo_dspy.program.system_prompt.MetaSPOProgram` whose ``system_prompt`` is the best prompt
    found and whose task programs keep their initial user prompts; ``detailed_results`` holds the
    history in MetaSPO's artifact shape plus every candidate's component list.

    Args:
        metric, optimizer_lm, task_lm: as for :class:`MetaSPO`; the optimizer LM only rephrases
            components.
        components: the component library: None (the built-in one), the path of a CSV in SPRIG's
            format (``Prompt`` and ``Category``/``Catagory`` columns), a
            :class:`~metaspo_dspy.optimize.sprig.library.ComponentLibrary`, or a list of texts,
            ``(text, category)`` pairs or components. A bad file raises
            :class:`~metaspo_dspy.optimize.sprig.library.ComponentLibraryError` here, before any call.
        beam_size: prompts kept after each iteration (3).
        num_candidates: candidates per iteration (None: ``num_system_candidates``, 9).
        task_call_budget: task-model calls for the search (None: the train-phase task calls of a
            MetaSPO run with ``num_iterations``, ``num_system_candidates``, ``num_user_candidates``
            and ``user_top_k`` on the same tasks).
        max_iterations: stop after this many iterations even with budget left (None: no limit).
        exploration: the UCB1 exploration constant (2.0).
        settings: :class:`MetaSPO`'s other arguments, with the same meaning -- ``num_iterations``,
            ``num_system_candidates``, ``num_user_candidates``, ``user_top_k`` (they set the default
            budget and ``num_candidates``), ``initial_system_prompt``, ``instructions_in``,
            ``adapter``, ``optimizer_adapter``, ``num_threads``, ``seed``, ``max_prompt_chars``,
            ``log_dir``, ``progress``, ``phase_callback``, ``resume``, ``max_failure_share``,
            ``max_lm_calls``/``max_cost`` (checked before every iteration, on top of the search
            budget), ``preflight`` and ``allow_unparsed``; ``method``, ``num_wrong_*`` and ``screening*`` are refused.
    """

    def __init__(
        self,
        metric: Metric | None = None,
        optimizer_lm: Any = None,
        task_lm: Any = None,
        components: Components = None,
        beam_size: int = 3,
        num_candidates: int | None = None,
        task_call_budget: int | None = None,
        max_iterations: int | None = None,
        exploration: float = 2.0,
        **settings: Any,
    ):
        unused = sorted(set(settings) & set(_METASPO_ONLY))
        if unused:
            raise ConfigError(f"SPRIG does not take {', '.join(unused)} (MetaSPO settings with no meaning for SPRIG)")
        unknown = sorted(set(settings) - set(inspect.signature(SearchSettings.shared).parameters))
        if unknown:
            raise TypeError(f"SPRIG.__init__() got an unexpected keyword argument {unknown[0]!r}")
        own = SprigSettings.build(
            components,
            beam_size,
            num_candidates,
            task_call_budget,
            max_iterations,
            exploration,
            optimizer_lm=optimizer_lm,
            task_lm=task_lm,
            **settings,
        )
        super().__init__(metric, own)

    def search_budget(self, train_sizes: dict[str, int]) -> int:
        """The search's task-call budget for tasks with these train sizes (see ``task_call_budget``).

        Raises :class:`ConfigError` when it cannot pay for even the initial evaluation (one call per
        train example of every task)."""
        s = self.settings
        if s.task_call_budget is not None:
            budget = s.task_call_budget
        else:
            sizes = (s.num_iterations, s.num_system_candidates, s.num_user_candidates, s.user_top_k)
            budget = sprig_budget(*sizes, train_sizes)
        initial = sum(train_sizes.values())
        if budget < initial:
            raise ConfigError(
                f"task_call_budget={budget} does not cover even the initial evaluation ({initial} calls: one per "
                "train example of every task); raise it or use fewer train examples"
            )
        return budget

    def make_run(self, settings: SprigSettings, tasks: dict[str, TaskRun]) -> SprigRun:
        """The search of one ``compile``: SPRIG's loop; the budget is checked before the run directory
        is opened."""
        return SprigRun(settings, tasks, self.search_budget({name: len(t.trainset) for name, t in tasks.items()}))
