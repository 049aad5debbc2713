"""MkDocs hooks: what the site shows that is made from the code and the benchmark results at build time, so that it
cannot drift from them.

* `<!-- cli-reference -->` in a page becomes the `--help` of `hf-wagle` and of every registered command, from the
  parsers themselves (`hf_wagle.cli`);
* `<!-- config-reference -->` becomes tables of every configuration field (name, type, default, help), from the
  dataclasses that define them (`WagleConfig`, `MaskConfig`, each objective's arguments, each mask method's
  options, the commands' own keys);
* `<!-- adapter-formats -->` becomes the table of registered adapter formats (`hf_wagle.formats`);
* `<!-- package-layout -->` becomes the tree of `hf_wagle/`, each module with the first paragraph of its docstring
  (read with `ast`, nothing imported);
* every PNG and JSON file under `benchmarks/results/` is published as `results/<the same path>`, so pages show the
  figures and link the numbers the benchmark scripts wrote (nothing is copied or drawn by hand).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PUBLISHED_SUFFIXES = (".png", ".json")


# -- benchmark results as site files --------------------------------------------------------------------------------

def on_files(files, config):
    for path in sorted(RESULTS.rglob("*")):
        if path.is_file() and path.suffix in PUBLISHED_SUFFIXES:
            uri = f"results/{path.relative_to(RESULTS).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


# -- markers in pages -----------------------------------------------------------------------------------------------

def on_page_markdown(markdown, page, config, files):
    for marker, make in (("<!-- cli-reference -->", cli_reference), ("<!-- config-reference -->", config_reference),
                         ("<!-- package-layout -->", package_layout), ("<!-- adapter-formats -->", adapter_formats)):
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line; `|`, `*`, `<` escaped outside code spans."""
    text = " ".join(str(text).split())
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        parts[i] = parts[i].replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")
    return "`".join(parts)  # Python-Markdown's tables do not split on a pipe inside a code span


def _code(text: str) -> str:
    return f"`{text}`"


def _type(cls, f: dataclasses.Field) -> str:
    """A field's annotation as written (not `f.type`: `HfArgumentParser` rewrites that in place, dropping `None`)."""
    for klass in cls.__mro__:
        annotations = klass.__dict__.get("__annotations__", {})
        if f.name in annotations:
            tp = annotations[f.name]
            break
    else:
        tp = f.type
    if isinstance(tp, str):
        return tp
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _code(repr(f.default))
    if f.default_factory is not dataclasses.MISSING:
        return _code(repr(f.default_factory()))
    return "required"


