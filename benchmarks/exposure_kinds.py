"""The two exposure adjustments side by side on saved models: popularity vs hubness, every penalty.

For each model folder and each penalty of a grid, ranks the validation items (training items as input)
and the test items (training + validation items as input) against the whole catalogue minus the input,
with ``score - penalty * bias`` (bias: ``ln(1 + training count)``, or the item's hubness over the
validation users as ``train`` computes it), and prints one JSON line: NDCG@10, tail-item HR@10, tail
coverage@10 and tail share@10 of each set. Tail items here: the 80% least popular by training count
(as the default Pareto segments). Offline analysis only; ``longtail evaluate`` gives the contract figures.

    python benchmarks/exposure_kinds.py --warehouse W W/_models/sasrec/V1 W/_models/llmesr_sasrec/V2 > OUT.jsonl
"""
import argparse
import json
import tempfile

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    from longtail.core.config import TrainConfig, load_config
    from longtail.core.session import build_spark
    from longtail.core.tables import Warehouse
    from longtail.inference.store import load_model_dir
    from longtail.ranking.topk import item_hubness, log_popularity
    from longtail.ranking.metrics import ndcg, hit_rate
    from longtail.stages.train.data import UserTable, load_popularity
    from longtail.stages.train.prepare import prepare_training_data
    from longtail.stages.train.validation import ValidationSet

    cfg = load_config(None, [f"warehouse={a.warehouse}", "spark.master=local[1]"])
    spark = build_spark(cfg.spark, delta_engine=cfg.delta.engine)
    wh = Warehouse(spark, cfg.warehouse, engine=cfg.delta.engine)
    with tempfile.TemporaryDirectory() as run_dir:
        prepare_training_data(wh, "sasrec", TrainConfig(exposure_tolerance=0.02), run_dir, 1, 1)
        users = UserTable.load(f"{run_dir}/users")
        pop = load_popularity(run_dir)
    n_items = len(pop) - 1
    logc = log_popularity(pop)
    order = np.argsort(-pop[1:], kind="stable") + 1
    head = set(order[: int(round(0.2 * n_items))].tolist())
    tail_mask = np.array([i not in head and i > 0 for i in range(n_items + 1)])
    # test view: input = history[:-1], target = last, seen = history[:-1]
    hv, ho = users.hist_values, users.hist_offsets
    tv, to, tgt, hv2, ho2 = [], [0], [], [], [0]
    for r in range(len(users.user_idx)):
        h = hv[ho[r]:ho[r + 1]]
        inp = h[:-1][-201:]
        tv.append(inp); to.append(to[-1] + len(inp)); tgt.append(h[-1])
        hh = np.concatenate([h, [0]]); hv2.append(hh); ho2.append(ho2[-1] + len(hh))
    test_users = UserTable(users.user_idx, (np.concatenate(tv), np.array(to)), np.array(tgt),
                           (np.concatenate(hv2), np.array(ho2)))
    for path in a.models:
        model = load_model_dir(path)
        val = ValidationSet.build(users, n_items, model.max_len, 42, 5)
        test = ValidationSet.build(test_users, n_items, model.max_len, 42, 5)
        vu, it = (x.cpu() for x in val._vectors(model.module, None))
        tu, _ = (x.cpu() for x in test._vectors(model.module, None))
        hub = torch.from_numpy(item_hubness(vu, it, a.m))
        lc = torch.as_tensor(np.asarray(logc, dtype=np.float32))[: it.shape[0]]
        for kind, bias in (("pop", lc), ("hub", hub)):
            for p in (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0):
                items = torch.cat([it, -bias[:, None]], 1)
                res = {}
                for name, vs, U in (("valid", val, vu), ("test", test, tu)):
                    Ua = torch.cat([U, torch.full((U.shape[0], 1), p)], 1)
                    ranks, top = vs._full_ranks(Ua, items, 10, 1024, 8192, with_top=True)
                    t = top.ravel().numpy(); t = t[t > 0]
                    cov_t = len(set(t[tail_mask[t]].tolist())) / tail_mask.sum()
                    tr = ranks[tail_mask[vs.targets]]
                    res[name] = dict(ndcg=round(ndcg(ranks, 10), 5), tail_hr=round(hit_rate(tr, 10), 5),
                                     tcov=round(cov_t, 4), tshare=round(float(tail_mask[t].mean()), 4))
                print(json.dumps({"model": model.name, "version": model.version[-8:], "kind": kind, "p": p, **res}),
                      flush=True)


if __name__ == "__main__":
    main()
