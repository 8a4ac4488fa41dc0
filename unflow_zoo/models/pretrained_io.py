"""The pretrained-flow operations a family exposes as methods, and who provides them.

``FlowModule.save_pretrained``, ``push_to_hub`` and ``from_pretrained`` are what Hugging Face
users expect on a model, but writing, uploading and loading pretrained flows is the job of
:mod:`unflow_zoo.pretrained`, which sits *above* the families (it builds them from the registry).
Importing it from here would close an import cycle, so the dependency is inverted: this module
declares the operations (:class:`PretrainedIO`) and :mod:`unflow_zoo.pretrained` registers its
implementation when it is imported, which ``import unflow_zoo`` always does.
"""

from __future__ import annotations

from typing import Any, Protocol

from unflow_zoo.errors import MissingDependencyError

__all__ = ["PretrainedIO", "pretrained_io", "register_pretrained_io"]


class PretrainedIO(Protocol):
    """What :mod:`unflow_zoo.pretrained` provides to the families' methods."""

    def save_pretrained(self, model: Any, path: Any, **kwargs: Any) -> Any: ...

    def push_to_hub(self, model: Any, repo_id: str, **kwargs: Any) -> Any: ...

    def load_pretrained(self, name_or_path: Any, **kwargs: Any) -> Any: ...


_IO: PretrainedIO | None = None


def register_pretrained_io(io: PretrainedIO) -> None:
    """Install the implementation (called once by :mod:`unflow_zoo.pretrained` at import)."""
    global _IO
    _IO = io


def pretrained_io() -> PretrainedIO:
    """The registered implementation; a clear error if :mod:`unflow_zoo.pretrained` was never imported."""
    if _IO is None:  # pragma: no cover - `import unflow_zoo` imports it
        raise MissingDependencyError(
            "the pretrained-flow operations are provided by unflow_zoo.pretrained: import unflow_zoo first"
        )
    return _IO