def _help(f: dataclasses.Field) -> str:
    return _cell(f.metadata.get("help", "").replace("%(default)r", "").replace("(default: )", "").strip())


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fields_table(cls, key=lambda f: f.name) -> str:
    return _table(["key", "type", "default", "meaning"],
                  [[_code(key(f)), _code(_type(cls, f)), _default(f), _help(f)] for f in dataclasses.fields(cls)])


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def config_reference() -> str:
    from transformers import TrainingArguments

    from hf_wagle.cli.attribute import AttributeArguments
    from hf_wagle.cli.compare_masks import CompareArguments
    from hf_wagle.cli.plan import PlanArguments
    from hf_wagle.cli.unlearn import UnlearnArguments
    from hf_wagle.config import ObjectiveArguments, WagleConfig
    from hf_wagle.masking.config import PREFIX, UNPREFIXED, MaskArguments, MaskConfig
    from hf_wagle.masking.methods import mask_methods
    from hf_wagle.objectives import OBJECTIVES

    def names(cls):
        return {f.name for f in dataclasses.fields(cls)}

    inherited = names(TrainingArguments) | names(MaskArguments) | names(ObjectiveArguments)
    own = [f for f in dataclasses.fields(WagleConfig) if f.name not in inherited]
    out = ["## `WagleConfig`: the unlearning options", "",
           "Keyword arguments of `WagleConfig`, keys of an `hf-wagle unlearn` YAML file and its flags "
           "(`--objective npo`). `WagleConfig` is a `transformers.TrainingArguments`, so every `TrainingArguments` "
           "field (`learning_rate`, `max_steps`, `bf16`, ...) is a key too; the mask options and the built-in "
           "objectives' arguments below are `WagleConfig` fields as well.", "",
           _table(["key", "type", "default", "meaning"],
                  [[_code(f.name), _code(_type(WagleConfig, f)), _default(f), _help(f)] for f in own]), ""]

    rows = []
    for f in dataclasses.fields(MaskConfig):
        flat = f.name if f.name in UNPREFIXED else PREFIX + f.name
        rows.append([_code(f.name), _code(flat), _code("--" + f.name), _code(_type(MaskConfig, f)), _default(f),
                     _help(f)])
    out += ["## `MaskConfig`: how a mask is made", "",
            _cell(_first_paragraph(MaskConfig.__doc__)) + " `compute_mask` takes a `MaskConfig` or the same names as "
            "keywords; `WagleConfig` and the `hf-wagle unlearn` YAML hold them as `mask_<name>` (`mu` keeps its "
            "name); `hf-wagle attribute` takes them as flags.", "",
            _table(["`MaskConfig` field, `compute_mask` keyword", "`WagleConfig` field, YAML key",
                    "`hf-wagle attribute` flag", "type", "default", "meaning"], rows), ""]

    out += ["## Mask methods and their own options", "",
            "Every registered mask method, what attribution computes for it (`needs`) and its own options, set as "
            "`mask_options: {eps: 1.0e-10}` (YAML), `WagleConfig(mask_options={...})`, "
            "`compute_mask(..., eps=1e-10)`, `hf-wagle attribute --options eps=1e-10`, or in a `compare-masks` spec "
            "(`grin:eps=1e-10`).", ""]
    rows = []
    for name, method in mask_methods().items():
        options = ", ".join(f"{_code(f.name)} (default {_default(f)}): {_help(f)}"
                            for f in dataclasses.fields(method.options)) if method.options else "none"
        rows.append([_code(name), _code(method.needs), _cell(_first_paragraph(method.score.__doc__)), options])
    out += [_table(["method", "needs", "score", "options"], rows), ""]

    out += ["## Objectives and their arguments", "",
            "Every registered objective and its own arguments, set as `objective_args: {beta: 0.2}` (YAML), "
            "`WagleConfig(objective_args={...})` or `--objective_args beta=0.2`. A built-in objective's argument "
            "with a flat `WagleConfig` field (`npo_beta`) can be set either way; `objective_args` wins.", ""]
    for name, cls in OBJECTIVES.items():
        notes = [note for flag, note in (
            (cls.needs_reference, "The trainer computes the reference log-probs once, before training."),
            (cls.needs_refusal, "Each forget question is paired with a refusal answer."),
            (not cls.uses_retain, "No retain term.")) if flag]
        out += [f"### `{name}`", "", " ".join([_cell(_first_paragraph(cls.__doc__)), *notes]), ""]
        if cls.args_class is None:
            out += ["No arguments of its own.", ""]
            continue
        out += [_table(["`objective_args` key", "`WagleConfig` field", "type", "default", "meaning"],
                       [[_code(f.name), _code(f.metadata["config_name"]) if f.metadata.get("config_name") else "",
                         _code(_type(cls.args_class, f)), _default(f), _help(f)]
                        for f in dataclasses.fields(cls.args_class)]),
                ""]

    for title, cls, note in (
            ("`hf-wagle unlearn`: model, data and adapter keys", UnlearnArguments,
             "Besides every `WagleConfig` key above, an `hf-wagle unlearn` YAML file (and its flags) takes these, "
             "and `plugins:` (a module or `.py` file, or a list)."),
            ("`hf-wagle attribute`: model, data and output", AttributeArguments,
             "Besides every `MaskConfig` field above (as `--<field>`)."),
            ("`hf-wagle compare-masks`", CompareArguments,
             "It reads an `hf-wagle unlearn` config (`--config`, every key above) and runs it once per mask spec and "
             "seed."),
            ("`hf-wagle plan`", PlanArguments,
             "Besides every `hf-wagle compare-masks` key: it tries each method at each ratio and writes the "
             "config that meets the run's targets with the fewest weights changed among those keeping the most "
             "held-out utility.")):
        out += [f"## {title}", "", _cell(_first_paragraph(cls.__doc__) + (" " + note if note else "")), "",
                _fields_table(cls), ""]
    return "\n".join(out)


