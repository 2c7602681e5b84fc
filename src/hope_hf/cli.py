"""The `hope-hf` command line: `train`, `eval`, `generate`, `bench`.

    hope-hf train --config hope-tiny --data embedded --max-steps 200 --output-dir runs/hope-tiny
    hope-hf train --config hope-tiny --output-dir runs/hope-tiny --resume          # continue a stopped run
    accelerate launch --num_processes 2 -m hope_hf.cli train --config hope-tiny ...  # DDP, same command
    hope-hf eval runs/hope-tiny --data embedded                                     # held-out perplexity
    hope-hf generate runs/hope-tiny --prompt "Return the number of"                 # streamed text
    hope-hf bench --lengths 512 2048                        # speed, memory, FLOP/s vs a same-size Llama

Bad input (a missing data file, an unknown config name, an empty dataset, a block longer than the model's
limit, an output folder that holds another run, ...) ends with one `error: ...` line and exit status 2;
`--traceback` shows the Python traceback instead. Ctrl-C during training saves a checkpoint at the current
step and exits with status 130; `--resume` continues from it.

This is not a model file: it is not carried by Hub checkpoints and may import the package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .benchmark import FAMILIES as BENCH_FAMILIES
from .configuration_hope import FAST_MEMORY_IMPLEMENTATIONS

#: Exit status for bad input (as argparse uses for bad arguments).
EXIT_BAD_INPUT = 2
#: Exit status of a run stopped by Ctrl-C / SIGINT (128 + SIGINT).
EXIT_INTERRUPTED = 130

#: Written in the output folder when a run starts: the settings, so `--resume` can check it continues the same run.
RUN_FILE = "hope_run.json"
#: Written in the output folder when a run ends: steps, losses, held-out perplexity.
RESULTS_FILE = "results.json"
#: Settings that must not change when a run is resumed (the others, e.g. `--max-steps`, may).
RESUME_SETTINGS = ("config", "data", "data_config", "text_column", "train_split", "validation_split",
                   "validation_fraction", "sample_by", "tokenizer", "vocab_size", "block_size", "batch_size",
                   "gradient_accumulation_steps", "optimizer", "schedule", "schedule_warmup_steps", "lr",
                   "weight_decay", "lr_scheduler", "warmup_steps", "max_grad_norm", "bf16", "seed")

#: The evaluation tasks of `hope-hf eval --tasks` (the lm-eval suite plugs in here later).
EVAL_TASKS = ("perplexity", "lm_eval", "long_context", "continual")


class CliError(Exception):
    """A user-facing error: printed as `error: <message>` with exit status 2, no traceback."""


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the line breaks of descriptions and epilogs."""


def _wrap(text: str, width: int = 100) -> str:
    """Wrap each paragraph (separated by a blank line) of a description to `width` columns."""
    import textwrap

    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in text.split("\n\n"))


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="embedded",
                       help="'embedded' (the built-in English corpus of Python standard-library docstrings and "
                            "language reference, about 2 MB, no download), a local file or folder (.txt, .json, "
                            ".jsonl, .parquet, .csv), or a Hugging Face Hub dataset name such as 'wikitext' "
                            "(with --data-config wikitext-103-raw-v1)")
    group.add_argument("--data-config", default=None, help="configuration name of a Hub dataset")
    group.add_argument("--text-column", default="text", help="the column that holds the text")
    group.add_argument("--train-split", default="train",
                       help="split to train on; slicing works, e.g. 'train[:10%%]'")
    group.add_argument("--validation-split", default=None,
                       help="held-out split (default: 'validation' if the dataset has one, else a seeded "
                            "--validation-fraction of the training split)")
    group.add_argument("--validation-fraction", type=float, default=0.05,
                       help="share of the training documents held out when there is no validation split")
    group.add_argument("--sample-by", choices=("line", "paragraph", "document"), default="line",
                       help="for .txt files: one document per line, per paragraph (blank-line separated) or per file")
    group.add_argument("--block-size", type=int, default=128,
                       help="tokens per training block; documents are packed with an EOS token between them. "
                            "At most the model's max_position_embeddings")


