"""Thin wrapper: ``python scripts/overparam_study.py ARGS`` is ``unflow-zoo study overparam ARGS``.

The study lives in the installed package (:mod:`unflow_zoo.studies.overparam`); see
``docs/overparam_study.md`` for what it runs and what the full run showed.
"""

from __future__ import annotations

import sys

from unflow_zoo.commands import run_command

if __name__ == "__main__":
    run_command(["study", "overparam", *sys.argv[1:]])
