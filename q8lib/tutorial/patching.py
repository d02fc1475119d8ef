"""The diffusers changes the earlier Q8 work needed, checked against the installed diffusers, and the
patches q8lib still offers (``patches/`` in the repository), checked and applied to temporary copies.

q8lib itself patches nothing: the three changes that the earlier public Q8 integration carried as a
diffusers patch are either already in diffusers 0.42.1 or done by q8lib's own modules at runtime.
:func:`audit_earlier_changes` shows this with checks that run the installed code. The patch files are
for users who combine diffusers with *other* 8-bit layers; :func:`check_patch` verifies that one applies
cleanly to the installed sources, and :func:`apply_to_copy` applies it to a copy, never to
site-packages.

Patch files use the layout of the diffusers git repository (``a/src/diffusers/...``).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..attention import mask_to_key_lengths
from ..tiny.components import make_tiny_transformer

__all__ = [
    "PATCHES_DIR",
    "PatchCheck",
    "Change",
    "list_patches",
    "patch_summary",
    "patch_targets",
    "installed_diffusers_dir",
    "installed_source",
    "copy_sources",
    "check_patch",
    "apply_to_copy",
    "audit_earlier_changes",
]

# The repository's patches/ folder (present in a source checkout, not in an installed wheel).
PATCHES_DIR = Path(__file__).resolve().parents[2] / "patches"
_PREFIX = "src/diffusers/"


def list_patches(patch_dir: str | os.PathLike | None = None) -> list[Path]:
    """The ``*.patch`` files in ``patch_dir`` (default :data:`PATCHES_DIR`), sorted by name."""
    d = Path(patch_dir) if patch_dir is not None else PATCHES_DIR
    if not d.is_dir():
        raise FileNotFoundError(f"{d} does not exist; the patches ship with the q8lib source repository")
    return sorted(d.glob("*.patch"))


def patch_summary(patch: str | os.PathLike) -> str:
    """The patch's ``Subject:`` line without the ``[PATCH]`` tag ('' if it has none)."""
    for line in Path(patch).read_text().splitlines():
        if line.startswith("Subject:"):
            return re.sub(r"^Subject:\s*(\[PATCH[^\]]*\]\s*)?", "", line).strip()
        if line.startswith("diff --git"):
            break
    return ""


def patch_targets(patch: str | os.PathLike) -> list[str]:
    """Repository-relative paths the patch modifies (``src/diffusers/...``), in order of appearance."""
    out = []
    for line in Path(patch).read_text().splitlines():
        if line.startswith("+++ "):
            name = line[4:].split("\t")[0].strip()
            if name == "/dev/null":
                continue
            name = name[2:] if name.startswith("b/") else name
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError(f"{patch}: no '+++' file headers found; is this a unified diff?")
    return out


def installed_diffusers_dir() -> Path:
    """The directory of the importable ``diffusers`` package."""
    import diffusers

    return Path(diffusers.__file__).resolve().parent


def installed_source(target: str) -> Path:
    """Map a repository path ``src/diffusers/<rel>`` to the installed file ``<site-packages>/diffusers/<rel>``."""
    if not target.startswith(_PREFIX):
        raise ValueError(f"{target!r} is not under {_PREFIX!r}; q8lib patches only touch diffusers sources")
    path = installed_diffusers_dir() / target[len(_PREFIX):]
    if not path.is_file():
        raise FileNotFoundError(f"{target} maps to {path}, which the installed diffusers does not have")
    return path


