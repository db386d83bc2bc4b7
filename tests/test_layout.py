"""The request path reads from the tree: the diagram in ``adyton.hookspecs``
names, for each stage, the file of ``adyton`` that implements it."""

from __future__ import annotations

import re
from pathlib import Path

import adyton
from adyton import hookspecs

CORE = Path(adyton.__file__).parent

#: the files that hold a stage of the request path
STAGE_FILES = {"app.py", "pipeline.py", "access.py", "admission.py", "models.py", "chain.py", "queue.py",
               "limits.py", "generation.py", "channel.py", "http_errors.py", "embeddings.py"}


def test_the_path_diagram_names_an_existing_file_for_every_stage():
    doc = hookspecs.__doc__ or ""
    diagram = doc.split("one stage, one file)::", 1)[1].split("\n\n", 2)[1]
    named = re.findall(r"\(([a-z_]+\.py)\)\s*$", diagram, flags=re.M)
    stages = [line for line in diagram.splitlines() if line.strip().startswith("->")]
    # every stage line ends, itself or on its continuation, with its file
    assert len(named) == len(stages) + 1  # (+ create_app, before the first arrow)
    assert set(named) <= {p.name for p in CORE.glob("*.py")}
    assert STAGE_FILES - {"embeddings.py"} == set(named)
    assert "(embeddings.py)" in doc.replace("``", "")

