"""Why does contrast lose to CE on the default experiment? One-process replay with diagnostics.

Trains ``experiments/synthetic.yaml`` (or any config + overrides) in ONE process without Ray, the way
``raycontrast.train.loop`` does with ``train.num_workers`` workers: the global batch is split into one
shard per simulated rank (each rank's own ``ShardSampler`` share, its own BatchNorm batch, its own
anchor sampling and per-rank generator ``seed * 1000 + rank``), the per-rank losses are averaged (what
DDP's gradient averaging does), and the records of every rank go into one global bank after the step
(what the bank actor does). Same model, optimizer, poly schedule and warm-up as the loop.

Every ``--diag-every`` iterations it also records:

* the loss terms (CE, in-batch, memory) and the anchors: count, classes, fraction of background;
* gradient norms reaching the projection head, the decode head and the backbone from each term
  separately (CE, weight x in-batch, weight x memory), and the cosine between the CE and contrast
  gradients on the backbone;
* embedding geometry: mean off-diagonal cosine between per-class centroids of the current embeddings
  and of the bank entries, mean cosine of a pixel to its own centroid, and for anchors the mean
  similarity to same-class (positive) vs other-class (negative) bank entries;
* staleness: mean age (iterations since written) of bank entries, per kind;

and val mIoU every ``--eval-every`` iterations. Results go to a JSON file (``--out``), one entry per run.

    .venv/bin/python benchmarks/diagnose_contrast.py --seed 0 --label default
    .venv/bin/python benchmarks/diagnose_contrast.py --seed 0 --label ce --set contrast.enabled=false
    .venv/bin/python benchmarks/diagnose_contrast.py --seed 0 --label mv4 --set contrast.max_views=4
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from raycontrast.config import load_config
from raycontrast.contrast import MemoryBank, PixelContrastLoss, memory_kinds, select_records
from raycontrast.contrast.memory import KINDS
from raycontrast.contrast.sampling import resize_labels
from raycontrast.data import build_dataset, dataset_info
from raycontrast.eval.evaluate import evaluate
from raycontrast.eval.run import resolve_eval_config
from raycontrast.models import build_segmentor
from raycontrast.train._losses import cross_entropy
from raycontrast.train._state import seed_everything


def _batches(cfg, rank: int, world: int):
    """This rank's endless batches: epoch ``e`` shuffles with seed ``(seed, e)`` and rank ``r`` takes
    every ``world``-th sample from ``r`` (the loop's per-rank sharding as of this study; kept fixed here
    so that every run of a seed sees the same data order whatever the loop does later)."""
    local = cfg.train.batch_size // world
    ds = build_dataset(cfg.data, cfg.data.train_split, train=True)
    ds.seed = cfg.train.seed
    steps = (len(ds) // world) // local
    epoch = 0
    while True:
        ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
        idx = torch.randperm(len(ds), generator=g)[rank::world][: steps * local].tolist()
        for b in range(0, len(idx), local):
            items = [ds[i] for i in idx[b : b + local]]
            yield (
                epoch,
                torch.stack([it["image"] for it in items]),
                torch.stack([it["label"] for it in items]),
            )
        epoch += 1


def _grad_norms(loss, groups):
    """Gradient norm of ``loss`` on each parameter group (``None`` when unconnected)."""
    params = [p for g in groups.values() for p in g]
    if not loss.requires_grad:
        return {k: 0.0 for k in groups}, None
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    out, i, flat = {}, 0, {}
    for k, g in groups.items():
        gs = [x for x in grads[i : i + len(g)]]
        i += len(g)
        vec = torch.cat(
            [(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(gs, g)]
        )
        out[k] = float(vec.norm())
        flat[k] = vec
    return out, flat


def _centroid_stats(vecs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean off-diagonal cosine of class centroids and mean cosine of a vector to its own centroid."""
    if vecs.shape[0] == 0:
        return {}
    classes = torch.unique(labels)
    cents = torch.stack([vecs[labels == c].mean(0) for c in classes])
    unit = F.normalize(cents, dim=1)
    own = {int(c): float((vecs[labels == c] @ unit[j]).mean()) for j, c in enumerate(classes)}
    cos = unit @ unit.T
    off = cos[~torch.eye(len(classes), dtype=torch.bool)]
    return {
        "centroid_offdiag_cos": float(off.mean()) if off.numel() else None,
        "to_own_centroid_cos": float(sum(own.values()) / len(own)),
        "centroid_norm": float(cents.norm(dim=1).mean()),
    }


