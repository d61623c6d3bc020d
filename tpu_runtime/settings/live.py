"""Reading and changing the pack's settings while ComfyUI runs (the seed document's ``args.tpu_*``).

The settings are read once, at start (:func:`runtime.start`). Most of them only shape what the next
sampling run does (the pack's :class:`~tpu_runtime.settings.run_options.RunOptions`, which ``sampling.attach`` reads
at each run) or how the manager warms up, so they can change between runs. ``enable`` and
``disable`` decided whether the pack's patches went in at all, so they cannot change any more.

A new value is validated by the very :class:`~tpu_runtime.settings.tpu_settings.TPUSettings` model that read the
environment, and a bad one is reported with the same :class:`~tpu_runtime.settings.tpu_settings.SettingsProblem`
(variable, value, what is accepted) as a bad ``COMFY_TPU_*`` variable at start: there is one set of
rules and one message format.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from tpu_runtime.settings.run_options import RunOptions
from tpu_runtime.settings.tpu_settings import SettingsProblem, TPUSettings, _problems_from, env_var, fields_where, setting_meta

if TYPE_CHECKING:
    from tpu_runtime.state import PackState

log = logging.getLogger("comfy_tpu")

#: The seed document's flags (``--tpu-enable`` ... ``--tpu-warmup-steps``) as settings fields: ``seed=True``.
SEED_FIELDS: tuple[str, ...] = fields_where(seed=True)
#: Decided whether the patches went in at start; changing them later could not undo or redo that.
FIXED_AT_START = frozenset({"enable", "disable"})
#: Held by the manager (how it warms up), not by the run options: ``scope="manager"``.
MANAGER_FIELDS = frozenset(fields_where(scope="manager"))


class SettingRefused(ValueError):
    """A setting changed from Python was not taken: a bad value (``problem`` says which, as the
    environment variable's message would) or a setting fixed at start (``problem`` is None)."""

    def __init__(self, message: str, problem: Optional[SettingsProblem] = None) -> None:
        super().__init__(message)
        self.problem = problem


class _GivenValuesOnly(TPUSettings):
    """TPUSettings validated from the values given, nothing else.

    ``TPUSettings`` reads the environment and the settings file whenever it is built; a change
    made from Python must be checked against the settings in force, not re-read inputs (which may
    have changed, or broken, since start). Same fields, same validators: only the sources differ.
    """

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)


def _state() -> "PackState":
    from tpu_runtime.state import current

    state = current()
    if state is None:
        raise RuntimeError("comfy-tpu: the pack has not started (load it in ComfyUI)")
    return state


def current(field: str) -> Any:
    """What ``field`` is now: the value the next sampling run (or warm-up) will use."""
    state = _state()
    if field in RunOptions.model_fields and state.on:
        return getattr(state.options, field)
    if field == "warmup_steps" and state.manager is not None:
        return state.manager.warmup_steps
    return getattr(state.settings, field)


def validated(settings: TPUSettings, field: str, value: Any, source: str = "") -> TPUSettings:
    """``settings`` with ``field`` set to ``value``, checked as the environment variable is.

    Raises :class:`SettingRefused` whose ``problem`` equals what ``COMFY_TPU_<FIELD>=value`` gives
    at start; its message is that problem's, after ``source`` (the spelling used), and says the
    setting keeps its value where the environment's says the path stays off."""
    from pydantic import ValidationError

    try:
        checked = _GivenValuesOnly(**{**settings.model_dump(), field: value})
    except ValidationError as exc:
        # _problems_from reads the value from the environment variable; here it came from Python.
        problem = _problems_from(exc)[0].model_copy(update={"value": str(value)})
        message = problem.message(f"The setting keeps its value {getattr(settings, field)!r}.")
        raise SettingRefused(f"comfy-tpu: {source} refused: {message}" if source else message, problem) from None
    return TPUSettings.model_construct(**checked.model_dump())


def change(field: str, value: Any, source: str) -> Any:
    """Set ``field`` for the runs to come; ``source`` names the spelling used (for messages).

    One log line when the value changes; nothing when it is the value already in force. Returns the
    value now in force (as validated: ``"128"`` becomes ``128``)."""
    if field not in SEED_FIELDS:
        raise AttributeError(f"comfy-tpu: {source} is not a setting that can change while ComfyUI runs")
    state = _state()
    new_settings = validated(state.settings, field, value, source)
    new_value = getattr(new_settings, field)
    old_value = current(field)
    if new_value == old_value:
        return new_value
    if field in FIXED_AT_START:
        decision = state.decision
        raise SettingRefused(
            f"comfy-tpu: {source} cannot change after ComfyUI started: the TPU path was decided then "
            f"({'on' if decision.on else 'off'}: {decision.reason}) and stays {'on' if decision.on else 'off'}. "
            f"Set {env_var(field)} (or comfy-tpu launch --tpu-{field}) and restart ComfyUI.")
    state.changed = new_settings
    _apply(state, field, new_value, new_settings)
    log.info("comfy-tpu: %s = %r (was %r): in force from the next sampling run%s", source, new_value, old_value,
             setting_meta(field).change_note)
    return new_value


def _apply(state: "PackState", field: str, value: Any, settings: TPUSettings) -> None:
    """Hand the new value to what the next run reads: the pack's run options (the sampling wrappers
    and the manager read the same object) or the manager's warm-up knobs."""
    if field in RunOptions.model_fields:
        state.options = state.options.model_copy(update={field: value})
    manager = state.manager
    if field in MANAGER_FIELDS and manager is not None:
        manager.auto_warmup = settings.warmup and not settings.manual_warmup
        manager.warmup_steps = settings.warmup_steps
