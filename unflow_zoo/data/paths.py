"""Where data sets live on disk: the default ``data_dir`` of every loader.

The UCI archive, MNIST and the preprocessed caches are downloaded once per user, not once per
working directory, so the default folder is in the user's cache, chosen the way
:func:`unflow_zoo.pretrained.resolve.cache_root` chooses the pretrained-flow cache (an
environment variable first, then a folder under the home cache):

1. ``$UNFLOW_ZOO_DATA``, for the data alone;
2. ``$UNFLOW_ZOO_CACHE/data``: moving the package's cache moves its data too (as ``HF_HOME``
   moves both the Hub's and ``datasets``' caches, and ``HF_DATASETS_CACHE`` the latter alone);
3. ``$XDG_CACHE_HOME/unflow_zoo/data``;
4. ``~/.cache/unflow_zoo/data``.

It is read from the environment on every call, never at import, so a script or a test that
sets the variable before building its data module is obeyed.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR_ENV", "DATA_DIR_HINT", "default_data_dir", "resolve_data_dir"]

#: The environment variable that sets the default data folder.
DATA_DIR_ENV = "UNFLOW_ZOO_DATA"

#: How the default folder is chosen, for error messages that name a folder to put files in.
DATA_DIR_HINT = (
    f"data_dir defaults to ${DATA_DIR_ENV}, else $UNFLOW_ZOO_CACHE/data, else $XDG_CACHE_HOME/unflow_zoo/data, "
    f"else ~/.cache/unflow_zoo/data; set {DATA_DIR_ENV} or pass data_dir= (--data.data_dir DIR) to use another folder"
)


def default_data_dir() -> Path:
    """The folder data sets are read from and downloaded to when no ``data_dir`` is given.

    Returns:
        ``$UNFLOW_ZOO_DATA``, else ``$UNFLOW_ZOO_CACHE/data``, else
        ``$XDG_CACHE_HOME/unflow_zoo/data``, else ``~/.cache/unflow_zoo/data`` (``~`` expanded;
        not created here: a loader creates it when it writes).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("UNFLOW_ZOO_CACHE")
    if cache:
        return Path(cache).expanduser() / "data"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "unflow_zoo" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` (``~`` expanded; relative paths stay relative to the working directory), or
    :func:`default_data_dir` when it is None.

    Args:
        data_dir: a folder chosen by the caller, or None for the default.

    Returns:
        The folder to read data from and download data to.
    """
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()
