"""The frozen settings of MetaSPO and SPRIG (issue 19, "settings, not back-references"): made once by
the constructor, read by the run, readable but not writable on the teleprompter, and SPRIG's
defaults for the settings it shares with MetaSPO are MetaSPO's."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from metaspo_dspy import SPRIG, MetaSPO
from metaspo_dspy.optimize.engine.teleprompter import SearchTeleprompter
from metaspo_dspy.optimize.metaspo.settings import MetaSPOSettings
from metaspo_dspy.optimize.settings import SearchSettings
from metaspo_dspy.optimize.sprig.settings import SprigSettings
from metaspo_dspy.testing import fake_lm


def test_sprig_takes_metaspos_defaults_for_the_shared_settings():
    metaspo = inspect.signature(MetaSPO).parameters
    shared = {name: p for name, p in inspect.signature(SearchSettings.shared).parameters.items() if name != "method"}
    assert shared, "the shared settings have defaults"
    for name, parameter in shared.items():
        assert metaspo[name].default == parameter.default, name


def test_settings_are_made_once_and_read_as_attributes():
    lm = fake_lm("settings")
    metaspo = MetaSPO(optimizer_lm=lm, task_lm=lm, num_iterations=2, adapter="json", max_lm_calls=50)
    sprig = SPRIG(optimizer_lm=lm, task_lm=lm, num_system_candidates=4)
    assert isinstance(metaspo.settings, MetaSPOSettings) and isinstance(sprig.settings, SprigSettings)
    assert isinstance(metaspo, SearchTeleprompter) and isinstance(sprig, SearchTeleprompter)
    assert not isinstance(sprig, MetaSPO), "siblings on one base, not a subclass refusing half its settings"
    assert (metaspo.num_iterations, metaspo.seed, metaspo.budget.max_lm_calls) == (2, 42, 50)
    assert (sprig.method, sprig.num_candidates, sprig.beam_size) == ("sprig", 4, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        metaspo.settings.num_iterations = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="num_iterations is a setting"):
        metaspo.num_iterations = 5
    with pytest.raises(AttributeError, match="no attribute 'screening'"):
        _ = sprig.screening


def test_an_unknown_keyword_names_the_teleprompter_it_was_given_to():
    with pytest.raises(TypeError, match=r"SPRIG.__init__\(\) got an unexpected keyword argument 'num_iteration'"):
        SPRIG(num_iteration=2)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'num_iteration'"):
        MetaSPO(num_iteration=2)
