"""Benchmarks of the quantizers: run, store, render and check results.

``tools/analysis_tools/benchmark.py`` and ``benchmark_ablation.py`` are
thin command lines over this package, one module per job:

* :mod:`.methods`: the vocabulary, the benchmark's methods
  (:data:`METHODS`) and bit-width tags;
* :mod:`.lists`: the benchmark and ablation lists (models, variants);
* :mod:`.run` and :mod:`.ablation`: the runs, quantizing and evaluating
  every (model, method, bits) or (model, variant, mode, bits);
* :mod:`.results`: the rows of the runs and their JSON files (save, load,
  merge);
* :mod:`.render`: Markdown tables and the generated sections of pages;
* :mod:`.metafile`: the OpenMMLab model index (``metafile.yml``) and the
  entry configs that reproduce each row;
* :mod:`.check`: the regression check of committed metafile entries.
"""
from .ablation import baseline_rows, run_ablation
from .check import (CHECK_NOT_ENOUGH, CHECK_REGRESSION, CheckReport,
                    check_benchmark, missing_inputs, render_check)
from .lists import (BenchmarkModel, Variant, load_benchmark_list,
                    load_variants, replace_data_root, select_models)
from .metafile import (entry_config_path, entry_name, load_model_index,
                       quantized_configs, quantizer_metadata,
                       render_entry_config, render_metafile,
                       unmeasured_configs, write_entry_configs,
                       write_metafile)
from .methods import (ABLATION_MODES, DEFAULT_BITS, METHOD_METADATA,
                      METHOD_TITLES, METHODS, MIXED_METHODS, check_methods,
                      method_quantizer, parse_bits)
from .render import (ABLATION_END, ABLATION_START, README_END, README_START,
                     render_ablation, render_header, render_markdown,
                     update_readme)
from .results import (TASK_METRICS, AblationRow, BenchmarkRow,
                      load_ablation, load_results, merge_ablations,
                      merge_results, save_ablation, save_results,
                      scalar_metrics)
from .run import count_macs, run_benchmark

__all__ = [
    'METHODS', 'MIXED_METHODS', 'METHOD_TITLES', 'METHOD_METADATA',
    'ABLATION_MODES', 'DEFAULT_BITS', 'parse_bits', 'method_quantizer',
    'check_methods', 'BenchmarkModel', 'Variant', 'load_benchmark_list',
    'select_models', 'load_variants', 'replace_data_root', 'TASK_METRICS',
    'BenchmarkRow', 'AblationRow', 'scalar_metrics', 'save_results',
    'load_results', 'merge_results', 'save_ablation', 'load_ablation',
    'merge_ablations', 'count_macs', 'run_benchmark', 'baseline_rows',
    'run_ablation', 'README_START', 'README_END', 'ABLATION_START',
    'ABLATION_END', 'render_header', 'render_markdown', 'update_readme',
    'render_ablation', 'entry_name', 'entry_config_path',
    'render_entry_config', 'write_entry_configs', 'quantizer_metadata',
    'quantized_configs', 'unmeasured_configs', 'render_metafile',
    'write_metafile', 'load_model_index', 'CHECK_REGRESSION',
    'CHECK_NOT_ENOUGH', 'CheckReport', 'missing_inputs', 'check_benchmark',
    'render_check'
]
