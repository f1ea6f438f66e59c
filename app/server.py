"""Starting the app: where it listens, what it may read, and how it stops."""

from __future__ import annotations

import inspect
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import httpx

from erasure.atomic import check_output_folder
from erasure.errors import ErasureInputError
from erasure.pipelines.canvas.model import EMBEDDED_MODEL_NAME

from .compare import Limits
from .ui import APP_CSS, build_app

logger = logging.getLogger(__name__)

#: The app takes no uploads; this caps what a client can push at the server anyway.
MAX_UPLOAD = "1mb"
#: Seconds to wait for the started server to answer (a loaded CPU can take a while).
PROBE_TIMEOUT = 120.0


@dataclass
class RunningApp:
    """A launched app: its local URL, the public link when ``share`` was asked for, and how to stop it."""

    demo: gr.Blocks
    url: str
    share_url: str | None = None

    def block(self) -> None:
        """Serve until interrupted (Ctrl+C)."""
        self.demo.block_thread()

    def close(self) -> None:
        self.demo.close(verbose=False)


def check_models(models: Sequence[str]) -> list[str]:
    """The base models to offer, de-duplicated; a local path must be a diffusers folder (checked
    before starting, from its model_index.json: a pickle or a broken folder fails now, not in the browser)."""
    from erasure.pipelines.loading import pipeline_class

    checked = []
    for source in dict.fromkeys(str(m) for m in models):
        if source != EMBEDDED_MODEL_NAME:
            path = Path(source).expanduser()
            if not path.exists():
                raise ErasureInputError(f"--model {source}: no such file or folder")
            if not path.is_dir():
                raise ErasureInputError(f"--model {source}: the app takes diffusers folders (with model_index.json)")
            pipeline_class(path)
            source = str(path.resolve())
        checked.append(source)
    if not checked:
        raise ErasureInputError("no base model; give --model or leave it out for canvas-mini")
    return checked


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_quick_probe(demo: gr.Blocks) -> dict:
    # Gradio probes its own URL once with a 3-second timeout and refuses to start when that times
    # out, which happens on a busy CPU while the first page render is slow. Its private switch
    # turns the probe off (when this Gradio has it); _wait_until_serving probes with more patience.
    return {"_frontend": False} if "_frontend" in inspect.signature(demo.launch).parameters else {}


def _wait_until_serving(demo: gr.Blocks, url: str, timeout: float = PROBE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(f"{url.rstrip('/')}/config", timeout=timeout, trust_env=False)
            if response.status_code == 200:
                return
            problem = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            problem = str(exc) or type(exc).__name__
        if time.monotonic() > deadline:
            demo.close(verbose=False)
            raise RuntimeError(f"the app started but {url} does not answer ({problem})")
        time.sleep(0.5)


def launch(
    runs_dir: str | Path = "runs",
    models: Sequence[str] = (EMBEDDED_MODEL_NAME,),
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    device: str = "auto",
    limits: Limits | None = None,
) -> RunningApp:
    """Start the app in a background thread and return at once (``RunningApp.block()`` to serve on).

    Args:
        runs_dir: the folder whose run folders the app shows (created if missing); nothing outside
            it is readable from the browser, and the erase tab writes new runs into it.
        models: base models to offer (the first is the default): "canvas-mini" or diffusers folders.
        host: the address to listen on. 127.0.0.1 (the default) is this machine only.
        port: the port; ``None``: Gradio's choice (7860, or the next free one).
        share: also open a public gradio.live link (off unless asked for).
        device: where the base models run ("auto": CUDA when available).
    """
    if not host.strip():  # Gradio would take "" for its own default; a script's empty $HOST is a mistake
        raise ErasureInputError("--host: empty; give an address such as 127.0.0.1")
    runs = check_output_folder(runs_dir, "--runs")  # the erase tab writes its runs there
    sources = check_models(models)
    runs.mkdir(parents=True, exist_ok=True)  # only once every input is known good: bad input leaves nothing
    limits = limits or Limits()
    if not _is_loopback(host):
        logger.warning("the app listens on %s: anyone who can reach this machine can use it", host)
    if share:
        logger.warning("share=True: the app gets a public link; anyone with the link can use it")
    demo = build_app(runs, sources, limits=limits, device=device)
    demo.queue(max_size=limits.max_queue, default_concurrency_limit=1)
    try:
        _, url, share_url = demo.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
            show_error=False, max_file_size=MAX_UPLOAD, ssr_mode=False, inbrowser=False, css=APP_CSS,
            **_no_quick_probe(demo),
        )
    except OSError as exc:
        raise ErasureInputError(f"cannot listen on {host}:{port or 'default port'} ({exc})") from None
    _wait_until_serving(demo, url)
    logger.info("app serving %s on %s (models: %s)", runs, url, ", ".join(sources))
    return RunningApp(demo, url, share_url)