def build_parser() -> argparse.ArgumentParser:
    """The `hope-hf` argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(prog="hope-hf", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the Python traceback instead of one 'error:' line")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice, one per core); on a shared machine "
                             "fewer threads than busy cores avoids oversubscription, which slows CPU runs many times")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", formatter_class=_HelpFormatter, help="train a model from modeling_configs/ (or a config file)",
        description=_wrap("Train Hope (or a Transformer baseline) with the Hugging Face Trainer.\n\n"
                    "The output folder receives the tokenizer and the settings at the start (hope_run.json), "
                    "a checkpoint every --save-steps steps (model, optimiser, LR scheduler, CMS schedule state, "
                    "data position, RNG), TensorBoard logs in runs/, and at the end the shareable model "
                    "(model.safetensors, config.json, the model's .py files, tokenizer), trainer_state.json "
                    "(every logged metric) and results.json (steps, losses, held-out perplexity).\n\n"
                    "Ctrl-C saves a checkpoint at the current step; rerun the same command with --resume to "
                    "continue exactly where it stopped. Under `accelerate launch` the same command runs DDP "
                    "or FSDP (see accelerate_configs/)."),
        epilog="examples:\n"
               "  hope-hf train --config hope-tiny --max-steps 200 --output-dir runs/hope-tiny\n"
               "  hope-hf train --config transformer-tiny --tokenizer runs/hope-tiny --max-steps 200 "
               "--output-dir runs/llama-tiny\n"
               "  hope-hf train --config hope-340m --data wikitext --data-config wikitext-103-raw-v1 "
               "--tokenizer gpt2 --block-size 1024 --bf16 --optimizer m3 --output-dir runs/hope-340m\n"
               "  accelerate launch --config_file accelerate_configs/ddp.yaml -m hope_hf.cli train "
               "--config hope-tiny --output-dir runs/ddp")
    model = train.add_argument_group("model")
    model.add_argument("--config", default="hope-tiny",
                       help="a name from modeling_configs/ (hope-tiny, transformer-tiny, hope-340m, ...), a JSON "
                            "file, or a folder with config.json")
    model.add_argument("--tokenizer", default=None,
                       help="an AutoTokenizer name or folder (e.g. gpt2, or the output folder of an earlier run). "
                            "Default: a byte-level BPE trained on the training split, saved with the model")
    model.add_argument("--vocab-size", type=int, default=None,
                       help="vocabulary of the trained BPE (default: the config's vocab_size). The model's "
                            "vocab_size is set to the tokenizer's size")
    _add_data_arguments(train)
    optim = train.add_argument_group("optimisation")
    optim.add_argument("--optimizer", default="adamw", choices=("adamw", "delta-momentum", "dmgd", "m3"),
                       help="outer optimiser (hope_hf.training.build_optimizer)")
    optim.add_argument("--schedule", action=argparse.BooleanOptionalAction, default=True,
                       help="CMS update schedule: level j steps every update_period_j steps with the summed "
                            "gradients (HopeScheduleCallback); --no-schedule updates every level every step. "
                            "Ignored for non-Hope models")
    optim.add_argument("--schedule-warmup-steps", type=int, default=0,
                       help="CMS schedule warm-up: every level steps every step for the first N steps, the periods "
                            "count from there")
    optim.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    optim.add_argument("--weight-decay", type=float, default=0.1, help="decoupled weight decay")
    optim.add_argument("--lr-scheduler", default="cosine",
                       help="Trainer LR schedule: cosine, linear, constant, constant_with_warmup, ...")
    optim.add_argument("--warmup-steps", type=int, default=0, help="linear LR warm-up steps")
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 disables)")
    optim.add_argument("--batch-size", type=int, default=8, help="blocks per device per step")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--max-steps", type=int, default=None,
                       help="optimiser steps; overrides --epochs")
    optim.add_argument("--epochs", type=float, default=1.0, help="passes over the training blocks")
    optim.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or GPU)")
    optim.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute each Hope block in the backward pass to save memory")
    optim.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data order and held-out split")
    run = train.add_argument_group("output and checkpoints")
    run.add_argument("--output-dir", required=True, help="folder of the run (see above)")
    run.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                     help="continue the run in --output-dir from its latest complete checkpoint (or the "
                          "checkpoint folder given); the settings above must match the run's")
    run.add_argument("--overwrite", action="store_true",
                     help="delete the run already in --output-dir and start afresh")
    run.add_argument("--save-steps", type=int, default=100, help="checkpoint every N steps")
    run.add_argument("--save-total-limit", type=int, default=2, help="keep at most N checkpoints")
    run.add_argument("--logging-steps", type=int, default=10, help="log the loss every N steps")
    run.add_argument("--eval-steps", type=int, default=None,
                     help="also compute the held-out loss every N steps (the final perplexity is always computed)")
    run.add_argument("--max-eval-blocks", type=int, default=None,
                     help="score at most N held-out blocks for the final perplexity (default: all)")
    run.add_argument("--report-to", nargs="+", default=None,
                     help="Trainer integrations (default: tensorboard if installed, else none)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (logs are printed as lines)")
    train.set_defaults(func=train_command)

    ev = commands.add_parser(
        "eval", formatter_class=_HelpFormatter,
        help="evaluate a trained model (perplexity, lm-eval suite, long context, continual learning)",
        description=_wrap("Evaluate a saved model folder; --tasks picks any subset.\n\nperplexity: exact token-level "
                    "perplexity on the held-out split of --data, packed into --block-size blocks like training "
                    "(each block scored on its own), computed directly rather than with `evaluate`'s perplexity "
                    "metric, which downloads a model by name.\n\nlm_eval: the paper's zero-shot suite with "
                    "lm-evaluation-harness (Hub datasets, or local upstream files with --offline-dir).\n\n"
                    "long_context: RULER-style needle in a haystack at --niah-lengths and perplexity by position."
                    "\n\ncontinual: the class-incremental benchmark (trains its own small models; --continual-"
                    "setting).\n\nThe lm_eval, long_context and continual parts write report.md / report.json "
                    "into --report-dir (hope_hf.evaluation.run_suite)."),
        epilog="examples:\n  hope-hf eval runs/hope-tiny --data embedded --block-size 128\n"
               "  hope-hf eval runs/hope-tiny --tasks lm_eval --offline-dir DATA --limit 100\n"
               "  hope-hf eval runs/hope-tiny --tasks long_context --niah-lengths 1024 2048 --niah-samples 5")
    ev.add_argument("model", help="a folder written by `hope-hf train` or save_pretrained")
    ev.add_argument("--tokenizer", default=None, help="tokenizer name or folder (default: the model folder)")
    ev.add_argument("--tasks", nargs="+", default=["perplexity"], choices=EVAL_TASKS, help="what to evaluate")
    _add_data_arguments(ev)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-blocks", type=int, default=None, help="score at most N blocks (default: all)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the held-out split (when the data has none)")
    ev.add_argument("--output", default=None, help="also write the results to this JSON file")
    ev.add_argument("--report-dir", default="outputs/eval",
                    help="lm_eval / long_context / continual: folder of report.md, report.json and their files")
    ev.add_argument("--lm-eval-tasks", nargs="+", default=None,
                    help="lm_eval: a subset of the paper's suite (default: all nine tasks)")
    ev.add_argument("--offline-dir", default=None,
                    help="lm_eval: a folder of the upstream task files, DATA/<task>/<split>.jsonl (no Hub access)")
    ev.add_argument("--limit", type=float, default=None, help="lm_eval: at most N examples per task")
    ev.add_argument("--max-length", type=int, default=None, help="lm_eval: rolling-perplexity window in tokens")
    ev.add_argument("--niah-lengths", type=int, nargs="+", default=[4096, 8192, 16384],
                    help="long_context: needle-in-a-haystack context lengths in tokens")
    ev.add_argument("--niah-samples", type=int, default=20, help="long_context: samples per task and length")
    ev.add_argument("--ppl-length", type=int, default=4096,
                    help="long_context: document length of the perplexity-by-position curve")
    ev.add_argument("--ppl-documents", type=int, default=8,
                    help="long_context: documents averaged in that curve (0 skips it)")
    ev.add_argument("--continual-setting", default="tiny", choices=("tiny", "full"),
                    help="continual: the benchmark's size (full is a GPU job)")
    ev.add_argument("--device", default="cpu", help="lm_eval / long_context / continual: cpu or cuda")
    ev.set_defaults(func=eval_command)

    gen = commands.add_parser(
        "generate", formatter_class=_HelpFormatter, help="continue a prompt, streaming the text",
        description=_wrap("Generate text from a saved model, printed token by token as it is produced. "
                    "Decoding uses the recurrent cache: each new token costs the same, whatever the prompt length."),
        epilog='example:\n  hope-hf generate runs/hope-tiny --prompt "Return the number of" --max-new-tokens 40')
    gen.add_argument("model", help="a folder written by `hope-hf train` or save_pretrained")
    gen.add_argument("--prompt", required=True, help="the text to continue")
    gen.add_argument("--tokenizer", default=None, help="tokenizer name or folder (default: the model folder)")
    gen.add_argument("--max-new-tokens", type=int, default=40)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding, > 0 = sampling")
    gen.add_argument("--top-k", type=int, default=50, help="sampling: keep the k most likely tokens")
    gen.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability mass")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=generate_command)

    bench = commands.add_parser(
        "bench", formatter_class=_HelpFormatter,
        help="speed, memory and FLOP/s of Hope, Hope-Attention, Titans and a same-size Llama",
        description=_wrap("One report, measured in one run: training tokens/s (forward + backward + AdamW), "
                          "inference tokens/s (forward, no cache), decode ms/token after a prompt of each length "
                          "(cache on), peak memory of a training and an inference step, and achieved FLOP/s as a "
                          "fraction of a matmul peak measured in the same run; ratios to a Llama with the same "
                          "width, depth, heads, vocabulary and parameter count. Medians of --repeats steps after "
                          "--warmup; the models take turns round robin. Every length runs --tokens-per-step "
                          "tokens per step (batch = that // length, at least 1). The code and what each figure "
                          "means: src/hope_hf/benchmark.py."),
        epilog="examples:\n  hope-hf --threads 1 bench                                  # the full report (~15 min, 2 cores)"
               "\n  hope-hf --threads 1 bench --lengths 512 2048 --json bench.json"
               "\n  hope-hf bench --device cuda --dtype bfloat16 --lengths 512 2048 8192"
               "\n  hope-hf bench --parts decode --lengths 512 2048 8192           # decoding only"
               "\n  hope-hf --threads 1 bench --models hope --variant hope-c32=hope:projection_chunk_size=32 "
               "--parts train --lengths 2048   # a setting's cost")
    bench.add_argument("--models", nargs="+", default=["hope", "hope-attention", "titans"],
                       choices=BENCH_FAMILIES,
                       help="families to measure (switches of modeling_configs/<family>-tiny.json at the bench "
                            "shape, CMS widths set to hope-r2's parameter count); the Llama is always measured")
    bench.add_argument("--variant", action="append", default=[], metavar="NAME=FAMILY:FIELD=VALUE[,...]",
                       help="also measure FAMILY with these HopeConfig fields (values read as JSON), named NAME, at "
                            "the same parameter count; repeatable (e.g. hope-c32=hope:projection_chunk_size=32)")
    bench.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192], help="sequence lengths T")
    bench.add_argument("--size", default=None, choices=("tiny", "340m", "760m", "1.3b"),
                       help="take the named configurations <family>-<size> and transformer-<size> of "
                            "modeling_configs/ instead of the bench shape below (a GPU job above tiny)")
    bench.add_argument("--hidden-size", type=int, default=256)
    bench.add_argument("--layers", type=int, default=4)
    bench.add_argument("--heads", type=int, default=4)
    bench.add_argument("--vocab-size", type=int, default=8192)
    bench.add_argument("--tokens-per-step", type=int, default=2048,
                       help="tokens of every training / inference step (batch = this // T, at least 1)")
    bench.add_argument("--repeats", type=int, default=3, help="timed steps per cell (the median is reported)")
    bench.add_argument("--warmup", type=int, default=None,
                       help="untimed steps per cell first (default: 1; 2 with --memory-implementation compiled, whose "
                            "first steps compile a graph per batch shape)")
    bench.add_argument("--decode-steps", type=int, default=16, help="timed one-token decoding steps per cell")
    bench.add_argument("--parts", nargs="+", default=["train", "infer", "decode", "memory"],
                       choices=("train", "infer", "decode", "memory"), help="what to measure")
    bench.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute each block in the backward (all models; changes the training peaks)")
    bench.add_argument("--memory-implementation", default=None, choices=FAST_MEMORY_IMPLEMENTATIONS,
                       help="how the Hope models run their self-modifying memories: the eager chunk form or its "
                            "torch.compile'd steps (compiles during the warm-up; default: the configuration's, chunk)")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    bench.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                       help="float32, or bfloat16 autocast (the memories' state stays float32); default "
                            "bfloat16 on CUDA, float32 on CPU; the matmul peak is measured in it")
    bench.add_argument("--json", default=None, help="also write the results to this JSON file")
    bench.set_defaults(func=bench_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `hope-hf` with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise CliError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
    except Exception as err:
        from .data import DataError

        if args.traceback or not isinstance(err, (CliError, DataError)):
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


# ----------------------------------------------------------------------------------------------------------------
# Shared checks and loaders
# ----------------------------------------------------------------------------------------------------------------

def _check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise CliError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _load_config(name_or_path: str):
    from .model_configs import load_config

    try:
        return load_config(name_or_path)
    except (ValueError, FileNotFoundError) as err:
        raise CliError(str(err)) from err


def _load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise CliError(f"could not load the tokenizer {name_or_path!r}: {str(err).splitlines()[0]}") from err


def _load_model(path: str):
    import hope_hf  # noqa: F401  (registers model_type "hope" with the Auto classes)
    from transformers import AutoModelForCausalLM

    if not (Path(path) / "config.json").is_file():
        raise CliError(f"no model at {path} (expected a folder with config.json, written by `hope-hf train`)")
    try:
        return AutoModelForCausalLM.from_pretrained(path).eval()
    except (OSError, ValueError) as err:
        raise CliError(f"could not load the model in {path}: {str(err).splitlines()[0]}") from err


def _check_block_size(block_size: int, config) -> None:
    """A block may not exceed the model's declared context, `max_position_embeddings`.

    For the attention mixer (and Llama) it is the RoPE range the model is built for. The self-modifying
    mixer has no positions and runs on any length, but its memories and chunk sizes are tuned for that
    context too, so the same field is its limit; raise it in the config to train on longer blocks.
    """
    if block_size < 2:
        raise CliError(f"--block-size must be >= 2, got {block_size}")
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and block_size > limit:
        raise CliError(f"--block-size {block_size} is above the model's limit: max_position_embeddings={limit} "
                       "in its config (use a smaller --block-size or a config with a larger max_position_embeddings)")


def _data_splits(args: argparse.Namespace):
    from .data import load_text_dataset

    return load_text_dataset(args.data, args.data_config, text_column=args.text_column,
                             train_split=args.train_split, validation_split=args.validation_split,
                             validation_fraction=args.validation_fraction, sample_by=args.sample_by, seed=args.seed)


def _held_out_blocks(splits, tokenizer, block_size: int, max_blocks: int | None):
    """The packed validation split as a tensor [N, block_size], or `None` if it is shorter than one block."""
    import torch

    from .data import DataError, pack_dataset

    try:
        blocks = pack_dataset(splits["validation"], tokenizer, block_size)
    except DataError:
        return None
    if max_blocks is not None:
        blocks = blocks.select(range(min(max_blocks, len(blocks))))
    return torch.tensor(list(blocks["input_ids"]), dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------------------

def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir` that were fully written (their `trainer_state.json`, saved
    last by the Trainer, parses), oldest first."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        state = path / "trainer_state.json"
        if not (suffix.isdigit() and state.is_file()):
            continue
        try:
            json.loads(state.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def _holds_run(output_dir: Path) -> bool:
    return output_dir.is_dir() and ((output_dir / RUN_FILE).exists() or any(output_dir.glob("checkpoint-*"))
                                    or (output_dir / "trainer_state.json").exists())


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in RESUME_SETTINGS}


def _prepare_output_dir(args: argparse.Namespace, is_main: bool) -> str | None:
    """Check `--output-dir` against `--resume` / `--overwrite`; return the checkpoint to resume from (or None)."""
    out = Path(args.output_dir)
    if args.resume and args.overwrite:
        raise CliError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise CliError(f"--output-dir {out} is a file, not a folder")
    if args.resume is None:
        if _holds_run(out):
            if not args.overwrite:
                raise CliError(f"--output-dir {out} holds another run ({RUN_FILE} or checkpoint-*); pass --resume to "
                               "continue it or --overwrite to delete it and start afresh")
            if is_main:
                shutil.rmtree(out)
        return None
    if args.resume == "latest":
        checkpoints = complete_checkpoints(out) if out.is_dir() else []
        if not checkpoints:
            raise CliError(f"--resume: no complete checkpoint in {out} (checkpoints are written every --save-steps "
                           "steps); start without --resume")
        checkpoint = checkpoints[-1]
    else:
        checkpoint = Path(args.resume)
        if not (checkpoint / "trainer_state.json").is_file():
            raise CliError(f"--resume {checkpoint}: not a complete checkpoint folder (no trainer_state.json)")
    run_file = out / RUN_FILE
    if run_file.is_file():
        saved = json.loads(run_file.read_text()).get("settings", {})
        now = _settings(args)
        changed = [f"--{k.replace('_', '-')} {now[k]!r} (the run has {saved[k]!r})" for k in RESUME_SETTINGS
                   if k in saved and saved[k] != now[k]]
        if changed:
            raise CliError("--resume continues a run with other settings: " + "; ".join(changed))
    return str(checkpoint)


def stop_on_signal_callback():
    """A Trainer callback: the first Ctrl-C (SIGINT) or SIGTERM saves a checkpoint after the current step and
    stops training (its `requested` attribute is then True); a second one interrupts at once.

    Only for single-process runs: ranks of a distributed run could see the signal at different steps and then
    wait for each other forever, so there the signal interrupts at once and `--resume` starts from the last
    periodic checkpoint.
    """
    from transformers import TrainerCallback   # imported here: `hope-hf --help` stays fast

    class StopOnSignal(TrainerCallback):
        def __init__(self):
            self.requested = False
            self._previous: dict[int, Any] = {}

        def _handle(self, signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                  "(again to stop at once)", file=sys.stderr, flush=True)

        def on_train_begin(self, args, state, control, **kwargs):
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

        def on_step_end(self, args, state, control, **kwargs):
            if self.requested:
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_train_end(self, args, state, control, **kwargs):
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    return StopOnSignal()


def _training_arguments(args: argparse.Namespace):
    import torch
    from transformers import TrainingArguments

    report_to = args.report_to
    if report_to is None:
        try:
            import tensorboard  # noqa: F401

            report_to = ["tensorboard"]
        except ImportError:
            report_to = "none"
    return TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps if args.max_steps is not None else -1,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        bf16=args.bf16,
        activation_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        eval_strategy="steps" if args.eval_steps else "no",
        eval_steps=args.eval_steps,
        report_to=report_to,
        seed=args.seed,
        data_seed=args.seed,
        disable_tqdm=args.no_progress,
        dataloader_pin_memory=torch.cuda.is_available(),
        # no accelerator: say so, so that bf16 autocast runs on CPU and several processes run DDP over gloo
        # (otherwise the Trainer refuses bf16 and `accelerate launch` ranks see no distributed setup)
        use_cpu=not _has_accelerator(),
    )


def _has_accelerator() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or torch.backends.mps.is_available()
            or (xpu is not None and xpu.is_available()))


def train_command(args: argparse.Namespace) -> int:
    """`hope-hf train`: see the subcommand's help."""
    _check_positive(args, "batch_size", "gradient_accumulation_steps", "max_steps", "epochs", "lr", "save_steps",
                    "logging_steps", "eval_steps", "max_eval_blocks", "vocab_size")
    for name in ("warmup_steps", "schedule_warmup_steps"):
        if getattr(args, name) < 0:
            raise CliError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    config = _load_config(args.config)
    is_hope = config.model_type == "hope"
    if is_hope and args.schedule and os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise CliError("the CMS schedule (HopeScheduleCallback) does not support FSDP: pass --no-schedule "
                       "(every level then steps every step), or use DDP")
    _check_block_size(args.block_size, config)

    from transformers import AutoModelForCausalLM, set_seed

    import hope_hf  # noqa: F401  (registers model_type "hope" with the Auto classes)

    from .baselines import count_parameters
    from .data import collate_blocks, pack_dataset, train_bpe_tokenizer
    from .perplexity import perplexity
    from .training import make_trainer

    training_args = _training_arguments(args)
    training_args.device        # sets up the (distributed) state of this process; `accelerate launch` gives the ranks
    state = training_args.distributed_state
    out = Path(args.output_dir)
    resume_from = _prepare_output_dir(args, state.is_main_process)
    state.wait_for_everyone()              # nobody writes into the folder before every rank has checked it
    start = time.time()
    with training_args.main_process_first(local=False, desc="preparing data and tokenizer"):
        splits = _data_splits(args)
        if args.tokenizer is not None:
            tokenizer = _load_tokenizer(args.tokenizer)
        elif resume_from is not None or not state.is_main_process:
            tokenizer = _load_tokenizer(str(out))     # the one this run trained and saved
        else:
            vocab = args.vocab_size or config.vocab_size
            print(f"training a byte-level BPE tokenizer ({vocab} tokens) on {len(splits['train'])} documents",
                  flush=True)
            tokenizer = train_bpe_tokenizer(splits["train"]["text"], vocab, show_progress=not args.no_progress)
        if state.is_main_process and resume_from is None:
            out.mkdir(parents=True, exist_ok=True)
            tokenizer.save_pretrained(out)
            (out / RUN_FILE).write_text(json.dumps({"settings": _settings(args), "command": sys.argv,
                                                    "hope_hf_version": hope_hf.__version__}, indent=2))
        train_blocks = pack_dataset(splits["train"], tokenizer, args.block_size)
        eval_blocks = pack_dataset(splits["validation"], tokenizer, args.block_size) if args.eval_steps else None

    if config.vocab_size != len(tokenizer):
        print(f"vocab_size: {config.vocab_size} in the config -> {len(tokenizer)}, the tokenizer's size", flush=True)
        config.vocab_size = len(tokenizer)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, name, getattr(tokenizer, name))
    set_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config)
    if state.is_main_process:
        print(f"model: {config.model_type} ({args.config}), {count_parameters(model):,} parameters; data: "
              f"{len(train_blocks)} training blocks of {args.block_size} tokens; optimizer {args.optimizer}"
              + (f", CMS schedule {'on' if args.schedule else 'off'}" if is_hope else "")
              + (f"; resuming from {resume_from}" if resume_from else ""), flush=True)

    stopper = stop_on_signal_callback() if state.num_processes == 1 else None
    trainer = make_trainer(
        model, training_args, train_blocks, eval_blocks,
        optimizer=args.optimizer, schedule=args.schedule and is_hope, warmup_steps=args.schedule_warmup_steps,
        callbacks=[stopper] if stopper is not None else None, data_collator=collate_blocks,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    step = trainer.state.global_step
    if stopper is not None and stopper.requested:
        checkpoints = complete_checkpoints(out)
        where = checkpoints[-1] if checkpoints else out
        print(f"stopped at step {step}; checkpoint {where}\nto continue: hope-hf train ... --output-dir {out} --resume",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED

    if getattr(trainer, "is_fsdp_enabled", False):    # gather the shards into one shareable model file
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))
    trainer.save_state()
    if not state.is_main_process:
        return 0
    tokenizer.save_pretrained(out)
    losses = [entry for entry in trainer.state.log_history if "loss" in entry]
    results: dict[str, Any] = {
        "config": args.config, "model_type": config.model_type, "parameters": count_parameters(model),
        "global_step": step, "world_size": state.num_processes,
        "global_batch_blocks": args.batch_size * args.gradient_accumulation_steps * state.num_processes,
        "block_size": args.block_size, "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None, "train_seconds": time.time() - start,
    }
    held_out = _held_out_blocks(splits, tokenizer, args.block_size, args.max_eval_blocks)
    if held_out is None:
        print("held-out split shorter than one block: no perplexity", flush=True)
    else:
        model = trainer.model.float() if args.bf16 else trainer.model
        results["validation"] = perplexity(model, held_out, args.batch_size, progress=not args.no_progress)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    ppl = results.get("validation", {}).get("perplexity")
    print(f"done: {step} steps, last logged loss {results['last_loss']}"
          + (f", held-out perplexity {ppl:.2f}" if ppl is not None else "")
          + f"\nmodel and tokenizer: {out.resolve()}\nresults: {(out / RESULTS_FILE).resolve()}", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# eval, generate, bench
# ----------------------------------------------------------------------------------------------------------------

def eval_command(args: argparse.Namespace) -> int:
    """`hope-hf eval`: see the subcommand's help."""
    _check_positive(args, "batch_size", "max_blocks")
    model = _load_model(args.model)
    _check_block_size(args.block_size, model.config)
    tokenizer = _load_tokenizer(args.tokenizer or args.model)
    from .perplexity import perplexity

    results: dict[str, Any] = {"model": str(Path(args.model).resolve()), "data": args.data,
                               "block_size": args.block_size}
    if "perplexity" in args.tasks:
        blocks = _held_out_blocks(_data_splits(args), tokenizer, args.block_size, args.max_blocks)
        if blocks is None:
            raise CliError(f"the held-out split of {args.data} is shorter than one block of {args.block_size} tokens")
        results["perplexity"] = perplexity(model, blocks, args.batch_size, progress=True)
        r = results["perplexity"]
        print(f"held-out perplexity {r['perplexity']:.3f} (loss {r['loss']:.4f} nats/token, {r['tokens']:,} "
              f"tokens in {r['blocks']} blocks of {args.block_size})", flush=True)
    suite_parts = [task for task in args.tasks if task != "perplexity"]
    if suite_parts:
        from .evaluation import run_suite

        try:
            results["suite"] = run_suite(
                {Path(args.model).resolve().name: model}, parts=suite_parts, tokenizer=tokenizer,
                tasks=args.lm_eval_tasks, offline_dir=args.offline_dir, output_dir=args.report_dir,
                batch_size=args.batch_size, limit=args.limit, device=args.device, max_length=args.max_length,
                long_context={"lengths": args.niah_lengths, "samples": args.niah_samples,
                              "ppl_length": args.ppl_length, "ppl_documents": args.ppl_documents},
                continual={"setting": args.continual_setting})
        except (ValueError, FileNotFoundError) as err:     # bad task names, lengths, offline folders
            raise CliError(str(err)) from err
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2, default=str))
        print(f"results: {Path(args.output).resolve()}", flush=True)
    return 0


