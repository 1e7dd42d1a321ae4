"""Divergence loss, forward + backward: time and peak memory, ours against TRL's, on the same inputs in one run.

    OMP_NUM_THREADS=1 python bench/divergence_loss.py          # V in {32k, 49k, 152k} x N = B*T in {512, 2048, 8192}
    OMP_NUM_THREADS=1 python bench/divergence_loss.py --vocab 152064 --tokens 2048 --repeats 5

Each measurement runs in a fresh subprocess. Memory is the peak resident set size of that process (VmHWM, reset once
the inputs exist) minus its resident size then: what the loss itself adds. Time is the median of --repeats
forward+backward passes after --warmup untimed ones. Full-logit implementations whose estimated peak exceeds --max-gib
are skipped (and say so). Implementations (all generalized JSD, beta=0.5):

* ``ours dense``     trl_opd.divergences.per_token_divergence on full (N, V) logits
* ``ours chunked``   trl_opd.divergences.chunked_per_token_divergence on hidden states (backward recomputes chunks)
* ``ours fused``     trl_opd.divergences.chunked_divergence_loss (gradient computed in the forward pass)
* ``TRL GKD``        trl.experimental.gkd.GKDTrainer.generalized_jsd_loss on full logits
* ``TRL chunked``    trl.kernels.chunked_divergence.ChunkedDivergenceFunction (plain-torch CPU path)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


IMPLEMENTATIONS = ("ours dense", "ours chunked", "ours fused", "TRL GKD", "TRL chunked")


#: Peak extra bytes per (token x vocabulary entry) of the implementations that build full logits, measured at
#: V = 152k, N = 2048 (about 12 and 15 float32 copies); used to skip shapes that would not fit in --max-gib.
DENSE_BYTES_PER_LOGIT = {"ours dense": 48, "TRL GKD": 60}


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now; VmHWM: the peak since the last reset) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (ru_maxrss cannot be reset and starts at the parent's peak after fork + exec)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(impl: str, vocab: int, tokens: int, hidden: int, repeats: int, warmup: int = 1) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from trl_opd.divergences import chunked_divergence_loss, chunked_per_token_divergence, per_token_divergence

    torch.manual_seed(0)
    h_s = (torch.randn(tokens, hidden) / hidden**0.5).requires_grad_()
    h_t = torch.randn(tokens, hidden) / hidden**0.5
    w_s = torch.randn(vocab, hidden) * 2
    w_t = torch.randn(vocab, hidden) * 2

    if impl == "ours dense":

        def step():
            return per_token_divergence(h_s @ w_s.T, h_t @ w_t.T, "jsd", 0.5).mean()
    elif impl == "ours chunked":

        def step():
            return chunked_per_token_divergence(h_s, h_t, w_s, w_t, "jsd", 0.5).mean()
    elif impl == "ours fused":

        def step():
            return chunked_divergence_loss(h_s, h_t, w_s, w_t, "jsd", 0.5, normalizer=tokens)[0]
    elif impl == "TRL GKD":
        from trl.experimental.gkd import GKDTrainer

        def step():
            return GKDTrainer.generalized_jsd_loss((h_s @ w_s.T)[None], (h_t @ w_t.T)[None], beta=0.5)
    elif impl == "TRL chunked":
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        def step():
            return ChunkedDivergenceFunction.apply(h_s, w_s, None, h_t, w_t, None, 0.5, 1.0)[0].mean()
    else:
        raise ValueError(impl)

    base = status_mib("VmRSS")
    reset_peak_rss()
    times, value = [], None
    for i in range(repeats + warmup):
        h_s.grad = None
        start = time.perf_counter()
        loss = step()
        loss.backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        value = loss.item()
    return {
        "impl": impl,
        "vocab": vocab,
        "tokens": tokens,
        "seconds": statistics.median(times),
        "extra_mib": status_mib("VmHWM") - base,
        "value": value,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 49152, 152064])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes before the timed ones")
    parser.add_argument(
        "--max-gib", type=float, default=20.0, help="skip full-logit implementations whose estimated peak exceeds this"
    )
    parser.add_argument("--impl", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        impl, shape = args._child
        vocab, tokens = map(int, shape.split("x"))
        print(json.dumps(measure(impl, vocab, tokens, args.hidden, args.repeats, args.warmup)))
        return

    print("command:", "OMP_NUM_THREADS=%s python" % os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv))
    header = (
        f"| {'V':>7} | {'N':>5} | {'implementation':<13} | {'median s':>8} | {'extra MiB':>9} | {'x dense time':>12} "
        f"| {'x dense mem':>11} | {'loss':>8} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for vocab in args.vocab:
        for tokens in args.tokens:
            rows = {}
            for impl in args.impl:
                need_gib = DENSE_BYTES_PER_LOGIT.get(impl, 0) * tokens * vocab / 2**30
                if need_gib > args.max_gib:
                    print(
                        f"| {vocab:>7} | {tokens:>5} | {impl:<13} | skipped: needs about {need_gib:.0f} GiB "
                        f"(> --max-gib {args.max_gib:g}) |"
                    )
                    continue
                cmd = [
                    sys.executable,
                    __file__,
                    "--hidden",
                    str(args.hidden),
                    "--repeats",
                    str(args.repeats),
                    "--warmup",
                    str(args.warmup),
                    "--_child",
                    impl,
                    f"{vocab}x{tokens}",
                ]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(
                        f"| {vocab:>7} | {tokens:>5} | {impl:<13} | failed: {done.stderr.strip().splitlines()[-1][:60]}"
                    )
                    continue
                rows[impl] = json.loads(done.stdout.strip().splitlines()[-1])
            dense = rows.get("ours dense")
            for impl, r in rows.items():
                t_ratio = r["seconds"] / dense["seconds"] if dense else float("nan")
                m_ratio = r["extra_mib"] / dense["extra_mib"] if dense else float("nan")
                print(
                    f"| {vocab:>7} | {tokens:>5} | {impl:<13} | {r['seconds']:>8.3f} | {r['extra_mib']:>9.0f} | "
                    f"{t_ratio:>12.2f} | {m_ratio:>11.2f} | {r['value']:>8.5f} |"
                )


if __name__ == "__main__":
    main()
