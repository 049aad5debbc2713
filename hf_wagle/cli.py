"""`hf-wagle` command line."""

from __future__ import annotations

import argparse
import functools
import os
import sys


def _load_data(path: str, what: str, config: str | None = None, split: str = "train"):
    """A dataset from a .json/.jsonl/.parquet/.csv file, a `save_to_disk` folder, a shipped scenario's split
    (`scenario:element_symbols/forget`), or a Hub dataset name with its `config` and `split` (a local folder in the
    Hub layout, `<folder>/<config>.jsonl`, works the same way); one clear error otherwise."""
    if path.startswith("scenario:"):
        from .real_model import load_scenario

        name, _, part = path[len("scenario:"):].partition("/")
        data = load_scenario(name)
        if part not in data or part == "info":
            raise ValueError(f"--{what} {path}: scenario {name!r} has no split {part!r} (forget, retain, holdout)")
        return data[part]
    from pathlib import Path

    import datasets

    from .options import is_local_path

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # our one-line error says what went wrong
    p = Path(path).expanduser()
    if config is not None or not (p.exists() or is_local_path(path) or p.suffix in _DATA_FILES):
        from .evaluation.loaders import load_split

        where = f"config {config!r}, split {split!r}" if config else f"split {split!r}"
        try:
            data = load_split(path, config, split)
        except Exception as e:  # datasets' and the Hub client's own error types
            raise ValueError(f"--{what} {path} ({where}): cannot load it ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    elif not p.exists():
        raise ValueError(f"--{what} {path}: no such file or folder")
    elif p.is_dir():
        data = datasets.load_from_disk(str(p))
        if isinstance(data, datasets.DatasetDict):
            if split not in data and len(data) != 1:
                raise ValueError(f"--{what} {path} holds splits {list(data)}; name one with the split key")
            data = data[split] if split in data else next(iter(data.values()))
    elif p.suffix not in _DATA_FILES:
        raise ValueError(f"--{what} {path}: expected a .json, .jsonl, .parquet or .csv file, a save_to_disk "
                         "folder or a Hub dataset name")
    else:
        try:
            data = datasets.load_dataset(_DATA_FILES[p.suffix], data_files=str(p), split="train")
        except Exception as e:  # datasets raises its own error types for malformed files
            raise ValueError(f"--{what} {path}: cannot read it as {_DATA_FILES[p.suffix]} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if len(data) == 0:
        raise ValueError(f"--{what} {path}: no rows")
    return data


_DATA_FILES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _check_model(name: str, flag: str = "--model") -> None:
    """A model argument that is plainly a local path must exist (otherwise it would be tried as a Hub id)."""
    from .options import is_local_path

    if is_local_path(name) and not os.path.isdir(os.path.expanduser(name)):
        raise ValueError(f"{flag} {name}: no such model folder (and not a Hub id such as org/name)")


def _demo(a) -> int:
    from .demo import run_demo, run_real_demo

    from .options import check_mask_options

    if a.steps is not None and a.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {a.steps}")
    if a.mask_ratio is not None:
        check_mask_options(ratio=a.mask_ratio)
    options = {k: v for k, v in (("steps", a.steps), ("mask_ratio", a.mask_ratio)) if v is not None}
    if a.model == "smollm2":
        if a.full:
            raise ValueError("--full applies to the world demo; the SmolLM2 demo ships a masked LoRA adapter")
        run_real_demo(output_dir=a.output_dir or "wagle_demo_smollm2", **options)
    else:
        run_demo(output_dir=a.output_dir or "wagle_demo", lora=not a.full, **options)
    return 0


def _add_evaluate(sub) -> None:
    """`hf-wagle evaluate`: score a model (and, with --adapter, the model before and after it) on a benchmark, write
    the numbers to a JSON file and a forget-vs-utility PNG next to it."""
    from .options import DEFAULT_PROMPT_TEMPLATE

    def run(a) -> int:
        import json
        from pathlib import Path

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .evaluation.benchmarks import plot_forget_vs_utility, run_benchmark

        retain_trs = None
        if a.retain_results:
            try:
                runs = json.loads(Path(a.retain_results).read_text())["runs"]
                retain_trs = runs.get("after", runs.get("before"))["report"]["forget_truth_ratios"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"--retain-results {a.retain_results}: not a results.json of `hf-wagle evaluate "
                                 f"--benchmark tofu` ({type(e).__name__}: {e})") from None
        _check_model(a.model)
        if a.adapter and not Path(a.adapter, "adapter_config.json").exists():
            raise ValueError(f"--adapter {a.adapter}: no adapter_config.json there")
        tokenizer = AutoTokenizer.from_pretrained(a.model)
        model = AutoModelForCausalLM.from_pretrained(a.model)
        kwargs = dict(data=a.data, forget_split=a.split, retain_model_truth_ratios=retain_trs,
                      utility_data=a.utility_data, limit=a.limit, batch_size=a.batch_size,
                      max_new_tokens=a.max_new_tokens, prompt_template=a.prompt_template, mcq_style=a.mcq_style)
        runs = {"before": run_benchmark(a.benchmark, model, tokenizer, **kwargs)}
        if a.adapter:
            from peft import PeftModel

            runs["after"] = run_benchmark(a.benchmark, PeftModel.from_pretrained(model, a.adapter), tokenizer,
                                          **kwargs)
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"benchmark": a.benchmark, "model": a.model, "adapter": a.adapter, "data": a.data, "runs": runs}
        out.write_text(json.dumps(result, indent=2))
        png = Path(a.plot) if a.plot else out.with_suffix(".png")
        plot_forget_vs_utility(runs, str(png), title=a.benchmark)
        for name, r in runs.items():
            s = r["summary"]
            utility = "n/a" if s["utility"] is None else f"{s['utility']:.4g}"
            print(f"{name}: {s['forget_label']} {s['forget']:.4g}, {s['utility_label']} {utility}")
        print(f"wrote {out} and {png}")
        return 0

    p = sub.add_parser("evaluate", help="score a model (before/after an adapter) on TOFU, WMDP, MUSE or offline")
    p.add_argument("--model", required=True, help="base model: Hub id or local folder")
    p.add_argument("--adapter", help="PEFT adapter folder; evaluates the model before and after it")
    p.add_argument("--benchmark", required=True, choices=("tofu", "wmdp", "muse", "offline"),
                   help="offline = the fictitious world of `hf-wagle demo` (no downloads)")
    p.add_argument("--data", help="benchmark data: Hub name or local folder in the same layout (default: the "
                                  "benchmark's Hub data set)")
    p.add_argument("--split", default="forget10", help="TOFU forget split")
    p.add_argument("--retain-results", help="results.json of the retain-only model, for TOFU forget quality")
    p.add_argument("--utility-data", help="WMDP: MMLU data (Hub name or folder) for the utility axis")
    p.add_argument("--limit", type=int, help="use only the first N rows of each split (quick checks)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per evaluation batch")
    p.add_argument("--max-new-tokens", type=int, help="generation length (default: the benchmark's)")
    p.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                   help="QA prompt with {question}, or 'chat' for the tokenizer's chat template (default: %(default)r)")
    p.add_argument("--mcq-style", default="letter", choices=("letter", "cloze"),
                   help="wmdp: score the answer letter (the benchmark's format) or each choice's text (cloze, as "
                        "lm-eval scores small models)")
    p.add_argument("--out", default="results.json", help="results file")
    p.add_argument("--plot", help="PNG path (default: the results path with .png)")
    p.set_defaults(func=run)