def generate_command(args: argparse.Namespace) -> int:
    """`hope-hf generate`: see the subcommand's help."""
    _check_positive(args, "max_new_tokens", "top_k", "top_p")
    if args.temperature < 0:
        raise CliError(f"--temperature must be >= 0, got {args.temperature}")
    import torch
    from transformers import TextStreamer, set_seed

    model = _load_model(args.model)
    tokenizer = _load_tokenizer(args.tokenizer or args.model)
    ids = tokenizer(args.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise CliError("--prompt is empty")
    set_seed(args.seed)
    sampling = args.temperature > 0
    extra = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p) if sampling else {}
    streamer = TextStreamer(tokenizer, skip_special_tokens=True)
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                       do_sample=sampling, streamer=streamer, pad_token_id=tokenizer.pad_token_id, **extra)
    return 0


def bench_command(args: argparse.Namespace) -> int:
    """`hope-hf bench`: see the subcommand's help."""
    _check_positive(args, "hidden_size", "layers", "heads", "vocab_size", "tokens_per_step", "repeats",
                    "decode_steps")
    if min(args.lengths) < 1:
        raise CliError(f"--lengths must be >= 1, got {args.lengths}")
    if args.warmup is None:
        args.warmup = 2 if args.memory_implementation == "compiled" else 1
    if args.warmup < 0:
        raise CliError(f"--warmup must be >= 0, got {args.warmup}")
    import torch

    from .benchmark import Variant, markdown_table, run_bench, summary

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {device}: CUDA is not available")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    try:
        variants = [Variant.parse(text) for text in args.variant]
        result = run_bench(models=args.models, lengths=args.lengths, size=args.size, hidden_size=args.hidden_size,
                           layers=args.layers, gradient_checkpointing=args.gradient_checkpointing,
                           heads=args.heads, vocab_size=args.vocab_size, tokens_per_step=args.tokens_per_step,
                           repeats=args.repeats, warmup=args.warmup, decode_steps=args.decode_steps,
                           parts=args.parts, device=device, dtype=dtype,
                           memory_implementation=args.memory_implementation, variants=variants,
                           log=lambda line: print(line, flush=True))
    except ValueError as err:     # an invalid model shape or variant (HopeConfig or the bench names the field)
        raise CliError(str(err)) from err
    print(f"\n{summary(result)}\n{markdown_table(result)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result | {"command": sys.argv}, indent=2, default=str))
    return 0


def bench_script(argv: list[str], parts: list[str]) -> int:
    """`hope-hf bench --parts PARTS ARGV` for the `eval/bench_*.py` wrappers; a `--threads N` anywhere in `argv` is
    passed to `hope-hf` itself."""
    argv, front = list(argv), []
    if "--threads" in argv:
        i = argv.index("--threads")
        front, argv[i:i + 2] = argv[i:i + 2], []
    return main([*front, "bench", "--parts", *parts, *argv])


if __name__ == "__main__":
    sys.exit(main())
