"""The lower bounds pyproject.toml declares are exactly the versions `make test-compat` pins and runs.

pip already refuses a pin below a bound (the compat install fails); this catches the other drift: a bound
left below the version that was really tested, or a dependency without a bound or a pin. The test ids that
ci/compat-tests.txt lists must also exist, so a renamed test cannot leave the compat subset empty-handed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
UNTESTED = {"torch", "torchvision"}  # only the torch on disk installs here: the pin is not the bound


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]["kaggle"]
    return {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"] + extras}


def _pinned() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "ci" / "compat-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = Version(version.strip())
    return pins


def _lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return max(bounds) if bounds else None


def test_every_dependency_has_a_lower_bound_equal_to_its_compat_pin():
    declared, pins = _declared(), _pinned()
    unbounded = sorted(name for name, req in declared.items() if name != "six" and _lower_bound(req) is None)
    assert not unbounded, f"dependencies without a tested lower bound in pyproject.toml: {unbounded}"
    missing = sorted(set(declared) - set(pins) - {"six"})
    assert not missing, f"declared but not pinned in ci/compat-constraints.txt: {missing}"
    extra = sorted(set(pins) - set(declared))
    assert not extra, f"pinned in ci/compat-constraints.txt but not declared: {extra}"
    drift = {name: (str(_lower_bound(declared[name])), str(pins[name]))
             for name in sorted(set(declared) & set(pins) - UNTESTED) if _lower_bound(declared[name]) != pins[name]}
    assert not drift, f"(declared bound, compat pin) differ: raise or lower them together: {drift}"


@pytest.fixture(scope="module")
def compat_ids() -> list[str]:
    lines = (ROOT / "ci" / "compat-tests.txt").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def test_the_compat_subset_names_tests_that_exist(compat_ids):
    assert len(compat_ids) >= 20, "the compat subset must stay meaningful"
    unknown = []
    for node in compat_ids:
        path, _, name = node.partition("::")
        source = ROOT / path
        function = re.sub(r"\[.*\]$", "", name)
        if not source.is_file() or (function and not re.search(rf"^def {re.escape(function)}\(", source.read_text(), re.M)):
            unknown.append(node)
    assert not unknown, f"ci/compat-tests.txt names tests that are not there (renamed?): {unknown}"
