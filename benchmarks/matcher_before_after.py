r"""The matcher before and after a change, against scipy, side by side.

    git show HEAD:max_deeplab_tf/ops/hungarian_matching.py > /tmp/hm_before.py
    python benchmarks/matcher_before_after.py --before=/tmp/hm_before.py \
        [--rounds=3] [--repeats=9]

Runs `benchmarks/matcher.py --per_call` as child processes, alternating the
solver at `--before` and the package's solver (before, after, before,
after, ...), so that a load change on the shared machine hits both alike.
Each run times one call per batch from Python against scipy on every case
(min of `--repeats` calls); the summary gives, per case, the median over
rounds of our time and of the ratio to scipy, and whether the after-ratio
meets the target (3x). Prints a table and writes
benchmarks/results/matcher_before_after.json (every run's JSON, with its
load averages, and the summary) and benchmarks/results/matcher.json (the
last "after" run).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")


def run_matcher(solver_path, output, repeats, timeout):
    """One `matcher.py --per_call` run; returns its JSON."""
    command = [sys.executable, os.path.join(REPO_ROOT, "benchmarks",
                                            "matcher.py"),
               "--per_call", f"--repeats={repeats}", f"--output={output}"]
    if solver_path:
        command.append(f"--solver_path={solver_path}")
    subprocess.run(command, check=True, timeout=timeout, cwd=REPO_ROOT)
    with open(output) as f:
        return json.load(f)


def summarize(runs, target):
    """Per case: medians over rounds of each side's time and ratio."""
    summary = []
    for k, case in enumerate(runs["before"][0]["results"]):
        row = {"case": case["case"], "shape": case["shape"],
               "target_ratio": target}
        for side, side_runs in runs.items():
            rows = [run["results"][k] for run in side_runs]
            row[f"{side}_ms_median"] = statistics.median(
                min(r["xla_ms"], r["public_ms"]) for r in rows)
            row[f"{side}_ratio_per_round"] = [r["ratio_per_call"]
                                              for r in rows]
            row[f"{side}_ratio_median"] = statistics.median(
                row[f"{side}_ratio_per_round"])
            row[f"{side}_scipy_ms_median"] = statistics.median(
                r["scipy_ms"] for r in rows)
            row[f"{side}_call_floor_ms_median"] = statistics.median(
                r["call_floor_ms"] for r in rows)
        row["after_meets_target"] = row["after_ratio_median"] <= target
        summary.append(row)
    return summary


def write_json(path, value):
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(temporary, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True,
                        help="The solver module to compare with (a file).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--timeout", type=float, default=1500,
                        help="Seconds allowed for one matcher.py run.")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.before):
        parser.error(f"--before: {args.before} is not a file")

    work = tempfile.mkdtemp(prefix="matcher_ab_")
    try:
        runs = {"before": [], "after": []}
        for round_index in range(args.rounds):
            for side in ("before", "after"):
                print(f"round {round_index + 1}: {side}", flush=True)
                runs[side].append(run_matcher(
                    args.before if side == "before" else None,
                    os.path.join(work, f"{side}-{round_index}.json"),
                    args.repeats, args.timeout))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    target = runs["after"][0]["results"][0]["target_ratio"]
    summary = summarize(runs, target)

    print(f"\n{'case':42s} {'shape':>10s} {'scipy':>6s} | {'before':>7s} "
          f"{'x':>4s} | {'after':>7s} {'x':>4s} | <= {target:g}x")
    for row in summary:
        print(f"{row['case']:42s} {'x'.join(map(str, row['shape'])):>10s} "
              f"{row['after_scipy_ms_median']:6.2f} | "
              f"{row['before_ms_median']:7.2f} "
              f"{row['before_ratio_median']:4.1f} | "
              f"{row['after_ms_median']:7.2f} {row['after_ratio_median']:4.1f}"
              f" | {'yes' if row['after_meets_target'] else 'no'}")
    loads = {side: [(run["load_average_before"], run["load_average_after"])
                    for run in side_runs] for side, side_runs in runs.items()}
    print(f"load averages (before, after each run): {loads}")
    write_json(os.path.join(RESULTS, "matcher_before_after.json"), {
        "benchmark": "hungarian_matching per call vs scipy, before / after, "
                     "alternating",
        "command": "python benchmarks/matcher_before_after.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "before": args.before, "order": "before, after, before, after, ...",
        "load_average": loads, "summary": summary, "runs": runs})
    write_json(os.path.join(RESULTS, "matcher.json"), runs["after"][-1])
    print(f"wrote {RESULTS}/matcher_before_after.json and matcher.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