# contrast keys a branch may change at the warm-up boundary: they do not act before it
_BRANCHABLE = {
    "enabled", "loss_weight", "tau", "tau_base", "max_samples", "max_views", "inbatch",
    "memory_sampling", "k", "top_fraction", "hard_fraction",
}  # fmt: skip


def _check_branch(base, cfg, label: str) -> None:
    """A branch must leave everything that acts before the warm-up ends as in the shared prefix."""
    for section in ("model", "data", "optim", "train", "bank", "eval"):
        if getattr(base, section) != getattr(cfg, section):
            raise ValueError(f"branch {label!r} changes {section}.*: it cannot share the prefix")
    for key in vars(base.contrast):
        if key not in _BRANCHABLE and getattr(base.contrast, key) != getattr(cfg.contrast, key):
            raise ValueError(f"branch {label!r} changes contrast.{key}: it cannot share the prefix")


def run(
    cfg, label: str, eval_every: int, diag_every: int, log, branches=None, out_path=None
) -> dict:
    """Train ``cfg``; with ``branches`` (``[(label, cfg), ...]``) the run forks at the end of the
    warm-up into one child process per branch (identical state up to there), each appending its
    result to ``out_path``; the parent then returns ``None``."""
    seed_everything(cfg.train.seed)
    info = dataset_info(cfg.data)
    num_classes, ignore = info.num_classes, cfg.data.ignore_index
    use_contrast = cfg.contrast.enabled
    model = build_segmentor(cfg.model, num_classes, projection=use_contrast)
    world = max(cfg.train.num_workers, 1)
    generators = [torch.Generator().manual_seed(cfg.train.seed * 1000 + r) for r in range(world)]
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
    iters = cfg.train.iterations
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: max(0.0, 1.0 - it / iters) ** cfg.optim.poly_power
    )
    criterion = PixelContrastLoss(cfg.contrast, ignore_index=ignore) if use_contrast else None
    kinds = memory_kinds(cfg.contrast) if use_contrast else ()
    bank = (
        MemoryBank(num_classes, cfg.model.proj_dim, cfg.contrast.memory_size, kinds)
        if kinds
        else None
    )
    # write iteration of every bank slot (mirrors MemoryBank.write's FIFO pointer arithmetic)
    age = torch.full((len(kinds), num_classes, cfg.contrast.memory_size), -1, dtype=torch.long)
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    groups = {
        "backbone": list(model.backbone.parameters()),
        "decode": list(model.decode_head.parameters()),
    }
    if use_contrast:
        groups["proj"] = list(model.proj_head.parameters())
    streams = [_batches(cfg, r, world) for r in range(world)]
    w = cfg.contrast.loss_weight
    history, evals = [], []
    t0 = time.perf_counter()
    model.train()
    for it in range(iters):
        if branches and it == cfg.contrast.warmup_iters:
            pids = []
            for b_label, b_cfg in branches:
                pid = os.fork()
                if pid == 0:
                    label, cfg, branches = b_label, b_cfg, None
                    use_contrast = cfg.contrast.enabled
                    criterion = (
                        PixelContrastLoss(cfg.contrast, ignore_index=ignore)
                        if use_contrast
                        else None
                    )
                    w = cfg.contrast.loss_weight
                    if not use_contrast:
                        bank = None
                    break
                pids.append(pid)
            else:
                failed = [p for p in pids if os.waitpid(p, 0)[1] != 0]
                if failed:
                    raise RuntimeError(f"branch processes {failed} failed")
                return None
        shards = [next(s) for s in streams]
        diag = (it + 1) % diag_every == 0 or it == 0 or it == cfg.contrast.warmup_iters
        outs, ces, contrasts = [], [], []
        terms = {"ce": 0.0, "inbatch": 0.0, "memory": 0.0, "anchors": 0, "anchor_bg": 0}
        inb_sum = mem_sum = None
        anchor_classes = torch.zeros(num_classes, dtype=torch.long)
        for r, (_, images, labels) in enumerate(shards):
            out = model(images)
            ce = cross_entropy(out["logits"].float(), labels, ignore)
            ces.append(ce)
            terms["ce"] += float(ce.detach()) / world
            if criterion is not None:
                co = criterion(
                    out["embed"].float(), labels, out["logits"].float(), it, bank, generators[r]
                )
                contrasts.append(co)
                for k in ("inbatch", "memory"):
                    if k in co.terms:
                        terms[k] += float(co.terms[k]) / world
                terms["anchors"] += co.num_anchors
                if diag and co.num_anchors and it >= cfg.contrast.warmup_iters:
                    # recompute the separate terms with graph for gradient attribution
                    from raycontrast.contrast.sampling import resize_predictions, sample_anchors

                    g = torch.Generator().manual_seed(12345 + it * 10 + r)
                    z, zl = sample_anchors(
                        out["embed"].float(),
                        co.labels_small,
                        resize_predictions(out["logits"].detach(), co.labels_small.shape[-2:]),
                        cfg.contrast.max_samples,
                        cfg.contrast.max_views,
                        ignore,
                        g,
                    )
                    n_view = z.shape[1]
                    z = z.reshape(-1, z.shape[-1])
                    zl = zl.repeat_interleave(n_view)
                    anchor_classes += torch.bincount(zl, minlength=num_classes)
                    from raycontrast.contrast.loss import (
                        inbatch_contrast_loss,
                        memory_contrast_loss_blocks,
                    )

                    if cfg.contrast.inbatch:
                        t = inbatch_contrast_loss(z, zl, cfg.contrast.tau, cfg.contrast.tau_base)
                        inb_sum = t / world if inb_sum is None else inb_sum + t / world
                    if bank is not None and len(bank):
                        store, blocks = bank.memory(kinds)
                        t = memory_contrast_loss_blocks(
                            z, zl, store, blocks, cfg.contrast.tau, cfg.contrast.tau_base
                        )
                        mem_sum = t / world if mem_sum is None else mem_sum + t / world
                        if r == 0:
                            # positive vs negative similarity of anchors to memory, per kind
                            sims = {}
                            for ki, kind in enumerate(kinds):
                                pos, neg = [], []
                                for c in range(num_classes):
                                    n = int(bank.count[ki, c])
                                    if n == 0:
                                        continue
                                    s = z.detach() @ bank.data[ki, c, :n].T
                                    m = zl == c
                                    if m.any():
                                        pos.append(s[m].mean())
                                    if (~m).any():
                                        neg.append(s[~m].mean())
                                if pos and neg:
                                    sims[kind] = {
                                        "pos_sim": float(torch.stack(pos).mean()),
                                        "neg_sim": float(torch.stack(neg).mean()),
                                    }
                            terms["memory_sim"] = sims
            outs.append((out, labels))
        loss_ce = sum(ces) / world
        loss = loss_ce
        if contrasts:
            loss = loss + w * sum(c.loss for c in contrasts) / world
        if diag:
            row_grads = {}
            gce, fce = _grad_norms(loss_ce, groups)
            row_grads["ce"] = gce
            for name, t in (("inbatch", inb_sum), ("memory", mem_sum)):
                if t is not None and t.requires_grad:
                    gn, fl = _grad_norms(w * t, groups)
                    row_grads[f"w*{name}"] = gn
                    row_grads[f"cos_ce_{name}_backbone"] = float(
                        F.cosine_similarity(fce["backbone"], fl["backbone"], dim=0)
                    )
            terms["grads"] = row_grads
            terms["anchor_classes"] = anchor_classes.tolist()
            # embedding geometry of the current network on this batch (all labelled pixels)
            if use_contrast:
                embs, labs = [], []
                for out, labels in outs:
                    e = out["embed"].detach()
                    y = resize_labels(labels, tuple(e.shape[-2:]))
                    embs.append(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]))
                    labs.append(y.reshape(-1))
                e, y = torch.cat(embs), torch.cat(labs)
                keep = y != ignore
                terms["embed_geometry"] = _centroid_stats(e[keep], y[keep])
                if bank is not None:
                    for ki, kind in enumerate(kinds):
                        vs, ls = [], []
                        for c in range(num_classes):
                            n = int(bank.count[ki, c])
                            if n:
                                vs.append(bank.data[ki, c, :n])
                                ls.append(torch.full((n,), c))
                        if vs:
                            stats = _centroid_stats(torch.cat(vs), torch.cat(ls))
                            filled = age[ki] >= 0
                            stats["mean_age_iters"] = float((it - age[ki][filled]).float().mean())
                            # drift: current class centroid vs bank class centroid
                            drift = []
                            for c in range(num_classes):
                                n = int(bank.count[ki, c])
                                if n and bool((y == c).any()):
                                    cur = F.normalize(e[y == c].mean(0), dim=0)
                                    old = F.normalize(bank.data[ki, c, :n].mean(0), dim=0)
                                    drift.append(float(cur @ old))
                            stats["current_vs_bank_centroid_cos"] = (
                                sum(drift) / len(drift) if drift else None
                            )
                            terms[f"bank_{kind}"] = stats
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if diag:
            terms["lr"] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        if bank is not None:
            for r, (co, (out, _)) in enumerate(zip(contrasts, outs)):
                rec = select_records(
                    out["embed"].detach().float(),
                    co.labels_small,
                    num_classes,
                    pixel_update_freq=cfg.contrast.pixel_update_freq,
                    kinds=kinds,
                    ignore_index=ignore,
                    generator=generators[r],
                )
                # record slot ages with the bank's own FIFO arithmetic (before the write moves ptr)
                for ki, kind in enumerate(kinds):
                    sel = rec.kind == KINDS.index(kind)
                    for c in range(num_classes):
                        n = int((rec.cls[sel] == c).sum())
                        if n:
                            p = int(bank.ptr[ki, c])
                            slots = (p + torch.arange(n)) % cfg.contrast.memory_size
                            age[ki, c, slots] = it
                bank.write(rec)
        terms["iteration"] = it + 1
        terms["loss"] = float(loss)
        history.append(terms)
        if diag:
            gr = terms.get("grads", {})
            log(
                f"[{label}] it {it + 1} ce {terms['ce']:.3f} inb {terms['inbatch']:.3f} "
                f"mem {terms['memory']:.3f} anchors {terms['anchors']} "
                f"g_bb ce {gr.get('ce', {}).get('backbone', 0):.3f} "
                f"inb {gr.get('w*inbatch', {}).get('backbone', 0):.3f} "
                f"mem {gr.get('w*memory', {}).get('backbone', 0):.3f} "
                f"({time.perf_counter() - t0:.0f}s)"
            )
        if (it + 1) % eval_every == 0 or it + 1 == iters:
            with torch.no_grad():
                m = evaluate(
                    model.predict, val, num_classes, ignore, resolve_eval_config(cfg)
                ).compute()
            model.train()
            evals.append({"iteration": it + 1, "mIoU": m["mIoU"], "IoU": m["IoU"]})
            log(f"[{label}] it {it + 1} val mIoU {100 * m['mIoU']:.2f}")
    result = {
        "label": label,
        "seed": cfg.train.seed,
        "iterations": iters,
        "seconds": time.perf_counter() - t0,
        "final_mIoU": evals[-1]["mIoU"],
        "best_mIoU": max(e["mIoU"] for e in evals),
        "evals": evals,
        "history": history,
    }
    if out_path is not None:
        _append(out_path, result)
    return result


