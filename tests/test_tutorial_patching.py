"""Every patch in patches/ applies cleanly to the installed diffusers sources (on a temporary copy)."""
import hashlib
import re
from pathlib import Path

import pytest

from q8lib.tutorial import patching

PATCHES = patching.list_patches()


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_patches_exist_and_are_documented():
    assert PATCHES, "patches/ holds no *.patch file"
    readme = (patching.PATCHES_DIR / "README.md").read_text()
    for p in PATCHES:
        assert p.name in readme, f"{p.name} is not described in patches/README.md"
        assert patching.patch_summary(p), f"{p.name} has no Subject: line"


@pytest.mark.parametrize("patch", PATCHES, ids=[p.name for p in PATCHES])
def test_patch_applies_to_installed_diffusers(patch):
    targets = patching.patch_targets(patch)
    assert all(t.startswith("src/diffusers/") for t in targets)
    before = {t: _sha(patching.installed_source(t)) for t in targets}
    result = patching.check_patch(patch)
    assert result.ok, result.output
    # nothing in site-packages changed
    assert before == {t: _sha(patching.installed_source(t)) for t in targets}


@pytest.mark.parametrize("patch", PATCHES, ids=[p.name for p in PATCHES])
def test_apply_to_copy_changes_the_copy_only(patch, tmp_path):
    targets = patching.patch_targets(patch)
    before = {t: _sha(patching.installed_source(t)) for t in targets}
    out = patching.apply_to_copy(patch, tmp_path / "diffusers-copy")
    for t in targets:
        patched = out / t
        assert _sha(patched) != before[t], f"{t} unchanged after applying {patch.name}"
        compile(patched.read_text(), str(patched), "exec")  # still valid Python
        assert _sha(patching.installed_source(t)) == before[t]
    # applying twice fails: the patch is not already in the copy
    assert not patching.check_patch(patch, root=out).ok


def test_ff_patch_casts_the_ff_output():
    patch = patching.PATCHES_DIR / "0001-ltx-ff-output-dtype.patch"
    added = [ln[1:].strip() for ln in patch.read_text().splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert "ff_output = self.ff(norm_hidden_states).to(hidden_states.dtype)" in added


def test_apply_to_copy_refuses_site_packages():
    with pytest.raises(ValueError, match="refusing"):
        patching.apply_to_copy(PATCHES[0], patching.installed_diffusers_dir() / "x")


def test_patch_targets_rejects_non_diff(tmp_path):
    p = tmp_path / "x.patch"
    p.write_text("not a diff\n")
    with pytest.raises(ValueError, match="unified diff"):
        patching.patch_targets(p)


def test_audit_matches_installed_diffusers():
    changes = {c.name: c for c in patching.audit_earlier_changes()}
    assert set(changes) == {"FFN output cast", "None components", "text mask as lengths"}
    assert changes["None components"].in_diffusers
    assert not changes["FFN output cast"].in_diffusers  # 0.42.1 does not cast; q8lib does not need it
    mask = changes["text mask as lengths"]
    assert re.search(r"lengths \[6, 8\]", mask.evidence), mask.evidence
    assert changes["FFN output cast"].patch.startswith(PATCHES[0].name)