def _add_attribute(sub) -> None:
    """`hf-wagle attribute`: score a model's weights on local forget/retain data, write the mask, print its stats
    and save a heat map (layers x module types)."""
    from .options import (DEFAULT_MASK_METHOD, DEFAULT_MASK_RATIO, DEFAULT_MAX_LENGTH, DEFAULT_MU,
                          DEFAULT_PROMPT_TEMPLATE, MASK_GRANULARITIES, MASK_REDUCTIONS, MASK_SCOPES,
                          RETAIN_SAMPLINGS, check_mask_options)

    def run(a) -> int:
        import importlib
        import json
        import os
        from pathlib import Path

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .attribution import compute_mask, get_mask_method

        for module in a.plugin or []:  # modules that register mask methods of their own
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ValueError(f"--plugin {module}: cannot import it ({e})") from None
        _check_model(a.model)
        get_mask_method(a.method)
        if a.fsdp and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise ValueError("--fsdp shards the model over several processes; launch with torchrun or accelerate "
                             "launch (e.g. torchrun --nproc_per_node 8 -m hf_wagle.cli attribute --fsdp ...)")
        if Path(a.out).exists() and not Path(a.out).is_dir():
            raise ValueError(f"--out {a.out} is a file; give a folder for the mask, its stats and heat map")
        check_mask_options(ratio=a.ratio, mu=a.mu, reduction=a.reduction, batch_size=a.batch_size,
                           num_samples=a.num_samples, scope=a.scope, granularity=a.granularity)
        forget = _load_data(a.forget, "forget") if a.forget else None
        retain = _load_data(a.retain, "retain") if a.retain else None
        tokenizer = AutoTokenizer.from_pretrained(a.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype))
        if a.device:
            model.to(a.device)
        main = _join_processes(model, a.fsdp)
        mask = compute_mask(model, forget, retain, tokenizer, method=a.method, ratio=a.ratio, mu=a.mu,
                            reduction=a.reduction, batch_size=a.batch_size, seed=a.seed,
                            prompt_template=a.prompt_template, max_length=a.max_length,
                            num_samples=a.num_samples, scope=a.scope, granularity=a.granularity,
                            include=a.include, exclude=a.exclude,
                            retain_sampling=a.retain_sampling, accumulate_device=a.accumulate_device)
        if torch.distributed.is_initialized():
            # every rank leaves the last collective before any tears its connections down (a rank that closes its
            # gloo pairs while a peer still reads from them can abort that peer); after an error the launcher
            # stops the other ranks, so this runs on success only
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        if not main:  # every rank held the same mask; the main process writes it
            return 0
        out = Path(a.out)
        path = mask.save(out)
        stats = mask.stats()
        (out / "mask_stats.json").write_text(json.dumps({"metadata": mask.metadata, "stats": stats}, indent=2))
        png = mask.plot_heatmap(out / "mask_heatmap.png",
                                title=f"{a.method} mask, ratio {a.ratio:g}: {Path(a.model.rstrip('/')).name}")
        print(mask.format_stats())
        bits = path.stat().st_size * 8 / max(1, mask.num_total)
        print(f"wrote {path} ({bits:.3f} bits per weight), {out / 'mask_stats.json'} and {png}")
        return 0

    p = sub.add_parser("attribute", help="score a model's weights on forget/retain data and save the mask")
    p.add_argument("--model", required=True, help="model: Hub id or local folder")
    p.add_argument("--forget", help="forget data: .json/.jsonl/.parquet/.csv file or a save_to_disk folder")
    p.add_argument("--retain", help="retain data, same formats (needed by wagle and grin)")
    p.add_argument("--method", default=DEFAULT_MASK_METHOD,
                   help="a registered mask method: wagle (default), snip, gradient, grin, magnitude, wanda, random, "
                        "or one a --plugin module registers")
    p.add_argument("--plugin", action="append", metavar="MODULE",
                   help="import this Python module first (e.g. one that calls hf_wagle.register_mask_method); "
                        "repeatable")
    p.add_argument("--ratio", type=float, default=DEFAULT_MASK_RATIO,
                   help="fraction of weights that may change, in (0, 1]")
    p.add_argument("--mu", type=float, default=DEFAULT_MU, help="WAGLE's diagonal-Hessian constant")
    p.add_argument("--reduction", default="sum", choices=MASK_REDUCTIONS,
                   help="G_f and G_r summed over the examples, or divided by their count (mean)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per attribution batch")
    p.add_argument("--num-samples", type=int, help="score on a seeded subset of this many examples of each set")
    p.add_argument("--scope", default="global", choices=MASK_SCOPES,
                   help="apply the ratio over the whole model, within each layer, or within each tensor")
    p.add_argument("--retain-sampling", default="all", choices=RETAIN_SAMPLINGS,
                   help="G_r over all retain examples, or one per forget example drawn with replacement as the WAGLE "
                        "authors' code does (paired)")
    p.add_argument("--granularity", default="element", choices=MASK_GRANULARITIES,
                   help="select single weights, or whole rows/columns by their summed score")
    p.add_argument("--include", nargs="+", help="only parameters matching these name patterns may be selected")
    p.add_argument("--exclude", nargs="+", help="parameters matching these name patterns are never selected")
    p.add_argument("--seed", type=int, default=0, help="seed of sampled subsets and random masks")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per example (longer ones are cut)")
    p.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                   help="QA prompt with {question}, or 'chat' for the tokenizer's chat template (default: %(default)r)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="weights' dtype while scoring (gradients are summed in float32)")
    p.add_argument("--device", help="e.g. cuda:0 (default: where the model loads)")
    p.add_argument("--accumulate-device", help="where the fp32 gradient sums live: cpu keeps them in host memory "
                                               "(a model that fits the accelerator only once; default: --device)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun/accelerate launch, shard the model with FSDP2 (each decoder layer, then the "
                        "whole model) so that gradients and scores exist only as each rank's shards; without it, "
                        "several processes split the data and each holds the whole model")
    p.add_argument("--out", required=True, help="folder for wagle_mask.safetensors, mask_stats.json, mask_heatmap.png")
    p.set_defaults(func=run)


