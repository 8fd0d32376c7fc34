"""Exception classes shared by every layer of mergezoo.

All errors a user can cause derive from `MergezooError`; the CLI prints their message and
exits with status 2 instead of showing a traceback. Only mergezoo's own checks of the user's
input raise them: a `ValueError` or `RuntimeError` from a library or from mergezoo's own code
(a bug, out of memory) is never re-raised as one, so it keeps its type and its traceback. Some
errors carry the culprit as fields as well as in their message, e.g.
`BadTensorError(..., tensor="lm_head.weight", model="expert 'org/a'")`.
"""


class MergezooError(Exception):
    """Base class of every error that is the user's input, not a bug."""


class ConfigurationError(MergezooError):
    """An environment variable or setting has a value mergezoo does not know."""


class RecipeError(MergezooError):
    """A recipe is not valid YAML, or names an unknown field, method or hyperparameter."""


class UnknownMethodError(RecipeError):
    """The merge method is not in the registry."""


class HyperparameterError(RecipeError):
    """A hyperparameter is unknown, of the wrong type, or out of range."""


class IncompatibleModelsError(MergezooError):
    """The experts cannot be merged: different architectures, tensor names or shapes."""


class BadTensorError(MergezooError):
    """An input tensor holds NaN or Inf values, or the merge made some (an overflow).

    `tensor` names the tensor; `model` the input holding the bad values (None when the inputs
    are finite and the merge itself overflowed)."""

    def __init__(self, message: str, *, tensor: str | None = None, model: str | None = None):
        super().__init__(message)
        self.tensor = tensor
        self.model = model


class UnsafeCheckpointError(MergezooError):
    """A checkpoint is a pickle (.bin/.pt) and the user did not allow pickle loading."""


class OutputExistsError(MergezooError):
    """The output directory exists and `overwrite` was not requested (`path`: which)."""

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class ModelNotFoundError(MergezooError):
    """A model reference names no local folder, or a folder holding no weights."""


class BenchmarkDataError(MergezooError):
    """A built-in benchmark's data request names an unknown task, language, style or split."""


class BenchmarkError(MergezooError):
    """A benchmark cannot be defined, built or evaluated as asked."""


class ModelDoesNotFitError(BenchmarkError):
    """A model cannot be scored on a benchmark: another architecture, head size or tensor set
    than the benchmark's models."""


class UnknownBenchmarkError(BenchmarkError):
    """No registered benchmark has this name, and it is not a path to a YAML definition."""


class BenchmarkDefinitionError(BenchmarkError):
    """A benchmark definition (Python or YAML) is malformed: unknown field, factor or cell."""


class HubAccessError(MergezooError):
    """The Hub refused a request: a private or missing repo, a missing or invalid token."""


class GatedRepoError(HubAccessError):
    """The repo is gated: its conditions must be accepted and a token with access given."""


class HubUnavailableError(MergezooError):
    """The Hub could not be reached or answered with a server error, and the cache cannot help."""


class RepoNotEmptyError(OutputExistsError):
    """Pushing over an existing, non-empty repo without `overwrite` or `create_pr`."""


class ModelCardError(MergezooError):
    """A model card cannot be written: the folder is not a mergezoo merge (no provenance file),
    or results.json is not a benchmark results file."""


class ReproduceError(MergezooError):
    """A merge cannot be re-run: an input cannot be found, or a local input's content differs
    from the hash its card records."""


class UnsafePathError(MergezooError):
    """A path named by a model's own files (an index, model_index.json, adapter_config.json, a
    symbolic link, a Hub file name) would leave the model's folder."""


class BadCheckpointError(IncompatibleModelsError):
    """A weights file is malformed or unreadable (its header, its length, its dtypes)."""


class OutputBusyError(MergezooError):
    """Another merge is writing the same output path."""


class OutputWriteError(MergezooError):
    """The output could not be written (no space left on the device, a quota); nothing was."""


class InvalidRevisionError(MergezooError, ValueError):
    """A revision is not a branch, tag or commit SHA (e.g. it holds `..` or is a path)."""


class SpaceInputError(MergezooError, ValueError):
    """An input of the Gradio Space is invalid: file type or size, text length, number of
    images, a value out of range, an unknown expert or method."""
