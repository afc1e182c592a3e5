"""The ``headsurgeon`` command: parse, call the Python API, print. No logic lives here.

Exit codes (headsurgeon/core/errors.py): 0 ok, 1 runtime failure, 2 usage or validation
error, 3 a check (``inspect``) ran to the end and its verdict is NOT OK. Errors are one line;
``HEADSURGEON_DEBUG=1`` adds the traceback.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click

from headsurgeon import __version__
from headsurgeon.core.errors import HeadsurgeonError

# existence, type and size of a recipe are checked by the loader, in one-line errors
recipe_arg = click.argument("recipe", type=click.Path(path_type=Path))
device_opt = click.option("--device", help="auto, cpu, cuda, cuda:N or mps (default: the "
                                           "recipe's model.device, auto: the GPU if any).")


_OUTPUT_FLAGS = ("-q", "--quiet", "-v", "--verbose")


class _Group(click.Group):
    """Plugin commands load when asked for (``--help`` lists them), never for a built-in
    command: ``--help``, ``--version`` and ``validate --help`` import no torch."""

    def _add_plugin_commands(self) -> None:
        from headsurgeon.core.plugins import add_plugin_commands

        if getattr(self, "_plugins_added", False):
            return
        self._plugins_added = True
        try:
            add_plugin_commands(self, builtins=False)  # the built-ins add no commands
        except HeadsurgeonError as exc:
            _fail(str(exc), exc.exit_code)

    def list_commands(self, ctx):
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands:
            self._add_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def parse_args(self, ctx, args):
        """``--quiet``/``--verbose`` after a built-in command (that has no option of that
        name) mean the same as before it."""
        args = list(args)
        cut = args.index("--") if "--" in args else len(args)
        first = next((i for i, a in enumerate(args[:cut]) if not a.startswith("-")), None)
        if first is not None and args[first] in self.commands:
            own = {o for p in self.commands[args[first]].params for o in p.opts}
            flags = set(_OUTPUT_FLAGS) - own
            moved = [a for a in args[first + 1:cut] if a in flags]
            rest = [a for a in args[first + 1:cut] if a not in flags]
            args = moved + args[:first + 1] + rest + args[cut:]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        from headsurgeon.core.nopickle import refuse_unpickling

        try:
            with refuse_unpickling():  # every command: no unpickling, whatever calls it
                return super().invoke(ctx)
        except HeadsurgeonError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; finished stages are kept, rerun to resume", 130)
        except MemoryError:
            _fail("out of memory", 1)
        except OSError as exc:  # I/O the stages did not anticipate: still one line, exit 1
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}", 1)
        except click.UsageError as exc:  # bad arguments: one line too, exit 2
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            _fail(exc.format_message() + hint, 2)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # anything unexpected: still one line, exit 1
            _fail(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0], 1)


def _fail(message: str, code: int):
    from headsurgeon.core.inputs import redact

    if os.environ.get("HEADSURGEON_DEBUG"):
        traceback.print_exc()
    click.echo(f"error: {redact(message)}", err=True)  # never print a secret's value
    sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headsurgeon")
@click.option("-q", "--quiet", is_flag=True,
              help="Print only errors, warnings and the final summary.")
@click.option("-v", "--verbose", is_flag=True,
              help="More detail: every progress line, transformers' info logs.")
def cli(quiet, verbose):
    """Locate the attention heads behind a behaviour, tune only them, ship a checkpoint.

    Off a terminal, progress is plain lines (no carriage returns, no colours); NO_COLOR
    and TQDM_DISABLE are honoured."""
    from headsurgeon.core.progress import configure

    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    configure(quiet=quiet, verbose=verbose)


@cli.command()
@recipe_arg
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def validate(recipe, as_json):
    """Load and check RECIPE, then print a short normalised summary."""
    from headsurgeon import api

    summary = api.validate(recipe)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{recipe}: ok")
    for key, value in summary.items():
        click.echo(f"  {key}: {json.dumps(value) if not isinstance(value, str) else value}")


@cli.command()
@recipe_arg
@click.option("--out", type=click.Path(path_type=Path), help="heads.json path.")
@click.option("--remote/--local", default=None, help="Run the locators on NDIF.")
@click.option("--resume", is_flag=True, help="Collect finished remote jobs instead of resubmitting.")
@device_opt
def locate(recipe, out, remote, resume, device):
    """Score every head and write the ranking, heatmap and knockout curve."""
    from headsurgeon import api

    path = api.locate(recipe, out=out, remote=remote, resume=resume, device=device)
    click.echo(f"wrote {path}")


@cli.command()
@recipe_arg
@click.option("--out", type=click.Path(path_type=Path), help="delta.safetensors path.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint.")
@device_opt
def train(recipe, out, resume, device):
    """Train only the selected heads' slices; write the delta artifact."""
    from headsurgeon import api

    path = api.train(recipe, out=out, resume=resume, device=device)
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option("--base", help="Base model (directory, .gguf or alias).")
@click.option("--delta", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept .bin/.pt bases (loaded with weights_only=True).")
def apply(recipe, base, delta, out, force, allow_pickle):
    """Merge trained head slices into a standalone safetensors checkpoint."""
    from headsurgeon import api

    if recipe is None and not (base and delta and out):
        raise click.UsageError("give RECIPE, or all of --base, --delta and --out")
    path = api.apply(recipe, base=base, delta=delta, out=out, force=force,
                     allow_pickle=allow_pickle)
    click.echo(f"wrote {path}")


@cli.command(name="eval")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--model", "models", multiple=True,
              help="Evaluate this model (directory/alias) instead of the recipe's run.")
