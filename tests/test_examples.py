"""The scripts in examples/ run end to end, at a few steps (their numbers are not checked, only their shape)."""

import importlib.util
from pathlib import Path

from _train_helpers import one_thread  # noqa: F401 (an autouse fixture)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str):
    """examples/NAME.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_architecture_example_prints_one_row_per_variant_and_checks_the_cache(tmp_path, capsys):
    arch = example("architecture")
    table = arch.main(["--steps", "2", "--batch-size", "4", "--eval-images", "4", "--out", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert table in out
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [row.split("|")[1].strip() for row in rows] == ["post", "pre", "swiglu"]
    # the user-code SwiGLU reached generation: cached decoding was asserted equal to the uncached rollout
    assert "[swiglu] cached generate == uncached rollout on 4 images" in err
    assert all((tmp_path / "runs" / name / "latest").exists() for name in arch.VARIANTS)
