"""One MIMO-style training step on CPU with gloo, on the groups mimo-launch verified.

    mimo-launch entrypoint=examples.mimo_step:main          # from the repository root

An encoder ("vision": a linear layer, tensor-parallel by output rows) runs on its ranks; the
language module ("language": a pipeline with a position embedding on its first stage and a word
embedding tied between its first and last stage) on its own. The encoder's last stage sends its
activation to the language's first stage of the same data-parallel replica; the gradient comes
back the same way. Gradients are then all-reduced over `dp`, the position embedding's over
`pos_embd` and the tied embedding's over `embd`, all taken from the ProcessGroupCollections, as
megatron-core's finalize_model_grads does. Every rank checks the numbers it got against the
closed form below and writes them to `<run dir>/mimo_step/rank<N>.json`.

With hidden size H, DP replicas d = 0..D-1, input x_d = (d+1)·1, encoder weight W = 2·I, word
embedding e = 1 (both tied copies), position embedding p = 0:
activation a_d = 2(d+1)·1; h = a⊙e + p; loss L_d = Σ h⊙e = 2H(d+1).
After the reductions: every entry of W's gradient is Σ_d (d+1) = D(D+1)/2; of p's, D; of e's,
2·D(D+1) on the first and the last stage (each stage's Σ_d 2(d+1), summed over `embd`).
Default layout (vlm_8, D = 2, H = 4): 3, 2, 12, and a total loss of 24.

Supported layouts: `vision` with PP = CP = ETP = 1 (any TP), `language` with TP = CP = ETP = 1
(any PP), equal DP sizes, not colocated. Anything else raises ValueError before any
communication.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist

H = 4  # hidden size
ENCODER, LANGUAGE = "vision", "language"


def _check_layout(layout) -> tuple:
    vision, language = layout.get_parallelism(ENCODER), layout.get_parallelism(LANGUAGE)
    if (vision.pipeline_model_parallel_size, vision.context_parallel_size,
            vision.expert_tensor_parallel_size) != (1, 1, 1) or \
            (language.tensor_model_parallel_size, language.context_parallel_size,
             language.expert_tensor_parallel_size) != (1, 1, 1) or \
            vision.data_parallel_size != language.data_parallel_size or \
            H % vision.tensor_model_parallel_size or layout.colocated:
        raise ValueError("examples.mimo_step needs vision PP=CP=ETP=1, language TP=CP=ETP=1, "
                         "equal DP sizes and separate ranks (e.g. mimo=vlm_8)")
    return vision, language


def _pair(vision, language, d: int) -> tuple[int, int]:
    """(encoder last-stage rank that sends, language first-stage rank that receives) of DP
    replica d (SPEC section 3's rank formula: tp and pp are 0 there)."""
    return (vision.rank_offset + vision.tensor_model_parallel_size * d,
            language.rank_offset + language.pipeline_model_parallel_size * d)


def _encoder_step(ctx, vision, language) -> dict:
    pg = ctx.process_groups.collections[ENCODER]
    tp_ranks = dist.get_process_group_ranks(pg.tp)
    t, tp = tp_ranks.index(ctx.rank), len(tp_ranks)
    d = dist.get_process_group_ranks(pg.dp).index(ctx.rank)
    rows = H // tp
    weight = (2 * torch.eye(H))[t * rows:(t + 1) * rows].clone().requires_grad_()
    x = torch.full((H,), float(d + 1))
    shard = weight @ x
    pieces = [torch.empty(rows) for _ in range(tp)]
    dist.all_gather(pieces, shard.detach(), group=pg.tp)
    activation = torch.cat(pieces)
    sender, receiver = _pair(vision, language, d)
    grad = torch.empty(H)
    if ctx.rank == sender:
        dist.send(activation, dst=receiver)
        dist.recv(grad, src=receiver)
    dist.broadcast(grad, src=sender, group=pg.tp)
    shard.backward(grad[t * rows:(t + 1) * rows])
    dist.all_reduce(weight.grad, group=pg.dp)
    return {"activation": activation.tolist(), "weight_grad": weight.grad.unique().tolist()}


def _language_step(ctx, vision, language) -> dict:
    pg = ctx.process_groups.collections[LANGUAGE]
    stages = dist.get_process_group_ranks(pg.pp)
    stage = stages.index(ctx.rank)
    first, last = stage == 0, stage == len(stages) - 1
    d = dist.get_process_group_ranks(pg.dp).index(ctx.rank)
    embedding = torch.ones(H, requires_grad=True)  # tied: a copy on the first and last stage
    position = torch.zeros(H, requires_grad=True)
    out = {}
    if first:
        activation = torch.empty(H)
        dist.recv(activation, src=_pair(vision, language, d)[0])
        activation.requires_grad_()
        h = activation * embedding + position
    else:
        h = torch.empty(H)
        dist.recv(h, src=stages[stage - 1])
        h.requires_grad_()
    if last:
        loss = (h * embedding).sum()
        out["loss"] = loss.item()
        loss.backward()
    else:
        dist.send(h.detach(), dst=stages[stage + 1])
        grad = torch.empty(H)
        dist.recv(grad, src=stages[stage + 1])
        h.backward(grad)
    if not first:
        dist.send(h.grad, dst=stages[stage - 1])
    else:
        dist.send(activation.grad, dst=_pair(vision, language, d)[0])
    for param in (embedding, position):
        if param.grad is None:
            param.grad = torch.zeros(H)
        dist.all_reduce(param.grad, group=pg.dp)
    if pg.pos_embd is not None:
        dist.all_reduce(position.grad, group=pg.pos_embd)
        out["position_grad"] = position.grad.unique().tolist()
    if pg.embd is not None:
        dist.all_reduce(embedding.grad, group=pg.embd)
        out["embedding_grad"] = embedding.grad.unique().tolist()
    if "loss" in out:
        total = torch.tensor([out["loss"]])
        dist.all_reduce(total, group=pg.dp)
        out["total_loss"] = total.item()
    return out


def expected(ctx, module: str) -> dict:
    """What this rank must get, from the closed form in the module docstring."""
    vision, language = _check_layout(ctx.layout)
    big_d = vision.data_parallel_size
    if module == ENCODER:
        d = (ctx.rank - vision.rank_offset) // vision.tensor_model_parallel_size
        return {"activation": [2.0 * (d + 1)] * H, "weight_grad": [big_d * (big_d + 1) / 2]}
    stage = (ctx.rank - language.rank_offset) % language.pipeline_model_parallel_size
    first, last = stage == 0, stage == language.pipeline_model_parallel_size - 1
    out = {}
    if first:
        out["position_grad"] = [float(big_d)]
    if first or last:
        out["embedding_grad"] = [2.0 * big_d * (big_d + 1)]
    if last:
        d = (ctx.rank - language.rank_offset) // language.pipeline_model_parallel_size
        out["loss"] = 2.0 * H * (d + 1)
        out["total_loss"] = float(H * big_d * (big_d + 1))
    return out


def main(ctx) -> None:
    """The entry point: one step on this rank's module, checked; raises AssertionError on a
    wrong number (mimo-launch then exits 3 naming this rank)."""
    vision, language = _check_layout(ctx.layout)
    (module,) = ctx.process_groups.rank_modules
    step = _encoder_step if module == ENCODER else _language_step
    got = step(ctx, vision, language)
    want = expected(ctx, module)
    out_dir = ctx.run_dir / "mimo_step"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"rank{ctx.rank}.json").write_text(json.dumps({"module": module, **got}))
    if got != want:
        raise AssertionError(f"rank {ctx.rank} ({module}): got {got}, expected {want}")