@device_opt
def eval_(recipe, models, device):
    """Before/after sycophancy metrics, general ability and KL."""
    from headsurgeon import api

    path = api.evaluate(recipe, models=list(models) or None, device=device)
    click.echo(f"wrote {path}")


@cli.command()
@recipe_arg
@click.option("--force", is_flag=True, help="Redo stages even when their outputs are up to date.")
@device_opt
def run(recipe, force, device):
    """locate -> train -> apply -> eval -> report, under runs/NAME/."""
    from headsurgeon import api

    api.run(recipe, force=force, device=device)  # ends with the verdict and the files


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--against", type=click.Path(path_type=Path),
              help="Base to diff with: a checkpoint directory or anything model.source "
                   "accepts (alias, tiny:ARCH, .gguf file, cached Hub id).")
@click.option("--json", "as_json", is_flag=True)
def inspect(checkpoint, against, as_json):
    """Which tensors of CHECKPOINT differ, and which heads' slices.

    Exit codes: 0 the verdict is OK; 3 it is NOT OK (an element changed outside the
    declared head slices, a tensor missing or extra, a file that differs from
    headsurgeon.json), after the report is printed; 1 runtime failure; 2 bad input.
    """
    from headsurgeon import api
    from headsurgeon.apply.inspect import verdict_error

    report, text = api.inspect(checkpoint, against=against)
    click.echo(json.dumps(report, indent=2) if as_json else text)
    not_ok = verdict_error(report)
    if not_ok is not None:  # exit 3, after the report: scripts and CI gate on the verdict
        raise not_ok


@cli.command()
@click.argument("model_dir", metavar="MODEL_OR_RUN", type=click.Path(path_type=Path))
@click.option("--gguf", "out", type=click.Path(path_type=Path),
              help="GGUF file to write (llama.cpp / Ollama) from a model directory.")
@click.option("--outtype", type=click.Choice(["f16", "q8_0"]), default="f16", show_default=True)
@click.option("--lora", "lora", type=click.Path(path_type=Path),
              help="peft LoRA adapter directory to write: the edit alone, exact.")
@click.option("--lora-gguf", "lora_gguf", type=click.Path(path_type=Path),
              help="llama.cpp LoRA adapter (.gguf) to write: the edit alone, exact.")
@click.option("--base", help="Base model of the delta (default: the one the delta names).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def export(model_dir, out, outtype, lora, lora_gguf, base, force):
    """Write MODEL_OR_RUN as one GGUF file (--gguf, from runs/NAME/model), or its edit as a
    LoRA adapter (--lora, --lora-gguf, from runs/NAME, runs/NAME/model or a delta file)."""
    from headsurgeon import api

    if not (out or lora or lora_gguf):
        raise click.UsageError("give --gguf OUT, --lora OUT or --lora-gguf OUT.gguf")
    if out:
        s = api.export_gguf(model_dir, out, outtype=outtype, force=force)
        click.echo(f"wrote {s['path']} ({s['outtype']}, {s['architecture']}, {s['tensors']} "
                   f"tensors, {s['bytes'] / 1e6:.1f} MB)")
    if lora or lora_gguf:
        from headsurgeon.apply.export_lora import format_export_lora

        click.echo(format_export_lora(api.export_lora(model_dir, lora, lora_gguf, base=base,
                                                      force=force)))


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--repo", required=True, help="Hub repo id, ORG/NAME (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--dry-run", is_flag=True, help="List exactly what would be sent; send nothing.")
@click.option("--message", help="Commit message.")
@click.option("--lora", is_flag=True,
              help="MODEL_DIR is a LoRA adapter directory (written by export --lora).")
def push(model_dir, repo, private, dry_run, message, lora):
    """Upload MODEL_DIR and its card to the Hugging Face Hub (token: HF_TOKEN or login)."""
    from headsurgeon import api
    from headsurgeon.apply.hub import format_push

    click.echo(format_push(api.push(model_dir, repo, private=private, dry_run=dry_run,
                                    commit_message=message, lora=lora)))


def main(argv=None):
    cli.main(args=argv, prog_name="headsurgeon")  # plugins load when a command needs them


if __name__ == "__main__":
    main()
