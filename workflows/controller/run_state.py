"""RunState: what the controller knows about a run, one typed object saved to ``state.json`` in the run folder.

Usage::

    state = RunState(request="investigate layer 6 of smollm2-135m")
    state.caveats.append("Figure heatmap was not drawn: ...")
    state.save(folder)                         # state.json, written atomically (after every step of the run)
    saved = RunState.load(folder)              # state.json, or the manifest of a run folder written before it
    state = saved.for_resume()                 # a resumed run: the same request and plan, a fresh attempt

The states read and change it (``run.state``); the manifest is written from it. A resumed run keeps the request and
the plan, and starts every other field afresh: the states then redo what the run folder does not hold yet (the
profile resumes, analyses with their findings are skipped, the narrative and the Critic's verdict are written again),
so a caveat or a draft of the stopped attempt never reaches the new report.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from agents import Plan
from neuron_core.errors import CorruptRunFolderError
from neuron_core.store import RunFolder
from workflows.controller.options import EXIT_FAILED, Status
from workflows.stateflow import State

__all__ = ["RunState", "FigureKey", "STATE_FILE", "MANIFEST_FILE"]

STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
FigureKey = tuple[str, int | None, str | None]  # (figure kind, layer, neuron ref)


class RunState(BaseModel):
    """The run's state between two steps of the state machine (the machine's own history is in the trace)."""

    request: str = Field(description="the run's request (a resumed run keeps its own)")
    plan: Plan | None = Field(default=None, description="the validated plan, once PLAN has run")
    model_info: dict[str, Any] = Field(default_factory=dict, description="facts of the loaded model (manifest)")
    status: Status = Field(default="failed", description="how the run ended (failed until it ends otherwise)")
    exit_code: int = Field(default=EXIT_FAILED, description="the process exit code the run ends with")
    reason: str = Field(default="", description="why the run ended: 'done', or the stop or failure")
    narrative: str = Field(default="", description="the Analyst's summary, as checked so far")
    critic_text: str = Field(default="", description="the automatic check's summary and the Critic's verdict")
    feedback: str = Field(default="", description="what the next ANALYZE must revise (empty: a first draft)")
    caveats: list[str] = Field(default_factory=list, description="the report's caveats, in order of arrival")
    method_notes: list[str] = Field(default_factory=list, description="the report's Method notes (from the plan)")
    errors: dict[State, str] = Field(default_factory=dict, description="a failed state's error, shown on its retry")
    figures_done: list[FigureKey] = Field(default_factory=list, description="figures the controller has drawn")
    visualized_at: int = Field(default=-1, description="how many findings there were when figures were last made")
    report_path: str | None = Field(default=None, description="report.md, once written")

    def save(self, folder: RunFolder) -> None:
        """Write ``state.json`` atomically (temp file, then rename)."""
        folder.write_json(STATE_FILE, self.model_dump(mode="json"))

    @classmethod
    def load(cls, folder: RunFolder, default_request: str = "") -> RunState:
        """The saved state of a run folder: ``state.json``, else (a folder from before it) what the manifest holds.
        The manifest's plan is checked either way. :class:`CorruptRunFolderError` names the file and the problem."""
        manifest = folder.read_json(MANIFEST_FILE, dict)
        recorded = cls._from_manifest(manifest, folder, default_request)
        if not folder.path_for(STATE_FILE).exists():
            return recorded
        data = folder.read_json(STATE_FILE, dict)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CorruptRunFolderError(f"{folder.path_for(STATE_FILE)}: not a run state ({_first(exc)}). "
                                        "Nothing was changed") from None

    @classmethod
    def _from_manifest(cls, manifest: dict[str, Any], folder: RunFolder, default_request: str) -> RunState:
        """What a manifest records of the state: the request, the plan (checked), the model and the report."""
        plan = None
        if manifest.get("plan"):
            try:
                plan = Plan.model_validate(manifest["plan"])
            except ValidationError as exc:
                raise CorruptRunFolderError(f"{folder.path_for(MANIFEST_FILE)}: its plan is not valid "
                                            f"({_first(exc)}). Nothing was changed") from None
        model, report = manifest.get("model"), manifest.get("report")
        return cls(request=str(manifest.get("request") or default_request), plan=plan,
                   model_info=model if isinstance(model, dict) else {},
                   report_path=report if isinstance(report, str) else None)

    def for_resume(self) -> RunState:
        """The state a resumed run starts from: this run's request and plan, a fresh attempt (module docstring)."""
        return RunState(request=self.request, plan=self.plan)


def _first(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"])
