"""The install lists agree, and the README's commands are the ones CI runs."""
import pathlib
import re
import shlex
import subprocess
import sys

import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env_pip():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "- pip:")
    return {l.strip()[2:].strip() for l in lines[start + 1:] if l.strip().startswith("- ") and l.strip() != "- -e ."}


def _name(req):
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    proj = _pyproject()["project"]
    reqs = set(proj["dependencies"])
    for extra in proj["optional-dependencies"].values():  # every extra: the environment has all of them
        reqs |= set(extra)
    assert _env_pip() == reqs, f"environment.yml pip section and pyproject differ: {_env_pip() ^ reqs}"
    assert {"papermill", "wandb"} <= {_name(r) for r in reqs}, "notebooks/README.md and README.md tell users to run these"


def test_diffusers_is_pinned():
    assert "diffusers==0.42.1" in _pyproject()["project"]["dependencies"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\s*```\s*\n(.+?)\n```", readme, re.S)
    assert block and "pytest" in block.group(1)
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_main_command_runs():
    readme = (ROOT / "README.md").read_text()
    cmd = re.search(r"<!-- main-command -->\s*```\s*\n(.+?)\n```", readme, re.S).group(1)
    # the python part of the main command (the pip installs already happened for this test run)
    py = shlex.split(cmd.split("&&")[-1].strip())
    assert py[:3] == ["python", "-m", "q8lib"]
    out = subprocess.run([sys.executable, *py[1:]], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]


def test_readme_results_match_committed_json():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import readme_results

    assert readme_results.main(["--check"]) == 0, "run: python benchmarks/readme_results.py"


def test_supported_versions_match_pyproject():
    from q8lib.versions import SUPPORTED

    proj = _pyproject()["project"]
    reqs = set(proj["dependencies"]).union(*map(set, proj["optional-dependencies"].values()))
    for name, (spec, why) in SUPPORTED.items():
        assert f"{name}{spec}" in reqs, f"pyproject.toml should require {name}{spec} (q8lib/versions.py: {why})"


def test_installed_versions_are_supported():
    from q8lib.versions import check_versions

    problems = check_versions()
    assert not problems, "\n".join(problems)


def test_version_check_names_the_package_the_range_and_the_fix():
    from q8lib.versions import check_versions

    problems = check_versions({"diffusers": "0.43.0", "torch": "2.13.0", "triton": "2.3.1", "transformers": "junk"})
    text = "\n".join(problems)
    assert len(problems) == 3 and "torch" not in text, text
    assert "diffusers 0.43.0 is outside the supported range diffusers==0.42.1" in text
    assert "pip install 'triton>=3.0'" in text and "transformers junk" in text


def test_package_version_matches_pyproject():
    import q8lib

    assert q8lib.__version__ == _pyproject()["project"]["version"], "q8lib/versions.py's __version__ and pyproject.toml"