def copy_sources(patch: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the installed files that ``patch`` touches into ``dest`` with the ``src/diffusers/`` layout."""
    dest = Path(dest)
    for target in patch_targets(patch):
        out = dest / target
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(installed_source(target), out)
    return dest


@dataclass
class PatchCheck:
    """The result of :func:`check_patch`: whether it applies, with which tool and what that tool said."""

    patch: str
    ok: bool
    tool: str
    output: str

    def __bool__(self):
        return self.ok


def _tool() -> str:
    if shutil.which("git"):
        return "git"
    if shutil.which("patch"):
        return "patch"
    raise RuntimeError("neither 'git' nor 'patch' is on PATH; one of them is needed to check patches")


def _run_patch(patch: Path, root: Path, dry_run: bool) -> tuple[bool, str, str]:
    tool = _tool()
    if tool == "git":
        cmd = ["git", "apply", "--verbose"] + (["--check"] if dry_run else []) + [str(patch)]
        # Stop git from treating an enclosing repository (if any) as the root for the paths.
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(root.parent)}
    else:
        cmd = ["patch", "-p1", "--forward", "--batch", "-i", str(patch)] + (["--dry-run"] if dry_run else [])
        env = None
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    tool_name = " ".join(cmd[:2]) + (" --check" if dry_run and tool == "git" else " --dry-run" if dry_run else "")
    return res.returncode == 0, tool_name, (res.stdout + res.stderr).strip()


def check_patch(patch: str | os.PathLike, root: str | os.PathLike | None = None) -> PatchCheck:
    """Does ``patch`` apply cleanly? Checked on ``root`` (a tree with ``src/diffusers/...``) or, by
    default, on a temporary copy of the installed diffusers files it touches. Nothing is modified."""
    patch = Path(patch).resolve()
    if root is not None:
        ok, tool, out = _run_patch(patch, Path(root).resolve(), dry_run=True)
        return PatchCheck(patch.name, ok, tool, out)
    with tempfile.TemporaryDirectory(prefix="q8lib-patch-") as tmp:
        copy_sources(patch, tmp)
        ok, tool, out = _run_patch(patch, Path(tmp), dry_run=True)
    return PatchCheck(patch.name, ok, tool, out)


def apply_to_copy(patch: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the installed files ``patch`` touches into ``dest`` and apply it there; return ``dest``.

    Refuses a ``dest`` inside the installed diffusers package: q8lib never edits site-packages.
    """
    patch, dest = Path(patch).resolve(), Path(dest).resolve()
    site = installed_diffusers_dir()
    if dest == site or site in dest.parents or dest in site.parents:
        raise ValueError(f"refusing to patch {dest}: it contains or is inside the installed diffusers ({site})")
    copy_sources(patch, dest)
    ok, tool, out = _run_patch(patch, dest, dry_run=False)
    if not ok:
        raise RuntimeError(f"{patch.name} does not apply to the installed diffusers sources ({tool}):\n{out}")
    return dest


# ------------------------------------------------------------------------------------------------
@dataclass
class Change:
    """One diffusers change of the earlier Q8 work and where it stands with the installed diffusers."""

    name: str
    earlier: str  # what the earlier patch changed
    in_diffusers: bool  # True: the installed diffusers already behaves as the change wanted
    evidence: str  # what the check observed in the installed code
    q8lib: str  # how q8lib copes without patching
    patch: str | None = None  # the optional patch in patches/ that offers it, if any


def _ff_cast_check():
    import inspect

    from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock

    src = inspect.getsource(LTXVideoTransformerBlock.forward)
    line = next((ln.strip() for ln in src.splitlines() if "self.ff(" in ln), "")
    return ".to(" in line, f"LTXVideoTransformerBlock.forward has `{line}`"


def _none_components_check():
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    try:
        pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                           tokenizer=None, transformer=None)
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        return False, f"LTXPipeline(vae=None, transformer=None, ...) raised {type(e).__name__}: {e}"
    return True, (f"LTXPipeline(vae=None, transformer=None, ...) builds; falls back to spatial ratio "
                  f"{pipe.vae_spatial_compression_ratio}, temporal patch {pipe.transformer_temporal_patch_size}")


def _text_mask_check():
    """Run a tiny LTX transformer and record what its cross-attention receives as the mask."""
    import torch


    model = make_tiny_transformer()
    attn2 = model.transformer_blocks[0].attn2
    seen = {}
    original = attn2.processor

    def spy(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kw):
        seen["mask"] = attention_mask
        return original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kw)

    attn2.set_processor(spy)
    cfg = model.config
    mask = torch.tensor([[1] * 6 + [0] * 2, [1] * 8])
    with torch.no_grad():
        model(torch.zeros(2, 4, cfg.in_channels), torch.zeros(2, 8, cfg.caption_channels), torch.tensor([1, 1]),
              mask, num_frames=1, height=2, width=2)
    attn2.set_processor(original)
    m = seen["mask"]
    values = sorted({float(v) + 0.0 for v in m.unique()})  # + 0.0 turns -0.0 into 0.0
    lengths = mask_to_key_lengths(m, 2).tolist()
    return False, (f"cross-attention receives an additive bias of shape {list(m.shape)} with values {values}; "
                   f"mask_to_key_lengths turns it into lengths {lengths}")


def audit_earlier_changes() -> list[Change]:
    """Check, by running the installed diffusers, each change that the earlier Q8 patch made."""
    ff_ok, ff_ev = _ff_cast_check()
    none_ok, none_ev = _none_components_check()
    mask_ok, mask_ev = _text_mask_check()
    return [
        Change("FFN output cast", "cast the block's feed-forward output to the hidden states' dtype",
               ff_ok, ff_ev,
               "Q8Linear/Q8GELU return their input's dtype, so the residual stream keeps its dtype",
               "0001-ltx-ff-output-dtype.patch (optional)"),
        Change("None components", "hasattr -> getattr(..., None) so LTXPipeline accepts None vae/transformer",
               none_ok, none_ev, "nothing to do: diffusers 0.42.1 already accepts None components"),
        Change("text mask as lengths", "pipeline turned the text mask into per-sample lengths for Q8 models",
               mask_ok, mask_ev,
               "Q8AttnProcessor converts diffusers' bias into lengths per call (mask_to_key_lengths)"),
    ]
