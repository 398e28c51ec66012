"""The `synthgen` command line: argument parsing and rich output only.

Heavy libraries (torch, diffusers, transformers, faiss) are imported inside the commands, so `synthgen --help`
answers at once. Every user error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from synthgen import __version__
from synthgen.cli_audit import audit_command
from synthgen.cli_eval import eval_brief, eval_command
from synthgen.cli_session import (
    apply_global_options,
    console,
    note,
    out,
    reporting,
    user_errors,
)
from synthgen.errors import SynthgenError

app = typer.Typer(
    name="synthgen",
    help="Synthetic medical image datasets: recipe -> diffusion model -> class-balanced samples -> "
    "memorization audit -> Parquet/WebDataset shards with provenance.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"synthgen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    threads: Annotated[
        str | None,
        typer.Option(
            "--threads",
            metavar="N",
            help="CPU threads to use (default: $SYNTHGEN_THREADS, else $OMP_NUM_THREADS, else the CPUs this "
            "process may run on).",
            show_default=False,
        ),
    ] = None,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log-file",
            metavar="PATH",
            help="Also append progress lines, messages and any error, timestamped, to this file.",
        ),
    ] = None,
    progress_every: Annotated[
        str | None,
        typer.Option(
            "--progress-every",
            metavar="SECONDS",
            help="Seconds between plain progress lines (no terminal, or --log-file); default: "
            "$SYNTHGEN_PROGRESS_EVERY, else 30.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Synthetic medical image datasets with a memorization audit and per-sample provenance."""
    try:
        apply_global_options(ctx, threads, log_file, progress_every)
    except SynthgenError as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None


def _load(recipe: Path):
    from synthgen.recipe import load_recipe

    return load_recipe(recipe)


RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OutOption = Annotated[
    Path | None, typer.Option("--out", "-o", help="Output folder (default: the recipe's output.dir).")
]


@app.command()
@user_errors
def validate(
    recipe: RecipeArg,
    out_dir: OutOption = None,
    deep: Annotated[
        bool, typer.Option("--deep", help="Decode every image of the data (default: 32 spread over each set).")
    ] = False,
) -> None:
    """Check a recipe as a build would (schema, files, columns, classes vs labels, images, model, output)."""
    from synthgen.validate import validate_recipe

    for line in _print_warnings(validate_recipe(_load(recipe), out_dir, deep=deep)):
        out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)  # one line each, for grep
    out.print(f"[green]ok[/]: {escape(str(recipe))} is valid")


def _print_warnings(lines: list[str]) -> list[str]:
    """Print validate's `warning: ` lines on stderr (yellow); return the others."""
    from synthgen.sources.checks import WARNING

    for line in lines:
        if line.startswith(WARNING):
            console.print(f"[yellow]warning:[/] {escape(line.removeprefix(WARNING))}", highlight=False, soft_wrap=True)
    return [line for line in lines if not line.startswith(WARNING)]