def _append(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # branches finish in parallel processes
        f.write(json.dumps(result) + "\n")


def static_evidence(cfg, images: int, max_views_list=(32, 16, 8, 4)) -> dict:
    """Training-free facts about the anchors of ``cfg`` on ``images`` training crops.

    * coverage: share of (image, class) pairs, per class, with more than ``max_views`` pixels at the
      embedding resolution (only those give anchors), and the anchors' class mix;
    * label alignment: how often the nearest-resized label of an embedding cell (what the contrast
      uses: PyTorch ``nearest`` takes the cell's top-left pixel) differs from the cell's majority
      label, and the share of anchors that are mislabelled under an oracle that predicts every
      cell's majority label (for such a network every "hard" anchor is a mislabelled cell).
    """
    stride = 8 if cfg.model.output_stride == 8 else cfg.model.output_stride
    ds = build_dataset(cfg.data, cfg.data.train_split, train=True)
    ds.seed = cfg.train.seed
    num_classes = dataset_info(cfg.data).num_classes
    ignore = cfg.data.ignore_index
    h, w = (s // stride for s in cfg.data.crop_size)
    near, legacy, major = [], [], []
    for i in range(images):
        y = ds[i]["label"]
        near.append(resize_labels(y[None], (h, w))[0])
        legacy.append(
            F.interpolate(y[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        )
        yy = y.clone()
        yy[yy == ignore] = num_classes
        onehot = F.one_hot(yy, num_classes + 1).permute(2, 0, 1)[None].float()
        m = F.adaptive_avg_pool2d(onehot, (h, w)).argmax(1)[0]
        m[m == num_classes] = ignore
        major.append(m)
    major = torch.stack(major)
    out = {"images": images, "embedding_size": [h, w]}
    for resize, cells in (("legacy_nearest_top_left", legacy), ("resize_labels_centre", near)):
        out[resize] = _anchor_facts(
            cfg, torch.stack(cells), major, num_classes, ignore, images, max_views_list
        )
    return out


def _anchor_facts(cfg, near, major, num_classes, ignore, images, max_views_list) -> dict:
    labelled = near != ignore
    out = {
        "cells_disagreeing_with_cell_majority": float((near != major)[labelled].float().mean()),
        "per_max_views": {},
    }
    for mv in max_views_list:
        pairs = torch.zeros(num_classes)
        kept = torch.zeros(num_classes)
        anchor_cls = torch.zeros(num_classes)
        mislabelled = anchors = 0.0
        batches = single_class = 0
        for b in range(images):
            cnt = torch.bincount(near[b][labelled[b]], minlength=num_classes)
            pairs += (cnt > 0).float()
            keep = cnt > mv
            kept += keep.float()
        local = cfg.train.batch_size // max(cfg.train.num_workers, 1)
        for b0 in range(
            0, images - local + 1, local
        ):  # per-rank batches, as sample_anchors sees them
            ys, ms = near[b0 : b0 + local], major[b0 : b0 + local]
            cnts = [torch.bincount(y[y != ignore], minlength=num_classes) for y in ys]
            total = sum(int((c > mv).sum()) for c in cnts)
            if total == 0:
                continue
            n_view = min(cfg.contrast.max_samples // total, mv)
            batches += 1
            single_class += (
                len({k for c in cnts for k in torch.nonzero(c > mv).flatten().tolist()}) < 2
            )
            for y, m, c in zip(ys, ms, cnts):
                for k in torch.nonzero(c > mv).flatten().tolist():
                    hard = int(((y == k) & (m != k)).sum())
                    easy = int(c[k]) - hard
                    n_hard = (
                        min(hard, n_view // 2) if easy >= n_view - n_view // 2 else n_view - easy
                    )
                    anchor_cls[k] += n_view
                    anchors += n_view
                    mislabelled += n_hard
        out["per_max_views"][mv] = {
            "pairs_with_anchors_by_class": (kept / pairs.clamp(min=1)).round(decimals=3).tolist(),
            "object_pairs_with_anchors": float(kept[1:].sum() / pairs[1:].sum().clamp(min=1)),
            "anchor_class_share": (anchor_cls / max(anchors, 1)).round(decimals=3).tolist(),
            "anchors_mislabelled_under_oracle": mislabelled / max(anchors, 1),
            "rank_batches_with_one_anchor_class": single_class / max(batches, 1),
            "anchors_per_rank_batch": anchors / max(batches, 1),
        }
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(
    runs_path: str, out_json: str, out_png: str | None, static: str | None = None
) -> dict:
    """Pair every run with the CE run of the same seed (label ``ce``) and write the evidence JSON."""
    lines = Path(runs_path).read_text().splitlines()
    runs = [json.loads(line) for line in lines if line.strip()]
    by = {(r["label"], r["seed"]): r for r in runs}  # the last run of a (label, seed) wins
    labels = sorted({k[0] for k in by})
    seeds = sorted({k[1] for k in by})
    table = {}
    for label in labels:
        rows = []
        for seed in seeds:
            r, ce = by.get((label, seed)), by.get(("ce", seed))
            if r is None:
                continue
            rows.append(
                {
                    "seed": seed,
                    "final_mIoU": round(100 * r["final_mIoU"], 2),
                    "best_mIoU": round(100 * r["best_mIoU"], 2),
                    "minus_ce_final": None
                    if ce is None
                    else round(100 * (r["final_mIoU"] - ce["final_mIoU"]), 2),
                    "iterations": r["iterations"],
                    "overrides": r.get("overrides", []),
                    "seconds": round(r["seconds"]),
                }
            )
        diffs = [x["minus_ce_final"] for x in rows if x["minus_ce_final"] is not None]
        after = [
            h
            for r in (by[(label, s)] for s in seeds if (label, s) in by)
            for h in r["history"]
            if "grads" in h and ("w*inbatch" in h["grads"] or "w*memory" in h["grads"])
        ]

        def g(h, term, part):
            return (h["grads"].get(term) or {}).get(part)

        diag = {}
        if after:
            diag = {
                "mean_grad_backbone": {
                    t: _mean([g(h, t, "backbone") for h in after])
                    for t in ("ce", "w*inbatch", "w*memory")
                },
                "mean_grad_proj": {
                    t: _mean([g(h, t, "proj") for h in after]) for t in ("w*inbatch", "w*memory")
                },
                "mean_cos_ce_vs_inbatch_backbone": _mean(
                    [h["grads"].get("cos_ce_inbatch_backbone") for h in after]
                ),
                "mean_cos_ce_vs_memory_backbone": _mean(
                    [h["grads"].get("cos_ce_memory_backbone") for h in after]
                ),
                "fraction_of_steps_inbatch_zero": _mean(
                    [
                        float(h["inbatch"] == 0.0)
                        for r in (by[(label, s)] for s in seeds if (label, s) in by)
                        for h in r["history"]
                        if h["anchors"]
                    ]
                ),
                "anchor_class_share": _share([h["anchor_classes"] for h in after]),
                "last_geometry": {
                    k: after[-1].get(k)
                    for k in ("embed_geometry", "bank_pixel", "bank_region", "memory_sim")
                },
            }
        table[label] = {
            "runs": rows,
            "mean_minus_ce_final": _mean(diffs),
            "mean_final_mIoU": _mean([x["final_mIoU"] for x in rows]),
            "diagnostics": diag,
        }
    result = {
        "what": "benchmarks/diagnose_contrast.py: one-process replay of experiments/synthetic.yaml "
        "(2 simulated ranks, global bank) per label and seed; minus_ce = final mIoU minus the CE-only "
        "run of the same seed (identical initial weights and data order).",
        "static_anchor_facts": json.loads(Path(static).read_text()) if static else None,
        "labels": table,
        "curves": {
            f"{r['label']}/s{r['seed']}": {
                "iteration": [h["iteration"] for h in r["history"]],
                "ce": [h["ce"] for h in r["history"]],
                "inbatch": [h["inbatch"] for h in r["history"]],
                "memory": [h["memory"] for h in r["history"]],
                "val": [[e["iteration"], e["mIoU"]] for e in r["evals"]],
            }
            for r in by.values()
        },
    }
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(result, indent=1))
    if out_png:
        _plot(by, out_png)
    for label, row in table.items():
        print(label, [(x["seed"], x["final_mIoU"], x["minus_ce_final"]) for x in row["runs"]])
    return result


def _share(counts: list[list[int]]) -> list[float]:
    total = [sum(c[i] for c in counts) for i in range(len(counts[0]))]
    s = max(sum(total), 1)
    return [round(t / s, 3) for t in total]


def _plot(by: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for (label, seed), r in sorted(by.items()):
        it = [h["iteration"] for h in r["history"]]

        def smooth(v, k=25):
            return [
                sum(v[max(0, i - k + 1) : i + 1]) / len(v[max(0, i - k + 1) : i + 1])
                for i in range(len(v))
            ]

        name = f"{label} s{seed}"
        ax[0].plot(it, smooth([h["ce"] for h in r["history"]]), label=name)
        if label != "ce":
            ax[1].plot(it, smooth([h["inbatch"] for h in r["history"]]), label=f"{name} in-batch")
            ax[1].plot(
                it, smooth([h["memory"] for h in r["history"]]), "--", label=f"{name} memory"
            )
        ev = r["evals"]
        ax[2].plot([e["iteration"] for e in ev], [100 * e["mIoU"] for e in ev], "o-", label=name)
    ax[0].set_title("CE (25-it mean)")
    ax[1].set_title("contrast terms (unweighted)")
    ax[2].set_title("val mIoU")
    for a in ax:
        a.set_xlabel("iteration")
    ax[2].legend(fontsize=6)
    ax[1].legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="experiments/synthetic.yaml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="default")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--diag-every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--branch",
        nargs="*",
        default=[],
        metavar="LABEL:KEY=VALUE,...",
        help="fork at the end of the warm-up into these variants (contrast.* keys that do not act "
        "during the warm-up, or contrast.enabled=false for the CE-only arm)",
    )
    ap.add_argument("--out", default="benchmarks/results/diagnose_runs.jsonl")
    ap.add_argument(
        "--summarize",
        metavar="JSON",
        help="do not train: pair the runs in --out with their CE runs and write this JSON (+ .png)",
    )
    ap.add_argument("--static-json", help="--summarize: include this --static output")
    ap.add_argument("--static", type=int, metavar="IMAGES", help="only the training-free evidence")
    args = ap.parse_args()
    if args.static:
        cfg = load_config(args.config, [f"train.seed={args.seed}", *args.set])
        result = static_evidence(cfg, args.static)
        print(json.dumps(result, indent=1))
        Path(args.out).write_text(json.dumps(result, indent=1))
        return
    if args.summarize:
        png = str(Path(args.summarize).with_suffix(".png"))
        summarize(args.out, args.summarize, png, args.static_json)
        return
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"train.seed={args.seed}", *args.set])
    branches = []
    for spec in args.branch:
        b_label, _, rest = spec.partition(":")
        over = [x for x in rest.split(",") if x]
        b_cfg = load_config(args.config, [f"train.seed={args.seed}", *args.set, *over])
        _check_branch(cfg, b_cfg, b_label)
        branches.append((b_label, b_cfg, over))
    if branches and not cfg.contrast.enabled:
        raise ValueError("--branch needs the shared prefix to run with contrast enabled")

    def log(line: str) -> None:
        print(line, flush=True)

    def finish(result: dict, overrides: list[str]) -> None:
        result["overrides"] = [*args.set, *overrides]
        result["config"] = args.config
        print(
            f"[{result['label']}] seed {args.seed}: final mIoU {100 * result['final_mIoU']:.2f} "
            f"best {100 * result['best_mIoU']:.2f} in {result['seconds']:.0f}s",
            flush=True,
        )

    if branches:
        over_of = {b[0]: b[2] for b in branches}

        result = run(
            cfg, args.label, args.eval_every, args.diag_every, log,
            branches=[(b[0], b[1]) for b in branches],
        )  # fmt: skip
        if result is not None:  # a child: its branch finished
            finish(result, over_of[result["label"]])
            _append(args.out, result)
            os._exit(0)
        return
    result = run(cfg, args.label, args.eval_every, args.diag_every, log)
    finish(result, [])
    _append(args.out, result)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
