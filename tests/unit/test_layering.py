"""Dependencies point inward (docs/design.md, Layout and principle 4).

Every module of ``src/kuva`` is parsed (ast, nothing is imported) and each of its
import statements, wherever it stands (top level, a function, ``TYPE_CHECKING``),
is checked against the rules below:

* services (``kuva.services``) import no adapter: nothing of ``kuva.dicom`` but
  its codecs (``kuva.codec``), nothing of ``kuva.dicomweb``, ``kuva.xds``,
  ``kuva.hl7``, ``kuva.audit``, ``kuva.web``, ``kuva.cli`` or ``kuva.app``;
* codecs (``kuva.codec``) turn bytes and data sets into bytes and data sets:
  of kuva they import ``kuva.model``, the ``kuva.storage`` interface and each
  other only (no service, no index, no network, no adapter); beyond kuva only
  pydicom, numpy, Pillow (rendered images) and the standard library;
* the DICOM engine (``kuva.dicom.net``) knows the protocol, not the archive: it
  imports nothing of kuva outside itself;
* the model (``kuva.model``) is the pure domain: it imports nothing of kuva
  outside itself (no service, no index, no adapter, no storage).

A pattern ``p.*`` names the package ``p`` and every module under it; a pattern
without ``.*`` names that one module.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {
    _module_name(path): path for path in sorted((SRC / "kuva").rglob("*.py"))
}


def _matches(name: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        package = pattern[:-2]
        return name == package or name.startswith(package + ".")
    return name == pattern


def imports_of(
    module: str, source: str, known: Iterable[str], *, is_package: bool = False
) -> set[str]:
    """The modules ``source`` (the text of ``module``) imports: ``import a.b`` gives
    ``a.b``; ``from a import b`` gives ``a.b`` when that is a module in ``known``,
    else ``a``; relative imports are resolved against ``module``'s package (itself
    when ``is_package``)."""
    modules = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                if node.module:
                    base = f"{base}.{node.module}"
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return found


@dataclass(frozen=True)
class Rule:
    """Modules matching ``layer`` import nothing matching ``forbids`` unless it
    matches ``allows`` too."""

    layer: str
    forbids: tuple[str, ...]
    allows: tuple[str, ...] = ()

    def broken_by(self, imported: str) -> bool:
        return any(_matches(imported, p) for p in self.forbids) and not any(
            _matches(imported, p) for p in self.allows
        )


ADAPTERS = (
    "kuva.dicom.*",
    "kuva.dicomweb.*",
    "kuva.xds.*",
    "kuva.hl7.*",
    "kuva.audit.*",
    "kuva.web.*",
    "kuva.cli",
    "kuva.app",
)

RULES = (
    Rule("kuva.services.*", forbids=ADAPTERS, allows=("kuva.codec.*",)),
    Rule(
        "kuva.codec.*",
        forbids=("kuva.*",),
        allows=("kuva.codec.*", "kuva.model.*", "kuva.storage", "kuva.storage.base"),
    ),
    Rule("kuva.dicom.net.*", forbids=("kuva.*",), allows=("kuva.dicom.net.*",)),
    Rule("kuva.model.*", forbids=("kuva.*",), allows=("kuva.model.*",)),
)

# What a codec may import from outside kuva.
# Pillow (PIL) writes the consumer-format images of the rendered resources
# (kuva.codec.rendered): bytes in, bytes out, like every codec.
CODEC_LIBRARIES = frozenset({"pydicom", "numpy", "PIL"})


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    return imports_of(
        module, path.read_text(encoding="utf-8"), MODULES, is_package=path.name == "__init__.py"
    )


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.layer)
def test_layer_imports_point_inward(rule: Rule) -> None:
    """No module of the layer imports what the rule forbids."""
    broken = sorted(
        f"{module} imports {imported}"
        for module in MODULES
        if _matches(module, rule.layer)
        for imported in _imports(module)
        if rule.broken_by(imported)
    )
    assert broken == []


def test_codecs_use_pydicom_numpy_and_the_standard_library_only() -> None:
    """Beyond kuva, a codec imports only pydicom, numpy, Pillow and the standard
    library."""
    codecs = [module for module in MODULES if _matches(module, "kuva.codec.*")]
    assert "kuva.codec.part10" in codecs
    foreign = sorted(
        f"{module} imports {imported}"
        for module in codecs
        for imported in _imports(module)
        if (top := imported.partition(".")[0]) != "kuva"
        and top not in CODEC_LIBRARIES
        and top not in sys.stdlib_module_names
    )
    assert foreign == []


def test_every_layer_has_modules_and_imports_are_seen() -> None:
    """The walk finds the layers and their imports, so an empty result means
    something (kuva.dicom.net may not exist yet: its rule then holds trivially)."""
    for layer in ("kuva.services.*", "kuva.codec.*", "kuva.model.*"):
        assert any(_matches(module, layer) for module in MODULES), layer
    assert "kuva.codec.outgoing" in _imports("kuva.services.retrieve_imaging_document_set")
    assert "kuva.model.outgoing" in _imports("kuva.codec.outgoing")


def test_import_forms_are_resolved() -> None:
    """Plain, from-, relative and function-level imports all count."""
    known = frozenset({"kuva.dicom.status", "kuva.services.retrieve", "kuva.model.uids"})
    source = (
        "import kuva.xds.ebrim\n"
        "from kuva.dicom import status\n"
        "from kuva.storage import BlobWriter\n"
        "from . import retrieve\n"
        "from ..model.uids import new_uid\n"
        "def f() -> None:\n"
        "    from kuva.web.app import build\n"
    )
    assert imports_of("kuva.services.example", source, known) == {
        "kuva.xds.ebrim",
        "kuva.dicom.status",
        "kuva.storage",
        "kuva.services.retrieve",
        "kuva.model.uids",
        "kuva.web.app",
    }
    services = RULES[0]
    assert services.broken_by("kuva.dicom.status")
    assert services.broken_by("kuva.dicom")
    assert not services.broken_by("kuva.codec.kos")
    assert not services.broken_by("kuva.dicomweb_like")
    assert RULES[1].broken_by("kuva.storage.filesystem")
    assert not RULES[1].broken_by("kuva.storage")