@app.command()
@user_errors
def build(
    recipe: RecipeArg,
    out_dir: OutOption = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an output folder that holds another recipe's build.")
    ] = False,
    export_model: Annotated[
        bool | None,
        typer.Option(
            "--export-model/--no-export-model",
            help="Put the model folder into the output as model/ (hard links where possible); "
            "default: the recipe's output.export_model.",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="Where the shards are made: local (this process) or ray (actors on a Ray cluster, one per GPU; "
            "needs pip install 'synthgen\\[ray]'; docs/ray.md)."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="With --engine ray: the cluster to join (auto, HOST:PORT, ray://HOST:PORT); default: "
            "$RAY_ADDRESS, else a Ray instance on this machine."
        ),
    ] = None,
) -> None:
    """Build the dataset a recipe describes (resumes an interrupted build in the same folder)."""
    from synthgen.build import build as run_build
    from synthgen.engines import make_engine
    from synthgen.validate import validate_recipe

    runner = make_engine(engine, address)  # a missing Ray is one line here, before anything is read
    loaded = _load(recipe)
    _print_warnings(validate_recipe(loaded, out_dir, overwrite))
    with reporting() as reporter:
        result = run_build(
            loaded, out_dir, overwrite=overwrite, reporter=reporter, export_model=export_model, engine=runner
        )
    from rich.table import Table

    out.print(
        f"[bold]{loaded.recipe.name}[/]: {sum(result.class_counts.values())} images in "
        f"{escape(str(result.out_dir.resolve()))}"
    )
    table = Table()
    for column in ("class", "images", "planned"):
        table.add_column(column)
    planned = result.plan.class_counts()
    for label, n in planned.items():
        table.add_row(label, str(result.class_counts.get(label, 0)), str(n))
    out.print(table)
    if result.audit_summary:
        s = result.audit_summary
        out.print(
            f"audit: {s['n_flagged']} of {s['n_candidates']} generated images at or above "
            f"{s['embedder']} similarity {s['threshold']} ({s['n_dropped']} dropped); report: "
            f"{(result.out_dir / 'audit' / 'report.html').resolve()}",
            markup=False,
            highlight=False,
        )
    if result.eval_summary:
        report = (result.out_dir / "eval" / "report.html").resolve()
        out.print(f"{eval_brief(result.eval_summary)}; report: {report}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"shards written {result.shards_written}, resumed {result.shards_resumed}")
    folder = result.model.get("exported_path")
    where = (result.out_dir / folder).resolve() if folder else result.model.get("path")
    out.print(f"model: {result.model_id} ({where})", markup=False, highlight=False)
    if result.shortfall:
        console.print(f"[yellow]warning:[/] classes short of their count after dropping copies: {result.shortfall}")


@app.command()
@user_errors
def train(
    recipe: RecipeArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Pipeline folder to write (and resume in).")],
    overwrite: Annotated[
        bool, typer.Option(help="Start over in a folder that holds a pipeline or another run's checkpoints.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or mps.")] = "auto",
) -> None:
    """Train the recipe's MSDM (model.train) or LoRA (model.lora) into a pipeline folder; a rerun resumes."""
    from synthgen import train as training
    from synthgen.runtime import pick_device
    from synthgen.sources import open_source

    loaded = _load(recipe)
    config = loaded.recipe.model.train or loaded.recipe.model.lora
    if config is None:
        raise SynthgenError(f"{recipe}: model: this recipe uses a pretrained model as is; nothing to train")
    if device not in ("auto", "cpu", "cuda", "mps"):
        raise SynthgenError(f"--device: '{device}' is not one of auto, cpu, cuda, mps")
    try:
        pick_device(device)
    except SynthgenError:
        raise SynthgenError(f"--device: '{device}' is not available on this machine") from None
    source = open_source(config.data, loaded.base_dir)
    with reporting() as reporter:
        try:
            training.train_from_recipe(
                loaded, source, out_dir, reporter.progress, device, overwrite=overwrite, notify=reporter.log
            )
        except KeyboardInterrupt:
            reporter.finish()
            last = training.last_checkpoint(out_dir)
            where = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
            console.print(
                f"[yellow]interrupted:[/] {where}; run the same command to resume",
                highlight=False,
            )
            note(f"interrupted: {where}; run the same command to resume")
            raise typer.Exit(130) from None
    out.print(f"[green]saved[/] {escape(str(out_dir))} (load it with diffusers.DiffusionPipeline.from_pretrained)")


@app.command()
@user_errors
def split(
    src: Annotated[Path, typer.Argument(help="An imagefolder (metadata.csv / metadata.jsonl, or class folders).")],
    by: Annotated[str, typer.Option("--by", help="Column whose value groups images (e.g. patient_id), or 'sequence'.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="New or empty folder for train/, holdout/, split.json.")],
    holdout: Annotated[float, typer.Option(help="Share of the images held out, in (0, 1).")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the group order (same seed, same split).")] = 0,
    name_pattern: Annotated[
        str | None,
        typer.Option(help="Regex: its first capture group in the file name groups images whose --by is empty."),
    ] = None,
) -> None:
    """Split an imagefolder into train and holdout imagefolders with no group (patient, sequence) on both sides."""
    from synthgen.split import split_imagefolder

    result = split_imagefolder(src, by, holdout, out_dir, seed, name_pattern)
    for line in result.lines():
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    if result.links.get("copy"):
        console.print(
            f"[yellow]warning:[/] {result.links['copy']} images copied, not linked ({escape(result.copy_reason)})"
        )


@app.command()
@user_errors
def inspect(out_dir: Annotated[Path, typer.Argument(help="A synthgen output folder.")]) -> None:
    """Count samples per class and shard and re-verify every shard's checksum against the manifest."""
    from synthgen.output.verify import inspect_output, render_inspect

    result = inspect_output(out_dir)
    render_inspect(result, out)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@user_errors
def schema(
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of recipes (for editors: yaml-language-server)."""
    import json

    from synthgen.atomic import write_text
    from synthgen.recipe import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output:
        write_text(output, text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":  # pragma: no cover
    app()


app.command("audit")(audit_command)  # in cli_audit.py: the command and its terminal lines
app.command("eval")(eval_command)  # in cli_eval.py: the command and its terminal table