def _join_processes(model, fsdp: bool) -> bool:
    """Under a launcher (`WORLD_SIZE` > 1), join the process group (NCCL with one GPU per local rank, gloo on CPU)
    and, with `fsdp`, shard `model` with FSDP2's `fully_shard`. Returns whether this is the main process."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            model.to(torch.cuda.current_device())
        dist.init_process_group("nccl" if cuda else "gloo")
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        from .modeling import decoder_layers

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
    return dist.get_rank() == 0


def _add_compare_masks(sub) -> None:
    """`hf-wagle compare-masks`: unlearn a model through several masks and seeds, and compare the utility each keeps
    at matched forgetting (`hf_wagle.evaluation.compare`)."""
    from .options import DEFAULT_PROMPT_TEMPLATE, check_mask_options

    def run(a) -> int:
        import json
        from pathlib import Path

        from transformers import AutoTokenizer

        from .evaluation.compare import compare_masks, format_comparison, parse_specs, plot_comparison, spec_options

        _check_model(a.model)
        for spec in parse_specs(a.methods):
            spec_options(spec)
        check_mask_options(ratio=a.ratio)
        out = Path(a.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {a.out} is a file; give a folder for compare_masks.json and its plot")
        utility = {}
        for item in a.utility or []:
            name, sep, path = item.partition("=")
            if not sep or not name:
                raise ValueError(f"--utility {item}: expected NAME=FILE")
            utility[name] = _load_data(path, f"utility {name}")
        forget, retain = _load_data(a.forget, "forget"), _load_data(a.retain, "retain")
        tokenizer = AutoTokenizer.from_pretrained(a.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        result = compare_masks(a.model, tokenizer, forget, retain, methods=a.methods, ratio=a.ratio,
                               objective=a.objective, seeds=a.seeds, steps=a.steps, learning_rate=a.learning_rate,
                               batch_size=a.batch_size, eval_every=a.eval_every, forget_target=a.forget_target,
                               utility={"retain": retain, **utility}, eval_limit=a.eval_limit, lora_r=a.lora_r,
                               prompt_template=a.prompt_template, training={"max_length": a.max_length})
        out.mkdir(parents=True, exist_ok=True)
        result["model"] = Path(a.model.rstrip("/")).name
        (out / "compare_masks.json").write_text(json.dumps(result, indent=2))
        png = plot_comparison(result, out / "compare_masks.png")
        print(format_comparison(result))
        print(f"wrote {out / 'compare_masks.json'} and {png}")
        return 0

    p = sub.add_parser("compare-masks", help="unlearn through several masks and seeds; compare utility at matched "
                                             "forgetting, with 95%% intervals")
    p.add_argument("--model", required=True, help="model: Hub id or local folder (loaded afresh for every run)")
    p.add_argument("--forget", required=True, help="forget QA data (question, answer): file, folder or scenario:")
    p.add_argument("--retain", required=True, help="retain QA data, same forms; also the first utility set")
    p.add_argument("--utility", action="append", metavar="NAME=FILE",
                   help="another QA set whose answer probability counts as utility (e.g. held-out facts the model "
                        "should keep); repeatable")
    p.add_argument("--methods", default="dense,random,wagle",
                   help="comma-separated mask specs: dense (no mask) or a mask method, with options after a colon, "
                        "e.g. wagle:mu=1e-4,scope=per_layer (keys: ratio, mu, scope, retain_sampling, granularity, "
                        "reduction)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of weights each mask lets change")
    p.add_argument("--objective", default="npo", help="unlearning objective, the same for every mask")
    p.add_argument("--seeds", type=int, default=2, help="runs per mask (seeds 0..N-1: data order, random masks, "
                                                       "LoRA init)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--learning-rate", type=float, default=1e-5, help="constant learning rate")
    p.add_argument("--batch-size", type=int, default=8, help="forget (and retain) examples per step")
    p.add_argument("--eval-every", type=int, default=2, help="record the curve every N steps")
    p.add_argument("--forget-target", type=float, default=0.5,
                   help="matched forgetting: forget probability at most this fraction of its start")
    p.add_argument("--eval-limit", type=int, default=32, help="rows of each set scored at every recorded step")
    p.add_argument("--lora-r", type=int, help="train a masked LoRA of this rank (default: full parameters)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per training example")
    p.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                   help="QA prompt with {question}, or 'chat' for the tokenizer's chat template (default: %(default)r)")
    p.add_argument("--out", required=True, help="folder for compare_masks.json and compare_masks.png")
    p.set_defaults(func=run)


def _add_export(sub) -> None:
    """`hf-wagle export RUN --base MODEL --format shira|lora --out DIR`: a saved full-parameter run as an adapter."""

    def run(a) -> int:
        from pathlib import Path

        import torch
        from transformers import AutoModelForCausalLM

        from .adapters import check_export_options, export_adapter, verify
        from .mask import WeightMask

        run_dir = Path(a.run)
        if not (run_dir / "model.safetensors").exists() and not (run_dir / "model.safetensors.index.json").exists():
            raise ValueError(f"{a.run}: no model.safetensors; export takes a folder a full-parameter run saved (a LoRA "
                             "run is already an adapter)")
        mask = WeightMask.load(run_dir)
        _check_model(a.base, "--base")
        try:
            scales = [float(x) for x in a.scales.split(",")] if a.scales else None
        except ValueError:
            raise ValueError(f"--scales {a.scales}: expected numbers separated by commas, e.g. 0.25,0.5,1") from None
        if a.format == "lora" and a.rank is None:
            raise ValueError("--format lora needs --rank")
        scales = check_export_options(a.format, a.rank, scales)
        trained = AutoModelForCausalLM.from_pretrained(run_dir)
        base = AutoModelForCausalLM.from_pretrained(a.base, dtype=next(trained.parameters()).dtype)
        with torch.no_grad():
            report = export_adapter(trained, base, mask, a.out, format=a.format, rank=a.rank, scales=scales,
                                    base_name=a.base)
        print(f"exported {report['changed_weights']} changed weights in {len(report['layers'])} layers as "
              f"{a.format} r={report['rank']}")
        if a.format == "shira":
            print(f"  exact at all but {report['inexact_weights']} weights (largest difference "
                  f"{report['max_abs_error']:.3g}, where float32 cannot express base + delta)")
        else:
            print(f"  relative error of the change {report['relative_error']:.4g} (worst layer "
                  f"{report['max_relative_error']:.4g})")
        confined = True
        for folder in report["folders"]:
            verdict = verify(folder)
            confined &= verdict["confined"]
            print(f"  {folder}: confined to its mask: {'yes' if verdict['confined'] else 'NO'}")
        return 0 if confined else 1

    p = sub.add_parser("export", help="turn a saved full-parameter run into a stock-PEFT adapter: SHiRA (exact) or "
                                      "LoRA (truncated SVD, with its error)")
    p.add_argument("run", help="folder a full-parameter WagleTrainer run saved (model + wagle_mask.safetensors)")
    p.add_argument("--base", required=True, help="the model the run started from: folder or Hub id")
    p.add_argument("--format", default="shira", choices=("shira", "lora"), help="adapter type")
    p.add_argument("--rank", type=int, help="LoRA rank (format lora)")
    p.add_argument("--scales", help="comma-separated scales of the change, one adapter each in OUT/scale_<s> "
                                    "(a staged roll-out), e.g. 0.25,0.5,1")
    p.add_argument("--out", required=True, help="folder for the adapter, its mask, export_report.json and card")
    p.set_defaults(func=run)


def _add_verify(sub) -> None:
    """`hf-wagle verify DIR [--base MODEL]`: check that an output folder changes nothing outside its mask."""

    def run(a) -> int:
        import json

        from .adapters import verify

        report = verify(a.directory, base=a.base)
        if a.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print(f"{report['directory']} ({report['kind']}): {report['tensors_checked']} tensors checked, "
                  f"{report['changed_inside_mask']} weights changed inside the mask, "
                  f"{report['changed_outside_mask']} outside; mask ratio {report['mask_ratio']:.4f}")
            for problem in report["problems"]:
                print(f"  FAIL {problem}")
            print("confined to its mask: " + ("yes" if report["confined"] else "NO"))
        return 0 if report["confined"] else 1

    p = sub.add_parser("verify", help="audit an adapter or model folder against its wagle_mask.safetensors")
    p.add_argument("directory", help="folder written by WagleTrainer.save_model")
    p.add_argument("--base", help="base model (folder or Hub id); needed for full-model folders")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _add_push(sub) -> None:
    """`hf-wagle push DIR REPO_ID`: audit a saved folder against its mask, then upload it with its card."""

    def run(a) -> int:
        from .hub import push_to_hub

        info = push_to_hub(a.directory, a.repo_id, private=a.private or None, base=a.base, dry_run=a.dry_run)
        if a.dry_run:
            print(f"{a.directory} is confined to its mask; would upload to {a.repo_id}: {', '.join(info['files'])}")
            for item in info["left_out"]:
                print(f"  not uploaded: {item}")
            return 0
        print(f"pushed {a.directory} to {getattr(info, 'commit_url', None) or a.repo_id}")
        return 0

    p = sub.add_parser("push", help="verify a saved adapter/model folder and upload it to the Hub")
    p.add_argument("directory", help="folder written by WagleTrainer.save_model")
    p.add_argument("repo_id", help="Hub repository, e.g. my-org/my-model-unlearned")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--base", help="base model, needed to verify a full-model folder")
    p.add_argument("--dry-run", action="store_true",
                   help="verify and list what would be uploaded (local paths removed), without contacting the Hub")
    p.set_defaults(func=run)


def unlearn_arguments():
    """The dataclass of `hf-wagle unlearn`'s own keys (`WagleConfig` holds every other one)."""
    from dataclasses import dataclass, field

    @dataclass
    class UnlearnArguments:
        model_name_or_path: str = field(metadata={"help": "base model: Hub id or local folder"})
        forget_file: str = field(metadata={"help": "forget data: .json/.jsonl/.parquet/.csv, a save_to_disk folder, a "
                                                   "Hub dataset name (with forget_config/forget_split) or "
                                                   "scenario:NAME/SPLIT (a shipped scenario)"})
        retain_file: str = field(metadata={"help": "retain data, same forms"})
        forget_config: str | None = field(default=None, metadata={
            "help": "config of a Hub dataset (e.g. forget10 of locuslab/TOFU); a local folder in the Hub layout "
                    "holds it as <config>.jsonl or <config>/<split>.jsonl"})
        forget_split: str = field(default="train", metadata={"help": "split of the forget data set"})
        retain_config: str | None = field(default=None, metadata={"help": "config of the retain Hub dataset"})
        retain_split: str = field(default="train", metadata={"help": "split of the retain data set"})
        base_model: str | None = field(default=None, metadata={
            "help": "Hub id the card and adapter_config.json name as the base, when model_name_or_path is a local "
                    "copy of it (a local path is never published)"})
        dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16"})
        use_peft: bool = field(default=True, metadata={"help": "train a masked LoRA adapter (else full parameters)"})
        lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
        lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
        lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"],
                                               metadata={"help": "LoRA target modules"})
        evaluate: bool = field(default=False, metadata={"help": "score answer probabilities on the forget and retain "
                                                                "data before and after, into the card and results"})
        mask_dir: str | None = field(default=None, metadata={
            "help": "a mask saved by `hf-wagle attribute` (its folder or wagle_mask.safetensors), used instead of "
                    "computing one (mask_method and the other mask_* keys are then not used)"})

    return UnlearnArguments


