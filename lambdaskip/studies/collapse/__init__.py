"""The rank-collapse depth study (``lambdaskip collapse``), one responsibility a module:

- :mod:`.config`: :class:`StudyConfig`, :data:`PRESETS`, the variants (panels) and their mixers;
- :mod:`.text`: inputs (the bundled text, a built-in tokenizer, a seeded embedding, Gaussian tokens);
- :mod:`.run`: :func:`run_study` (μ at every depth of every stack, the constants at every block; the λ sweep in
  one pass per stack, :func:`run_sweep`; the depth of collapse);
- :mod:`.verdict`: Theorem 4.1 per (variant, λ);
- :mod:`.outputs` and :mod:`.plots`: CSV, JSON, PNG and the terminal table;
- :mod:`.hf`: the same study on a local ``transformers`` model (``--hf-model``).

Library use: ``results = run_study(StudyConfig(depth=16)); write_outputs(results, "out")``.
"""
from lambdaskip.studies.collapse.config import (DEFAULT_LAMS, INPUTS, PRESETS, RECORDED, StudyConfig, StudyError,
                                                Variant, mixer_kwargs, variants)
from lambdaskip.studies.collapse.hf import format_hf_table, run_hf_study
from lambdaskip.studies.collapse.outputs import (RESULT_FILES, check_out_dir, csv_bytes, depth_csv_bytes, format_table,
                                                 write_folder, write_outputs)
from lambdaskip.studies.collapse.run import first_layer_below, make_inputs, run_one, run_study, run_sweep, summarize
from lambdaskip.studies.collapse.text import TextInputError
from lambdaskip.studies.collapse.verdict import verdict

__all__ = [
    "DEFAULT_LAMS", "INPUTS", "PRESETS", "RECORDED", "RESULT_FILES", "StudyConfig", "StudyError", "TextInputError",
    "Variant", "check_out_dir", "csv_bytes", "depth_csv_bytes", "first_layer_below", "format_hf_table", "format_table",
    "make_inputs", "mixer_kwargs", "run_hf_study", "run_one", "run_study", "run_sweep", "summarize",
    "variants", "verdict", "write_folder", "write_outputs",
]
