"""The multi-method, multi-seed comparison behind ``zootune compare CONFIG.yaml``.

A compare config is a ``zootune tune`` config plus a ``compare:`` section naming the methods
(registered method names with their options; a ``label``, per-entry ``overrides`` and a
validation-selected ``grid`` each), the seeds and the reference (the single sources). Every cell
(method x seed) is trained by the shared trainer (:func:`zootune.train.run_config`); runs are
stored by the hash of their config, so the fine-tuned sources that ``ensemble``, ``distill``,
``ced``/``fe`` +finetuned and the ``finetune`` baseline share are trained once; finished cells are
skipped and unfinished ones resumed. The result is ``results.md`` + ``results.json``: test score
mean ± std, seed-paired differences against the best single source chosen on validation,
measured training / inference FLOPs and parameters, wall time (the paper's Table 1)::

    from zootune.compare import load_compare, run_compare
    res = run_compare(load_compare("digits_tiny"), "runs/cmp")
    res["summary"]["rows"]

It may import :mod:`zootune.train` (it drives it), never :mod:`zootune.commands`.
"""

from zootune.compare.runner import (
    CompareResult,
    measure_costs,
    run_compare,
    run_dir_name,
    run_key,
)
from zootune.compare.spec import (
    Cell,
    CompareOptions,
    CompareSpec,
    compare_examples,
    load_compare,
    plan_cells,
)
from zootune.compare.table import format_markdown, summarize, write_tables

__all__ = ["Cell", "CompareOptions", "CompareResult", "CompareSpec", "compare_examples",
           "format_markdown", "load_compare", "measure_costs", "plan_cells", "run_compare",
           "run_dir_name", "run_key", "summarize", "write_tables"]
