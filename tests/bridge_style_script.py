"""A MIMO set-up written against Megatron-Bridge's API, as a Bridge training script has it.

Not importable here (Megatron-Bridge is not installed): `tests/test_bridge_compat.py` swaps the
two `megatron.bridge` import lines for mimo_launch's and runs the rest unchanged in every rank
of a real gloo world.
"""

import torch
import torch.distributed as dist
from megatron.bridge.models.mimo.mimo_builder import (
    build_hypercomm_grids,
    is_pp_first_stage,
    is_pp_last_stage,
    populate_embedding_and_position_groups,
)
from megatron.bridge.models.mimo.mimo_config import MimoParallelismConfig, ModuleParallelismConfig


def sum_of_powers(group):
    """All-reduce 2**rank in `group`: the sum names the members."""
    t = torch.tensor([2 ** dist.get_rank()])
    dist.all_reduce(t, group=group)
    return int(t.item())


def main():
    cfg = MimoParallelismConfig(
        module_parallelisms={
            "vision": ModuleParallelismConfig(tensor_model_parallel_size=2, data_parallel_size=2),
            "language": ModuleParallelismConfig(pipeline_model_parallel_size=2,
                                                data_parallel_size=2, rank_offset=4),
        },
        special_token_ids={"image": 32000},
    )
    cfg.finalize(dist.get_world_size())
    grids = build_hypercomm_grids(cfg)
    result = {"total_world_size": cfg.total_world_size}
    for name in cfg.module_names:
        parallelism = cfg.get_parallelism(name)
        grid = grids[name]
        pp_group = grid.get_pg(["pp"])
        pos_embd_pg, embd_pg = populate_embedding_and_position_groups(pp_group)
        mine = {"total_ranks": parallelism.total_ranks,
                "total_model_parallel_size": parallelism.total_model_parallel_size,
                "first": is_pp_first_stage(pp_group), "last": is_pp_last_stage(pp_group)}
        for kind in ("tp", "dp", "pp"):
            group = grid.get_pg([kind])
            mine[kind] = None if group is None else sum_of_powers(group)
        mine["pos_embd"] = None if pos_embd_pg is None else sum_of_powers(pos_embd_pg)
        mine["embd"] = None if embd_pg is None else sum_of_powers(embd_pg)
        result[name] = mine
    return result
