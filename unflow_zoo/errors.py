"""The errors unflow-zoo raises on purpose, one hierarchy under :class:`UnflowZooError`.

Every error the package raises for a user's mistake or a bad file is one of these,
with a message that names the problem and the fix; anything else escaping the
package is a bug. Each also derives from the built-in a caller would have caught
before this module existed (``ValueError``, ``TypeError``, ``RuntimeError``), so
``except ValueError`` keeps working.

This module imports nothing from the package: every layer may raise these.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "ConfigError",
    "DataError",
    "DataTypeError",
    "DivergenceError",
    "FormatError",
    "InputOutsideDomain",
    "IntegrityError",
    "InverseError",
    "MissingDependencyError",
    "MissingFileError",
    "UnflowZooError",
    "UnsafeFileError",
]


class UnflowZooError(Exception):
    """Base of every error unflow-zoo raises on purpose."""


class DataError(UnflowZooError, ValueError):
    """Data the package was given cannot be used: wrong shape, NaN/inf, values that overflow
    the training dtype, a malformed or missing data file."""


class DataTypeError(DataError, TypeError):
    """Data of the wrong kind: a NumPy array or a list where a tensor is expected, an integer
    tensor, a dtype that differs from the model's."""


class InputOutsideDomain(DataError):
    """A transform was asked to map a point outside its domain.

    Example: a logit transform given a value outside (0, 1), or a monotone
    map with a bounded image asked to invert a value outside that image.
    """


class MissingFileError(UnflowZooError, FileNotFoundError):
    """A file the package was pointed at does not exist; the message says where it was looked for
    and where to put it (or how to download it)."""


class MissingDependencyError(UnflowZooError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install "unflow-zoo[extra]"``."""


class ConfigError(UnflowZooError, ValueError):
    """A hyper-parameter or setting out of its valid range, or an unknown name."""


class FormatError(UnflowZooError, ValueError):
    """A checkpoint this version of unflow-zoo cannot read: a newer format, an unknown family, a broken config."""


class UnsafeFileError(FormatError):
    """A file asks for something unflow-zoo refuses to do on a file's say-so: import or call code
    it names, unpickle objects, write outside its folder (see SECURITY.md)."""


class IntegrityError(UnflowZooError, ValueError):
    """A file's sha256 is not the one recorded for it: tampered, truncated or the wrong file."""


class ChecksumError(UnflowZooError, ValueError):
    """A downloaded file's digest differs from the published one."""


class DivergenceError(UnflowZooError, RuntimeError):
    """Training produced a non-finite loss: the run stopped before the bad step changed the weights."""


class InverseError(UnflowZooError, ArithmeticError):
    """A numerical inverse (bisection, Newton, an ODE solved backwards) did not reach its tolerance."""
