"""Objectives from the Inference Extension's own resources: ``InferenceObjective`` manifests.

``--objectives DIR`` reads every ``*.yaml`` / ``*.yml`` file in DIR (multi-document
files too) and keeps the documents of ``kind: InferenceObjective``::

    apiVersion: inference.networking.x-k8s.io/v1alpha2
    kind: InferenceObjective
    metadata: {name: chat-interactive}
    spec: {priority: 10, poolRef: {name: my-pool}}

Each gives objective ``metadata.name`` -> priority ``spec.priority`` (0 when absent, as
upstream). Other kinds are skipped, so a directory of mixed manifests works. The result
overrides same-named objectives of the YAML config; a change of the directory drives
`FlowController.reconcile_priorities` on every controller.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import yaml

from sluicegate.gateway import GatewayConfigError

__all__ = ["OBJECTIVE_KIND", "ObjectiveManifestError", "load_objectives"]

OBJECTIVE_KIND: Final = "InferenceObjective"
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}\Z")


class ObjectiveManifestError(GatewayConfigError):
    """An ``InferenceObjective`` manifest is invalid; the message names file and field."""


def _objective(doc: dict[str, Any], where: str) -> tuple[str, int]:
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not _NAME.match(name):
        raise ObjectiveManifestError(f"{where}: metadata.name must be a valid name, got {name!r}")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ObjectiveManifestError(f"{where}: spec must be a mapping, got {spec!r}")
    priority = spec.get("priority", 0)
    if priority is None:
        priority = 0
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ObjectiveManifestError(f"{where}: spec.priority must be an integer, got {priority!r}")
    return name, priority


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())


def load_objectives(directory: str | Path) -> dict[str, int]:
    """Objective name -> priority from the ``InferenceObjective`` manifests in `directory`.

    Raises:
        ObjectiveManifestError: a file cannot be read or parsed, a manifest is invalid,
            or two manifests name the same objective with different priorities.
    """
    directory = Path(directory)
    found: dict[str, tuple[int, str]] = {}
    try:
        files = _files(directory)
    except OSError as exc:
        raise ObjectiveManifestError(f"{directory}: cannot list the directory: {exc}") from None
    for path in files:
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ObjectiveManifestError(f"{path}: cannot read the manifest: {exc}") from None
        for index, doc in enumerate(docs):
            if not isinstance(doc, dict) or doc.get("kind") != OBJECTIVE_KIND:
                continue
            where = f"{path} (document {index + 1})"
            name, priority = _objective(doc, where)
            seen = found.get(name)
            if seen is not None and seen[0] != priority:
                raise ObjectiveManifestError(
                    f"{where}: objective {name!r} has priority {priority}, but {seen[1]} "
                    f"gives it {seen[0]}"
                )
            found[name] = (priority, where)
    return {name: priority for name, (priority, _) in found.items()}