def _unlearn(argv: list[str]) -> int:
    """`hf-wagle unlearn --config cfg.yaml [--key value ...]`: attribution -> unlearning -> save -> verify
    (-> evaluation), configured by one YAML file whose keys are those of `UnlearnArguments` and `WagleConfig`
    (flags win over the file)."""
    from pathlib import Path

    import yaml
    from transformers import HfArgumentParser

    from .config import WagleConfig

    parser = HfArgumentParser((unlearn_arguments(), WagleConfig), prog="hf-wagle unlearn",
                              formatter_class=_DefaultsShown)
    parser.add_argument("--config", help="YAML file of the keys below; flags given here win over it")
    config = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    config.add_argument("--config")
    try:
        given, _ = config.parse_known_args(argv)  # also --config=file
    except argparse.ArgumentError:
        raise ValueError("bad arguments: --config needs a YAML file") from None
    if given.config is not None:
        path = Path(given.config)
        if not path.is_file():
            raise ValueError(f"--config {path}: no such file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ValueError(f"--config {path}: expected a mapping of keys to values")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"--config {path}: unknown keys {unknown}; see `hf-wagle unlearn --help`")
        parser.set_defaults(**values)
        for action in parser._actions:  # a key given in the file is no longer required on the command line
            if action.dest in values:
                action.required = False
    try:
        script, args, *_ = parser.parse_args_into_dataclasses(argv)  # the rest: --config itself
    except SystemExit as stop:
        if stop.code:
            raise ValueError("bad arguments (see the message above, or `hf-wagle unlearn --help`)") from None
        raise
    return _run_unlearn(script, args)


def _run_unlearn(script, args) -> int:
    import json
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    from .adapters import verify
    from .evaluation import answer_metrics, summarise
    from .hub import public_name, write_model_card
    from .mask import WeightMask
    from .trainer import WagleTrainer

    if script.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {script.dtype!r}")
    _check_model(script.model_name_or_path, "model_name_or_path")
    if script.base_model is not None and public_name(script.base_model) is None:
        raise ValueError(f"base_model {script.base_model!r}: expected a Hub id such as org/name, not a local path")
    forget = _load_data(script.forget_file, "forget_file", script.forget_config, script.forget_split)
    retain = _load_data(script.retain_file, "retain_file", script.retain_config, script.retain_split)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path, dtype=getattr(torch, script.dtype))
    if script.base_model:  # what PEFT writes as base_model_name_or_path and the card names as base_model
        model.name_or_path = model.config._name_or_path = script.base_model
    peft_config = None
    if script.use_peft:
        from peft import LoraConfig

        targets = script.lora_target_modules
        peft_config = LoraConfig(r=script.lora_r, lora_alpha=script.lora_alpha, task_type="CAUSAL_LM",
                                 target_modules=targets[0] if targets == ["all-linear"] else targets)
    mask = WeightMask.load(script.mask_dir, model=model) if script.mask_dir else None
    trainer = WagleTrainer(model=model, args=args, forget_dataset=forget, retain_dataset=retain,
                           processing_class=tokenizer, peft_config=peft_config, mask=mask)
    trainer.remove_callback(PrinterCallback)

    def scores():
        return {split: summarise(answer_metrics(trainer.model, tokenizer, data, args.prompt_template,
                                                max_length=args.max_length))["probability"]
                for split, data in (("forget", forget), ("retain", retain))}

    before = scores() if script.evaluate else None
    trainer.train()
    after = scores() if script.evaluate else None
    if after is not None:
        trainer.results = {"before": before, "after": after}
    trainer.save_model(args.output_dir)
    trainer.accelerator.wait_for_everyone()  # under accelerate launch: the main process has written the folder
    if not trainer.is_world_process_zero():
        return 0
    report = verify(args.output_dir, base=None if script.use_peft else script.model_name_or_path)
    out = Path(args.output_dir)
    trainer.verification = report
    write_model_card(out, trainer)  # now with the verdict
    summary = {"output_dir": str(out), "confined": report["confined"], "steps": trainer.state.global_step,
               "processes": trainer.args.world_size,
               "engine": "fsdp2" if trainer.is_fsdp_enabled else ("ddp" if trainer.args.world_size > 1
                                                                  else "single process"),
               "changeable": trainer.enforced_mask.num_selected, "total": trainer.enforced_mask.num_total,
               "evaluation": trainer.results if script.evaluate else None}
    (out / "unlearn_results.json").write_text(json.dumps(summary, indent=2))
    print(f"unlearned {script.model_name_or_path} in {summary['steps']} steps; {summary['changeable']} of "
          f"{summary['total']} weights could change; confined to its mask: {'yes' if report['confined'] else 'NO'}")
    if script.evaluate:
        for split in ("forget", "retain"):
            print(f"  {split} answer probability {before[split]:.4g} -> {after[split]:.4g}")
    print(f"wrote {out}")
    return 0 if report["confined"] else 1


