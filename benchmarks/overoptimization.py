"""Reward-model overoptimization (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization"), with the
task's gold scorer as the true objective.

For each task, proxy reward models are trained here from the task's gold-scored texts (MSE, as the shipped
ones): a ``small`` and a ``large`` one, and an ensemble of 4 ``small`` members from seeds (aggregated by
``mean`` and by ``min``, Coste et al. 2023). Against each proxy, starting from the shipped default policy:

- **best-of-n**, n = 1, 2, 4, ... ``max_n``: gold score of the proxy's best of n samples, at
  d = sqrt(KL) with KL = log n - (n - 1) / n (the analytic KL; the measured one is recorded too). The expected
  gold of best-of-n for every n comes from one set of ``max_n`` samples per prompt by the unbiased estimator
  of Gao et al. (appendix): the sample of proxy rank k (ascending) is the best of a uniform n-subset with
  probability C(k - 1, n - 1) / C(max_n, n);
- **RL**: PPO and RLOO against the proxy without a KL penalty (``kl_coef`` 0, so the policy is free to
  overoptimize), evaluated every ``eval_every`` iterations on held-out prompts: gold score, proxy score and
  d = sqrt(KL(pi || pi_init)) (the agents' k1 sequence KL, clamped at 0).

Gao et al.'s functional forms are fitted by least squares to the gold gain R = gold - gold(d = 0):
best-of-n ``R(d) = d (alpha - beta d)``, RL ``R(d) = d (alpha - beta log d)`` (both linear in alpha, beta),
with the R^2 of each fit (each curve's gain is measured from its own d = 0 estimate: best-of-n's over all its
samples, RL's from the initial evaluation). The report then states, per task, whether each of the paper's findings shows here
(the gold score peaks then falls; RL spends more KL than best-of-n for the same gain; a larger proxy moves the
peak out; ensembles flatten the fall), as computed from the curves: "yes", "no" or "inconclusive".

Outputs (``--out``): ``overoptimization.json`` (every point, fit and verdict), ``overoptimization.md`` (the
report) and ``overoptimization-<task>.png``. ``--quick`` runs one task on tiny settings (a smoke run, under 3
minutes on 2 cores) and writes only where ``--out`` says; the full run (two tasks) is sized for under an hour
with ``--jobs 2``.

Usage::

    python -m benchmarks.overoptimization --jobs 2                  # the full run -> benchmarks/results
    python -m benchmarks.overoptimization --quick --out /tmp/overopt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
JSON_NAME, MD_NAME = "overoptimization.json", "overoptimization.md"

#: the two proxy sizes (GPT-2 n_layer x n_embd) and the ensemble's member size
PROXIES = {"small": {"n_layer": 1, "n_embd": 64, "n_head": 2, "n_positions": 128},
           "large": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 128}}
FULL = {"tasks": ["sentiment", "keywords"], "rm_rows": 20000, "rm_steps": 1000, "ensemble_k": 4,
        "bon_prompts": 128, "max_n": 256, "rl_episodes": 4096, "batch_size": 64, "eval_every": 4,
        "eval_episodes": 128}
QUICK = {"tasks": ["sentiment"], "rm_rows": 256, "rm_steps": 20, "ensemble_k": 2, "bon_prompts": 8, "max_n": 8,
         "rl_episodes": 32, "batch_size": 16, "eval_every": 1, "eval_episodes": 16}
ALGOS = ("ppo", "rloo")


# ============================================================================================ estimators
def best_of_n_expectations(proxy: np.ndarray, gold: np.ndarray, ns: list[int]) -> np.ndarray:
    """E[gold of the proxy's best of n] for each n in ``ns``, averaged over prompts, from ``proxy`` and
    ``gold`` (P, N) of N >= max(ns) samples per prompt: the unbiased estimator over all n-subsets (the sample
    of ascending proxy rank k is the best of a uniform n-subset with probability C(k-1, n-1) / C(N, n))."""
    P, N = proxy.shape
    order = np.argsort(proxy, axis=1, kind="stable")
    g = np.take_along_axis(gold, order, axis=1)  # (P, N): gold in ascending proxy order
    out = []
    for n in ns:
        if not 1 <= n <= N:
            raise ValueError(f"n = {n} needs 1 <= n <= {N} samples per prompt")
        k = np.arange(1, N + 1)
        w = np.array([math.comb(int(i) - 1, n - 1) for i in k], dtype=np.float64) / math.comb(N, n)  # sums to 1
        out.append(float((g * w).sum(1).mean()))
    return np.array(out)


def fit_form(d: np.ndarray, gain: np.ndarray, form: str) -> dict[str, float]:
    """Least-squares alpha, beta and R^2 of Gao et al.'s ``"bon"`` form gain = d (alpha - beta d) or ``"rl"``
    form gain = d (alpha - beta log d) (points with d = 0 fit exactly and are dropped for the RL form)."""
    d, gain = np.asarray(d, float), np.asarray(gain, float)
    keep = d > 0 if form == "rl" else np.ones_like(d, bool)
    d, gain = d[keep], gain[keep]
    if d.size < 2:
        return {"alpha": math.nan, "beta": math.nan, "r2": math.nan, "points": int(d.size)}
    second = d**2 if form == "bon" else d * np.log(d)
    X = np.stack([d, -second], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(X, gain, rcond=None)
    pred = X @ np.array([alpha, beta])
    ss_tot = float(((gain - gain.mean()) ** 2).sum())
    r2 = 1.0 - float(((gain - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return {"alpha": float(alpha), "beta": float(beta), "r2": r2, "points": int(d.size)}


# ============================================================================================ runs
def _setup_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def train_proxies(task_name: str, cfg: dict[str, Any], root: Path, seed: int = 0) -> dict[str, str]:
    """Train the proxies of ``task_name`` under ``root``: ``small``, ``large`` and the ensemble members;
    returns their directories by name (``ensemble`` is the ensemble's directory)."""
    from textenv.tasks import get_task
    from textenv.training.reward import (
        DEFAULT_BUILD,
        default_reward_rows,
        train_reward_ensemble,
        train_reward_model,
    )

    task = get_task(task_name)
    rows = default_reward_rows(task, cfg["rm_rows"], seed=seed, perturb=DEFAULT_BUILD["perturb"])
    common = {"loss": "mse", "steps": cfg["rm_steps"], "batch_size": 64, "lr": 1e-3, "progress": False}
    dirs = {}
    for name, kwargs in PROXIES.items():
        out = root / task_name / f"rm-{name}"
        if not (out / "textenv_reward.json").is_file():
            train_reward_model(rows, out, seed=seed, model_kwargs=dict(kwargs), **common)
        dirs[name] = str(out)
    ens = root / task_name / "rm-ensemble"
    if not (ens / "textenv_ensemble.json").is_file():
        train_reward_ensemble(rows, ens, cfg["ensemble_k"], seed=seed + 100, resume=ens.is_dir(),
                              model_kwargs=dict(PROXIES["small"]), **common)
    dirs["ensemble"] = str(ens)
    return dirs


def proxy_spec(name: str, dirs: dict[str, str]) -> Any:
    """The ``reward_model=`` of proxy ``name``: ``small``, ``large``, ``ensemble-mean`` or ``ensemble-min``."""
    if name.startswith("ensemble-"):
        from textenv.rewards import Ensemble
        from textenv.rewards.ensemble import read_ensemble_file

        members = [str(Path(dirs["ensemble"]) / m) for m in read_ensemble_file(dirs["ensemble"])["members"]]
        return Ensemble(members, aggregate=name.split("-", 1)[1])
    return dirs[name]


def run_best_of_n(task_name: str, proxy: str, dirs: dict[str, str], cfg: dict[str, Any], seed: int,
                  threads: int) -> dict[str, Any]:
    """Best-of-n against ``proxy`` on held-out prompts: expected gold and proxy score for n = 1, 2, 4, ..."""
    _setup_threads(threads)
    from agents import BestOfN
    from agents.best_of_n import best_of_n_kl, best_of_n_kl_analytic
    from agents.contract import evaluation_seed

    N = cfg["max_n"]
    agent = BestOfN(f"TextGen-{task_name.capitalize()}-v0", policy="default", n=N, batch_size=min(64, N * 8),
                    seed=seed, device="cpu", env_kwargs={"reward_model": proxy_spec(proxy, dirs)})
    rng = np.random.default_rng(evaluation_seed(seed))
    prompts = [agent.envs.sample_prompt(rng, "test") for _ in range(cfg["bon_prompts"])]
    sampled = agent.sample_best(prompts, evaluation_seed(seed), "test")
    scores, gold = sampled["scores"].double().numpy(), sampled["gold"].double().numpy()
    ns = [2**i for i in range(int(math.log2(N)) + 1)]
    gold_n = best_of_n_expectations(scores, gold, ns)
    proxy_n = best_of_n_expectations(scores, scores, ns)
    measured = [float(best_of_n_kl(sampled["scores"][:, :n]).double().mean()) for n in ns]  # first n samples
    kl = [best_of_n_kl_analytic(n) for n in ns]
    return {"task": task_name, "method": "best-of-n", "proxy": proxy, "n": ns, "kl": kl, "kl_measured": measured,
            "d": [math.sqrt(k) for k in kl], "gold": gold_n.tolist(), "reward": proxy_n.tolist()}


def run_rl(task_name: str, algo: str, proxy: str, dirs: dict[str, str], cfg: dict[str, Any], seed: int,
           threads: int) -> dict[str, Any]:
    """``algo`` against ``proxy`` without a KL penalty; held-out gold, proxy and d every ``eval_every``."""
    _setup_threads(threads)
    from agents.contract import evaluation_seed
    from agents.registry import make_agent

    agent = make_agent(algo, f"TextGen-{task_name.capitalize()}-v0", "default", seed=seed, device="cpu",
                       env_kwargs={"reward_model": proxy_spec(proxy, dirs)}, kl_coef=0.0,
                       batch_size=cfg["batch_size"])
    points: list[dict[str, float]] = []

    def evaluate(episodes: int) -> None:
        m = agent.evaluate(cfg["eval_episodes"], seed=evaluation_seed(seed))
        points.append({"episodes": float(episodes), "gold": m["gold_score"], "reward": m["reward"],
                       "kl": m["kl"], "d": math.sqrt(max(m["kl"], 0.0))})

    def callback(ag: Any, metrics: dict[str, float]) -> None:
        if ag.iteration % cfg["eval_every"] == 0:
            evaluate(ag.episodes)

    t0 = time.perf_counter()
    evaluate(0)
    agent.learn(cfg["rl_episodes"], progress=False, callback=callback)
    row = {"task": task_name, "method": algo, "proxy": proxy, "seconds": time.perf_counter() - t0}
    for key in ("episodes", "gold", "reward", "kl", "d"):
        row[key] = [p[key] for p in points]
    return row


# ============================================================================================ analysis
def peak(row: dict[str, Any]) -> tuple[float, float, float]:
    """(d at the peak gold, peak gold gain, fall from the peak to the last point) of a curve."""
    gold = np.asarray(row["gold"], float)
    i = int(np.argmax(gold))
    return float(row["d"][i]), float(gold[i] - gold[0]), float(gold[i] - gold[-1])


def d_to_reach(row: dict[str, Any], gain: float) -> float:
    """The smallest d at which the curve's gold gain reaches ``gain`` (inf if never)."""
    for d, g in zip(row["d"], row["gold"]):
        if g - row["gold"][0] >= gain:
            return float(d)
    return math.inf


def verdicts(rows: list[dict[str, Any]], task: str, tol: float) -> dict[str, dict[str, str]]:
    """The paper's four findings on ``task``'s curves: {"finding": {"verdict", "evidence"}} (see the module
    docstring); ``tol`` is the gold difference treated as noise."""
    mine = [r for r in rows if r["task"] == task]
    out: dict[str, dict[str, str]] = {}
    falls = [(r["method"], r["proxy"], *peak(r)) for r in mine]
    n_fall = sum(1 for *_, fall in falls if fall > tol)
    n_interior = sum(1 for r in mine if 0 < int(np.argmax(r["gold"])) < len(r["gold"]) - 1)
    out["gold peaks then falls"] = {
        "verdict": "yes" if n_fall >= max(1, len(falls) // 2) else ("no" if n_fall == 0 else "inconclusive"),
        "tally": f"{n_fall} of {len(falls)} curves",
        "evidence": f"{n_fall} of {len(falls)} curves fall by more than {tol:g} after their peak "
                    f"({n_interior} peak before their last point)"}
    comparisons = []
    for r in mine:
        if r["method"] == "best-of-n":
            continue
        bon = next((b for b in mine if b["method"] == "best-of-n" and b["proxy"] == r["proxy"]), None)
        if bon is None:
            continue
        level = 0.5 * min(peak(bon)[1], peak(r)[1])
        if level <= tol:
            continue
        comparisons.append((r["method"], r["proxy"], d_to_reach(r, level), d_to_reach(bon, level)))
    more = sum(1 for *_, d_rl, d_bon in comparisons if d_rl > d_bon)
    out["RL spends more KL than best-of-n for the same gain"] = {
        "verdict": "inconclusive" if not comparisons else ("yes" if more > len(comparisons) / 2 else "no"),
        "tally": f"{more} of {len(comparisons)} RL curves",
        "evidence": "; ".join(f"{m}/{p}: d {a:.2f} vs best-of-n {b:.2f}" for m, p, a, b in comparisons)
                    or "no curve gained more than the noise"}
    outward = []
    for method in sorted({r["method"] for r in mine}):
        small = next((r for r in mine if r["method"] == method and r["proxy"] == "small"), None)
        large = next((r for r in mine if r["method"] == method and r["proxy"] == "large"), None)
        if small and large:
            outward.append((method, peak(small)[0], peak(large)[0]))
    n_out = sum(1 for _, s, big in outward if big > s)
    out["a larger proxy moves the peak out"] = {
        "verdict": "inconclusive" if not outward else ("yes" if n_out > len(outward) / 2 else "no"),
        "tally": f"{n_out} of {len(outward)} methods",
        "evidence": "; ".join(f"{m}: peak d {s:.2f} (small) vs {big:.2f} (large)" for m, s, big in outward)}
    flatter = []
    for method in sorted({r["method"] for r in mine}):
        small = next((r for r in mine if r["method"] == method and r["proxy"] == "small"), None)
        for agg in ("ensemble-mean", "ensemble-min"):
            ens = next((r for r in mine if r["method"] == method and r["proxy"] == agg), None)
            if small and ens:
                flatter.append((method, agg, peak(small)[2], peak(ens)[2]))
    n_flat = sum(1 for *_, fs, fe in flatter if fe < fs)
    out["ensembles flatten the fall"] = {
        "verdict": "inconclusive" if not flatter or all(fs <= tol for *_, fs, _ in flatter)
        else ("yes" if n_flat > len(flatter) / 2 else "no"),
        "tally": f"{n_flat} of {len(flatter)} ensemble curves",
        "evidence": "; ".join(f"{m}/{a}: fall {fe:.3f} vs single small proxy {fs:.3f}" for m, a, fs, fe in flatter)}
    return out


def write_report(result: dict[str, Any], out: Path) -> list[str]:
    """The Markdown report and one plot per task; returns the files written."""
    from textenv import io

    lines = ["# Reward-model overoptimization", "",
             f"`{result['command']}` ({'quick smoke run' if result['quick'] else 'full run'}, "
             f"{result['seconds'] / 60:.1f} min). Gold score against d = sqrt(KL(pi || pi_init)); fits of Gao et "
             "al.'s forms to the gold gain: best-of-n d (alpha - beta d), RL d (alpha - beta log d).", "",
             "| task | method | proxy | gold at d=0 | peak gold (at d) | last gold (at d) | alpha | beta | R^2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        f = r["fit"]
        i = int(np.argmax(r["gold"]))
        lines.append(f"| {r['task']} | {r['method']} | {r['proxy']} | {r['gold'][0]:.3f} | {r['gold'][i]:.3f} "
                     f"({r['d'][i]:.2f}) | {r['gold'][-1]:.3f} ({r['d'][-1]:.2f}) | {f['alpha']:.3f} | "
                     f"{f['beta']:.3f} | {f['r2']:.2f} |")
    for task, found in result["verdicts"].items():
        lines += ["", f"## {task}: the paper's findings here", ""]
        lines += [f"- **{k}**: {v['verdict']}" + (f"; {v['tally']} agree" if v.get("tally") else "")
                  + f" ({v['evidence']})" for k, v in found.items()]
    files = [MD_NAME]
    plt: Any = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot

        plt = matplotlib.pyplot
    except ImportError:
        pass
    if plt is not None:
        for task in result["tasks"]:
            fig, ax = plt.subplots(figsize=(7, 4.2))
            for r in (r for r in result["rows"] if r["task"] == task):
                style = "-" if r["method"] == "best-of-n" else "--"
                ax.plot(r["d"], r["gold"], style, marker=".", label=f"{r['method']} / {r['proxy']}")
            ax.set_xlabel("d = sqrt(KL to the initial policy) (nats^1/2)")
            ax.set_ylabel("gold score (held-out)")
            ax.set_title(f"{task}: overoptimization of learned proxies")
            ax.legend(fontsize=7)
            fig.tight_layout()
            name = f"overoptimization-{task}.png"
            with io.atomic_file(out / name, "wb") as fh:
                fig.savefig(fh, dpi=100, format="png")
            plt.close(fig)
            files.append(name)
            lines += ["", f"![{task}]({name})"]
    io.write_text(out / MD_NAME, "\n".join(lines) + "\n")
    return files


# ============================================================================================ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one task, tiny settings (a smoke run, < 3 minutes)")
    p.add_argument("--out", default=None, help="output directory (default: benchmarks/results; --quick needs it)")
    p.add_argument("--work", default=None, help="where the proxies are trained (default: runs/overopt-work for the "
                   "committed results, else <out>/overopt-work); proxies found there are reused")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: the mode's)")
    p.add_argument("--report-only", action="store_true", help="recompute the fits, verdicts, report and plots "
                   "from the JSON in --out (no training)")
    args = p.parse_args(argv)
    if args.report_only:
        out = Path(args.out) if args.out else RESULTS
        return report_from_json(out)
    if args.quick and args.out is None:
        p.error("--quick writes only where --out says (never over the committed results)")
    if args.jobs < 1 or args.threads < 1:
        p.error("--jobs and --threads must be >= 1")
    cfg: dict[str, Any] = dict(QUICK if args.quick else FULL)
    if args.tasks:
        cfg["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    from textenv.tasks import get_task

    for t in cfg["tasks"]:
        get_task(t)  # an unknown task fails here, naming it
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    # the proxies are models, not results: outside benchmarks/results unless --out is elsewhere
    work = Path(args.work) if args.work else (REPO / "runs" / "overopt-work" if out == RESULTS else out / "overopt-work")
    t0 = time.perf_counter()
    _setup_threads(args.threads)
    proxy_jobs = [(_train_proxies_threads, (t, cfg, work, args.seed, args.threads)) for t in cfg["tasks"]]
    dirs = dict(zip(cfg["tasks"], _map(proxy_jobs, args.jobs)))  # one task's proxies per process
    proxies = ["small", "large", "ensemble-mean", "ensemble-min"]
    jobs: list[tuple[Any, tuple[Any, ...]]] = []
    for t in cfg["tasks"]:
        for proxy in proxies:
            jobs.append((run_best_of_n, (t, proxy, dirs[t], cfg, args.seed, args.threads)))
            jobs += [(run_rl, (t, algo, proxy, dirs[t], cfg, args.seed, args.threads)) for algo in ALGOS]
    rows = _map(jobs, args.jobs)
    result: dict[str, Any] = {"command": "python -m benchmarks.overoptimization " + " ".join(argv if argv is not None else sys.argv[1:]),
              "quick": args.quick, "config": cfg, "tasks": cfg["tasks"], "proxies": proxies, "seed": args.seed,
              "rows": rows, "seconds": time.perf_counter() - t0}
    return _analyse_and_write(result, out)


#: gold-score differences at or below this are treated as noise by the verdicts
TOL = 0.01


def _analyse_and_write(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Fit each curve, judge the paper's findings per task, and write the JSON, the report and the plots."""
    from textenv import io

    for r in result["rows"]:
        gold = [np.nan if g is None else g for g in r["gold"]]
        gain = np.asarray(gold, float) - gold[0]
        r["fit"] = fit_form(np.asarray(r["d"], float), gain, "bon" if r["method"] == "best-of-n" else "rl")
    result["verdicts"] = {t: verdicts(result["rows"], t, TOL) for t in result["tasks"]}
    files = write_report(result, out)
    io.write_text(out / JSON_NAME, json.dumps(_finite(result), indent=1) + "\n")
    print(f"wrote {', '.join(str(out / f) for f in [JSON_NAME, *files])} ({result['seconds'] / 60:.1f} min of runs)")
    return result


def report_from_json(out: Path) -> dict[str, Any]:
    """``--report-only``: the analysis and the report again from ``out``'s JSON (the runs are not repeated)."""
    path = out / JSON_NAME
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read the overoptimization result: {exc}") from exc
    return _analyse_and_write(result, out)


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _train_proxies_threads(task_name: str, cfg: dict[str, Any], root: Path, seed: int, threads: int) -> dict[str, str]:
    """:func:`train_proxies` in a worker process, with its torch thread count set first."""
    _setup_threads(threads)
    return train_proxies(task_name, cfg, root, seed)


def _map(jobs: list[tuple[Any, tuple[Any, ...]]], n_jobs: int) -> list[Any]:
    """Each job's ``fn(*args)``, in order: in this process with ``n_jobs`` 1, else in a pool of spawned ones."""
    if n_jobs == 1:
        return [fn(*a) for fn, a in jobs]
    import multiprocessing

    with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_call, jobs))


def _call(job: tuple[Any, tuple[Any, ...]]) -> Any:
    fn, args = job
    return fn(*args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
