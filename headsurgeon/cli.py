"""The ``headsurgeon`` command: parse, call the Python API, print. No logic lives here.

Exit codes: 0 ok, 1 runtime failure, 2 usage or validation error. Errors are one line;
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


class _Group(click.Group):
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
def cli():
    """Locate the attention heads behind a behaviour, tune only them, ship a checkpoint."""


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
@click.option("--against", type=click.Path(path_type=Path), help="Base checkpoint to diff with.")
@click.option("--json", "as_json", is_flag=True)
def inspect(checkpoint, against, as_json):
    """Which tensors of CHECKPOINT differ, and which heads' slices."""
    from headsurgeon import api

    report, text = api.inspect(checkpoint, against=against)
    click.echo(json.dumps(report, indent=2) if as_json else text)


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--gguf", "out", required=True, type=click.Path(path_type=Path),
              help="GGUF file to write (llama.cpp / Ollama).")
@click.option("--outtype", type=click.Choice(["f16", "q8_0"]), default="f16", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output.")
def export(model_dir, out, outtype, force):
    """Write MODEL_DIR (e.g. runs/NAME/model) as one GGUF file."""
    from headsurgeon import api

    s = api.export_gguf(model_dir, out, outtype=outtype, force=force)
    click.echo(f"wrote {s['path']} ({s['outtype']}, {s['architecture']}, {s['tensors']} tensors, "
               f"{s['bytes'] / 1e6:.1f} MB)")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--repo", required=True, help="Hub repo id, ORG/NAME (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--dry-run", is_flag=True, help="List exactly what would be sent; send nothing.")
@click.option("--message", help="Commit message.")
def push(model_dir, repo, private, dry_run, message):
    """Upload MODEL_DIR and its card to the Hugging Face Hub (token: HF_TOKEN or login)."""
    from headsurgeon import api
    from headsurgeon.apply.hub import format_push

    click.echo(format_push(api.push(model_dir, repo, private=private, dry_run=dry_run,
                                    commit_message=message)))


def main(argv=None):
    from headsurgeon.core.plugins import add_plugin_commands

    try:
        add_plugin_commands(cli)
    except HeadsurgeonError as exc:
        _fail(str(exc), exc.exit_code)
    cli.main(args=argv, prog_name="headsurgeon")


if __name__ == "__main__":
    main()
