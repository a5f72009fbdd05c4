"""Progress bars that keep a notebook's stored output stable: core ipywidgets in a notebook, tqdm on a
terminal, a disabled tqdm when asked for none."""

from __future__ import annotations


class _WidgetBar:
    """A plain ipywidgets progress bar for notebooks.

    tqdm.notebook is known to stick or break in Colab and some Jupyter front ends; a core
    IntProgress works everywhere ipywidgets does. Its text form is fixed at display time, so
    a notebook's stored output does not change from run to run (nbval compares it).
    """

    def __init__(self, total: int, desc: str, initial: int = 0, text: str | None = None):
        import ipywidgets as w
        from IPython.display import display

        self.n = initial
        self.bar = w.IntProgress(value=initial, min=0, max=max(total, 1), description=desc)
        # Our own text form, what a viewer without widgets (GitHub, nbval) shows. Not the widget's repr: that
        # carries its value, which depends on what a resumed run found on disk. `text` says what the call
        # does ("denoising 8 candidates × 20 steps"), from its arguments alone.
        view = {"version_major": 2, "version_minor": 0, "model_id": self.bar.model_id}
        display({"application/vnd.jupyter.widget-view+json": view, "text/plain": text or f"{desc}: {total}"}, raw=True)

    def update(self, k):
        self.n += k
        self.bar.value = self.n

    def close(self):
        self.bar.bar_style = "success" if self.n >= self.bar.max else "warning"


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_bar(total: int, enabled: bool = True, desc: str = "denoising", unit: str = "step", initial: int = 0,
                 text: str | None = None):
    """A progress bar: core ipywidgets in a notebook, tqdm on a terminal, nothing if not `enabled`.

    `text`: what a notebook's stored output says in place of the bar (default: "<desc>: <total>").
    """
    from tqdm import tqdm

    if not enabled:
        return tqdm(total=total, disable=True)
    if _in_notebook():
        try:
            return _WidgetBar(total, desc, initial, text)
        except ImportError:
            pass
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)
