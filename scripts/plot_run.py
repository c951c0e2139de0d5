"""Draw the pictures of a finished run_multi_task.py output folder (plots.py) again, or for the first
time (a run made with --no_plots, or whose pictures failed).

    python scripts/plot_run.py runs/pals                       # plots/*.png (+ diagnostics/*.png; with --projection
                                                                # the task weights: plots/task_weights.png and a
                                                                # panel of diagnostics/task_cosines.png)
    python scripts/plot_run.py runs/pals --pairs rte:mrpc       # layer x step pictures of these pairs

Reads only results.json and diagnostics/epoch_*.csv, weights_*.csv (no model, no data).
"""
import argparse
import os

from file_utils import ConfigError, run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a run_multi_task.py --output_dir")
    parser.add_argument("--pairs", default=None,
                        help="task pairs for the layer x step pictures, e.g. rte:mrpc,cola:sst-2 (default: those the "
                             "run named with --diagnose_pairs, else the most conflicting)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        raise ConfigError(f"{args.run_dir}: no such folder")
    import plots  # after the argument check: matplotlib takes a moment to import
    pairs = None
    if args.pairs:
        diag = plots.diagnostics.read_csvs(args.run_dir)
        if diag is None:
            raise ConfigError(f"--pairs: {args.run_dir} has no diagnostics (run with --diagnose_every N)")
        pairs = plots.diagnostics.parse_pairs(args.pairs, diag["tasks"], flag="--pairs")
    for path in plots.plot_run(args.run_dir, pairs).values():
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
