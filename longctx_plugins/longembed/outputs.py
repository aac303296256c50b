"""The files ``longctx-eval`` writes, each whole or not at all (:func:`.files.write_text_atomic`): one mteb-format
JSON per run and task (and per seed), then ``results.md``, ``results.json``, ``results.png`` and ``run_config.json``."""

from __future__ import annotations

import json
import os
import time

from .files import write_text_atomic


def mteb_name(task: str) -> str:
    """The file name (without ``.json``) of ``task``'s results: its mteb task name when it has one."""
    from .tasks import MTEB_NAMES

    return MTEB_NAMES.get(task, task)


def write_run_files(
    output: str, run_name: str, run_tasks, summaries: dict, per_task: dict, elapsed: float, mteb_version: str | None
) -> None:
    """``<output>/<run folder>/<task>.json`` in mteb format for each task of one run (``summaries``: ``{task:
    summary}``), and with several seeds one file per seed under ``seed_<k>/`` (``per_task``: ``{task: {seed:
    result}}``)."""
    from .report import write_mteb_json
    from .strategies import folder_name

    folder = os.path.join(output, folder_name(run_name))
    for name in run_tasks:
        write_mteb_json(os.path.join(folder, f"{mteb_name(name)}.json"), name, summaries[name], elapsed, mteb_version)
        if len(per_task[name]) > 1:  # one mteb file per seed as well
            for seed, r in per_task[name].items():
                write_mteb_json(
                    os.path.join(folder, f"seed_{seed}", f"{mteb_name(name)}.json"), name, r, elapsed, mteb_version
                )


def write_summary(args, source, results: dict, device: str, data_record, score_record, start: float, say) -> None:
    """Say the results table, then write ``run_config.json`` (the arguments, the model, versions and what came from
    the caches), ``results.md``, ``results.png`` (when matplotlib is there) and ``results.json``, and say so."""
    from .cache import versions
    from .report import format_table, plot, scores_note

    say(format_table(results))
    config = {k: v for k, v in vars(args).items()}
    config.update(
        model_path=source.name_or_path,
        model_source=source.kind,
        resolved_device=device,
        elapsed_s=round(time.time() - start, 1),
        versions=versions("torch", "transformers", "tokenizers", "numpy", "bm25s", "mteb"),
        cache={"data": data_record, "scores": score_record},
    )
    write_text_atomic(os.path.join(args.output, "run_config.json"), json.dumps(config, indent=2))
    title = f"{source.label}, target length {args.target_length}" + (
        f", {len(args.seeds)} seeds" if len(args.seeds) > 1 else ""
    )
    seeds_note = f" Cells: mean ± std over seeds {','.join(map(str, args.seeds))}." if len(args.seeds) > 1 else ""
    write_text_atomic(
        os.path.join(args.output, "results.md"),
        f"# LongEmbed results ({title})\n\n{scores_note(results)}{seeds_note}\n\n"
        + format_table(results, markdown=True),
    )
    png = plot(results, os.path.join(args.output, "results.png"), title)
    write_text_atomic(os.path.join(args.output, "results.json"), json.dumps(results, indent=2))
    say(
        f"wrote {args.output}/results.md, results.json, run_config.json{', results.png' if png else ''} "
        f"({time.time() - start:.0f}s)"
    )
