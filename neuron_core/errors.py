"""Typed errors raised by neuron_core.

Every error a user can cause is a subclass of :class:`NeuronCoreError` (itself a ``ValueError``), raised before any
expensive work starts, with a message that says what was wrong and what to do instead.
"""

from __future__ import annotations

__all__ = [
    "NeuronCoreError",
    "ModelNotAvailableError",
    "UnsupportedModelError",
    "UnknownSiteError",
    "InputError",
    "EmptyInputError",
    "TextTooLongError",
    "CorpusError",
    "CorpusTooSmallError",
    "ProfileMismatchError",
    "FrameworkNotAvailableError",
    "RunFolderError",
    "RunFolderBusyError",
    "CorruptRunFolderError",
]


class NeuronCoreError(ValueError):
    """Base class of every error neuron_core raises for bad input or an unavailable resource."""


class ModelNotAvailableError(NeuronCoreError):
    """The model is neither cached locally nor reachable."""


class UnsupportedModelError(NeuronCoreError):
    """The model loaded, but neuron_core cannot tell where its MLP neurons live."""


class UnknownSiteError(NeuronCoreError):
    """A site (layer) name that does not exist in the model."""


class InputError(NeuronCoreError):
    """Input that cannot be used as given."""


class EmptyInputError(InputError):
    """An empty text, an empty list of texts, or an empty corpus."""


class TextTooLongError(InputError):
    """A text longer than the model's context, with no truncation or windowing asked for."""


class CorpusError(InputError):
    """A corpus specification that cannot be read."""


class CorpusTooSmallError(InputError):
    """A corpus too small for the analysis asked of it."""


class ProfileMismatchError(NeuronCoreError):
    """Two profiles (or a profile and a checkpoint) that cannot be combined."""


class FrameworkNotAvailableError(NeuronCoreError):
    """A framework (e.g. TensorFlow) that is not installed."""


class RunFolderError(NeuronCoreError):
    """A write outside the run folder, or a run folder that cannot be used."""


class RunFolderBusyError(RunFolderError):
    """A run or campaign folder another process is using (it holds the folder's lock)."""


class CorruptRunFolderError(RunFolderError):
    """A file of a run folder that cannot be read as what it should be (truncated, not JSON, the wrong type)."""