class _DefaultsShown(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the default is empty (None, False) or the help already
    says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(prog="hf-wagle", description="WAGLE unlearning for Hugging Face models")
    parser.add_argument("--version", action="version", version=f"hf-wagle {__version__}")
    with_defaults = functools.partial(argparse.ArgumentParser, formatter_class=_DefaultsShown)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=with_defaults)
    demo = sub.add_parser("demo", help="unlearn end to end and print what changed: a fictitious world memorised "
                                       "by a small model, or (--model smollm2) real knowledge of a pretrained model")
    demo.add_argument("--model", default="world", choices=("world", "smollm2"),
                      help="world: a small Llama trained from scratch on a fictitious world (seconds); smollm2: the "
                           "pretrained SmolLM2-135M-Instruct forgets chemical element symbols")
    demo.add_argument("--output-dir", help="where the adapters go (default: wagle_demo or wagle_demo_smollm2)")
    demo.add_argument("--steps", type=int, help="optimizer steps per unlearning run (default: 30 world, 12 smollm2)")
    demo.add_argument("--mask-ratio", type=float,
                      help="fraction of weights that may change (default: 0.8 world, 0.5 smollm2)")
    demo.add_argument("--full", action="store_true", help="full-parameter unlearning instead of masked LoRA")
    demo.set_defaults(func=_demo)
    unlearn = sub.add_parser("unlearn", add_help=False,
                             help="unlearn from a YAML config (model, data, every WagleConfig key), save and verify "
                                  "the adapter; `hf-wagle unlearn --help` lists the keys")
    unlearn.set_defaults(func=None)  # main() hands `unlearn ...` to its own parser
    _add_evaluate(sub)
    _add_attribute(sub)
    _add_compare_masks(sub)
    _add_export(sub)
    _add_verify(sub)
    _add_push(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["unlearn"]:  # its own parser (HfArgumentParser over the dataclasses)
        command, run = "unlearn", lambda: _unlearn(argv[1:])
    else:
        args = build_parser().parse_args(argv)
        command, run = args.command, lambda: args.func(args)
    try:
        return run()
    except (ValueError, OSError, NotImplementedError, RuntimeError, ArithmeticError, TypeError) as error:
        # bad input, a missing model or file, the Hub offline or refusing, a diverging run (FloatingPointError), a
        # config value of the wrong type: one line, no traceback, status 2 (OSError covers a missing path,
        # huggingface_hub's HTTP errors and offline mode). HF_WAGLE_DEBUG=1 shows the traceback.
        if os.environ.get("HF_WAGLE_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"hf-wagle {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