def adapter_formats() -> str:
    from hf_wagle.formats import FORMATS, export_formats

    exportable = set(export_formats())
    rows = [[_code(name), _code(fmt.peft_type) if fmt.peft_type else "none (a model folder)",
             _code(f"{fmt.stem}.safetensors"), _cell(fmt.can_hold),
             ("yes" + (f", needs {', '.join(_code(n) for n in fmt.needs)}" if fmt.needs else ""))
             if name in exportable else "no"]
            for name, fmt in FORMATS.items()]
    return _table(["format", "`peft_type`", "weights", "can hold", "export target"], rows)


def cli_reference() -> str:
    import argparse

    os.environ["COLUMNS"] = "110"  # argparse wraps help to the terminal's width
    from hf_wagle.cli import COMMANDS, build_parser
    from hf_wagle.cli.parser import command_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["## `hf-wagle`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, cls in COMMANDS.items():
        command = cls()
        command_line = command_parser(command) if command.parses_dataclasses else sub.choices[name]
        command_line.hidden = []  # every option, as --help-all prints them
        help_text = command_line.format_help()
        out += [f"## `hf-wagle {name}`", "", _cell(command.help.replace("%%", "%")), ""]
        if help_text.count("\n") > 120:
            block = "\n".join("    " + line if line else "" for line in ["```text", *help_text.rstrip().split("\n"),
                                                                         "```"])
            out += [f'??? note "`hf-wagle {name} --help-all`: every key, `TrainingArguments` fields included '
                    f'({help_text.count(chr(10))} lines)"', "", block, ""]
        else:
            out += ["```text", help_text.rstrip(), "```", ""]
    return "\n".join(out)


def package_layout() -> str:
    package = ROOT / "hf_wagle"
    lines = []

    def doc_of(path: Path) -> str:
        try:
            return _first_paragraph(ast.get_docstring(ast.parse(path.read_text())))
        except SyntaxError:
            return ""

    def walk(folder: Path, depth: int) -> None:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith(("_", ".")) or p.name == "__main__.py")
        for p in entries:
            indent = "    " * depth
            if p.is_dir() and p.name != "__pycache__":
                init = p / "__init__.py"
                files = [q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")]
                if init.exists():
                    lines.append(f"{indent}- **`{p.name}/`**: {_escape_md(doc_of(init))}")
                elif files and not any(q.suffix == ".py" for q in files):
                    kinds = ", ".join(sorted({q.suffix for q in files}))
                    lines.append(f"{indent}- `{p.name}/`: {len(files)} data file{'s' * (len(files) > 1)} ({kinds})")
                    continue
                else:
                    lines.append(f"{indent}- `{p.name}/`")
                walk(p, depth + 1)
            elif p.suffix == ".py":
                doc = _escape_md(doc_of(p))
                lines.append(f"{indent}- `{p.name}`" + (f": {doc}" if doc else ""))

    lines.append(f"- **`hf_wagle/`**: {_escape_md(doc_of(package / '__init__.py'))}")
    walk(package, 1)
    return "\n".join(lines)


def _escape_md(text: str) -> str:
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([*_\[\]])", r"\\\1", parts[i]).replace("<", "&lt;")
    return "`".join(parts)
