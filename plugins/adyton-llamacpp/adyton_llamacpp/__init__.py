"""adyton-llamacpp: any GGUF llama.cpp runs, several requests at once.

The plugin registers the ``llamacpp`` backend, its ``[llamacpp]`` settings,
the ``adyton llamacpp pull`` command, and a ``prepare_request`` hook that
builds a model's vocabulary off the event loop. Its pieces, none of which loads
anything at import:

- ``backend``  the kernel Backend: catalog, lease/switch protocol, prepare, generate
- ``engine``   llama-cpp-python's low-level API: vocabularies, the batch engine
- ``pull``     fetch GGUFs shipped in PyPI wheels (also split over several)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import click

from adyton import AdytonError, hookimpl

from .backend import LlamaCppBackend, LlamaCppSettings

__all__ = ["LlamaCppBackend", "LlamaCppSettings"]


@hookimpl
def register_settings(register):
    register("llamacpp", LlamaCppSettings)


# trylast: with adyton-llama installed too, the embedded default engine stays
# the default backend (its models are listed first); this one serves its own
# ids (``<id>-llamacpp``) either way
@hookimpl(trylast=True)
def register_backends(register, kernel):
    register(LlamaCppBackend(kernel.section("llamacpp", LlamaCppSettings), kernel.home, kernel))


@hookimpl
def prepare_request(request, principal, kernel):
    """Guided decoding and logprobs need the model's vocabulary (every
    token's bytes: ~0.1 s for 49k tokens, ~0.5 s for Gemma's 262k), which the
    kernel asks for on the event loop: build it here first, in a worker
    thread, so other requests go on meanwhile."""
    if not (request.constraints or request.tools or request.logprobs is not None or request.min_tokens):
        return None
    try:
        backend, info = kernel.resolve_model(request.model)
    except AdytonError:
        return None  # the pipeline reports it
    if isinstance(backend, LlamaCppBackend) and not backend.has_vocabulary(info.id):
        return asyncio.to_thread(_read_vocabulary, backend, info)
    return None


def _read_vocabulary(backend: LlamaCppBackend, info) -> None:
    with contextlib.suppress(AdytonError):  # left for the pipeline to report
        backend.vocabulary(info)


@hookimpl
def register_commands(cli):
    @cli.group()
    def llamacpp():
        """The llama.cpp backend (adyton-llamacpp)."""

    @llamacpp.command()
    @click.argument("name", default="smollm2")
    @click.option("--models-dir", type=click.Path(file_okay=False), default=None,
                  help="Where to put it (default: [llamacpp] models_dir, else $ADYTON_HOME/models).")
    @click.option("--quiet", is_flag=True, help="No progress output.")
    @click.pass_obj
    def pull(state, name, models_dir, quiet):
        """Fetch a model llama.cpp can serve: smollm2 (default) or gemma3."""
        from .pull import REGISTRY, PullError, pull as pull_model

        if name not in REGISTRY:
            raise click.UsageError(f"unknown model '{name}'; pullable: {', '.join(sorted(REGISTRY))}")
        if models_dir is None:
            kernel = state.kernel()
            models_dir = kernel.section("llamacpp", LlamaCppSettings).models_dir or Path(kernel.home) / "models"
        try:
            path = pull_model(name, Path(models_dir).expanduser(), progress=not quiet)
        except PullError as exc:
            click.echo(f"adyton llamacpp pull: {exc}", err=True)
            sys.exit(1)
        click.echo(f"{name}: {path}")
