"""The layer rules of docs/design.md ("Layers"), read from the import statements of every module."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "nnunetv2_diffusion"
FORBIDDEN = {  # layer: prefixes its modules must not import
    "diffusion": ("nnunetv2_diffusion.networks", "nnunetv2_diffusion.training", "nnunetv2_diffusion.inference",
                  "nnunetv2_diffusion.checkpoint_io", "nnunetv2.", "nnunetv2_diffusion.dataset_conversion"),
    "networks": ("nnunetv2_diffusion.training", "nnunetv2_diffusion.inference"),
    "inference": ("nnunetv2_diffusion.training",),
    "dataset_conversion": ("nnunetv2_diffusion.training", "nnunetv2_diffusion.inference",
                           "nnunetv2_diffusion.networks", "nnunetv2_diffusion.diffusion"),
}


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names, at any depth (function-level too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_one_way(layer):
    offences = [f"{path.relative_to(PACKAGE)} imports {name}"
                for path in sorted((PACKAGE / layer).glob("*.py")) for name in sorted(imported_modules(path))
                if f"{name}.".startswith(FORBIDDEN[layer]) or name.startswith(FORBIDDEN[layer])]
    assert offences == []


def test_the_rule_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from nnunetv2_diffusion.training.checkpointing import x\n")
    assert "nnunetv2_diffusion.training.checkpointing" in imported_modules(module)
