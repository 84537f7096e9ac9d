"""int8 vs float32 embedding network: speed and detection quality on the same test split.

Usage::

    python benchmarks/bench_int8.py [--seeds 1001 1002] [--normals 100] [--anomalies 50]
                                    [--model DIR]

The model is the shipped default bundle (or ``--model``), trained by ``make model`` on
seed-0 simulations; the test split is simulated fresh here, with the protocol of
``bench_models.py``'s ``blends`` section (PS/PMMA normals of every recipe, anomalies of
every kind at severities uniform in [0, 1], seeds never used for training). The *same*
detector scores the *same* resampled curves twice: with its float32 network and with the
int8 copy built from the bundle's float weights (:mod:`pbi_bluesky.models.quantize`,
static and dynamic schemes). Reported: AUC-ROC over all anomalies and per kind, its change
(goal: within 0.002 of float32), the flag decisions that changed, the cosine between the
float and int8 embeddings, and the network's time per profile at batch 1, 16 and 256
(interleaved rounds, one torch thread, medians).

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from pbi_bluesky.models.bundle import DEFAULT_MODEL_DIR, load_bundle
from pbi_bluesky.models.quantize import apply_inference, inference_settings
from pbi_bluesky.simulate import (
    PS_PMMA,
    SAMPLE_ANOMALIES,
    Instrument,
    applicable_anomalies,
    apply_anomaly,
    nominal_state,
    simulate_profile,
)

GOAL_AUC_CHANGE = 0.002


def test_split(seed: int, n_normal: int, n_anomaly: int, detector):
    rng = np.random.default_rng(seed)
    instrument = Instrument()
    rows = []
    for recipe in PS_PMMA.recipes:
        for _ in range(n_normal):
            rows.append((simulate_profile(nominal_state(PS_PMMA, recipe, rng), instrument, rng),
                         recipe, "normal"))
    for kind in SAMPLE_ANOMALIES:
        recipes = [r for r in PS_PMMA.recipes if kind in applicable_anomalies(r)]
        for i in range(n_anomaly):
            recipe = recipes[i % len(recipes)]
            state = apply_anomaly(nominal_state(PS_PMMA, recipe, rng), kind, rng.uniform(), rng)
            rows.append((simulate_profile(state, instrument, rng), recipe, kind))
    intensity, sigma = detector.resample([r[0] for r in rows])
    return intensity, sigma, [r[1] for r in rows], np.array([r[2] for r in rows])


def auc_report(scores: np.ndarray, kinds: np.ndarray) -> dict:
    normal = kinds == "normal"
    out = {"overall": float(roc_auc_score(~normal, scores))}
    for kind in SAMPLE_ANOMALIES:
        sel = normal | (kinds == kind)
        if (kinds == kind).any():
            out[kind] = float(roc_auc_score(~normal[sel], scores[sel]))
    return out


def net_times(nets: dict, inputs: torch.Tensor, rounds: int = 7) -> dict:
    out = {}
    for batch in (1, 16, 256):
        xb = inputs[:batch]
        runs: dict[str, list[float]] = {k: [] for k in nets}
        reps = max(3, 256 // batch)
        with torch.no_grad():
            for net in nets.values():
                net(xb)
            for _ in range(rounds):
                for key, net in nets.items():
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        net(xb)
                    runs[key].append((time.perf_counter() - t0) * 1e3 / (reps * batch))
        out[str(batch)] = {k: round(statistics.median(v), 4) for k, v in runs.items()}
        for k in nets:
            if k != "float32":
                out[str(batch)][f"{k}_speedup"] = round(
                    statistics.median(f / q for f, q in zip(runs["float32"], runs[k],
                                                            strict=True)), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1001, 1002])
    parser.add_argument("--normals", type=int, default=100, help="test normals per recipe")
    parser.add_argument("--anomalies", type=int, default=50, help="anomalies per kind")
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    args = parser.parse_args()
    torch.set_num_threads(1)
    det = load_bundle(args.model)
    settings = {"float32": {"precision": "float32"},
                "int8_static": inference_settings(det, "int8", "static"),
                "int8_dynamic": inference_settings(det, "int8", "dynamic")}
    results: dict = {"model": args.model, "engine": torch.backends.quantized.engine,
                     "torch": torch.__version__, "seeds": args.seeds, "per_seed": {},
                     "goal_auc_change": GOAL_AUC_CHANGE}
    nets = {}
    for name, st in settings.items():
        apply_inference(det, st)
        nets[name] = det.network if det.inference_network is None else det.inference_network
    for seed in args.seeds:
        intensity, sigma, recipes, kinds = test_split(seed, args.normals, args.anomalies, det)
        idx = np.array([det.recipes.index(r) for r in recipes])
        per: dict = {"curves": int(len(kinds)), "anomalies": int((kinds != "normal").sum())}
        base_emb = base_flags = None
        for name, st in settings.items():
            apply_inference(det, st)
            verdicts = det.score_arrays(intensity, sigma, recipes)
            scores = np.array([v.score for v in verdicts])
            flags = np.array([v.is_anomaly for v in verdicts])
            emb = det._embed(intensity, sigma, idx)
            entry = {"auc": auc_report(scores, kinds), "flagged": int(flags.sum())}
            if base_emb is None:
                base_emb, base_flags, base_auc = emb, flags, entry["auc"]
            else:
                cos = np.sum(base_emb * emb, axis=1)
                entry["auc_change"] = {k: round(v - base_auc[k], 5)
                                       for k, v in entry["auc"].items()}
                entry["flag_decisions_changed"] = int((flags != base_flags).sum())
                entry["embedding_cosine"] = {"min": round(float(cos.min()), 5),
                                             "median": round(float(np.median(cos)), 5)}
            per[name] = entry
        per["inputs"] = det._inputs(intensity[:256], sigma[:256], idx[:256])
        results["per_seed"][seed] = per
    inputs = results["per_seed"][args.seeds[0]].pop("inputs")
    for seed in args.seeds[1:]:
        results["per_seed"][seed].pop("inputs")
    results["network_ms_per_profile"] = net_times(nets, inputs)
    for name in ("int8_static", "int8_dynamic"):
        changes = [results["per_seed"][s][name]["auc_change"]["overall"] for s in args.seeds]
        results[f"{name}_mean_auc_change"] = round(float(np.mean(changes)), 5)
        results[f"{name}_within_goal"] = bool(max(abs(c) for c in changes) <= GOAL_AUC_CHANGE)

    for seed, per in results["per_seed"].items():
        for name in settings:
            e = per[name]
            extra = "" if name == "float32" else (
                f"  change {e['auc_change']['overall']:+.5f}, flags changed "
                f"{e['flag_decisions_changed']}, cos min {e['embedding_cosine']['min']:.4f}")
            print(f"seed {seed} {name:<13} AUC {e['auc']['overall']:.5f} "
                  f"flagged {e['flagged']}/{per['curves']}{extra}")
    for batch, row in results["network_ms_per_profile"].items():
        print(f"batch {batch:>3}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
