"""InferenceObjective manifests as the source of objective -> priority."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from sluicegate.epp import ObjectiveManifestError, load_objectives

if TYPE_CHECKING:
    from pathlib import Path

OBJECTIVE = """\
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {{name: {name}}}
spec: {{priority: {priority}, poolRef: {{name: p}}}}
"""


def test_mixed_multi_document_files_keep_only_objectives(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text(
        OBJECTIVE.format(name="a", priority=3)
        + "---\nkind: InferencePool\nmetadata: {name: p}\n---\n"
        + OBJECTIVE.format(name="b", priority=-2),
        encoding="utf-8",
    )
    (tmp_path / "c.yml").write_text(
        "kind: InferenceObjective\nmetadata: {name: c}\nspec: {}\n", encoding="utf-8"
    )
    (tmp_path / "notes.txt").write_text("kind: InferenceObjective", encoding="utf-8")
    assert load_objectives(tmp_path) == {"a": 3, "b": -2, "c": 0}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("kind: InferenceObjective\nmetadata: {}\n", "metadata.name"),
        ("kind: InferenceObjective\nmetadata: {name: 'a b'}\n", "metadata.name"),
        ("kind: InferenceObjective\nmetadata: {name: a}\nspec: {priority: high}\n", "priority"),
        ("kind: InferenceObjective\nmetadata: {name: a}\nspec: [1]\n", "spec"),
        ("kind: [", "cannot read"),
    ],
)
def test_invalid_manifests_name_file_and_field(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ObjectiveManifestError) as info:
        load_objectives(tmp_path)
    assert "bad.yaml" in str(info.value)
    assert fragment in str(info.value)


def test_conflicting_priorities_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1.yaml").write_text(OBJECTIVE.format(name="a", priority=1), encoding="utf-8")
    (tmp_path / "2.yaml").write_text(OBJECTIVE.format(name="a", priority=2), encoding="utf-8")
    with pytest.raises(ObjectiveManifestError, match="'a' has priority 2"):
        load_objectives(tmp_path)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ObjectiveManifestError, match="cannot list"):
        load_objectives(tmp_path / "nope")
