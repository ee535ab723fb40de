"""Hunyuan3D-2.1 mixture of experts: sparse against dense expert computation, at the released sizes.

One MoE feed-forward of the 2.1 DiT (2048 wide, experts 2048 -> 8192 -> 2048, 8 routed experts,
top-2, plus the shared expert; random weights) on the tokens of one sampler step (2 x 4097: the
classifier-free-guidance batch of 4096 latents plus the time token). Dense runs every expert on
every token and masks by the gate; sparse (the model's path) runs each expert only on the tokens
routed to it. The two alternate; prints the max abs difference of their outputs, the best time of
each and their ratio, and the share of routed-expert bytes the sparse path read.

Run: python benchmarks/h21_moe.py [--tokens 8194] [--repeats 2] [--device cpu|cuda] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.pipelines.hunyuan3d_v2_1 import DiT21Config, ExpertTraffic, MoEFeedForward


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main() -> int:
    config = DiT21Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2 * 4097, help="tokens per call (default: one guided sampler step)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls of each path; the best is kept")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.tokens < 1 or args.repeats < 1:
        parser.error("--tokens and --repeats must be positive")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU visible to torch")

    torch.manual_seed(args.seed)
    with torch.device(device):
        moe = MoEFeedForward(config.hidden_size, config.ffn_dim, config.num_experts, config.moe_top_k)
        torch.nn.init.normal_(moe.gate.weight, std=config.hidden_size ** -0.5)
        moe = moe.to(dtype).eval()
        tokens = torch.nn.functional.layer_norm(torch.randn(1, args.tokens, config.hidden_size), (config.hidden_size,)).to(dtype)

    with torch.inference_mode():
        moe(tokens[:, :64])  # warm-up: kernels, allocator
        sparse_s = dense_s = float("inf")
        for _ in range(args.repeats):  # alternated, so a change in the machine's load hits both alike
            with ExpertTraffic(moe) as traffic:
                seconds, sparse = timed(lambda: moe(tokens), device)
            sparse_s = min(sparse_s, seconds)
            seconds, dense = timed(lambda: moe(tokens, dense=True), device)
            dense_s = min(dense_s, seconds)
        _weights, chosen = moe.gate(tokens[0])
    per_expert = torch.bincount(chosen.flatten(), minlength=config.num_experts).tolist()
    difference = (sparse.float() - dense.float()).abs().max().item()
    scale = dense.float().abs().max().item()

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    print(f"machine: {machine}")
    print(f"MoE layer: {config.num_experts} experts + shared, top-{config.moe_top_k}, {config.hidden_size} -> {config.ffn_dim}, "
          f"{args.tokens} tokens, {args.dtype} on {device}")
    print(f"tokens per expert: {per_expert}")
    print(f"max abs diff sparse vs dense: {difference:.3g} (output scale {scale:.3g})")
    print(f"dense:  {dense_s:.2f} s (best of {args.repeats})")
    print(f"sparse: {sparse_s:.2f} s (best of {args.repeats})")
    print(f"dense / sparse time: {dense_s / sparse_s:.2f}x")
    print(f"routed-expert bytes read by sparse: {traffic.used_fraction:.0%} of dense "
          f"({traffic.used_bytes / 1e9:.2f} of {traffic.dense_bytes / 1e9:.2f} GB in one call)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
