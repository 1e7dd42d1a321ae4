"""TIP: forward + backward time of the chunked divergence at kept fractions 1.0 / 0.5 / 0.2 (same run, same inputs).

    OMP_NUM_THREADS=1 python bench/tip_backward.py [--vocab 49152] [--tokens 2048] [--hidden 576] [--repeats 5]

Tokens of weight 0 are skipped by the chunked backward pass, so its cost should fall with the kept fraction while the
forward pass (which scores every token) stays the same. Median of --repeats runs after one warm-up; the backward
includes the gradients for the hidden states and the lm_head weight.
"""

import argparse
import os
import statistics
import sys
import time

import torch

from trl_opd.divergences import chunked_per_token_divergence


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print("command: OMP_NUM_THREADS=%s python" % os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv))
    torch.manual_seed(0)
    h_s = (torch.randn(args.tokens, args.hidden) / args.hidden**0.5).requires_grad_()
    h_t = torch.randn(args.tokens, args.hidden) / args.hidden**0.5
    w_s = (torch.randn(args.vocab, args.hidden) * 2).requires_grad_()
    w_t = torch.randn(args.vocab, args.hidden) * 2
    print("| kept fraction | forward s | backward s | backward x (fraction 1.0) |\n|---|---|---|---|")
    base = None
    for fraction in args.fractions:
        weights = torch.zeros(args.tokens)
        weights[torch.randperm(args.tokens)[: max(1, int(fraction * args.tokens))]] = 1.0 / fraction
        forward, backward = [], []
        for i in range(args.repeats + 1):
            h_s.grad = w_s.grad = None
            start = time.perf_counter()
            loss = chunked_per_token_divergence(h_s, h_t, w_s, w_t, "jsd", 0.5, token_weights=weights).mean()
            middle = time.perf_counter()
            loss.backward()
            end = time.perf_counter()
            if i:
                forward.append(middle - start)
                backward.append(end - middle)
        f, b = statistics.median(forward), statistics.median(backward)
        base = base or b
        print(f"| {fraction:.1f} | {f:.3f} | {b:.3f} | {b / base:.2f} |")


if __name__ == "__main__":
    main()
