"""setup.cfg says what the app accepts, requirements/ what `make setup` installs (made by `make lock`):
every requirement of the one must be pinned, hashed and allowed by the other, so they cannot drift apart."""

import configparser
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def setup_cfg_requirements(section: str, key: str) -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return [Requirement(line) for line in cfg[section][key].splitlines() if line.strip()]


def locked(name: str) -> dict[str, tuple[Version, list[str]]]:
    """{canonical name: (pinned version, sha256 hashes)} from a uv/pip-compile file with hashes."""
    text = (REPO / "requirements" / name).read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, _, options = line.partition(" --")
        req = Requirement(spec)
        assert not req.marker or req.marker.evaluate(), f"{name}: {line} is for another platform"
        (pin,) = req.specifier  # exactly one ==
        assert pin.operator == "==", f"{name}: {req} is not pinned with =="
        hashes = re.findall(r"--hash=sha256:(\S+)", "--" + options)
        pins[canonicalize_name(req.name)] = (Version(pin.version), hashes)
    return pins


@pytest.mark.parametrize("lock, wanted", [
    ("lock.txt", [("options", "install_requires"), ("options.extras_require", "test")]),
    ("bench.txt", [("options.extras_require", "bench")]),
])
def test_the_lock_pins_every_requirement_of_setup_cfg_at_a_version_it_allows(lock, wanted):
    pins = locked(lock)
    reqs = [req for section, key in wanted for req in setup_cfg_requirements(section, key)]
    assert len(reqs) >= 2
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is in setup.cfg but not in requirements/{lock}: run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), \
            f"requirements/{lock} pins {name}=={version}, setup.cfg wants {req}: run `make lock`"


@pytest.mark.parametrize("lock", ["lock.txt", "bench.txt"])
def test_every_locked_package_carries_its_sha256(lock):
    """pip's --require-hashes refuses a file where any pin lacks one."""
    pins = locked(lock)
    assert pins
    for name, (_, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_the_lock_says_how_to_refresh_it_and_for_which_python():
    for lock in ("lock.txt", "bench.txt"):
        header = (REPO / "requirements" / lock).read_text().splitlines()[1]
        assert re.fullmatch(r"#\s+make lock  # Python 3\.\d+, \S+ \S+", header), header


def test_the_bench_lock_repeats_the_app_lock_where_they_overlap():
    """`make setup-bench` installs with --no-deps over the app's lock: it must not change a version there."""
    app, bench = locked("lock.txt"), locked("bench.txt")
    shared = app.keys() & bench.keys()
    assert "setuptools" in shared  # the bench's bound on it (pkg_resources) holds in the app's lock too
    assert {name: bench[name][0] for name in shared} == {name: app[name][0] for name in shared}
