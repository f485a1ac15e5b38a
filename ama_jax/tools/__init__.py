"""The command-line programs, each `python -m ama_jax.tools.<program>`.

  score        scores new images with a trained model and writes a CSV
               (library: `ama_jax.scoring.detectors`, `score_inputs`);
  export       writes a trained model as a self-contained StableHLO scorer
               (library: `ama_jax.scoring.export`);
  benchmark    times one training iteration and scoring (one JSON line);
  reproduce    trains and reports one of the paper's tables end to end
               (its runs: `reproduce_runs`; its tables: `reproduce_tables`);
  compile_time a whole training run's programs and their compile seconds,
               cold and warm (one JSON line);
  baselines    kNN, PCA and OC-SVM on raw pixels, on AMA's exact split
               (library: `ama_jax.scoring.baselines`);
  idx_to_pngs  writes MNIST / Fashion-MNIST IDX files as a PNG folder;
  cli          (no program) `run_main`, the wrapper every program, and
               `ama_jax.main`, runs under: known errors end in one line.

Training stays `python -m ama_jax.main --config=... --workdir=...`. The
programs may import `configs`; the library (`ama_jax` outside this package
and `main.py`) does not. Each `--help` shows the program's usage.
"""
