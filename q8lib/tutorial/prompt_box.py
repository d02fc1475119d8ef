"""Notebook 05's prompt box: type a prompt, pick a number of frames, press *generate*, scrub through the result.

The box only gathers the inputs and shows the frames (with :func:`q8lib.tutorial.viz.frame_scrubber`); the
generation itself is a function the notebook passes in, so the same box works for the tiny default on a CPU and
for the real checkpoint on a GPU.
"""
from __future__ import annotations

from .viz import frame_scrubber

__all__ = ["NO_WIDGETS", "frame_counts", "prompt_box"]

NO_WIDGETS = ("The prompt box needs ipywidgets and a live kernel: pip install 'ipywidgets>=8' (or the notebooks "
              "extra, pip install 'q8lib[notebooks]'), restart the kernel and run this cell again. Without it, set "
              "Q8_PROMPT (and Q8_FRAMES) and run the notebook again.")


def frame_counts(default: int, most: int | None = None) -> tuple[int, int, int]:
    """``(smallest, largest, step)`` for a frames slider: LTX generates ``8k + 1`` frames, so the slider moves in
    steps of 8 from 9 up to ``most`` (default: about twice ``default``), rounded down to ``8k + 1``."""
    if default < 1 or (default - 1) % 8:
        raise ValueError(f"LTX generates 8k + 1 frames (9, 17, 25, ...), got {default}")
    most = 2 * default - 1 if most is None else most
    most = max(default, 1 + 8 * ((most - 1) // 8))
    return min(9, default), most, 8


def prompt_box(generate, prompt: str = "", num_frames: int = 17, max_frames: int | None = None,
               note: str = ""):
    """A text box, a frames slider and a *generate* button; pressing the button calls
    ``generate(prompt, num_frames)``, which returns ``{label: frames}`` (``[T, 3, H, W]`` in ``[0, 1]``, as
    ``LTXPipeline`` returns them), and shows those videos below with a frame slider.

    ``note`` is printed while the generation runs (e.g. how long it takes on this machine). Errors of
    ``generate`` are printed in the box, not raised. Returns the ``ipywidgets.VBox`` (its ``button`` and
    ``output`` attributes are the button and the output area), or ``None`` after printing :data:`NO_WIDGETS`
    when ipywidgets is missing."""
    try:
        import ipywidgets as widgets
        from IPython.display import display
    except ImportError:
        print(NO_WIDGETS)
        return None
    lo, hi, step = frame_counts(num_frames, max_frames)
    text = widgets.Text(value=prompt, description="prompt", placeholder="describe a short clip",
                        layout=widgets.Layout(width="60%"))
    frames = widgets.IntSlider(value=num_frames, min=lo, max=hi, step=step, description="frames")
    button = widgets.Button(description="generate", button_style="primary", icon="play")
    output = widgets.Output()

    def run(_=None):
        button.disabled = True
        output.clear_output()
        try:
            with output:
                print(f"generating {frames.value} frames for {text.value!r} ... {note}".rstrip())
                try:
                    videos = generate(text.value, frames.value)
                except Exception as e:  # shown in the box: a notebook widget has nowhere else to report it
                    print(f"generation failed: {type(e).__name__}: {e}")
                    return
            output.clear_output(wait=True)
            with output:
                display(frame_scrubber(videos))
        finally:
            button.disabled = False

    button.on_click(run)
    box = widgets.VBox([widgets.HBox([text, button]), frames, output])
    box.button, box.output, box.text, box.frames = button, output, text, frames
    return box
